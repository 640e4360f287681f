"""`embedtune serve`: an OpenAI-compatible embeddings server with dynamic batching.

    POST /v1/embeddings   {"input": str | [str, ...], "model": str, "encoding_format": "float" | "base64"}
    GET  /health          liveness plus what is served
    GET  /v1/models       the one served model, OpenAI-style

Requests are checked and tokenized on arrival, then queued. One worker thread owns the model: it takes every
request waiting in the queue (up to `max_batch_size` texts), runs them as one length-sorted batch, and hands
each request its rows. Concurrent clients therefore share model calls instead of waiting for each other's.
Bad requests get a 4xx JSON error in OpenAI's shape ({"error": {"message", "type", "param", "code"}}); no
response carries a stack trace or a file path. The server binds 127.0.0.1 unless told otherwise.

Hostile clients meet a raw ASGI guard in front of the app (`_Guard`), which reads every request body itself:
a wrong or missing API key (when one is set) gets 401, a body over `max_request_bytes` 413 and more requests
in progress than `max_pending_requests` 429, each answered before the body is read, then the rest of the body
is drained (bounded: DRAIN_BYTES, DRAIN_SECONDS) so that a client still sending receives the answer instead of
a connection reset; a body not complete within `body_timeout_s` gets 408. A full queue gets 429 with
Retry-After; a client that disconnects while queued has its texts withdrawn from the queue.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from embedtune.errors import ConfigError
from embedtune.models.loading import display_name

log = logging.getLogger(__name__)


API_KEY_ENV = "EMBEDTUNE_API_KEY"  # `embedtune serve` takes its --api-key from here when not given
RETRY_AFTER = {"Retry-After": "1"}  # seconds a client refused as too many (429) is asked to wait


@dataclass
class ServeLimits:
    max_batch_size: int = 64  # texts per model call: how far dynamic batching may merge requests
    max_items: int = 256  # texts in one request
    max_tokens: int = 8192  # tokens in one request (after truncation to max_length, EOS included)
    max_request_bytes: int = 4 * 1024 * 1024  # request body size
    max_queue: int = 4096  # texts waiting for the model; beyond this new requests get 429
    max_batch_tokens: int = 16384  # padded tokens per forward pass (a long request is split into several)
    batch_wait_ms: float = 0.0  # extra wait for company before a model call (0: take what is already queued)
    dynamic_batching: bool = True  # False: one request per model call (the baseline the benchmark compares)
    body_timeout_s: float = 10.0  # a request body not complete this long after its headers gets 408
    max_pending_requests: int = 256  # requests being read, checked, queued or answered; beyond this 429

    def validate(self) -> ServeLimits:
        for name in ("max_batch_size", "max_items", "max_tokens", "max_request_bytes", "max_queue",
                     "max_batch_tokens", "max_pending_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"serve: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not self.body_timeout_s > 0:
            raise ConfigError(f"serve: body_timeout_s must be > 0, got {self.body_timeout_s}")
        return self


class ApiError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- request checking --------------------------------------------------------------------------------------
def parse_request(raw: bytes, limits: ServeLimits, dimensions: int) -> tuple[list[str], str]:
    """Texts and encoding format of an embeddings request body, or an ApiError saying what is wrong."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # ValueError also covers integers past Python's 4300-digit limit
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    if "input" not in payload:
        raise ApiError(400, "'input' is required: a string or a list of strings", param="input",
                       code="missing_input")
    items = payload["input"]
    if isinstance(items, str):
        items = [items]
    elif not isinstance(items, list):
        raise ApiError(400, "'input' must be a string or a list of strings", param="input", code="invalid_input")
    if not items:
        raise ApiError(400, "'input' must not be empty", param="input", code="empty_input")
    if len(items) > limits.max_items:
        raise ApiError(413, f"request too large: 'input' has {len(items)} items; this server takes at most "
                            f"{limits.max_items}", param="input", code="too_many_items")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            token_ids = isinstance(item, (int, list)) and not isinstance(item, bool)
            what = "token ids are not accepted" if token_ids else f"got {_json_type(item)}"
            raise ApiError(400, f"input[{i}] must be a string ({what})", param=f"input[{i}]", code="invalid_input")
        if not item:
            raise ApiError(400, f"input[{i}] is an empty string", param=f"input[{i}]", code="empty_input")
        if not item.isascii() and _SURROGATE.search(item):  # the tokenizer would fail on it, with a 500
            raise ApiError(400, f"input[{i}] is not valid Unicode (a lone surrogate escape such as \\ud800)",
                           param=f"input[{i}]", code="invalid_input")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model", code="invalid_model")
    encoding = payload.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if not isinstance(encoding, str) or encoding not in ("float", "base64"):  # '', 0, false: no silent default
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format",
                       code="invalid_encoding_format")
    wanted = payload.get("dimensions")
    if wanted is not None and (isinstance(wanted, bool) or wanted != dimensions):
        raise ApiError(400, f"'dimensions' must be {dimensions} for this model (it does not shorten vectors)",
                       param="dimensions", code="invalid_dimensions")
    return items, encoding


_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON \\uXXXX escape can put one in a string


def _json_type(value: Any) -> str:
    return {dict: "an object", float: "a number", bool: "a boolean", type(None): "null"}.get(type(value), "a value")


# ---- dynamic batching --------------------------------------------------------------------------------------
@dataclass
class _Job:
    ids: list[list[int]]
    future: Future


class Batcher:
    """One worker thread owns the model; requests queue up and share its forward passes."""

    def __init__(self, embedder, limits: ServeLimits):
        self.embedder, self.limits = embedder, limits
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.model_calls = 0  # batches run (for /health and the benchmark)
        self.withdrawn = 0  # requests taken out of the queue because their client went away
        self._thread = threading.Thread(target=self._run, name="embedtune-batcher", daemon=True)

    def start(self) -> Batcher:
        self.embedder.model.eval()
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def submit(self, ids: list[list[int]]) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise ApiError(503, "server is shutting down", code="unavailable", kind="server_error",
                               headers={"Retry-After": "5"})
            if self._queued_texts and self._queued_texts + len(ids) > self.limits.max_queue:
                raise ApiError(429, f"server is busy: {self._queued_texts} texts are queued and the queue holds "
                                    f"{self.limits.max_queue}; retry shortly", code="overloaded",
                               kind="rate_limit_error", headers=dict(RETRY_AFTER))
            self._queue.append(_Job(ids, future))
            self._queued_texts += len(ids)
            self._cond.notify()
        return future

    def withdraw(self, future: Future) -> None:
        """Take a submitted request back (its client went away): out of the queue if still there, and its
        future cancelled, so that the worker skips it."""
        with self._cond:
            for i, job in enumerate(self._queue):
                if job.future is future:
                    del self._queue[i]
                    self._queued_texts -= len(job.ids)
                    self.withdrawn += 1
                    break
        future.cancel()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._queue:
                return None
            jobs = [self._queue.popleft()]
            if self.limits.dynamic_batching:
                size = len(jobs[0].ids)
                deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
                while size < self.limits.max_batch_size:
                    if self._queue:
                        if size + len(self._queue[0].ids) > self.limits.max_batch_size:
                            break
                        job = self._queue.popleft()
                        jobs.append(job)
                        size += len(job.ids)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping:
                        break
                    self._cond.wait(left)
            self._queued_texts -= sum(len(job.ids) for job in jobs)
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                ids = [seq for job in jobs for seq in job.ids]
                # The same batcher as `encode` and evaluation: length-sorted padded batches.
                vectors = self.embedder.encode_ids(ids, batch_size=self.limits.max_batch_size,
                                                   max_tokens=self.limits.max_batch_tokens)
                self.model_calls += 1
            except BaseException as err:  # the worker must survive anything one batch does
                log.exception("embedding batch of %d texts failed", sum(len(j.ids) for j in jobs))
                for job in jobs:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(vectors[start:start + len(job.ids)])
                start += len(job.ids)


# ---- the app -----------------------------------------------------------------------------------------------
WARMUP_TEXTS = ("warm-up", "A short sentence to build the kernels before the first request.")


class EmbeddingService:
    """The model, its limits and its batcher: what the HTTP layer calls."""

    def __init__(self, embedder, limits: ServeLimits | None = None, model_id: str | None = None,
                 api_key: str | None = None):
        self.embedder = embedder
        self.limits = (limits or ServeLimits()).validate()
        self.model_id = model_id or display_name(str(embedder.name))
        self.dimensions = int(embedder.hidden_size)
        self.batcher = Batcher(embedder, self.limits)
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        if api_key is not None and not api_key.strip():
            raise ConfigError("serve: the API key must not be empty")
        # Only the key's digest is kept: nothing the server holds or answers can show the key itself.
        self._key_digest = None if api_key is None else hashlib.sha256(api_key.encode()).digest()
        self.pending = 0  # requests in progress, /health excepted (the guard counts them, on the event loop)

    def start(self) -> EmbeddingService:
        # One encode before the first client: the compiled kernels (models/kernels.py) and the first matmul
        # kernels are built now, not inside a client's request (18 s on a machine whose compile cache is cold).
        self.embedder.encode(list(WARMUP_TEXTS))
        self.batcher.start()
        return self

    def stop(self) -> None:
        self.batcher.stop()

    @property
    def requires_key(self) -> bool:
        return self._key_digest is not None

    def authorize(self, header: bytes | None) -> None:
        """Raise 401 unless `header` (the Authorization header's raw value) is 'Bearer <the key>'; the key is
        compared in constant time (of digests, so that its length does not show either)."""
        if self._key_digest is None:
            return
        scheme, _, token = (header or b"").strip().partition(b" ")
        right = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._key_digest)
        if right and scheme.lower() == b"bearer":
            return
        message = ("incorrect API key provided" if header else
                   "missing API key: send it as the header 'Authorization: Bearer <key>'")
        raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            ids = self.embedder.tokenize(texts)
        tokens = sum(map(len, ids))
        if tokens > self.limits.max_tokens:
            raise ApiError(413, f"request too large: 'input' has {tokens} tokens; this server takes at most "
                                f"{self.limits.max_tokens} per request", param="input", code="too_many_tokens")
        return ids

    def prepare(self, raw: bytes) -> tuple[list[list[int]], str]:
        """Token ids and encoding format of a request body, checked (off the event loop: a 4 MiB body takes
        tens of milliseconds to parse)."""
        texts, encoding = parse_request(raw, self.limits, self.dimensions)
        return self.tokenize(texts), encoding

    def response(self, vectors: np.ndarray, tokens: int, encoding: str) -> bytes:
        data = []
        for index, row in enumerate(vectors):
            if encoding == "base64":
                embedding: Any = base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
            else:
                embedding = row.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {"object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return json.dumps(body, separators=(",", ":")).encode()

    def health(self) -> dict:
        e = self.embedder
        return {"status": "ok" if self.batcher.alive else "error", "model": self.model_id,
                "dimensions": self.dimensions, "pooling": e.pooling, "max_length": e.max_length,
                "queued_texts": self.batcher.queued_texts, "model_calls": self.batcher.model_calls,
                "pending_requests": self.pending, "withdrawn_requests": self.batcher.withdrawn,
                "api_key_required": self.requires_key,
                "limits": {"max_batch_size": self.limits.max_batch_size, "max_items": self.limits.max_items,
                           "max_tokens": self.limits.max_tokens, "max_request_bytes": self.limits.max_request_bytes,
                           "dynamic_batching": self.limits.dynamic_batching}}


def build_app(service: EmbeddingService):
    """The ASGI app (the FastAPI app behind `_Guard`); the caller starts and stops `service` (its batcher)."""
    app = FastAPI(title="embedtune", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        messages = {404: "no such endpoint (try POST /v1/embeddings or GET /health)", 405: "method not allowed"}
        message = messages.get(err.status_code, "request refused")
        return JSONResponse(ApiError(err.status_code, message, code=f"http_{err.status_code}").body(),
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, "invalid request", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        if not isinstance(err, _SlowReader):  # (answered by the guard; nothing can be sent to that client)
            log.exception("unexpected error on %s", request.url.path)
        return error_response(INTERNAL_ERROR)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": service.model_id, "object": "model", "created": 0, "owned_by": "embedtune"}]})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        raw = await request.body()  # read by the guard, within the size cap and the body timeout
        if len(raw) > service.limits.max_request_bytes:  # (only without the guard in front)
            raise _body_too_large(service.limits)
        ids, encoding = await run_in_threadpool(service.prepare, raw)
        vectors = await _result_unless_gone(service.batcher, service.batcher.submit(ids), request.receive)
        if vectors is None:
            return Response(status_code=499)  # the client went away: nothing is sent
        body = await run_in_threadpool(service.response, vectors, sum(map(len, ids)), encoding)
        return Response(body, media_type="application/json")

    return _Guard(app, service)


INTERNAL_ERROR = ApiError(500, "internal error", code="internal_error", kind="server_error")


def _body_too_large(limits: ServeLimits) -> ApiError:
    return ApiError(413, f"request too large: the body exceeds {limits.max_request_bytes} bytes, the most this "
                         "server takes", code="request_too_large")


async def _result_unless_gone(batcher: Batcher, future: Future, receive) -> np.ndarray | None:
    """The batcher's rows for a submitted request, or None when its client disconnects first (the request is
    then withdrawn from the queue, or its result dropped if the model is already at it)."""
    result = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():  # the client is gone (or the server stopping): free its place in the queue
            batcher.withdraw(future)
            result.cancel()
    return result.result() if result in done else None


async def _disconnected(receive) -> None:
    """Returns when the client disconnects (the request body has been read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # never spin on a server that keeps answering


# ---- the guard in front of the app -------------------------------------------------------------------------
DRAIN_BYTES = 64 * 1024 * 1024  # most of a refused request's body read and dropped after the answer
DRAIN_SECONDS = 5.0  # and for how long at most; past either the connection is closed as it stands
SEND_TIMEOUT_S = 30.0  # a client this long without reading what it was sent is cut off (it holds a request slot)


class _SlowReader(Exception):
    """A client did not read its responses for SEND_TIMEOUT_S: its request is abandoned, its connection closed."""


class _Guard:
    """Raw ASGI middleware: reads each request body itself, so that what a client does to the connection
    (oversize or endless bodies, slow bodies, floods, no key) is answered before the app sees anything.

    An early refusal (401, 413, 429) is sent at once with `Connection: close`, and the rest of the body is then
    read and dropped (at most DRAIN_BYTES, DRAIN_SECONDS) before the connection closes: closing a socket with
    unread data resets it, and a client still sending its body would get the reset instead of the answer."""

    def __init__(self, app, service: EmbeddingService):
        self.app, self.service, self.limits = app, service, service.limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            try:  # (a send waits only while the client leaves an earlier answer unread: pipelined requests)
                await asyncio.wait_for(send(message), SEND_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise _SlowReader from None

        try:
            await self._handle(scope, receive, send_tracked)
        except _SlowReader:
            # Returning with the response unfinished makes uvicorn close the connection (it logs that it did).
            log.warning("a client left its responses unread for %g s: connection closed", SEND_TIMEOUT_S)
        except Exception:
            # An error inside the app has been logged and answered by its handler (Starlette re-raises it
            # afterwards, for servers to log: logged once is enough); one before any answer gets the same 500.
            if not started:
                log.exception("unexpected error on %s", scope.get("path"))
                await _send_error(send_tracked, INTERNAL_ERROR)

    async def _handle(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or ())  # lower-case names (ASGI); the last of a repeated one
        counted = scope["path"] != "/health"
        try:
            if counted:
                self.service.authorize(headers.get(b"authorization"))
            declared = headers.get(b"content-length")
            if declared is not None and not declared.isdigit():
                raise ApiError(400, "invalid Content-Length header", code="invalid_request")
            if declared is not None and int(declared) > self.limits.max_request_bytes:
                raise _body_too_large(self.limits)
            if counted and self.service.pending >= self.limits.max_pending_requests:
                raise ApiError(429, f"server is busy: {self.service.pending} requests are in progress, the most "
                                    "it takes at once; retry shortly", code="overloaded", kind="rate_limit_error",
                               headers=dict(RETRY_AFTER))
        except ApiError as err:
            await self._refuse(receive, send, headers, err)
            return
        self.service.pending += counted
        try:
            body = await self._read_body(receive)
            if body == "disconnect":
                return
            if body == "timeout":
                await _send_error(send, ApiError(408, f"request body not complete within "
                                                      f"{self.limits.body_timeout_s:g} s", code="request_timeout"),
                                  close=True)
                return
            if body == "too_large":
                await self._refuse(receive, send, headers, _body_too_large(self.limits))
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.service.pending -= counted

    async def _read_body(self, receive) -> bytes | str:
        """The whole request body, or why not: 'disconnect', 'timeout' (body_timeout_s) or 'too_large'."""
        chunks, size = [], 0

        async def read() -> str | None:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return "disconnect"
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limits.max_request_bytes:
                    return "too_large"
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return None

        try:
            why = await asyncio.wait_for(read(), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            why = "timeout"
        return why or b"".join(chunks)

    async def _refuse(self, receive, send, headers: dict, err: ApiError) -> None:
        """Answer `err` now, then drain what is left of the body (not for a client that waits for
        '100 Continue' before sending it: refused, it sends nothing)."""
        drain = b"100-continue" not in headers.get(b"expect", b"").lower()
        await _send_error(send, err, close=True, before_end=(lambda: _drain(receive)) if drain else None)


async def _drain(receive) -> None:
    async def discard() -> None:
        left = DRAIN_BYTES
        while left > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            left -= len(message.get("body", b""))

    try:
        await asyncio.wait_for(discard(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


async def _send_error(send, err: ApiError, close: bool = False, before_end=None) -> None:
    """`err` as a JSON response sent from the guard; `before_end()` is awaited after the body is sent and
    before the response ends (the client has the whole answer by then: it carries its length)."""
    body = json.dumps(err.body(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (err.headers or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    if before_end is None:
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await before_end()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---- running it --------------------------------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose proto
    # says TCP, and with it on, each answer on a kept-alive connection waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_server(app, log_level: str = "warning"):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_keep_alive=30,
                            server_header=False)
    return uvicorn.Server(config)


def serve(embedder, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          model_id: str | None = None, api_key: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM); with `api_key`, /v1/* want 'Authorization: Bearer <key>'."""
    service = EmbeddingService(embedder, limits, model_id, api_key)
    sock = _bind(host, port)
    # uvicorn's own info lines (one per request) only with -v: our embedtune logger is at DEBUG then.
    server = _uvicorn_server(build_app(service), "info" if log.isEnabledFor(logging.DEBUG) else "warning")
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {service.model_id} ({service.dimensions} dims) on http://{shown}:{sock.getsockname()[1]}"
          f"  POST /v1/embeddings, GET /health", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines, %s", host,
                    "over plain HTTP (the API key travels unencrypted)" if api_key else
                    "and the server has no authentication (see --api-key)")
    service.start()
    try:
        server.run(sockets=[sock])
    finally:
        service.stop()
        sock.close()


class RunningServer:
    """A server on a background thread (tests, benchmarks, notebooks); use as a context manager."""

    def __init__(self, embedder, host: str = "127.0.0.1", port: int = 0, limits: ServeLimits | None = None,
                 model_id: str | None = None, api_key: str | None = None):
        self.service = EmbeddingService(embedder, limits, model_id, api_key)
        self._sock = _bind(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._server = _uvicorn_server(build_app(self.service))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="embedtune-http", daemon=True)

    def start(self, timeout: float = 30.0) -> RunningServer:
        if self._thread.is_alive() or self._server.started:
            return self  # already running (start_server() results are also context managers)
        self.service.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("embedding server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.service.stop()
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(embedder, host: str = "127.0.0.1", port: int = 0, limits: ServeLimits | None = None,
                 model_id: str | None = None, api_key: str | None = None) -> RunningServer:
    """Start a server on a background thread and return it (port 0: a free port; see `.url`)."""
    return RunningServer(embedder, host, port, limits, model_id, api_key).start()
