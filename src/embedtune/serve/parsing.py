"""Checking an embeddings request body: `read_request` validates it against the declared `EmbeddingRequest`
(schema.py) and turns pydantic's first complaint into the server's one-line, OpenAI-style `ApiError`; then what a
declaration cannot say is checked explicitly against the served model (`Served`: its width, Matryoshka
dimensions, vocabulary and recorded prompts) and this server's limits. Every refusal names the value at fault.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from embedtune.serve.errors import ApiError
from embedtune.serve.limits import ServeLimits
from embedtune.serve.schema import INPUT_KINDS, EmbeddingRequest


@dataclass(frozen=True)
class Served:
    """What a request is checked against: the model's width, the sizes it may shorten its vectors to (its
    Matryoshka dimensions: empty when it was not trained with Matryoshka), its vocabulary and its prompts."""

    dimensions: int
    matryoshka_dims: tuple[int, ...] = ()
    vocab_size: int | None = None
    prompt_names: tuple[str, ...] = ()


@dataclass
class EmbeddingCall:
    """A checked request: texts or token-id lists (never both), and how to answer."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    encoding: str
    dimensions: int | None  # shorten to this many (None: the full width)
    prompt_name: str | None

    @property
    def items(self) -> list:
        return self.texts if self.texts is not None else self.token_ids


def parse_request(raw: bytes, limits: ServeLimits, dimensions: int) -> tuple[list, str]:
    """Input items (texts or token-id lists) and encoding format of a body, checked against a model of width
    `dimensions` that does not shorten its vectors; an ApiError says what is wrong."""
    call = read_request(raw, limits, Served(dimensions))
    return call.items, call.encoding


def read_request(raw: bytes, limits: ServeLimits, served: Served) -> EmbeddingCall:
    """The checked request in a body, or an ApiError saying what is wrong (one line, naming the value)."""
    payload = _json(raw)
    items = payload.get("input") if isinstance(payload, dict) else None
    if isinstance(items, list) and len(items) > limits.max_items:  # before validating a million items to refuse
        raise ApiError(413, f"request too large: 'input' has {len(items)} items; this server takes at most "
                            f"{limits.max_items}", param="input", code="too_many_items")
    try:
        request = EmbeddingRequest.model_validate(payload)
    except ValidationError as err:
        raise _refusal(err.errors(include_url=False)[0], served) from None
    kind = _kind(request.input)
    if kind == "text":
        for i, text in enumerate(request.input):
            if not text.isascii() and _SURROGATE.search(text):  # the tokenizer would fail on it, with a 500
                raise _bad_item(i, "string_unicode", text)
        texts, token_ids = request.input, None
    else:
        texts, token_ids = None, [request.input] if kind == "ids" else request.input
        _check_vocabulary(token_ids, served.vocab_size, flat=kind == "ids")
    return EmbeddingCall(texts, token_ids, request.encoding_format or "float",  # null: the default, as OpenAI's
                         _dimensions(request.dimensions, served), _prompt_name(request.prompt_name, served, kind))


def _kind(items: list) -> str:
    return "text" if isinstance(items[0], str) else "id_lists" if isinstance(items[0], list) else "ids"


_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON \\uXXXX escape can put one in a string


def _json(raw: bytes) -> Any:
    # json.loads, not pydantic's parser: it reads UTF-16/32 bodies by their BOM, and its errors are ours to word.
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # ValueError also covers integers past Python's 4300-digit limit
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None


# ---- the model's own rules -----------------------------------------------------------------------------------------
def _check_vocabulary(token_ids: list[list[int]], vocab_size: int | None, flat: bool) -> None:
    if vocab_size is None:
        return
    for i, ids in enumerate(token_ids):
        for j, token in enumerate(ids):
            if token >= vocab_size:
                param = f"input[{j}]" if flat else f"input[{i}][{j}]"
                raise ApiError(400, f"{param} is token id {_shown(token)}, outside this model's vocabulary "
                                    f"(0 to {vocab_size - 1})", param=param, code="invalid_input")


def _dimensions(value: int | float | None, served: Served) -> int | None:
    """The size to shorten vectors to (None: the full width, as sent or asked for)."""
    if value is None:
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise _dimensions_refusal(served, value)
    size = int(value)
    if size == served.dimensions:
        return None
    if size not in served.matryoshka_dims:
        raise _dimensions_refusal(served, size)
    return size


def _dimensions_refusal(served: Served, value: Any = None) -> ApiError:
    """vLLM's rule: a model not trained with Matryoshka keeps its width (shortened, its vectors lose quality); one
    trained with it takes the sizes it was trained for."""
    if not served.matryoshka_dims:
        message = f"'dimensions' must be {served.dimensions} for this model (it does not shorten vectors)"
        if _whole(value):
            message = (f"'dimensions' must be {served.dimensions} for this model, got {_shown(value)}: it was not "
                       "trained with Matryoshka, and shortened vectors would lose quality")
    else:
        sizes = ", ".join(map(str, sorted({*served.matryoshka_dims, served.dimensions})))
        message = (f"'dimensions' is {_shown(value)}, but this model was trained with Matryoshka for {sizes} only "
                   "(other sizes would lose quality)")
        if not _whole(value):
            message = f"'dimensions' must be a whole number, one of {sizes} (the model's Matryoshka dimensions)"
    return ApiError(400, message, param="dimensions", code="invalid_dimensions")


def _prompt_name(name: str | None, served: Served, kind: str) -> str | None:
    if name is None:
        return None
    if kind != "text":
        raise ApiError(400, f"'prompt_name' ({_shown(name)}) applies to text; token ids are embedded as sent",
                       param="prompt_name", code="invalid_prompt_name")
    if name not in served.prompt_names:
        known = (f"it has {', '.join(map(repr, served.prompt_names))}" if served.prompt_names else
                 "it records none (export it with --query-prompt / --document-prompt)")
        raise ApiError(400, f"'prompt_name' is {_shown(name)}, a prompt this model does not record: {known}",
                       param="prompt_name", code="invalid_prompt_name")
    return name


# ---- pydantic's complaints, in one line ----------------------------------------------------------------------------
def _refusal(error: dict, served: Served) -> ApiError:
    """The one-line ApiError for pydantic's first error (its `loc` says where, its `type` what)."""
    loc, kind = error["loc"], error["type"]
    if not loc:
        return ApiError(400, "request body must be a JSON object", code="invalid_json")
    if loc[0] != "input":
        return _field_refusal(loc[0], served, error.get("input"))
    form = loc[1] if len(loc) > 1 and loc[1] in INPUT_KINDS else "text"
    where = loc[2:] if len(loc) > 1 and loc[1] in INPUT_KINDS else loc[1:]
    if where:
        if form == "text":
            return _bad_item(int(where[0]), kind, error["input"])
        return _bad_token_item(form, [int(i) for i in where], kind, error["input"])
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
        message = f"{param} must be a string ({what})"  # (in a list of texts: text and ids are not mixed)
    return ApiError(400, message, param=param, code="invalid_input")


def _bad_token_item(form: str, where: list[int], kind: str, item: Any) -> ApiError:
    param = "input" + "".join(f"[{i}]" for i in where)
    mixed = " (text and token ids are not mixed in one request)" if isinstance(item, str) else ""
    if kind == "too_short":
        message = f"{param} is an empty list of token ids"
    elif form == "id_lists" and len(where) == 1:
        message = f"{param} must be a list of token ids, like input[0], got {_json_type(item)}{mixed}"
    else:
        message = f"{param} must be a token id, a whole number >= 0, got {_shown(item)}{mixed}"
    return ApiError(400, message, param=param, code="empty_input" if kind == "too_short" else "invalid_input")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    return {dict: "an object", float: "a number", bool: "a boolean", type(None): "null", str: "a string",
            list: "a list", int: "a number"}.get(type(value), "a value")


def _shown(value: Any) -> str:
    """A value as a message shows it: JSON, cut to 40 characters (a refusal names the value, not a megabyte)."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = _json_type(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_refusal(field: str, served: Served, value: Any) -> ApiError:
    if field == "dimensions":
        return _dimensions_refusal(served, value)
    message = {"model": "'model' must be a string",
               "encoding_format": "'encoding_format' must be 'float' or 'base64'",
               "prompt_name": "'prompt_name' must be a string"}[field]
    return ApiError(400, message, param=field, code=f"invalid_{field}")
