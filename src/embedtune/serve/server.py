"""Starting the server: the listening socket, uvicorn, and the two ways to run it (`serve` in the foreground
until interrupted, `start_server` on a background thread). The server binds 127.0.0.1 unless told otherwise.

fastapi and uvicorn come with the serve extra; this module imports them only when a server starts, after
`require_serve_extra` has said in one line what to install if they are missing.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import embedtune.extras as extras
from embedtune.errors import ConfigError
from embedtune.serve.limits import ServeLimits

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

def require_serve_extra() -> None:
    """Raise embedtune's one-line error naming the install command when the serve extra is missing."""
    extras.require("serve", "serving")


def _service_and_app(embedder, limits: ServeLimits | None, model_id: str | None, api_key: str | None):
    require_serve_extra()
    from embedtune.serve.app import build_app
    from embedtune.serve.service import EmbeddingService

    service = EmbeddingService(embedder, limits, model_id, api_key)
    return service, build_app(service)


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


def _uvicorn_server(app, log_level: str = "warning") -> uvicorn.Server:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_keep_alive=30,
                            server_header=False)
    return uvicorn.Server(config)


def serve(embedder, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          model_id: str | None = None, api_key: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM); with `api_key`, /v1/* want 'Authorization: Bearer <key>'."""
    service, app = _service_and_app(embedder, limits, model_id, api_key)
    sock = _bind(host, port)
    # uvicorn's own info lines (one per request) only with -v: our embedtune logger is at DEBUG then.
    server = _uvicorn_server(app, "info" if log.isEnabledFor(logging.DEBUG) else "warning")
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
        self.service, app = _service_and_app(embedder, limits, model_id, api_key)
        self._sock = _bind(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._server = _uvicorn_server(app)
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
