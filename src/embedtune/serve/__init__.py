"""`embedtune serve`: an OpenAI-compatible embeddings server with dynamic batching.

    POST /v1/embeddings   {"input": str | [str, ...] | [int, ...] | [[int, ...], ...], "model": str,
                           "encoding_format": "float" | "base64", "dimensions": int, "prompt_name": str}
    GET  /health          liveness plus what is served
    GET  /v1/models       the one served model, OpenAI-style
    GET  /metrics         Prometheus text format: requests by status, latency, batch sizes, tokens, queue depth

A request passes, in order:
    guard.py     the hostile-client guard (raw ASGI): API key, body size and time, requests in progress
    app.py       the FastAPI routes and their JSON errors
    schema.py    the declared request and response types
    parsing.py   `read_request` checks a body against them and against the served model
    service.py   the model behind the routes: tokenizing, the API key, the response body
    batcher.py   one worker thread owns the model; concurrent requests share its forward passes
    metrics.py   counters and histograms in memory, written in Prometheus' text format on scrape
and server.py binds the socket and runs uvicorn (`serve`, `start_server`); limits.py and errors.py hold the
limits and the OpenAI-style error that every part uses.

The names below are loaded on first use, so that `from embedtune.serve import ServeLimits, serve` works without
the serve extra (fastapi, uvicorn) installed: `serve(...)` then stops with one line saying what to install.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "limits": ("API_KEY_ENV", "RETRY_AFTER", "ServeLimits"),
    "errors": ("ApiError", "INTERNAL_ERROR"),
    "schema": ("EmbeddingRequest", "EmbeddingResponse", "ErrorResponse", "Health", "ModelList"),
    "parsing": ("EmbeddingCall", "Served", "parse_request", "read_request"),
    "metrics": ("ServerMetrics",),
    "batcher": ("Batcher",),
    "service": ("EmbeddingService", "WARMUP_TEXTS"),
    "app": ("build_app",),
    "server": ("RunningServer", "require_serve_extra", "serve", "start_server"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)

def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # looked up once
    return value
