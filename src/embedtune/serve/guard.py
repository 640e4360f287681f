"""The hostile-client guard: a raw ASGI middleware in front of the app, which reads every request body itself.

A wrong or missing API key (when one is set) gets 401, a body over `max_request_bytes` 413 and more requests in
progress than `max_pending_requests` 429, each answered before the body is read; then the rest of the body is
drained (bounded: DRAIN_BYTES, DRAIN_SECONDS) so that a client still sending receives the answer instead of a
connection reset. A body not complete within `body_timeout_s` gets 408, and a client that leaves its answers
unread for SEND_TIMEOUT_S is cut off. No third-party import: it speaks ASGI to whatever app it guards.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from embedtune.serve.errors import INTERNAL_ERROR, ApiError, body_too_large
from embedtune.serve.limits import RETRY_AFTER

if TYPE_CHECKING:
    from embedtune.serve.service import EmbeddingService

log = logging.getLogger(__name__)

DRAIN_BYTES = 64 * 1024 * 1024  # most of a refused request's body read and dropped after the answer
DRAIN_SECONDS = 5.0  # and for how long at most; past either the connection is closed as it stands
SEND_TIMEOUT_S = 30.0  # a client this long without reading what it was sent is cut off (it holds a request slot)


class SlowReader(Exception):
    """A client did not read its responses for SEND_TIMEOUT_S: its request is abandoned, its connection closed."""


class Guard:
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
        started, status, arrived = False, 499, time.perf_counter()  # 499: the client left before any answer

        async def send_tracked(message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            try:  # (a send waits only while the client leaves an earlier answer unread: pipelined requests)
                await asyncio.wait_for(send(message), SEND_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise SlowReader from None

        try:
            await self._handle(scope, receive, send_tracked)
        except SlowReader:
            # Returning with the response unfinished makes uvicorn close the connection (it logs that it did).
            log.warning("a client left its responses unread for %g s: connection closed", SEND_TIMEOUT_S)
        except Exception:
            # An error inside the app has been logged and answered by its handler (Starlette re-raises it
            # afterwards, for servers to log: logged once is enough); one before any answer gets the same 500.
            if not started:
                log.exception("unexpected error on %s", scope.get("path"))
                await _send_error(send_tracked, INTERNAL_ERROR)
        finally:  # counted once answered (a scrape does not see itself)
            self.service.metrics.observe_request(scope["path"], status, time.perf_counter() - arrived)

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
                raise body_too_large(self.limits)
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
                await self._refuse(receive, send, headers, body_too_large(self.limits))
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
