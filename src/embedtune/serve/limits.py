"""What the server takes: its limits and its settings. No third-party import (the CLI checks these before the
model loads, and before it is known whether the serve extra is installed)."""
from __future__ import annotations

from dataclasses import dataclass

from embedtune.errors import ConfigError

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
