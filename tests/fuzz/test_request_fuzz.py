"""Fuzzing the server's request parser: serve.parse_request(raw bytes, limits, dimensions).

Whatever the body (random bytes, broken JSON, wrong JSON types, nulls, huge integers, deep nesting, lone
surrogates, BOMs), the parser returns texts (or token-id lists) the model can take or raises an ApiError with a
4xx status, a one-line message and a code; nothing else escapes. A well-formed request is accepted exactly as sent.
"""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from embedtune.serve import ApiError, EmbeddingRequest, ServeLimits, parse_request

SOAK = settings(max_examples=5000)
DIMENSIONS = 64
LIMITS = st.sampled_from([ServeLimits(), ServeLimits(max_items=4)])
SURROGATE = re.compile("[\ud800-\udfff]")
EDGE = ["\ufeff", "\u200b", "\u200d", "\u202e", "\u0301", "e\u0301", "\U0001f469\u200d\U0001f469\u200d\U0001f467",
        "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u2028", "\x85", "\x00", "\n", "\t", '"', "\\", " ", "\uffff", "\U0010ffff"]
TEXTS = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(EDGE)), max_size=4).map("".join)
LONE = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)  # only a \\uXXXX escape can send one
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXTS, LONE)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TEXTS, inner, max_size=3), max_leaves=8)
ENCODINGS = st.one_of(st.sampled_from(["float", "base64", "int8", "", "FLOAT", None, 0, False, [], {}]), JSON_VALUES)
INPUTS = st.one_of(TEXTS, st.lists(TEXTS, max_size=6), st.lists(st.one_of(TEXTS, LONE, SCALARS), max_size=6),
                   JSON_VALUES, st.lists(st.integers(0, 50_000), min_size=1, max_size=4))


def check_api_error(err: ApiError, one_line) -> None:
    assert 400 <= err.status < 500, err.status
    one_line(err.message, 300)
    assert isinstance(err.code, str) and err.code
    assert err.param is None or isinstance(err.param, str)
    json.dumps(err.body())  # the response body can be sent


def parse(raw: bytes, limits: ServeLimits):
    try:
        return parse_request(raw, limits, DIMENSIONS), None
    except ApiError as err:
        return None, err


# ---- any bytes ----------------------------------------------------------------------------------------------------

TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"input"', b'"model"', b'"encoding_format"', b'"dimensions"', b'"a"',
          b'"\\ud800"', b'"\\u0000"', b"null", b"true", b"1", b"1" * 5000, b"[" * 5000, b"NaN", b"-Infinity",
          b"\xef\xbb\xbf", b"\xff\xfe", b"\xff", b"\x00", b" ", b"\n", b'"', b"\\"]
BODIES = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join))


def check_bytes(one_line, raw, limits):
    result, err = parse(raw, limits)
    if err is not None:
        check_api_error(err, one_line)
    else:
        texts, encoding = result  # (or token-id lists)
        assert texts and all(isinstance(t, str) and t and not SURROGATE.search(t) for t in texts) or all(
            isinstance(ids, list) and ids and all(is_token_id(i) and i >= 0 for i in ids) for ids in texts)
        assert len(texts) <= limits.max_items and encoding in ("float", "base64")


@given(raw=BODIES, limits=LIMITS)
def test_any_bytes_give_texts_or_a_4xx(one_line, raw, limits):
    check_bytes(one_line, raw, limits)


@pytest.mark.slow
@SOAK
@given(raw=BODIES, limits=LIMITS)
def test_any_bytes_give_texts_or_a_4xx_soak(one_line, raw, limits):
    check_bytes(one_line, raw, limits)


# ---- JSON objects: every field of the wrong type, or right -------------------------------------------------------

@st.composite
def payloads(draw):
    payload = {}
    if draw(st.integers(0, 9)):
        payload["input"] = draw(INPUTS)
    if draw(st.booleans()):
        payload["model"] = draw(st.one_of(TEXTS, JSON_VALUES))
    if draw(st.booleans()):
        payload["encoding_format"] = draw(ENCODINGS)
    if draw(st.integers(0, 3)) == 0:
        payload["dimensions"] = draw(st.one_of(st.just(DIMENSIONS), st.just(float(DIMENSIONS)), JSON_VALUES))
    if draw(st.booleans()):
        payload["user"] = draw(JSON_VALUES)  # fields the server does not use are ignored
    return payload


def failing_codes(payload, limits) -> dict[str, set]:
    """code -> params of every check the payload fails (the parser reports one of them)."""
    failed: dict[str, set] = {}
    if "input" not in payload:
        failed.setdefault("missing_input", set()).add("input")
    else:
        items = payload["input"]
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list):
            failed.setdefault("invalid_input", set()).add("input")
        elif not items:
            failed.setdefault("empty_input", set()).add("input")
        else:
            if len(items) > limits.max_items:
                failed.setdefault("too_many_items", set()).add("input")
            if is_token_id(items[0]) or isinstance(items[0], list):  # token ids: one list, or a list of lists
                token_id_failures(items, failed)
            for i, item in enumerate(items if isinstance(items[0], str) or not items_are_ids(items) else []):
                if not isinstance(item, str) or SURROGATE.search(item):
                    failed.setdefault("invalid_input", set()).add(f"input[{i}]")
                elif not item:
                    failed.setdefault("empty_input", set()).add(f"input[{i}]")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        failed.setdefault("invalid_model", set()).add("model")
    encoding = payload.get("encoding_format")
    if encoding is not None and (not isinstance(encoding, str) or encoding not in ("float", "base64")):
        failed.setdefault("invalid_encoding_format", set()).add("encoding_format")
    wanted = payload.get("dimensions")
    if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, (int, float))
                               or wanted != DIMENSIONS):
        failed.setdefault("invalid_dimensions", set()).add("dimensions")
    return failed


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def items_are_ids(items: list) -> bool:
    return is_token_id(items[0]) or isinstance(items[0], list)


def token_id_failures(items: list, failed: dict) -> None:
    """Token-id input (chosen by its first item): every id a whole number >= 0; lists of them never empty."""
    if not isinstance(items[0], list):
        for i, item in enumerate(items):
            if not is_token_id(item) or item < 0:
                failed.setdefault("invalid_input", set()).add(f"input[{i}]")
        return
    for i, ids in enumerate(items):
        if not isinstance(ids, list):
            failed.setdefault("invalid_input", set()).add(f"input[{i}]")
        elif not ids:
            failed.setdefault("empty_input", set()).add(f"input[{i}]")
        for j, item in enumerate(ids if isinstance(ids, list) else []):
            if not is_token_id(item) or item < 0:
                failed.setdefault("invalid_input", set()).add(f"input[{i}][{j}]")


def render(draw_bool, payload) -> bytes:
    text = json.dumps(payload, ensure_ascii=False)
    if draw_bool() or SURROGATE.search(text):
        text = json.dumps(payload)  # lone surrogates travel as \uXXXX escapes
    raw = text.encode("utf-8")
    return (b"\xef\xbb\xbf" + raw) if draw_bool() else raw


def check_payload(one_line, payload, limits, data):
    raw = render(lambda: data.draw(st.booleans()), payload)
    payload = json.loads(raw)  # what was sent: two escaped surrogates may make one character
    result, err = parse(raw, limits)
    failed = failing_codes(payload, limits)
    if not failed:
        assert err is None, f"refused: {err.code} {err.message}"
        items = payload["input"]
        one = isinstance(items, str) or is_token_id(items[0])  # a text, or one list of token ids
        assert result == ([items] if one else items, payload.get("encoding_format") or "float")
    else:
        assert err is not None, f"accepted; expected one of {sorted(failed)}"
        check_api_error(err, one_line)
        assert err.code in failed and err.param in failed[err.code], (err.code, err.param, failed)


@given(payload=payloads(), limits=LIMITS, data=st.data())
def test_json_requests_are_taken_exactly_or_refused_with_the_reason(one_line, payload, limits, data):
    check_payload(one_line, payload, limits, data)


@pytest.mark.slow
@SOAK
@given(payload=payloads(), limits=LIMITS, data=st.data())
def test_json_requests_are_taken_exactly_or_refused_with_the_reason_soak(one_line, payload, limits, data):
    check_payload(one_line, payload, limits, data)


# ---- what JSON libraries choke on: deep nesting, huge integers, non-standard numbers, other encodings ------------

@st.composite
def hostile_bodies(draw):
    depth = draw(st.sampled_from([10, 999, 5000, 100_000]))
    nest = "[" * depth + "]" * depth
    return draw(st.sampled_from([
        f'{{"input": {nest}}}', f'{{"input": "a", "user": {nest}}}', nest, "{" * 50_000,
        '{"input": "a", "dimensions": ' + "9" * 5000 + "}", '{"input": [' + "1" * 5000 + "]}",
        '{"input": "a", "dimensions": 1e999}', '{"input": "a", "dimensions": NaN}', '{"input": NaN}',
        '{"input": "a\\ud800"}', '{"input": ["ok", "\\udfff"]}', '{"input": "\\u0000"}', '{"input": "a"} trailing',
        '{"input": "a", "input": 5}', '{"input": "a", "encoding_format": false}', '{"input": [true]}',
    ])).encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32"])))


@given(raw=hostile_bodies(), limits=LIMITS)
def test_hostile_bodies_give_texts_or_a_4xx(one_line, raw, limits):
    check_bytes(one_line, raw, limits)


# ---- regressions: one test per bug the fuzzing (or the fixing) turned up -------------------------------------------

def refused(one_line, body: str | bytes, code: str, param, match: str) -> ApiError:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(ApiError) as caught:
        parse_request(raw, ServeLimits(), DIMENSIONS)
    err = caught.value
    check_api_error(err, one_line)
    assert (err.status, err.code, err.param) == (400, code, param) and re.search(match, err.message), err.message
    return err


def test_regression_request_nested_too_deeply(one_line):
    # was: RecursionError out of json.loads: a 500 with a traceback in the server log, for a 200 kB body
    refused(one_line, '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json", None, "nested too deeply")
    refused(one_line, "[" * 100_000, "invalid_json", None, "nested too deeply")


def test_regression_request_lone_surrogate_escapes(one_line):
    # was: accepted; the tokenizer then failed on the text (a 500 from the model worker)
    refused(one_line, '{"input": ["fine", "bad \\ud800"]}', "invalid_input", "input[1]", "not valid Unicode")
    refused(one_line, '{"input": "\\udfff"}', "invalid_input", "input[0]", "lone surrogate")
    assert parse_request(b'{"input": "\\ud83d\\ude00"}', ServeLimits(), DIMENSIONS) == (["\U0001f600"], "float")


@pytest.mark.parametrize("value", ['""', "0", "false", "[]", "{}"])
def test_regression_request_falsy_encoding_format_is_no_default(one_line, value):
    # was: '', 0, false, [] and {} all silently meant "float"
    refused(one_line, f'{{"input": "a", "encoding_format": {value}}}', "invalid_encoding_format", "encoding_format",
            "must be 'float' or 'base64'")
    assert parse_request(b'{"input": "a", "encoding_format": null}', ServeLimits(), DIMENSIONS) == (["a"], "float")


def test_regression_request_boolean_items_are_not_token_ids(one_line):
    # was: "input[0] must be a string (token ids are not accepted)" for [true]
    refused(one_line, '{"input": [true]}', "invalid_input", "input[0]", r"must be a string \(got a boolean\)")
    # (token ids alone are taken since issue 36; in a list of texts they are still refused)
    refused(one_line, '{"input": ["a", [1, 2]]}', "invalid_input", "input[1]", "token ids are not accepted")


def test_huge_integers_and_other_encodings(one_line):
    refused(one_line, '{"input": "a", "dimensions": ' + "9" * 5000 + "}", "invalid_json", None, "not valid JSON")
    refused(one_line, '{"input": "a", "dimensions": ' + "9" * 400 + "}", "invalid_dimensions", "dimensions",
            "must be 64")
    assert parse_request('{"input": ["\u05e2\u05d1"]}'.encode("utf-16"), ServeLimits(), DIMENSIONS) == (
        ["\u05e2\u05d1"], "float")  # json.loads reads UTF-16/32 bodies by their BOM
    assert parse_request(b'\xef\xbb\xbf{"input": "a"}', ServeLimits(), DIMENSIONS) == (["a"], "float")


def test_regression_request_many_wrong_items_cost_one_error(one_line):
    # was, in the first declared schema: pydantic listed one error per item, and a 4 MiB body of [1,1,...]
    # took 31 s and 2 GiB to refuse (fail_fast on the list; the item count checked before validation)
    with pytest.raises(ValidationError) as caught:
        EmbeddingRequest.model_validate({"input": ["ok"] + [1] * 10_000, "model": 5})
    assert caught.value.error_count() == 2  # input[1] and model, not 10,001
    body = ('{"input": [' + ",".join(["true"] * 300) + "]}").encode()  # (not ids: those are taken now)
    with pytest.raises(ApiError) as caught:
        parse_request(body, ServeLimits(), DIMENSIONS)  # (the old parser's order: the count comes first)
    assert (caught.value.status, caught.value.code) == (413, "too_many_items")
    with pytest.raises(ApiError) as caught:
        parse_request(body, ServeLimits(max_items=1000), DIMENSIONS)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_input", "input[0]")
