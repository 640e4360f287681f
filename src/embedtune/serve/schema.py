"""The HTTP API's types, declared: what POST /v1/embeddings takes (`EmbeddingRequest`) and what each route answers.

The OpenAPI schema (`build_app(...).app.openapi()`) is generated from these models. `parse_request` validates a
body against `EmbeddingRequest` and turns pydantic's first complaint into the server's one-line, OpenAI-style
error (`ApiError`: status, message, param, code); what a declaration cannot say (this server's limits, this
model's width, text the tokenizer cannot take) is checked after it, explicitly.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from embedtune.serve.errors import ApiError
from embedtune.serve.limits import ServeLimits

Text = Annotated[str, StringConstraints(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1, fail_fast=True)]  # one error, not one per item of 4 MiB


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # OpenAI's `input` is a string or a list of them


# ---- the request -------------------------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Types are JSON's own (strict: no "5" for 5, no true for 1); fields this
    server does not use (`user`, ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input: Annotated[Texts, BeforeValidator(_one_or_many, json_schema_input_type=Text | Texts)] = Field(
        description="the text to embed, or a list of texts (not token ids)")
    model: str | None = Field(None, description="any name: the server serves one model")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="'base64': each vector as the base64 of its little-endian float32 bytes")
    dimensions: int | float | None = Field(None, description="if given, the model's own width (vectors are "
                                                             "not shortened)")


# ---- the responses -----------------------------------------------------------------------------------------------
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")  # what the server sends, exactly: a test checks replies against it


class Embedding(_Answer):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(_Answer):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Answer):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(_Answer):
    message: str = Field(description="one line, for people")
    type: Literal["invalid_request_error", "rate_limit_error", "server_error"]
    param: str | None = Field(None, description="the field at fault, such as 'input[3]'")
    code: str | None = Field(None, description="for programs, such as 'too_many_items'")


class ErrorResponse(_Answer):
    """Every refusal (4xx) and failure (5xx), OpenAI's shape."""
    error: ErrorDetail


class ModelCard(_Answer):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "embedtune"


class ModelList(_Answer):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthLimits(_Answer):
    max_batch_size: int
    max_items: int
    max_tokens: int
    max_request_bytes: int
    dynamic_batching: bool


class Health(_Answer):
    status: Literal["ok", "error"] = Field(description="'error' (with status 503) once the model worker died")
    model: str
    dimensions: int
    pooling: str
    max_length: int
    queued_texts: int
    model_calls: int
    pending_requests: int
    withdrawn_requests: int
    api_key_required: bool
    limits: HealthLimits


# ---- checking a request body -------------------------------------------------------------------------------------
def parse_request(raw: bytes, limits: ServeLimits, dimensions: int) -> tuple[list[str], str]:
    """Texts and encoding format of an embeddings request body, or an ApiError saying what is wrong."""
    payload = _json(raw)
    items = payload.get("input") if isinstance(payload, dict) else None
    if isinstance(items, list) and len(items) > limits.max_items:  # before validating a million items to refuse
        raise ApiError(413, f"request too large: 'input' has {len(items)} items; this server takes at most "
                            f"{limits.max_items}", param="input", code="too_many_items")
    try:
        request = EmbeddingRequest.model_validate(payload)
    except ValidationError as err:
        raise _refusal(err.errors(include_url=False)[0], dimensions) from None
    texts = request.input
    for i, text in enumerate(texts):
        if not text.isascii() and _SURROGATE.search(text):  # the tokenizer would fail on it, with a 500
            raise _bad_item(i, "string_unicode", text)
    if request.dimensions is not None and request.dimensions != dimensions:
        raise _field_refusal("dimensions", dimensions)
    return texts, request.encoding_format or "float"  # null means the default, as OpenAI's does


_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON \\uXXXX escape can put one in a string


def _json(raw: bytes) -> Any:
    # json.loads, not pydantic's parser: it reads UTF-16/32 bodies by their BOM, and its errors are ours to word.
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # ValueError also covers integers past Python's 4300-digit limit
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None


def _refusal(error: dict, dimensions: int) -> ApiError:
    """The one-line ApiError for pydantic's first error (its `loc` says where, its `type` what)."""
    loc, kind = error["loc"], error["type"]
    if not loc:
        return ApiError(400, "request body must be a JSON object", code="invalid_json")
    if loc[0] != "input":
        return _field_refusal(loc[0], dimensions)
    if len(loc) > 1:
        return _bad_item(int(loc[1]), kind, error["input"])
    if kind == "missing":
        return ApiError(400, "'input' is required: a string or a list of strings", param="input",
                        code="missing_input")
    if kind == "too_short":
        return ApiError(400, "'input' must not be empty", param="input", code="empty_input")
    return ApiError(400, "'input' must be a string or a list of strings", param="input", code="invalid_input")


def _bad_item(i: int, kind: str, item: Any) -> ApiError:
    param = f"input[{i}]"
    if kind == "string_too_short":
        return ApiError(400, f"{param} is an empty string", param=param, code="empty_input")
    if kind == "string_unicode":
        message = f"{param} is not valid Unicode (a lone surrogate escape such as \\ud800)"
    else:
        token_ids = isinstance(item, (int, list)) and not isinstance(item, bool)
        what = "token ids are not accepted" if token_ids else f"got {_json_type(item)}"
        message = f"{param} must be a string ({what})"
    return ApiError(400, message, param=param, code="invalid_input")


def _json_type(value: Any) -> str:
    return {dict: "an object", float: "a number", bool: "a boolean", type(None): "null"}.get(type(value), "a value")


def _field_refusal(field: str, dimensions: int) -> ApiError:
    message = {"model": "'model' must be a string",
               "encoding_format": "'encoding_format' must be 'float' or 'base64'",
               "dimensions": f"'dimensions' must be {dimensions} for this model (it does not shorten vectors)"}[field]
    return ApiError(400, message, param=field, code=f"invalid_{field}")
