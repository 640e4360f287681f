"""`embedtune serve`: an OpenAI-compatible embeddings server with dynamic batching.

    POST /v1/embeddings   {"input": str | [str, ...], "model": str, "encoding_format": "float" | "base64"}
    GET  /health          liveness plus what is served
    GET  /v1/models       the one served model, OpenAI-style

Requests are checked and tokenized on arrival, then queued. One worker thread owns the model: it takes every
request waiting in the queue (up to `max_batch_size` texts), runs them as one length-sorted batch, and hands
each request its rows. Concurrent clients therefore share model calls instead of waiting for each other's.
Bad requests get a 4xx JSON error in OpenAI's shape ({"error": {"message", "type", "param", "code"}}); no
response carries a stack trace or a file path. The server binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
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


@dataclass
class ServeLimits:
    max_batch_size: int = 64  # texts per model call: how far dynamic batching may merge requests
    max_items: int = 256  # texts in one request
    max_tokens: int = 8192  # tokens in one request (after truncation to max_length, EOS included)
    max_request_bytes: int = 4 * 1024 * 1024  # request body size
    max_queue: int = 4096  # texts waiting for the model; beyond this new requests get 503
    max_batch_tokens: int = 16384  # padded tokens per forward pass (a long request is split into several)
    batch_wait_ms: float = 0.0  # extra wait for company before a model call (0: take what is already queued)
    dynamic_batching: bool = True  # False: one request per model call (the baseline the benchmark compares)

    def validate(self) -> ServeLimits:
        for name in ("max_batch_size", "max_items", "max_tokens", "max_request_bytes", "max_queue",
                     "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"serve: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        return self


class ApiError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---- request checking --------------------------------------------------------------------------------------
def parse_request(raw: bytes, limits: ServeLimits, dimensions: int) -> tuple[list[str], str]:
    """Texts and encoding format of an embeddings request body, or an ApiError saying what is wrong."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
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
        raise ApiError(400, f"'input' has {len(items)} items; this server takes at most {limits.max_items}",
                       param="input", code="too_many_items")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            what = "token ids are not accepted" if isinstance(item, (int, list)) else f"got {_json_type(item)}"
            raise ApiError(400, f"input[{i}] must be a string ({what})", param=f"input[{i}]", code="invalid_input")
        if not item:
            raise ApiError(400, f"input[{i}] is an empty string", param=f"input[{i}]", code="empty_input")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model", code="invalid_model")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format",
                       code="invalid_encoding_format")
    wanted = payload.get("dimensions")
    if wanted is not None and (isinstance(wanted, bool) or wanted != dimensions):
        raise ApiError(400, f"'dimensions' must be {dimensions} for this model (it does not shorten vectors)",
                       param="dimensions", code="invalid_dimensions")
    return items, encoding


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
                raise ApiError(503, "server is shutting down", code="unavailable", kind="server_error")
            if self._queued_texts and self._queued_texts + len(ids) > self.limits.max_queue:
                raise ApiError(503, "server is busy; retry shortly", code="overloaded", kind="server_error")
            self._queue.append(_Job(ids, future))
            self._queued_texts += len(ids)
            self._cond.notify()
        return future

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

    def __init__(self, embedder, limits: ServeLimits | None = None, model_id: str | None = None):
        self.embedder = embedder
        self.limits = (limits or ServeLimits()).validate()
        self.model_id = model_id or display_name(str(embedder.name))
        self.dimensions = int(embedder.hidden_size)
        self.batcher = Batcher(embedder, self.limits)
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()

    def start(self) -> EmbeddingService:
        # One encode before the first client: the compiled kernels (models/kernels.py) and the first matmul
        # kernels are built now, not inside a client's request (18 s on a machine whose compile cache is cold).
        self.embedder.encode(list(WARMUP_TEXTS))
        self.batcher.start()
        return self

    def stop(self) -> None:
        self.batcher.stop()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            ids = self.embedder.tokenize(texts)
        tokens = sum(map(len, ids))
        if tokens > self.limits.max_tokens:
            raise ApiError(400, f"'input' has {tokens} tokens; this server takes at most {self.limits.max_tokens} "
                                "per request", param="input", code="too_many_tokens")
        return ids

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
                "limits": {"max_batch_size": self.limits.max_batch_size, "max_items": self.limits.max_items,
                           "max_tokens": self.limits.max_tokens, "dynamic_batching": self.limits.dynamic_batching}}


def build_app(service: EmbeddingService):
    """The FastAPI app; the caller starts and stops `service` (its batcher thread)."""
    app = FastAPI(title="embedtune", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

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
        log.exception("unexpected error on %s", request.url.path)
        return error_response(ApiError(500, "internal error", code="internal_error", kind="server_error"))

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
        raw = await _read_body(request, service.limits.max_request_bytes)
        texts, encoding = parse_request(raw, service.limits, service.dimensions)
        ids = await run_in_threadpool(service.tokenize, texts)
        vectors = await asyncio.wrap_future(service.batcher.submit(ids))
        body = await run_in_threadpool(service.response, vectors, sum(map(len, ids)), encoding)
        return Response(body, media_type="application/json")

    return app


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "invalid Content-Length header", code="invalid_request") from None
        if too_big:
            raise ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


# ---- running it --------------------------------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
          model_id: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    service = EmbeddingService(embedder, limits, model_id)
    sock = _bind(host, port)
    # uvicorn's own info lines (one per request) only with -v: our embedtune logger is at DEBUG then.
    server = _uvicorn_server(build_app(service), "info" if log.isEnabledFor(logging.DEBUG) else "warning")
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {service.model_id} ({service.dimensions} dims) on http://{shown}:{sock.getsockname()[1]}"
          f"  POST /v1/embeddings, GET /health", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines, and the server has no authentication", host)
    service.start()
    try:
        server.run(sockets=[sock])
    finally:
        service.stop()
        sock.close()


class RunningServer:
    """A server on a background thread (tests, benchmarks, notebooks); use as a context manager."""

    def __init__(self, embedder, host: str = "127.0.0.1", port: int = 0, limits: ServeLimits | None = None,
                 model_id: str | None = None):
        self.service = EmbeddingService(embedder, limits, model_id)
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
                 model_id: str | None = None) -> RunningServer:
    """Start a server on a background thread and return it (port 0: a free port; see `.url`)."""
    return RunningServer(embedder, host, port, limits, model_id).start()
