"""The FastAPI routes, behind the guard:

    POST /v1/embeddings   OpenAI's request (schema.EmbeddingRequest): texts or token ids, dimensions, prompt_name
    GET  /health          liveness plus what is served
    GET  /v1/models       the one served model, OpenAI-style
    GET  /metrics         Prometheus text format (metrics.py); like /v1/*, behind the API key when one is set

Every refusal and failure is an OpenAI-style JSON error (`schema.ErrorResponse`); none carries a stack trace or a
file path. The routes declare their types (`schema`) for the OpenAPI schema (`app.openapi()`); it is not served,
like the interactive docs (an endpoint fewer to expose).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from embedtune.serve.batcher import Batcher
from embedtune.serve.errors import INTERNAL_ERROR, ApiError, body_too_large
from embedtune.serve.guard import Guard, SlowReader
from embedtune.serve.metrics import CONTENT_TYPE
from embedtune.serve.schema import EmbeddingRequest, EmbeddingResponse, ErrorResponse, Health, ModelCard, ModelList
from embedtune.serve.service import EmbeddingService

log = logging.getLogger(__name__)

REFUSALS = {
    400: "the body is not JSON, or a field is wrong", 401: "a wrong or missing API key",
    408: "the body did not arrive in time", 413: "too many bytes, texts or tokens",
    429: "the server is busy: retry after Retry-After seconds", 500: "internal error",
    503: "the server is shutting down",
}
# The body is read as bytes and checked by `read_request` in a worker thread, not by FastAPI on the event loop
# (a 4 MiB body takes tens of milliseconds, and a refusal keeps its one-line message): declared here for the
# OpenAPI schema.
EMBEDDINGS_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": EmbeddingRequest.model_json_schema()}}}}


def build_app(service: EmbeddingService) -> Guard:
    """The ASGI app (the FastAPI app behind `Guard`); the caller starts and stops `service` (its batcher)."""
    app = FastAPI(title="embedtune", summary="OpenAI-compatible text embeddings", docs_url=None, redoc_url=None,
                  openapi_url=None)
    _add_error_handlers(app)

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "model worker died"}})
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> JSONResponse:
        return JSONResponse(ModelList(data=[ModelCard(id=service.model_id)]).model_dump())

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(service.metrics_text(), media_type=CONTENT_TYPE)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, openapi_extra=EMBEDDINGS_BODY,
              responses={status: {"model": ErrorResponse, "description": why} for status, why in REFUSALS.items()})
    async def embeddings(request: Request) -> Response:
        raw = await request.body()  # read by the guard, within the size cap and the body timeout
        if len(raw) > service.limits.max_request_bytes:  # (only without the guard in front)
            raise body_too_large(service.limits)
        ids, call = await run_in_threadpool(service.prepare, raw)
        vectors = await _result_unless_gone(service.batcher, service.batcher.submit(ids), request.receive)
        if vectors is None:
            return Response(status_code=499)  # the client went away: nothing is sent
        body = await run_in_threadpool(service.response, vectors, sum(map(len, ids)), call)
        return Response(body, media_type="application/json")

    return Guard(app, service)


def _add_error_handlers(app: FastAPI) -> None:
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
        if not isinstance(err, SlowReader):  # (answered by the guard; nothing can be sent to that client)
            log.exception("unexpected error on %s", request.url.path)
        return error_response(INTERNAL_ERROR)


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
