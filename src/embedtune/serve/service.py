"""The model behind the HTTP layer: its limits, its batcher, the API key, and the request -> token ids ->
response steps that the app calls (off the event loop where they cost time)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import threading

import numpy as np

from embedtune.errors import ConfigError
from embedtune.models.loading import display_name
from embedtune.serve.batcher import Batcher
from embedtune.serve.errors import ApiError
from embedtune.serve.limits import ServeLimits
from embedtune.serve.schema import Embedding, EmbeddingResponse, Health, HealthLimits, Usage, parse_request

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
        # Through the declared types: pydantic writes floats ~5x faster than json.dumps (256 x 896: 34 ms, 174).
        data = [Embedding(index=index, embedding=_encoded(row, encoding)) for index, row in enumerate(vectors)]
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        return EmbeddingResponse(data=data, model=self.model_id, usage=usage).model_dump_json().encode()

    def health(self) -> Health:
        e, limits = self.embedder, self.limits
        return Health(status="ok" if self.batcher.alive else "error", model=self.model_id,
                      dimensions=self.dimensions, pooling=e.pooling, max_length=e.max_length,
                      queued_texts=self.batcher.queued_texts, model_calls=self.batcher.model_calls,
                      pending_requests=self.pending, withdrawn_requests=self.batcher.withdrawn,
                      api_key_required=self.requires_key,
                      limits=HealthLimits(max_batch_size=limits.max_batch_size, max_items=limits.max_items,
                                          max_tokens=limits.max_tokens, max_request_bytes=limits.max_request_bytes,
                                          dynamic_batching=limits.dynamic_batching))


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # OpenAI's: the little-endian float32 bytes
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
    return row.tolist()
