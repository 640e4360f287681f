"""Texts -> L2-normalised vectors, the paper's way for decoder LMs.

For `eos` pooling the tokenizer's EOS is appended to every text exactly once, whatever the tokenizer's own
`add_eos_token` setting does, and the embedding is the last hidden state at that EOS. Position ids come from
the attention mask, so left- and right-padded batches give the same vectors. Texts are never wrapped in a
chat template.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from embedtune.config import DEFAULT_MAX_LENGTH, POOLINGS, ModelConfig
from embedtune.errors import ConfigError, ModelError
from embedtune.models.backend import Backend
from embedtune.models.batching import length_sorted_batches, packed_rows, padding_aware_chunks, restore_order
from embedtune.models.export_format import saved_matryoshka_dims
from embedtune.models.fused import fuse_gemma
from embedtune.models.loading import (
    DEFAULT_MODEL,
    adapter_settings,
    check_adapter_weights,
    decoder_layers,
    keep_first_layers,
    load_base_model,
    load_tokenizer,
    resolve_model,
    saved_settings,
)
from embedtune.models.lora import load_adapter
from embedtune.models.packing import Packing, can_pack, pack, packed_attention
from embedtune.progress import progress_bar

log = logging.getLogger(__name__)
# Bidirectional encoders pool over all tokens; everything else is treated as a decoder LM (EOS pooling).
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "deberta", "deberta-v2", "electra", "camembert",
     "modernbert", "nomic_bert", "albert"}
)
EOS_CHECK_TEXTS = ("A man is playing a guitar.", "x", "The quick brown fox jumps over the lazy dog " * 3)
# The packing self-check: a short text placed after two different long texts in one packed row. Any attention
# across a text boundary changes its vector, whichever text it reaches into.
PACKING_CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog while the cat sits on the red chair in the house",
                       "A man is playing a guitar.",
                       "A woman is eating food at the table and a child reads a big old book in the park", "x")
PACKING_CHECK_GROUPS = ((0, 1), (2, 1, 3))  # indices into PACKING_CHECK_TEXTS: attention groups of the one row
# max |packed - reference| / max |reference| per text vector. Against the same text alone in a packed row (same
# attention function, dtype and row length) a correct model reproduces it: measured on the tiny test models
# 0 in bf16 and < 5e-7 in fp32, while a leak of a single token across a boundary moved vectors by > 0.25 (a whole-
# row causal leak by > 0.8). Against padded batches the model's own attention kernels round differently: < 6e-7
# in fp32, up to 1.3e-2 in bf16 on the tiny models and more on deep ones (cosines ~0.98 on real models), so in
# bf16 that comparison only guards against a broken layout (cosine > 0.95).
PACKING_CROSS_TEXT_TOLERANCE = {torch.float32: 1e-5}  # other dtypes: PACKING_LOW_PRECISION_TOLERANCE
PACKING_LOW_PRECISION_TOLERANCE = 5e-3
PACKING_PADDED_TOLERANCE_FP32 = 1e-3
PACKING_PADDED_MIN_COSINE = 0.95


def default_pooling(model_type: str) -> str:
    return "mean" if model_type in ENCODER_MODEL_TYPES else "eos"


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
        max_length: int | None = None,
        precision: str = "auto",
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        backend: Backend | None = None,
        quantize: str | None = None,
        allow_pickle: bool = False,
        num_layers: int | None = None,
    ):
        """`pooling`, `prompt`, `max_length` and `num_layers` left as None take the values saved in an exported
        folder (embedtune or sentence-transformers), else the model's defaults. `num_layers` keeps the first N
        decoder layers (models/loading.keep_first_layers). Pickled weights (model or adapter) are refused unless
        `allow_pickle` (models/loading.py)."""
        self.backend = backend or Backend.for_device(device, precision)
        self.device, self.dtype = self.backend.device, self.backend.dtype
        saved: dict = {}
        source = None
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ConfigError("an Embedder built from a model object needs its tokenizer")
            self.name = getattr(model.config, "_name_or_path", type(model).__name__)
            self.model = model
        else:
            source = resolve_model(model or DEFAULT_MODEL)
            self.name = source.name
            saved = saved_settings(source) | adapter_settings(adapter)
            tokenizer = tokenizer or load_tokenizer(source, trust_remote_code)
            # Loaded straight in the working dtype: an fp32 copy first would double the load-time peak.
            self.model = load_base_model(source, trust_remote_code, dtype=self.dtype, allow_pickle=allow_pickle)
        self.tokenizer = tokenizer
        num_layers = num_layers or saved.get("num_layers")
        if num_layers:  # before the adapter: an adapter trained on N layers has weights for those only
            keep_first_layers(self.model, num_layers, self.name)
        if adapter:
            check_adapter_weights(adapter, allow_pickle)
            self.model = _attach_adapter(self.model, adapter)
        self.model.to(self.device)
        self.pooling = pooling or saved.get("pooling") or default_pooling(self.model.config.model_type)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not '{self.pooling}'")
        self.prompt = prompt if prompt is not None else saved.get("prompt")
        # Query/document prompts recorded in an export (`serve`'s prompt_name applies them; eval takes its own).
        self.prompts: dict[str, str] = dict(saved.get("prompts") or {})
        self.max_length = max_length or saved.get("max_length") or DEFAULT_MAX_LENGTH
        if self.dtype != torch.float32:
            # Weights stored in bf16: half the memory traffic and no per-call weight casts under autocast.
            # Trainable LoRA weights added later stay fp32 (peft upcasts adapters).
            self.model.to(self.dtype)
        if self.backend.fuse_gemma:
            # Gemma's norms and GeGLU as fused ops (models/fused.py): faster inference, and about half the
            # activations saved for backward in training.
            fuse_gemma(self.model, compile_kernels=self.backend.compile_kernels)
        if quantize:
            self.model = _quantize_linear_layers(self.model, self.backend)
        self.pad_id = _pad_id(tokenizer)
        # The sizes it was trained to be truncated to (an adapter's record first, then the folder's); the server
        # allows `dimensions` requests by them. Training sets them on the embedder it trains.
        self.matryoshka_dims: tuple[int, ...] | None = saved_matryoshka_dims(adapter, self.hidden_size) or (
            saved_matryoshka_dims(source.location, self.hidden_size) if source is not None and source.is_local
            else None)
        # Set by distributed training to the model as DDP/FSDP wraps it: forwards that build a graph must go
        # through the wrapper (its gradient hooks); inference and no-grad passes use the plain model.
        self.training_module: torch.nn.Module | None = None
        self._packing_ok: bool | None = None
        config = self.model.config
        self.causal = self.pooling == "eos" and config.model_type not in ENCODER_MODEL_TYPES and not (
            getattr(config, "use_bidirectional_attention", False) or getattr(config, "is_encoder_decoder", False))
        if self.pooling == "eos":
            if tokenizer.eos_token_id is None:
                raise ModelError(f"{self.name}: tokenizer has no EOS token, which eos pooling needs")
            self.eos_id: int | None = int(tokenizer.eos_token_id)
            self.tokenizer_adds_eos = tokenizer("x", add_special_tokens=True)["input_ids"][-1] == self.eos_id
            self.check_eos()
        else:
            self.eos_id = None

    @classmethod
    def from_config(cls, config: ModelConfig, *, adapter: str | None = None, precision: str = "auto",
                    backend: Backend | None = None) -> Embedder:
        """The one way the library builds an Embedder from its config. `adapter` None takes the config's;
        "" means none (the base model of a run)."""
        if config.quantize and precision == "auto":
            precision = "fp32"  # int8 layers compute in fp32 around their int8 matmuls
        return cls(config.name, adapter=config.adapter if adapter is None else adapter, pooling=config.pooling,
                   prompt=config.prompt, max_length=config.max_length, trust_remote_code=config.trust_remote_code,
                   backend=backend or Backend.for_device(config.device, precision), quantize=config.quantize,
                   allow_pickle=config.allow_pickle, num_layers=config.num_layers)

    # ---- tokens -------------------------------------------------------------------------------------
    def apply_prompt(self, text: str) -> str:
        if not self.prompt:
            return text
        return self.prompt.replace("{}", text) if "{}" in self.prompt else self.prompt + text

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text; for eos pooling each list ends with exactly one EOS."""
        texts = [self.apply_prompt(t) for t in texts]
        # Room for the EOS we append, unless the tokenizer appends it itself (an exported one does).
        limit = self.max_length - 1 if self.eos_id is not None and not self.tokenizer_adds_eos else self.max_length
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        return self.finish_ids(ids)

    def finish_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids as the model takes them: for eos pooling each list ends with exactly one EOS (one already
        there is not doubled). The one path for the tokenizer's ids and for ids a caller sends (serving)."""
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
            # A leading BOS is no EOS, even where it is the same token (Phi-2-style tokenizers that prepend one).
            body = tokens[1:] if len(tokens) > 1 and tokens[0] == self.tokenizer.bos_token_id else tokens
            if tokens[-1] != self.eos_id or body.count(self.eos_id) != 1:
                raise ModelError(
                    f"{self.name}: encoded input does not end with exactly one EOS (id {self.eos_id}): {tokens[-5:]}"
                )

    # ---- vectors ------------------------------------------------------------------------------------
    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, L2-normalised fp32 embeddings of one padded batch (keeps the graph when grad is on)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        inputs = batch
        mask = batch["attention_mask"]
        if self.causal and bool((mask[:, :-1] >= mask[:, 1:]).all()):
            # Right padding in a causal model: real tokens never attend to the pads after them, so no mask is
            # needed, and without one SDPA takes its is_causal kernels instead of a materialised mask.
            inputs = {"input_ids": batch["input_ids"]}
        with self.backend.autocast():
            hidden = self.forward_module(**inputs).last_hidden_state
        return F.normalize(pool(hidden.float(), mask, self.pooling), dim=-1)

    def embed_tokens(self, ids: Sequence[Sequence[int]], max_tokens: int = 4096, packing: bool = True) -> torch.Tensor:
        """Vectors of token lists, in input order, with the graph when grad is on: the losses' one entry point.

        Packed rows of up to `max_tokens` real tokens where the model allows it (and `packing`), else padded
        chunks of similar lengths under the same token budget.
        """
        if packing and self.packable:
            return self._embed_packed(ids, max_tokens)
        return self._embed_padded(ids, max_tokens)

    def _embed_padded(self, ids: Sequence[Sequence[int]], max_tokens: int) -> torch.Tensor:
        chunks = padding_aware_chunks([len(x) for x in ids], max_tokens)
        vectors = torch.cat([self.embed_batch(self.pad([ids[i] for i in chunk])) for chunk in chunks])
        return vectors[restore_order(chunks)]

    def _embed_packed(self, ids: Sequence[Sequence[int]], max_tokens: int) -> torch.Tensor:
        """Texts as packed rows: no padding anywhere except inside attention (see models/packing.py)."""
        rows = packed_rows([len(x) for x in ids], max_tokens)
        vectors = [self._packed_row_vectors(pack(ids, groups, self.backend.row_multiple, self.pad_id))
                   for groups in rows]
        return torch.cat(vectors)[restore_order([[i for group in groups for i in group] for groups in rows])]

    def _packed_row_vectors(self, packing: Packing) -> torch.Tensor:
        """Pooled, L2-normalised fp32 vectors of one packed row's texts, in row order."""
        packing = packing.to(self.device)
        with self.backend.autocast(), packed_attention(self.model):
            hidden = self.forward_module(input_ids=packing.input_ids, position_ids=packing.position_ids,
                                         use_cache=False, packing=packing).last_hidden_state
        return F.normalize(hidden[0, packing.last_index].float(), dim=-1)

    @property
    def forward_module(self) -> torch.nn.Module:
        """The module a forward call goes through: the training wrapper when grad is on, else the model."""
        if self.training_module is not None and torch.is_grad_enabled():
            return self.training_module
        return self.model

    @property
    def packable(self) -> bool:
        """Whether packed rows may run: causal EOS pooling on a model whose attention function we can swap."""
        if self._packing_ok is None:
            self._packing_ok = self.causal and can_pack(self.model) and self._packing_matches_padding()
        return self._packing_ok

    def _packing_matches_padding(self) -> bool:
        """Packing relies on the model passing the layout down to attention; check once, fall back if not.

        A model whose forward swallows the `packing` keyword (`**kwargs`) and attends across the whole row runs
        without error, so the check compares vectors: a leak across text boundaries must show.
        """
        try:
            errors = self._packing_errors()
        except (ModelError, TypeError) as err:
            log.warning("%s: packed sequences unsupported (%s); using padded chunks", self.name, err)
            return False
        cross_limit = PACKING_CROSS_TEXT_TOLERANCE.get(self.dtype, PACKING_LOW_PRECISION_TOLERANCE)
        if errors["cross_text"] > cross_limit:
            log.warning("%s: packed rows let attention cross text boundaries (a text's vector moved by %.2g of its "
                        "scale next to other texts, limit %.0e): the model does not honour the packing layout; "
                        "using padded chunks", self.name, errors["cross_text"], cross_limit)
            return False
        padded_ok = (errors["padded"] <= PACKING_PADDED_TOLERANCE_FP32 if self.dtype == torch.float32
                     else errors["padded_cosine"] >= PACKING_PADDED_MIN_COSINE)
        if not padded_ok:
            log.warning("%s: packed and padded embeddings differ (max difference %.2g of scale, cosine %.4f); using "
                        "padded chunks", self.name, errors["padded"], errors["padded_cosine"])
        return padded_ok

    def _packing_errors(self) -> dict[str, float]:
        """How far packed vectors land from their references, as max |diff| / max |reference| over the texts.

        `cross_text`: one row holding the check texts (a short one after two different long ones) against each
        text alone in a packed row of the same length, where nothing precedes it to leak from. `padded` and
        `padded_cosine`: the texts alone in packed rows against a padded batch.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ids = self.tokenize(PACKING_CHECK_TEXTS)
                padded = self.embed_batch(self.pad(ids))
                row = pack(ids, PACKING_CHECK_GROUPS, self.backend.row_multiple, self.pad_id)
                together = self._packed_row_vectors(row)  # in row order: the texts of each group in turn
                width = row.input_ids.shape[1]  # alone rows padded to the same length: the same matmul shapes
                alone = torch.cat([self._packed_row_vectors(pack([x], [[0]], width, self.pad_id)) for x in ids])
        finally:
            self.model.train(was_training)

        def relative(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(((a - b).abs().amax(-1) / b.abs().amax(-1).clamp(min=1e-12)).max())

        order = [i for group in PACKING_CHECK_GROUPS for i in group]
        return {"cross_text": relative(together, alone[order]), "padded": relative(alone, padded),
                "padded_cosine": float((alone * padded).sum(-1).min())}

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int = 4096, show_progress: bool = False,
               desc: str = "encoding") -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in input order."""
        return self.encode_ids(self.tokenize(texts), batch_size, max_tokens, show_progress, desc)

    @torch.inference_mode()
    def encode_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 64, max_tokens: int = 4096,
                   show_progress: bool = False, desc: str = "encoding") -> np.ndarray:
        """Inference's one batcher (encode, evaluation, serving): length-sorted padded batches, no graph."""
        was_training = self.model.training
        self.model.eval()
        result = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        batches = length_sorted_batches([len(x) for x in ids], batch_size, max_tokens)
        # Count tokens, not texts: batches go longest first, so a per-text ETA would be far too pessimistic.
        try:
            with progress_bar(total=sum(map(len, ids)), unit="tok", unit_scale=True, desc=desc,
                              disable=not show_progress) as bar:
                for chunk in batches:
                    result[chunk] = self.embed_batch(self.pad([ids[i] for i in chunk])).cpu().numpy()
                    bar.update(sum(len(ids[i]) for i in chunk))
        finally:
            self.model.train(was_training)
        return result

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int | None:
        """Decoder layers the model runs (after num_layers dropped the rest); None where it has no layer list."""
        layers = decoder_layers(_unwrapped(self.model))
        return len(layers) if layers is not None else None


def truncate_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dimensions of each row, L2-normalised again (Matryoshka sizes; a prefix of a unit vector is
    not one). A dimension above the width is the caller's error to report; here it keeps every column."""
    cut = np.asarray(vectors, dtype=np.float32)[:, :dim]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def check_dims(dims: Sequence[int], width: int, what: str = "eval.dims") -> None:
    """A one-line ConfigError when a requested size is above the model's width (before any encoding)."""
    above = [d for d in dims if d > width]
    if above:
        raise ConfigError(f"{what}: {above[0]} is above the model's width {width}")


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


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer inside a peft wrapper (training), else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _attach_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    # Merged weights run as fast as the base model; the adapter is not trained further here.
    return load_adapter(model, adapter, trainable=False).merge_and_unload()


def _quantize_linear_layers(model: torch.nn.Module, backend: Backend) -> torch.nn.Module:
    """Dynamic int8 linear layers (weights int8, activations quantised per batch): where a CPU has no fast bf16
    this is its fastest inference path (docs/PERFORMANCE.md). Inference only: the layers have no gradients."""
    if backend.device.type != "cpu" or backend.dtype != torch.float32:
        raise ConfigError(f"--quantize int8 runs on CPU in fp32, not on {backend.name} (pass --precision fp32)")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for its quantised tensor types
        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
