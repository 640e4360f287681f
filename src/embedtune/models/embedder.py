"""Texts -> L2-normalised vectors, the paper's way for decoder LMs.

For `eos` pooling the tokenizer's EOS is appended to every text exactly once, whatever the tokenizer's own
`add_eos_token` setting does, and the embedding is the last hidden state at that EOS. Position ids come from
the attention mask, so left- and right-padded batches give the same vectors. Texts are never wrapped in a
chat template.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embedtune.errors import ConfigError, ModelError
from embedtune.models.fused import fuse_gemma
from embedtune.models.loading import DEFAULT_MODEL, load_base_model, load_tokenizer, resolve_model
from embedtune.models.packing import can_pack, pack, packed_attention

log = logging.getLogger(__name__)
POOLINGS = ("eos", "mean", "cls")
# Bidirectional encoders pool over all tokens; everything else is treated as a decoder LM (EOS pooling).
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "deberta", "deberta-v2", "electra", "camembert",
     "modernbert", "nomic_bert", "albert"}
)
EOS_CHECK_TEXTS = ("A man is playing a guitar.", "x", "The quick brown fox jumps over the lazy dog " * 3)
PACKED_ROW_MULTIPLE = 64  # packed rows are padded to a multiple of this many tokens (see models/packing.pack)


def default_pooling(model_type: str) -> str:
    return "mean" if model_type in ENCODER_MODEL_TYPES else "eos"


def cpu_runs_bf16_well() -> bool:
    """bf16 pays off on CPUs with AMX or AVX512-BF16; elsewhere it is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"precision must be auto, bf16 or fp32, not '{precision}'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_runs_bf16_well() else torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder:
    """A model plus the rules that turn texts into embedding vectors."""

    def __init__(
        self,
        model: str | torch.nn.Module | None = None,
        *,
        tokenizer=None,
        adapter: str | None = None,
        pooling: str | None = None,
        prompt: str | None = None,
        max_length: int = 512,
        precision: str = "auto",
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = resolve_precision(precision, self.device)
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ConfigError("an Embedder built from a model object needs its tokenizer")
            self.name = getattr(model.config, "_name_or_path", type(model).__name__)
            self.model = model
        else:
            source = resolve_model(model or DEFAULT_MODEL)
            self.name = source.name
            tokenizer = tokenizer or load_tokenizer(source, trust_remote_code)
            # Loaded straight in the working dtype: an fp32 copy first would double the load-time peak.
            self.model = load_base_model(source, trust_remote_code, dtype=self.dtype)
        self.tokenizer = tokenizer
        if adapter:
            self.model = _attach_adapter(self.model, adapter)
        self.model.to(self.device)
        self.pooling = pooling or default_pooling(self.model.config.model_type)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not '{self.pooling}'")
        self.prompt = prompt
        self.max_length = max_length
        if self.dtype != torch.float32:
            # Weights stored in bf16: half the memory traffic and no per-call weight casts under autocast.
            # Trainable LoRA weights added later stay fp32 (peft upcasts adapters).
            self.model.to(self.dtype)
        # Gemma's norms and GeGLU as fused ops with compiled kernels on CPU (models/fused.py): faster
        # inference, and about half the activations saved for backward in training.
        fuse_gemma(self.model)
        self.pad_id = _pad_id(tokenizer)
        self._packing_ok: bool | None = None
        config = self.model.config
        self.causal = self.pooling == "eos" and config.model_type not in ENCODER_MODEL_TYPES and not (
            getattr(config, "use_bidirectional_attention", False) or getattr(config, "is_encoder_decoder", False))
        if self.pooling == "eos":
            if tokenizer.eos_token_id is None:
                raise ModelError(f"{self.name}: tokenizer has no EOS token, which eos pooling needs")
            self.eos_id: int | None = int(tokenizer.eos_token_id)
            self.check_eos()
        else:
            self.eos_id = None

    # ---- tokens -------------------------------------------------------------------------------------
    def apply_prompt(self, text: str) -> str:
        if not self.prompt:
            return text
        return self.prompt.replace("{}", text) if "{}" in self.prompt else self.prompt + text

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text; for eos pooling each list ends with exactly one EOS."""
        texts = [self.apply_prompt(t) for t in texts]
        limit = self.max_length - 1 if self.eos_id is not None else self.max_length
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        if self.eos_id is None:
            return [list(x) for x in ids]
        return [_strip_trailing(x, self.eos_id) + [self.eos_id] for x in ids]

    def pad(self, ids: Sequence[Sequence[int]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad to a batch; position ids follow the mask, so padding side does not change the result."""
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            span = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.eos_id is not None:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return batch

    def check_eos(self) -> None:
        """Fail loudly at load time if encoded inputs do not end with exactly one EOS."""
        batch = self.pad(self.tokenize(EOS_CHECK_TEXTS))
        last = last_token_index(batch["attention_mask"])
        for row in range(len(EOS_CHECK_TEXTS)):
            tokens = batch["input_ids"][row, : last[row] + 1].tolist()
            if tokens[-1] != self.eos_id or tokens.count(self.eos_id) != 1:
                raise ModelError(
                    f"{self.name}: encoded input does not end with exactly one EOS (id {self.eos_id}): {tokens[-5:]}"
                )

    # ---- vectors ------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, L2-normalised fp32 embeddings of one padded batch (keeps the graph when grad is on)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        inputs = batch
        mask = batch["attention_mask"]
        if self.causal and bool((mask[:, :-1] >= mask[:, 1:]).all()):
            # Right padding in a causal model: real tokens never attend to the pads after them, so no mask is
            # needed, and without one SDPA takes its is_causal kernels instead of a materialised mask.
            inputs = {"input_ids": batch["input_ids"]}
        with self.autocast():
            hidden = self.model(**inputs).last_hidden_state
        return F.normalize(pool(hidden.float(), mask, self.pooling), dim=-1)

    def embed_ids(self, ids: Sequence[Sequence[int]], max_tokens: int = 4096, max_batch: int = 256) -> torch.Tensor:
        """Embed many token lists in length-sorted chunks (little padding); rows come back in input order."""
        chunks = padding_aware_chunks([len(x) for x in ids], max_tokens, max_batch=max_batch)
        vectors = torch.cat([self.embed_batch(self.pad([ids[i] for i in chunk])) for chunk in chunks])
        order = torch.tensor([i for chunk in chunks for i in chunk], device=vectors.device)
        return vectors[torch.argsort(order)]

    @property
    def packable(self) -> bool:
        """Whether embed_packed may run: causal EOS pooling on a model whose attention function we can swap."""
        if self._packing_ok is None:
            self._packing_ok = self.causal and can_pack(self.model) and self._packing_matches_padding()
        return self._packing_ok

    def embed_packed(self, ids: Sequence[Sequence[int]], max_tokens: int = 4096) -> torch.Tensor:
        """As embed_ids, but texts run as packed rows of up to max_tokens real tokens: no padding anywhere
        except inside attention (see models/packing.py). Causal EOS pooling only; check `packable` first."""
        rows = packed_rows([len(x) for x in ids], max_tokens)
        vectors = []
        for groups in rows:
            packing = pack(ids, groups, PACKED_ROW_MULTIPLE, self.pad_id).to(self.device)
            with self.autocast(), packed_attention(self.model):
                hidden = self.model(input_ids=packing.input_ids, position_ids=packing.position_ids,
                                    use_cache=False, packing=packing).last_hidden_state
            vectors.append(F.normalize(hidden[0, packing.last_index].float(), dim=-1))
        order = torch.tensor([i for groups in rows for group in groups for i in group], device=self.device)
        return torch.cat(vectors)[torch.argsort(order)]

    def _packing_matches_padding(self) -> bool:
        """Packing relies on the model passing keyword arguments down to attention; check once, fall back if not."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ids = self.tokenize(EOS_CHECK_TEXTS)
                padded = self.embed_batch(self.pad(ids))
                packed = self.embed_packed(ids)
            # bf16 rounding differs with the shapes (cosines ~0.98 on real models); a model that ignores the
            # layout lands far lower.
            agree = float((padded * packed).sum(-1).min()) > 0.95
        except (ModelError, TypeError) as err:
            log.warning("%s: packed sequences unsupported (%s); using padded chunks", self.name, err)
            return False
        finally:
            self.model.train(was_training)
        if not agree:
            log.warning("%s: packed and padded embeddings differ; using padded chunks", self.name)
        return agree

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        max_tokens: int = 4096,
        show_progress: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in input order."""
        was_training = self.model.training
        self.model.eval()
        ids = self.tokenize(texts)
        result = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        batches = length_sorted_batches([len(x) for x in ids], batch_size, max_tokens)
        # Count tokens, not texts: batches go longest first, so a per-text ETA would be far too pessimistic.
        with tqdm(total=sum(map(len, ids)), unit="tok", unit_scale=True, desc=desc, disable=not show_progress) as bar:
            for chunk in batches:
                result[chunk] = self.embed_batch(self.pad([ids[i] for i in chunk])).cpu().numpy()
                bar.update(sum(len(ids[i]) for i in chunk))
        self.model.train(was_training)
        return result

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "eos":
        return hidden[rows, last_token_index(mask)]
    if pooling == "cls":
        return hidden[rows, mask.argmax(-1)]  # first real token, whichever side the padding is on
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, for left or right padding alike."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask * positions).argmax(-1)


def length_sorted_batches(lengths: Sequence[int], max_batch: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that each batch pads little and stays under a token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_batch or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_aware_chunks(lengths: Sequence[int], max_tokens: int, overhead_tokens: int = 48,
                         max_batch: int = 256) -> list[list[int]]:
    """Split texts, sorted by length, into chunks that minimise padded tokens + a per-chunk overhead.

    A contrastive batch holds ~100-200 texts of very different lengths: one big chunk pads every text to the
    longest (2-3x the real tokens), many tiny ones pay per-call overhead. Exact dynamic programme over the
    sorted order; `overhead_tokens` is the cost of one more forward call, in token-equivalents.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of chunking the first j texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # chunk = sorted texts i..j-1, padded to sizes[i]
            if j - i > 1 and ((j - i) * sizes[i] > max_tokens or j - i > max_batch):
                break
            cost = best[i] + (j - i) * sizes[i] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def packed_rows(lengths: Sequence[int], max_tokens: int, group_tokens: int = 2048) -> list[list[list[int]]]:
    """Rows of attention groups: length-sorted texts grouped with little padding (attention pads within a
    group), groups gathered into rows of at most max_tokens real tokens (one forward call each)."""
    # A group costs ~15 small ops per layer and pass; padding inside attention is cheap. Measured at batch 32 on
    # Gemma-3-270M (paired steps): overhead 16 -> ~8 groups, 2.47 s/step; 256 -> 2-3 groups, 2.06 s/step.
    groups = padding_aware_chunks(lengths, min(group_tokens, max_tokens), overhead_tokens=256)
    rows: list[list[list[int]]] = []
    tokens = 0
    for group in groups:
        size = sum(lengths[i] for i in group)
        if not rows or tokens + size > max_tokens:
            rows.append([])
            tokens = 0
        rows[-1].append(group)
        tokens += size
    return rows


def _strip_trailing(ids: Sequence[int], token: int) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] == token:
        end -= 1
    return list(ids[:end])


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _attach_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    from pathlib import Path

    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"adapter not found (no adapter_config.json): {adapter}")
    # Merged weights run as fast as the base model; the adapter is not trained further here.
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
