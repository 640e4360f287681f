"""How the server refuses: ApiError, which becomes an OpenAI-style JSON error body (its shape is declared in
`schema.ErrorResponse`), and the refusals that several parts of the server send. No third-party import."""
from __future__ import annotations

from embedtune.serve.limits import ServeLimits


class ApiError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


INTERNAL_ERROR = ApiError(500, "internal error", code="internal_error", kind="server_error")


def body_too_large(limits: ServeLimits) -> ApiError:
    return ApiError(413, f"request too large: the body exceeds {limits.max_request_bytes} bytes, the most this "
                         "server takes", code="request_too_large")
