"""The HTTP API's types, declared: what POST /v1/embeddings takes (`EmbeddingRequest`) and what each route answers.

The OpenAPI schema (`build_app(...).app.openapi()`) is generated from these models. `parsing.read_request`
validates a body against `EmbeddingRequest` and turns pydantic's first complaint into the server's one-line,
OpenAI-style error; what a declaration cannot say (this server's limits, this model's width, vocabulary and
prompts) is checked after it, explicitly.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

Text = Annotated[str, StringConstraints(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1, fail_fast=True)]  # one error, not one per item of 4 MiB
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, fail_fast=True)]
TokenIdLists = Annotated[list[TokenIds], Field(min_length=1, fail_fast=True)]
INPUT_KINDS = ("text", "ids", "id_lists")  # the tags pydantic puts in an error's `loc` after 'input'


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # OpenAI's `input` is a string or a list of them


def input_kind(value: Any) -> str:
    """Which of OpenAI's input forms a value is meant as, by its first item: a list of token-id lists, one
    token-id list, else text (so that a wrong value is described as the text it most often is meant to be)."""
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, list):
            return "id_lists"
        if isinstance(first, int) and not isinstance(first, bool):
            return "ids"
    return "text"


Input = Annotated[Union[Annotated[Texts, Tag("text")], Annotated[TokenIds, Tag("ids")],  # noqa: UP007
                        Annotated[TokenIdLists, Tag("id_lists")]], Discriminator(input_kind)]
_ID_ITEMS = {"type": "integer", "minimum": 0}
INPUT_SCHEMA = {"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "minItems": 1, "description": "texts, or token ids (one list, or a list of lists): not mixed",
     "anyOf": [{"items": {"type": "string", "minLength": 1}}, {"items": _ID_ITEMS},
               {"items": {"type": "array", "minItems": 1, "items": _ID_ITEMS}}]},
]}


# ---- the request -------------------------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Types are JSON's own (strict: no "5" for 5, no true for 1); fields this
    server does not use (`user`, ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input: Annotated[Input, BeforeValidator(_one_or_many), WithJsonSchema(INPUT_SCHEMA)] = Field(
        description="the text to embed, a list of texts, or token ids: a list of integers or a list of such lists "
                    "(EOS is appended as for text)")
    model: str | None = Field(None, description="any name: the server serves one model")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="'base64': each vector as the base64 of its little-endian float32 bytes")
    dimensions: int | float | None = Field(
        None, description="the model's own width, or (a model trained with Matryoshka) one of its Matryoshka "
                          "dimensions: the vectors are truncated and re-normalised")
    prompt_name: str | None = Field(None, description="a prompt recorded in the export ('query', 'document'), "
                                                      "applied to every text")


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
    max_batch_tokens: int
    batch_wait_ms: float


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
    matryoshka_dims: list[int] = Field(description="the sizes 'dimensions' may ask for below the full width")
    prompt_names: list[str] = Field(description="the prompts 'prompt_name' may name")


