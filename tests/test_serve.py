"""The embeddings server, started for real on loopback and spoken to over HTTP (and with the openai client)."""
from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from embedtune.models.embedder import Embedder
from embedtune.serve import ServeLimits, parse_request, start_server

LIMITS = ServeLimits(max_batch_size=16, max_items=8, max_tokens=120, max_request_bytes=32 * 1024)


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir, tiny_adapter_dir):
    # fp32: the server's batches differ from the reference's, and bf16 rounding would blur the comparison.
    return Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, precision="fp32")


@pytest.fixture(scope="module")
def tiny_server(tiny_embedder):
    with start_server(tiny_embedder, limits=LIMITS) as server:
        yield server


def request(server, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """(status, parsed JSON body) over a fresh HTTP connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return response.status, json.loads(raw)
    finally:
        conn.close()


def embed(server, payload) -> dict:
    status, body = request(server, "POST", "/v1/embeddings", json.dumps(payload))
    assert status == 200, body
    return body


def test_health(tiny_server, tiny_embedder):
    status, body = request(tiny_server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["dimensions"] == tiny_embedder.hidden_size
    assert "/" not in body["model"]  # a local model folder is named, not located
    assert tiny_server.host == "127.0.0.1"


def test_embeddings_match_the_python_api(tiny_server, tiny_embedder, tiny_texts):
    texts = tiny_texts[:6]
    body = embed(tiny_server, {"model": "whatever", "input": texts})
    assert body["object"] == "list" and body["model"] == tiny_server.service.model_id
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    expected = tiny_embedder.encode(texts)
    assert (got * expected).sum(1).min() >= 0.9999
    tokens = sum(map(len, tiny_embedder.tokenize(texts)))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    single = embed(tiny_server, {"model": "m", "input": texts[0]})
    assert len(single["data"]) == 1 and single["data"][0]["index"] == 0
    np.testing.assert_allclose(single["data"][0]["embedding"], got[0], atol=2e-3)


def test_base64_encoding(tiny_server):
    as_float = embed(tiny_server, {"model": "m", "input": ["a dog", "a cat"], "encoding_format": "float"})
    as_b64 = embed(tiny_server, {"model": "m", "input": ["a dog", "a cat"], "encoding_format": "base64"})
    for f, b in zip(as_float["data"], as_b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, f["embedding"], atol=2e-3)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ('{"input": ["a dog"', 400, "invalid_json"),
        ("\xff\xfe not json", 400, "invalid_json"),
        ('["a dog"]', 400, "invalid_json"),
        ('{"model": "m"}', 400, "missing_input"),
        ('{"input": []}', 400, "empty_input"),
        ('{"input": ""}', 400, "empty_input"),
        ('{"input": ["ok", ""]}', 400, "empty_input"),
        ('{"input": ["ok", 5]}', 400, "invalid_input"),
        ('{"input": [[1, 2, -3]]}', 400, "invalid_input"),  # (token ids are taken: [[1, 2, 3]] is served)
        ('{"input": [null]}', 400, "invalid_input"),
        ('{"input": {"text": "a"}}', 400, "invalid_input"),
        ('{"input": ["a","b","c","d","e","f","g","h","i"]}', 413, "too_many_items"),
        (json.dumps({"input": ["the dog " * 40, "the cat " * 40]}), 413, "too_many_tokens"),
        ('{"input": "a", "encoding_format": "int8"}', 400, "invalid_encoding_format"),
        ('{"input": "a", "dimensions": 16}', 400, "invalid_dimensions"),
        ('{"input": "a", "model": 7}', 400, "invalid_model"),
        (json.dumps({"input": "x" * 40000}), 413, "request_too_large"),
    ],
)
def test_bad_requests_get_json_errors(tiny_server, body, status, code):
    got_status, got = request(tiny_server, "POST", "/v1/embeddings", body)
    assert got_status == status, got
    error = got["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    text = json.dumps(got)
    assert "Traceback" not in text and "File \"" not in text and "/tmp" not in text and ".py" not in text


def test_wrong_routes_and_methods(tiny_server):
    status, body = request(tiny_server, "GET", "/v1/embeddings")
    assert status == 405 and body["error"]["message"]
    status, body = request(tiny_server, "POST", "/nope", "{}")
    assert status == 404 and "error" in body
    status, body = request(tiny_server, "GET", "/v1/models")
    assert status == 200 and body["data"][0]["id"] == tiny_server.service.model_id


def test_server_keeps_serving_after_bad_requests(tiny_server):
    for body in ("{", "[]", '{"input": [-1]}', '{"input": []}'):
        assert request(tiny_server, "POST", "/v1/embeddings", body)[0] == 400
    # A body that claims more bytes than the limit is refused before it is read.
    assert request(tiny_server, "POST", "/v1/embeddings", "{}", {"Content-Length": "99999999"})[0] == 413
    assert request(tiny_server, "GET", "/health")[1]["status"] == "ok"
    assert len(embed(tiny_server, {"model": "m", "input": "still here"})["data"]) == 1


def run_concurrently(server, payloads: list[dict], send=None) -> list:
    """Each payload sent by its own thread, all released at once; `send(server, payload)` (default: embed)."""
    send = send or embed
    results: list = [None] * len(payloads)
    barrier = threading.Barrier(len(payloads))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = send(server, payloads[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("dynamic", [True, False])
def test_concurrent_requests_are_batched(tiny_embedder, tiny_texts, dynamic):
    # A short wait makes merging certain even though a tiny model answers in about a millisecond.
    limits = ServeLimits(max_batch_size=64, batch_wait_ms=100 if dynamic else 0, dynamic_batching=dynamic)
    payloads = [{"model": "m", "input": [tiny_texts[i % len(tiny_texts)], tiny_texts[(i * 3) % len(tiny_texts)]]}
                for i in range(12)]
    with start_server(tiny_embedder, limits=limits) as server:
        results = run_concurrently(server, payloads)
        calls = server.service.batcher.model_calls
    expected = tiny_embedder.encode(tiny_texts)
    for payload, result in zip(payloads, results, strict=True):
        got = np.array([d["embedding"] for d in result["data"]], dtype=np.float32)
        rows = [tiny_texts.index(t) for t in payload["input"]]
        assert (got * expected[rows]).sum(1).min() >= 0.9999  # every client gets its own rows back
    if dynamic:
        assert calls < len(payloads) / 2, calls
    else:
        assert calls == len(payloads)


def test_openai_client(tiny_server, tiny_embedder, tiny_texts):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    texts = tiny_texts[:4]
    expected = tiny_embedder.encode(texts)
    for kwargs in ({}, {"encoding_format": "float"}):  # the client asks for base64 unless told otherwise
        response = client.embeddings.create(model="tiny", input=texts, **kwargs)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert got.shape == expected.shape and (got * expected).sum(1).min() >= 0.9999
        assert response.usage.prompt_tokens == sum(map(len, tiny_embedder.tokenize(texts)))
    single = client.embeddings.create(model="tiny", input="a dog")
    assert len(single.data) == 1 and single.data[0].index == 0
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input=[])


def test_parse_request_without_a_server():
    texts, encoding = parse_request(b'{"input": "a", "model": "m", "user": "u"}', ServeLimits(), 64)
    assert texts == ["a"] and encoding == "float"


def test_cli_serve_binds_loopback(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "embedtune", "serve", "--model", str(tiny_model_dir), "--port", "0",
         "--max-items", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        url = line.split("http://", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{url}/health", timeout=5) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health["status"] == "ok" and health["limits"]["max_items"] == 4
        assert health["model"] == tiny_model_dir.name
    finally:
        process.terminate()
        process.wait(20)


def test_model_failure_is_a_500_without_details(tiny_server, tiny_embedder, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in /secret/path/model.py")

    monkeypatch.setattr(tiny_embedder, "encode_ids", broken)
    status, body = request(tiny_server, "POST", "/v1/embeddings", '{"input": "a dog"}')
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(body) and "boom" not in json.dumps(body)
    monkeypatch.undo()
    assert len(embed(tiny_server, {"model": "m", "input": "a dog"})["data"]) == 1  # the worker survived


def test_service_warms_the_model_up_before_serving(tiny_embedder, monkeypatch):
    from embedtune.serve import WARMUP_TEXTS, EmbeddingService

    seen = []
    original = tiny_embedder.encode
    monkeypatch.setattr(tiny_embedder, "encode", lambda texts, **kw: seen.append(list(texts)) or original(texts, **kw))
    service = EmbeddingService(tiny_embedder, LIMITS).start()
    try:
        assert seen == [list(WARMUP_TEXTS)]  # before any request, outside the batcher
        assert service.batcher.model_calls == 0
    finally:
        service.stop()


# ---- the declared schema ------------------------------------------------------------------------------------------
def test_openapi_schema_declares_the_request_and_the_answers(tiny_embedder):
    from embedtune.serve import EmbeddingService, build_app

    schema = build_app(EmbeddingService(tiny_embedder, LIMITS)).app.openapi()
    post = schema["paths"]["/v1/embeddings"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "model", "encoding_format", "dimensions"} <= set(body["properties"])
    assert body["required"] == ["input"]
    assert [kind.get("type") for kind in body["properties"]["input"]["anyOf"]] == ["string", "array"]
    assert body["properties"]["encoding_format"]["default"] == "float"

    def answer(route: dict, status: int) -> str:
        return route["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert answer(post, 200) == "EmbeddingResponse"
    assert {answer(post, status) for status in (400, 401, 408, 413, 429, 500, 503)} == {"ErrorResponse"}
    assert answer(schema["paths"]["/health"]["get"], 200) == "Health"
    assert answer(schema["paths"]["/v1/models"]["get"], 200) == "ModelList"
    assert set(schema["components"]["schemas"]["EmbeddingResponse"]["properties"]) == {"object", "data", "model",
                                                                                       "usage"}


def test_answers_are_what_the_schema_declares(tiny_server):
    """The response models forbid unknown fields: an answer that grows or loses a field fails here."""
    from embedtune.serve.schema import EmbeddingResponse, ErrorResponse, Health, ModelList

    for encoding in ("float", "base64"):
        answer = EmbeddingResponse.model_validate(embed(tiny_server, {"input": ["a dog", "a cat"],
                                                                      "encoding_format": encoding}))
        assert [row.index for row in answer.data] == [0, 1]
        assert all(isinstance(row.embedding, list if encoding == "float" else str) for row in answer.data)
    assert Health.model_validate(request(tiny_server, "GET", "/health")[1]).status == "ok"
    assert ModelList.model_validate(request(tiny_server, "GET", "/v1/models")[1]).data[0].id == (
        tiny_server.service.model_id)
    for method, path, body, status in (("POST", "/v1/embeddings", '{"input": 5}', 400), ("GET", "/nope", None, 404),
                                       ("GET", "/v1/embeddings", None, 405),
                                       ("POST", "/v1/embeddings", '{"input": ["a", "b", "c", "d", "e", "f", "g", "h", '
                                                                  '"i"]}', 413)):
        got_status, got = request(tiny_server, method, path, body)
        assert got_status == status and ErrorResponse.model_validate(got).error.message


@pytest.mark.parametrize(("body", "message", "param"), [
    ('{"input": 5}', "'input' must be a string or a list of strings", "input"),
    ('{"input": ["a", {"b": 1}]}', "input[1] must be a string (got an object)", "input[1]"),
    ('{"input": ["a", 1.5]}', "input[1] must be a string (got a number)", "input[1]"),
    ('{"input": ["a", [1, 2]]}', "input[1] must be a string (token ids are not accepted)", "input[1]"),
    ('{"input": ["a", ""]}', "input[1] is an empty string", "input[1]"),
    ('{"input": []}', "'input' must not be empty", "input"),
    ('{"model": "m"}', "'input' is required: a string or a list of strings", "input"),
    ('{"input": "a", "model": ["m"]}', "'model' must be a string", "model"),
    ('{"input": "a", "encoding_format": "FLOAT"}', "'encoding_format' must be 'float' or 'base64'", "encoding_format"),
    ('{"input": "a", "dimensions": "64"}', "'dimensions' must be 64 for this model (it does not shorten vectors)",
     "dimensions"),
    ('{"input": "a", "dimensions": true}', "'dimensions' must be 64 for this model (it does not shorten vectors)",
     "dimensions"),
    ('[{"input": "a"}]', "request body must be a JSON object", None),
])
def test_pydantic_errors_become_the_one_line_messages(body, message, param):
    from embedtune.serve import ApiError

    with pytest.raises(ApiError) as caught:
        parse_request(body.encode(), ServeLimits(), 64)
    assert (caught.value.message, caught.value.param, caught.value.status) == (message, param, 400)


def test_parse_request_takes_what_openai_sends():
    limits = ServeLimits(max_items=3)
    assert parse_request(b'{"input": ["a", "b"], "dimensions": 64.0, "encoding_format": "base64"}', limits, 64) == (
        ["a", "b"], "base64")
    assert parse_request(b'{"input": "a", "model": null, "encoding_format": null, "dimensions": null}', limits,
                         64) == (["a"], "float")


# ---- without the serve extra --------------------------------------------------------------------------------------
def extra_missing(module: str) -> str:
    return f"serving needs the 'serve' extra ({module} is not installed): pip install 'embedtune[serve]'"


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn"])
def test_serving_without_the_serve_extra_says_what_to_install(tiny_embedder, monkeypatch, missing):
    from embedtune.errors import EmbedtuneError
    from embedtune.serve import require_serve_extra, serve
    from embedtune.serve import server as server_module

    def no_bind(*args):
        raise AssertionError("the socket must not be bound without the extra")

    monkeypatch.setattr(server_module, "_bind", no_bind)
    monkeypatch.setitem(sys.modules, missing, None)  # what `import fastapi` meets when it is not installed
    with pytest.raises(EmbedtuneError) as caught:
        require_serve_extra()
    assert str(caught.value) == extra_missing(missing)
    for start in (serve, start_server):
        with pytest.raises(EmbedtuneError, match=r"pip install 'embedtune\[serve\]'"):
            start(tiny_embedder, port=0)
    monkeypatch.delitem(sys.modules, missing)
    require_serve_extra()  # (installed again: no error)


def test_cli_serve_without_the_serve_extra_is_one_line(monkeypatch, capsys):
    from embedtune import cli
    from embedtune.models import embedder as embedder_module

    monkeypatch.setattr(embedder_module.Embedder, "from_config", classmethod(lambda cls, config, **kw: "embedder"))
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert cli.main(["serve", "--model", "m", "--port", "0"]) == 2
    assert capsys.readouterr().err == f"embedtune: error: {extra_missing('uvicorn')}\n"


def test_serve_imports_without_fastapi_uvicorn_or_pydantic():
    """What the CLI imports before it knows whether the extra is there: the limits and `serve` itself."""
    code = ("import sys\n"
            "for name in ('fastapi', 'uvicorn', 'starlette', 'pydantic'):\n"
            "    sys.modules[name] = None\n"
            "from embedtune.errors import EmbedtuneError\n"
            "from embedtune.serve import API_KEY_ENV, ServeLimits, serve\n"
            "ServeLimits(max_items=4).validate()\n"
            "try:\n"
            "    serve(None)\n"
            "except EmbedtuneError as err:\n"
            "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == extra_missing("fastapi")
