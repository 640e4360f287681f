"""The embeddings server against hostile clients, over real sockets on loopback: oversize and endless bodies,
floods, slow and vanishing clients, missing keys, forced internal errors; and the abuse benchmark, short."""
from __future__ import annotations

import asyncio
import http.client
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from embedtune import serve as serve_module
from embedtune.errors import ConfigError
from embedtune.models.embedder import Embedder
from embedtune.serve import ServeLimits, start_server
from embedtune.serve import guard as guard_module
from embedtune.serve import service as service_module

ROOT = Path(__file__).resolve().parents[1]
CAP = 32 * 1024
LIMITS = ServeLimits(max_batch_size=16, max_items=8, max_tokens=120, max_request_bytes=CAP, body_timeout_s=3.0)
EIGHT_MIB = b'{"input": "' + b"a" * (8 * 1024 * 1024) + b'"}'
INTERNALS = ("Traceback", 'File "', ".py", "/tmp", "/work", "site-packages", "embedtune.", "secret")


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir):
    return Embedder(str(tiny_model_dir), max_length=64, precision="fp32")


@pytest.fixture(scope="module")
def server(tiny_embedder):
    with start_server(tiny_embedder, limits=LIMITS) as running:
        yield running


# ---- a raw HTTP/1.1 client -----------------------------------------------------------------------------------
def connect(server, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one response with a Content-Length (`data`: its
    beginning, already received)."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """(status, headers, parsed JSON body) over a fresh connection, the body sent with a Content-Length."""
    with connect(server) as sock:
        sock.sendall(head(method, path, {"Content-Length": str(len(body)), **(headers or {})}) + body)
        status, got_headers, raw = read_response(sock)
    assert got_headers["content-type"].startswith("application/json"), raw[:200]
    return status, got_headers, json.loads(raw)


def embed(server, texts, headers: dict[str, str] | None = None) -> dict:
    status, _, body = exchange(server, "POST", "/v1/embeddings", json.dumps({"input": texts}).encode(), headers)
    assert status == 200, body
    return body


def assert_no_internals(body) -> None:
    text = json.dumps(body) if not isinstance(body, (bytes, str)) else str(body)
    leaked = [word for word in INTERNALS if word in text]
    assert not leaked, (leaked, text[:300])


def assert_error(body, code: str, kind: str = "invalid_request_error") -> dict:
    error = body["error"]
    assert error["code"] == code and error["type"] == kind and error["message"], body
    assert_no_internals(body)
    return error


# ---- 1. bodies over the size cap ----------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["content-length", "connection-close", "chunked"])
def test_an_8_mib_body_gets_413_and_is_not_reset(server, framing):
    """The client sends all 8 MiB (against a 32 KiB cap) and then reads a 413, whatever the framing; with
    `Connection: close` the server used to close at once, and the client's send got a reset instead."""
    if framing == "chunked":
        step = 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(EIGHT_MIB[i:i + step]), EIGHT_MIB[i:i + step])
                        for i in range(0, len(EIGHT_MIB), step)) + b"0\r\n\r\n"
        headers = {"Transfer-Encoding": "chunked"}
    else:
        body = EIGHT_MIB
        headers = {"Content-Length": str(len(body))} | ({"Connection": "close"} if framing == "connection-close"
                                                        else {})
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Type": "application/json", **headers}) + body)
        status, got_headers, raw = read_response(sock)
        assert sock.recv(1) == b""  # then closed, cleanly
    assert status == 413 and got_headers["connection"].lower() == "close"
    error = assert_error(json.loads(raw), "request_too_large")
    assert str(CAP) in error["message"] and "request too large" in error["message"]
    assert len(embed(server, "still serving")["data"]) == 1


def test_urllib_gets_the_413_for_an_oversize_body(server):
    request = urllib.request.Request(server.url + "/v1/embeddings", data=EIGHT_MIB, method="POST",
                                     headers={"Content-Type": "application/json"})  # urllib sends Connection: close
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert_error(json.loads(refused.value.read()), "request_too_large")


def test_an_endless_body_is_drained_only_so_far(server, monkeypatch):
    """A client that declares 1 GiB gets its 413 at once; the server reads on no more than DRAIN_BYTES."""
    monkeypatch.setattr(guard_module, "DRAIN_BYTES", 1024 * 1024)
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": str(1 << 30)}))
        status, got_headers, raw = read_response(sock)  # before any of the body is sent
        assert status == 413 and got_headers["connection"].lower() == "close"
        sent, chunk = 0, b"a" * 65536
        with pytest.raises(OSError):  # reset or broken pipe once the server stops reading
            while sent < 256 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.recv(1)
    assert sent < 64 * 1024 * 1024, sent  # 1 MiB drained plus what the socket buffers hold


def test_a_refused_client_that_stops_sending_is_closed_after_drain_seconds(server, monkeypatch):
    monkeypatch.setattr(guard_module, "DRAIN_SECONDS", 0.5)
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": str(CAP + 1)}) + b"{")
        start = time.monotonic()
        assert read_response(sock)[0] == 413
        assert sock.recv(1) == b""
        assert 0.3 < time.monotonic() - start < 5


def test_a_client_waiting_for_100_continue_is_refused_without_waiting(server):
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": str(len(EIGHT_MIB)),
                                                      "Expect": "100-continue"}))
        start = time.monotonic()
        status, _, _ = read_response(sock)  # no "100 Continue" first: the answer is final
        assert status == 413 and sock.recv(1) == b""
        assert time.monotonic() - start < guard_module.DRAIN_SECONDS


# ---- 2. too many items or tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize(("texts", "code", "limit"), [
    (["a"] * 9, "too_many_items", "at most 8"),
    (["the dog " * 40, "the cat " * 40], "too_many_tokens", "at most 120"),
])
def test_too_many_items_or_tokens_get_413_naming_the_limit(server, texts, code, limit):
    status, _, body = exchange(server, "POST", "/v1/embeddings", json.dumps({"input": texts}).encode())
    assert status == 413
    error = assert_error(body, code)
    assert error["param"] == "input" and limit in error["message"] and "request too large" in error["message"]


# ---- 3. more than the queue holds ---------------------------------------------------------------------------
class BlockedModel:
    """Makes the tiny model's forward pass wait for `release()`; `.busy` is set once the worker is inside it."""

    def __init__(self, embedder, monkeypatch):
        self.busy, self._gate = threading.Event(), threading.Event()
        original = embedder.encode_ids

        def blocked(*args, **kwargs):
            self.busy.set()
            self._gate.wait(30)
            return original(*args, **kwargs)

        monkeypatch.setattr(embedder, "encode_ids", blocked)

    def release(self) -> None:
        self._gate.set()


def in_background(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_full_queue_gets_429_with_retry_after(tiny_embedder, monkeypatch):
    limits = ServeLimits(max_queue=2, max_batch_size=2)
    with start_server(tiny_embedder, limits=limits) as running:
        model = BlockedModel(tiny_embedder, monkeypatch)
        first, first_out = in_background(embed, running, "a dog")
        assert model.busy.wait(10)  # the worker holds the first request; the queue is empty
        second, second_out = in_background(embed, running, ["a cat", "a man"])
        wait_for(lambda: running.service.batcher.queued_texts == 2)
        status, headers, body = exchange(running, "POST", "/v1/embeddings", b'{"input": "one more"}')
        assert status == 429 and headers["retry-after"] == "1"
        error = assert_error(body, "overloaded", kind="rate_limit_error")
        assert "queue holds 2" in error["message"]
        model.release()
        first.join(30)
        second.join(30)
        assert len(first_out[0]["data"]) == 1 and len(second_out[0]["data"]) == 2
        assert len(embed(running, "room again")["data"]) == 1


def test_more_requests_in_progress_than_allowed_get_429(tiny_embedder, monkeypatch):
    limits = ServeLimits(max_pending_requests=2)
    with start_server(tiny_embedder, limits=limits) as running:
        model = BlockedModel(tiny_embedder, monkeypatch)
        threads = [in_background(embed, running, "a dog")[0]]
        assert model.busy.wait(10)
        threads.append(in_background(embed, running, "a cat")[0])
        wait_for(lambda: running.service.pending == 2)
        status, headers, body = exchange(running, "POST", "/v1/embeddings", b'{"input": "a third"}')
        assert status == 429 and headers["retry-after"] == "1" and headers["connection"].lower() == "close"
        assert "2 requests are in progress" in assert_error(body, "overloaded", kind="rate_limit_error")["message"]
        health_status, _, health = exchange(running, "GET", "/health")  # not counted: still answers
        assert health_status == 200 and health["pending_requests"] == 2
        model.release()
        for thread in threads:
            thread.join(30)
        wait_for(lambda: running.service.pending == 0)
        assert len(embed(running, "room again")["data"]) == 1


# ---- 4. slow and vanishing clients --------------------------------------------------------------------------
def slow_client(server, results: list, dribble: bool = True, every: float = 0.1) -> None:
    """Sends headers, then (`dribble`) one byte of body every `every` seconds until answered, or nothing;
    appends (status, body, seconds from the headers to the answer)."""
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": "1000"}))
        start = time.monotonic()
        sock.settimeout(every)
        data = b""
        for _ in range(int(30 / every)):
            try:
                data = sock.recv(65536)
                break
            except TimeoutError:
                if dribble:
                    sock.send(b"a")
        seconds = time.monotonic() - start
        sock.settimeout(30)
        status, _, body = read_response(sock, data)
        results.append((status, body, seconds))


def test_slow_bodies_get_408_and_do_not_stall_other_clients(server, tiny_texts):
    for _ in range(3):
        embed(server, tiny_texts[:2])
    baseline = []
    for i in range(10):
        t0 = time.perf_counter()
        embed(server, tiny_texts[i % 5:i % 5 + 2])
        baseline.append(time.perf_counter() - t0)
    slow: list = []
    dribblers = [threading.Thread(target=slow_client, args=(server, slow), daemon=True) for _ in range(4)]
    silent = threading.Thread(target=slow_client, args=(server, slow, False), daemon=True)  # sends no body
    for thread in [*dribblers, silent]:
        thread.start()
    time.sleep(0.3)
    during = []
    while any(thread.is_alive() for thread in dribblers) and len(during) < 500:
        t0 = time.perf_counter()
        embed(server, tiny_texts[len(during) % 5:len(during) % 5 + 2])
        during.append(time.perf_counter() - t0)
    for thread in [*dribblers, silent]:
        thread.join(30)
    assert len(slow) == 5
    for status, body, seconds in slow:
        assert status == 408, body
        assert_error(json.loads(body), "request_timeout")
        assert LIMITS.body_timeout_s - 0.2 < seconds < LIMITS.body_timeout_s + 3
    # The others' requests went on while the slow bodies were held for 3 s: none waited anywhere near that.
    assert len(during) >= 10 and max(during) < 1.0, max(during)
    assert sorted(during)[len(during) // 2] < 5 * sorted(baseline)[5] + 0.05


def test_a_client_gone_mid_body_leaves_nothing_behind(server):
    with connect(server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": "1000"}) + b'{"input": ["half')
    wait_for(lambda: server.service.pending == 0)
    assert len(embed(server, "next")["data"]) == 1


def test_a_client_gone_while_queued_is_withdrawn(tiny_embedder, monkeypatch):
    with start_server(tiny_embedder, limits=ServeLimits()) as running:
        model = BlockedModel(tiny_embedder, monkeypatch)
        first, first_out = in_background(embed, running, "a dog")
        assert model.busy.wait(10)
        body = json.dumps({"input": ["a cat", "a man", "a bird"]}).encode()
        with connect(running) as sock:
            sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": str(len(body))}) + body)
            wait_for(lambda: running.service.batcher.queued_texts == 3)
        # Gone: its texts leave the queue while the worker is still busy with the first request.
        wait_for(lambda: running.service.batcher.withdrawn == 1)
        assert running.service.batcher.queued_texts == 0 and not first_out
        wait_for(lambda: running.service.pending == 1)  # the first request's only
        model.release()
        first.join(30)
        assert len(first_out[0]["data"]) == 1
        assert len(embed(running, "after")["data"]) == 1
        status, _, health = exchange(running, "GET", "/health")
        assert status == 200 and health["withdrawn_requests"] == 1 and health["pending_requests"] == 0
        assert health["model_calls"] == 2  # the withdrawn request never reached the model


def test_a_client_that_never_reads_is_cut_off(tiny_embedder, monkeypatch):
    """Pipelined requests whose answers are never read: once the unread bytes fill the buffers, the next answer
    waits; after SEND_TIMEOUT_S the server drops that connection and its request slot, and serves the rest."""
    monkeypatch.setattr(guard_module, "SEND_TIMEOUT_S", 1.0)
    limits = ServeLimits(max_items=256, max_tokens=100_000, max_request_bytes=1 << 20)
    body = json.dumps({"input": [f"text number {i}" for i in range(256)]}).encode()  # ~300 KB of answer each
    request = head("POST", "/v1/embeddings", {"Content-Length": str(len(body))}) + body
    with start_server(tiny_embedder, limits=limits) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((running.host, running.port))
        try:
            sock.sendall(request * 40)
            start = time.monotonic()
            wait_for(lambda: running.service.batcher.model_calls >= 2)
            wait_for(lambda: running.service.pending == 0, seconds=20)  # cut off, not held for ever
            assert time.monotonic() - start < 15
            assert len(embed(running, "others are served")["data"]) == 1
        finally:
            sock.close()


# ---- 5. the API key -----------------------------------------------------------------------------------------
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_server(tiny_embedder):
    with start_server(tiny_embedder, limits=LIMITS, api_key=KEY) as running:
        yield running


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {KEY}", KEY, "Bearer", "",
                                           f"Bearer {KEY}x", f"Bearer {KEY[:-1]}"])
def test_without_the_right_key_401(keyed_server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in (("POST", "/v1/embeddings", b'{"input": "a dog"}'), ("GET", "/v1/models", b"")):
        status, got_headers, answer = exchange(keyed_server, method, path, body, headers)
        assert status == 401 and got_headers["www-authenticate"] == "Bearer"
        assert_error(answer, "invalid_api_key")
        assert KEY not in json.dumps(answer) and "wrong-key" not in json.dumps(answer)


def test_with_the_key_served_and_compared_in_constant_time(keyed_server, monkeypatch):
    calls = []
    compare = service_module.hmac.compare_digest
    monkeypatch.setattr(service_module.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or compare(a, b))
    for authorization in (f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} "):
        assert len(embed(keyed_server, "a dog", {"Authorization": authorization})["data"]) == 1
    assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)  # digests, never the key itself


def test_health_stays_open_and_does_not_show_the_key(keyed_server):
    status, _, body = exchange(keyed_server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["api_key_required"] is True
    assert KEY not in json.dumps(body)
    assert KEY.encode() not in repr(vars(keyed_server.service)).encode()  # only its digest is kept


def test_a_wrong_key_with_a_big_body_gets_the_401(keyed_server):
    with connect(keyed_server) as sock:
        sock.sendall(head("POST", "/v1/embeddings", {"Content-Length": str(len(EIGHT_MIB)), "Connection": "close"})
                     + EIGHT_MIB)
        status, _, raw = read_response(sock)
    assert status == 401
    assert_error(json.loads(raw), "invalid_api_key")


def test_openai_client_with_and_without_the_key(keyed_server):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    assert len(good.embeddings.create(model="m", input=["a", "b"]).data) == 2
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="m", input="a")


def test_an_empty_key_is_refused(tiny_embedder):
    with pytest.raises(ConfigError, match="API key"):
        serve_module.EmbeddingService(tiny_embedder, api_key=" ")


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--api-key", "k-flag"], {}, "k-flag"),
    ([], {"EMBEDTUNE_API_KEY": "k-env"}, "k-env"),
    (["--api-key", "k-flag"], {"EMBEDTUNE_API_KEY": "k-env"}, "k-flag"),
    ([], {"EMBEDTUNE_API_KEY": ""}, None),
    ([], {}, None),
])
def test_cli_serve_takes_the_key_from_the_flag_or_the_environment(monkeypatch, argv, env, expected):
    from embedtune import cli
    from embedtune.models import embedder as embedder_module

    monkeypatch.delenv("EMBEDTUNE_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = {}
    monkeypatch.setattr(embedder_module.Embedder, "from_config", classmethod(lambda cls, config, **kw: "embedder"))
    monkeypatch.setattr(serve_module, "serve", lambda embedder, **kwargs: seen.update(kwargs, embedder=embedder))
    argv = ["serve", "--model", "m", "--body-timeout", "2.5", "--max-request-bytes", "1000", "--max-queue", "7",
            *argv]
    assert cli.main(argv) == 0
    assert seen["api_key"] == expected and seen["embedder"] == "embedder" and seen["host"] == "127.0.0.1"
    limits = seen["limits"]
    assert (limits.body_timeout_s, limits.max_request_bytes, limits.max_queue) == (2.5, 1000, 7)


def test_cli_serve_refuses_a_bad_limit_before_loading(monkeypatch, capsys):
    from embedtune import cli
    from embedtune.models import embedder as embedder_module

    def no_load(cls, config, **kw):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(embedder_module.Embedder, "from_config", classmethod(no_load))
    assert cli.main(["serve", "--model", "m", "--body-timeout", "0"]) == 2
    assert "body_timeout_s" in capsys.readouterr().err


# ---- 6. nothing internal in any response --------------------------------------------------------------------
def test_an_internal_error_is_a_json_500_without_details(server, monkeypatch):
    def broken(texts):
        raise RuntimeError("boom in /secret/path/tokenizer.py line 3")

    monkeypatch.setattr(server.service, "tokenize", broken)
    status, _, body = exchange(server, "POST", "/v1/embeddings", b'{"input": "a dog"}')
    assert status == 500
    assert_error(body, "internal_error", kind="server_error")
    assert "boom" not in json.dumps(body)
    monkeypatch.undo()
    assert len(embed(server, "fine again")["data"]) == 1


def test_an_error_in_the_guard_is_a_json_500_too(server, monkeypatch):
    def broken(header):
        raise RuntimeError("boom in /secret/guard.py")

    monkeypatch.setattr(server.service, "authorize", broken)
    status, _, body = exchange(server, "POST", "/v1/embeddings", b'{"input": "a dog"}')
    assert status == 500
    assert_error(body, "internal_error", kind="server_error")
    monkeypatch.undo()
    assert len(embed(server, "fine again")["data"]) == 1


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/embeddings", 405), ("DELETE", "/health", 405), ("OPTIONS", "/v1/embeddings", 405),
    ("POST", "/nope", 404), ("GET", "/docs", 404), ("GET", "/openapi.json", 404), ("GET", "/../etc/passwd", 404),
])
def test_wrong_routes_and_methods_get_json_errors(server, method, path, status):
    got, _, body = exchange(server, method, path, b"{}" if method == "POST" else b"")
    assert got == status
    assert_error(body, f"http_{status}")


def test_validation_errors_are_turned_into_our_shape(tiny_embedder):
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request

    app = serve_module.build_app(serve_module.EmbeddingService(tiny_embedder, LIMITS)).app
    handler = app.exception_handlers[RequestValidationError]
    err = RequestValidationError([{"loc": ["body", "input"], "msg": "secret detail", "input": "/secret/x.py",
                                   "type": "missing"}])
    response = asyncio.run(handler(Request({"type": "http", "method": "POST", "path": "/", "headers": []}), err))
    body = json.loads(response.body)
    assert response.status_code == 400
    assert_error(body, "invalid_request")


def test_malformed_http_is_refused_without_details(server):
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert_no_internals(data.decode("latin-1"))


# ---- 7. loopback unless told ----------------------------------------------------------------------------------
def test_loopback_is_the_default_everywhere(server):
    from embedtune.cli import build_parser

    for fn in (serve_module.serve, serve_module.start_server, serve_module.RunningServer.__init__):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"
    assert server._sock.getsockname()[0] == "127.0.0.1"


def test_answers_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(server):
    """TCP_NODELAY on the accepted sockets: without it each answer's second write waited for the client's
    delayed ACK, ~40 ms a request on a kept-alive connection (a tiny model answers in a few ms)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/embeddings", body=b'{"input": "a man is playing a guitar"}')
            assert conn.getresponse().read()
            times.append(time.perf_counter() - t0)
        sockets = [c.transport.get_extra_info("socket") for c in server._server.server_state.connections]
        assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
        assert sorted(times)[7] < 0.03, times
    finally:
        conn.close()


# ---- 8. the abuse benchmark --------------------------------------------------------------------------------
def run_abuse(model_dir, tmp_path, seconds: float, warmup: float, baseline: float,
              timeout: float) -> tuple[dict, str]:
    out = tmp_path / "abuse.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_abuse", "--model", str(model_dir), "--clients", "64",
         "--seconds", str(seconds), "--warmup", str(warmup), "--baseline", str(baseline), "--max-request-bytes",
         "65536", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


WRONG_TYPE_CODES = {"invalid_input", "empty_input", "invalid_encoding_format", "invalid_model"}


def check_abuse(result: dict, stdout: str) -> None:
    kinds = result["kinds"]
    assert result["server_errors_5xx"] == 0 and result["crashed"] is False and result["server_log_errors"] == 0
    assert result["health_after"] == "ok"
    for name, kind in kinds.items():
        assert kind["sent"] > 0, name  # every kind was tried
        if kind["expected"] is None:  # the client left: no answer to expect
            continue
        assert kind["statuses"] == {str(kind["expected"]): kind["sent"]}, (name, kind)
    assert set(kinds) >= {"valid", "bad_json", "wrong_type", "oversize_body", "too_many_items", "too_many_tokens",
                          "slow_body", "disconnect", "wrong_api_key"}
    assert {kinds[k]["expected"] for k in ("oversize_body", "too_many_items", "too_many_tokens")} == {413}
    assert kinds["slow_body"]["expected"] == 408 and kinds["wrong_api_key"]["expected"] == 401
    for latency in (result["valid_latency_ms"], result["baseline"]["valid_latency_ms"]):
        assert latency["requests"] > 0 and 0 < latency["p50"] <= latency["p99"]
    assert result["baseline"]["unexpected"] == 0 and "baseline, 64 clients" in stdout
    rss = result["server_rss_mib"]
    assert rss["start"] > 0 and rss["end"] > 0 and rss["growth"] <= 0.10 and rss["peak_growth"] <= 0.10, rss
    assert result["goals_met"] is True
    codes = {name: set(kind["error_codes"]) for name, kind in kinds.items() if kind["error_codes"]}
    assert codes == {"bad_json": {"invalid_json"}, "wrong_type": WRONG_TYPE_CODES,
                     "oversize_body": {"request_too_large"}, "too_many_items": {"too_many_items"},
                     "too_many_tokens": {"too_many_tokens"}, "wrong_api_key": {"invalid_api_key"},
                     "unknown_route": {"http_404"}, "wrong_method": {"http_405"}}, codes
    assert result["clients_stuck"] == 0
    assert "| kind | sent | expected | statuses received | error codes |" in stdout and "goals: met" in stdout


def test_abuse_benchmark_short(tiny_model_dir, tmp_path):
    result, stdout = run_abuse(tiny_model_dir, tmp_path, seconds=5, warmup=5, baseline=2, timeout=300)
    check_abuse(result, stdout)
    assert result["args"]["clients"] == 64


@pytest.mark.slow
def test_abuse_benchmark_60_s(tiny_model_dir, tmp_path):
    result, stdout = run_abuse(tiny_model_dir, tmp_path, seconds=60, warmup=10, baseline=10, timeout=900)
    check_abuse(result, stdout)
