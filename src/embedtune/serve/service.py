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
from embedtune.serve.metrics import ServerMetrics
from embedtune.serve.parsing import EmbeddingCall, Served, read_request
from embedtune.serve.schema import Embedding, EmbeddingResponse, Health, HealthLimits, Usage

WARMUP_TEXTS = ("warm-up", "A short sentence to build the kernels before the first request.")


class EmbeddingService:
    """The model, its limits and its batcher: what the HTTP layer calls."""

    def __init__(self, embedder, limits: ServeLimits | None = None, model_id: str | None = None,
                 api_key: str | None = None):
        self.embedder = embedder
        self.limits = (limits or ServeLimits()).validate()
        self.model_id = model_id or display_name(str(embedder.name))
        self.dimensions = int(embedder.hidden_size)
        if self.limits.max_batch_tokens < embedder.max_length:
            raise ConfigError(f"serve: max_batch_tokens ({self.limits.max_batch_tokens}) must be at least the "
                              f"model's max_length ({embedder.max_length}): one text must fit one model call")
        self.served = served_model(embedder)
        self.metrics = ServerMetrics()
        self.batcher = Batcher(embedder, self.limits, self.metrics)
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

    def tokenize(self, texts: list[str], prompt_name: str | None = None) -> list[list[int]]:
        with self._tokenizer_lock:
            saved = self.embedder.prompt
            if prompt_name is not None:  # replaces the embedder's own prompt, as eval's --query-prompt does
                self.embedder.prompt = self.embedder.prompts[prompt_name]
            try:
                ids = self.embedder.tokenize(texts)
            finally:
                self.embedder.prompt = saved
        return self._within_token_limit(ids)

    def finish_ids(self, token_ids: list[list[int]], flat: bool) -> list[list[int]]:
        """Token ids a client sent, EOS appended as for text (the embedder's own path), each within the model's
        max_length (refused, not cut: the client chose these ids)."""
        ids = self.embedder.finish_ids(token_ids)
        for i, row in enumerate(ids):
            if len(row) > self.embedder.max_length:
                param = "input" if flat else f"input[{i}]"
                raise ApiError(400, f"{param} has {len(row)} token ids (EOS included); this model takes at most "
                                    f"{self.embedder.max_length} per input", param=param, code="input_too_long")
        return self._within_token_limit(ids)

    def _within_token_limit(self, ids: list[list[int]]) -> list[list[int]]:
        tokens = sum(map(len, ids))
        if tokens > self.limits.max_tokens:
            raise ApiError(413, f"request too large: 'input' has {tokens} tokens; this server takes at most "
                                f"{self.limits.max_tokens} per request", param="input", code="too_many_tokens")
        return ids

    def prepare(self, raw: bytes) -> tuple[list[list[int]], EmbeddingCall]:
        """Token ids and the checked request of a body (off the event loop: a 4 MiB body takes tens of
        milliseconds to parse)."""
        call = read_request(raw, self.limits, self.served)
        if call.texts is not None:
            return self.tokenize(call.texts, call.prompt_name), call
        return self.finish_ids(call.token_ids, flat=len(call.token_ids) == 1), call

    def response(self, vectors: np.ndarray, tokens: int, call: EmbeddingCall | str) -> bytes:
        encoding = call if isinstance(call, str) else call.encoding
        if not isinstance(call, str) and call.dimensions is not None:
            vectors = shortened(vectors, call.dimensions)
        # Through the declared types: pydantic writes floats ~5x faster than json.dumps (256 x 896: 34 ms, 174).
        data = [Embedding(index=index, embedding=_encoded(row, encoding)) for index, row in enumerate(vectors)]
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)  # OpenAI's: no completion, so total = prompt
        return EmbeddingResponse(data=data, model=self.model_id, usage=usage).model_dump_json().encode()

    def metrics_text(self) -> str:
        return self.metrics.render({
            "embedtune_queue_depth": ("texts waiting for the model", lambda: self.batcher.queued_texts),
            "embedtune_requests_in_progress": ("requests being read, checked, queued or answered",
                                               lambda: self.pending),
        })

    def health(self) -> Health:
        e, limits = self.embedder, self.limits
        return Health(status="ok" if self.batcher.alive else "error", model=self.model_id,
                      dimensions=self.dimensions, pooling=e.pooling, max_length=e.max_length,
                      queued_texts=self.batcher.queued_texts, model_calls=self.batcher.model_calls,
                      pending_requests=self.pending, withdrawn_requests=self.batcher.withdrawn,
                      api_key_required=self.requires_key,
                      limits=HealthLimits(max_batch_size=limits.max_batch_size, max_items=limits.max_items,
                                          max_tokens=limits.max_tokens, max_request_bytes=limits.max_request_bytes,
                                          dynamic_batching=limits.dynamic_batching,
                                          max_batch_tokens=limits.max_batch_tokens,
                                          batch_wait_ms=limits.batch_wait_ms),
                      matryoshka_dims=list(self.served.matryoshka_dims), prompt_names=list(self.served.prompt_names))


def served_model(embedder) -> Served:
    """What requests are checked against: the width, the Matryoshka dimensions (models/ records them for a model
    trained with Matryoshka; absent or None: not trained so), the vocabulary (the embedding matrix's rows: an id
    past them would fail inside the model) and the recorded prompts."""
    width = int(embedder.hidden_size)
    dims = tuple(sorted({int(d) for d in getattr(embedder, "matryoshka_dims", None) or () if 0 < int(d) < width}))
    try:
        vocab_size: int | None = int(embedder.model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, NotImplementedError):
        vocab_size = None
    return Served(width, dims, vocab_size, tuple(getattr(embedder, "prompts", None) or {}))


def shortened(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka: the first `dimensions` components, re-normalised to unit length."""
    head = vectors[:, :dimensions]
    return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # OpenAI's: the little-endian float32 bytes
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
    return row.tolist()
