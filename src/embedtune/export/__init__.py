"""Ship a trained embedder: a merged sentence-transformers folder, or the LoRA adapter alone.

Either export describes itself: embedtune_export.json records the embedder's resolved pooling, prompt and max
length, and `Embedder(folder)` (merged) or `Embedder(base, adapter=folder)` (adapter only) take them as
defaults; explicit options still override.

The merged folder is self-contained: `SentenceTransformer(folder)` and `Embedder(folder)` give embedtune's
vectors with no extra arguments. Everything embedtune does to a text before the model runs lives in the
exported tokenizer (tokenizer.json, see tokenizer_files.py), because sentence-transformers does none of it:

* EOS: a TemplateProcessing post-processor appends the EOS token once, after the special tokens the tokenizer
  already adds (BOS for Gemma/Llama). Truncation leaves room for it, as embedtune does.
* prompt: a `{}` template (or a plain prefix) becomes normalizers that prepend/append the prompt text to every
  input before it is split into tokens, which is exactly embedtune's `prompt.replace('{}', text)`. (One
  difference: the tokenizers library does not normalize an empty string, so "" gets no prompt there.)
* no chat template: sentence-transformers would render texts through one (its "message" modality), so the
  exported tokenizer has none.
* right padding: sentence-transformers passes no position ids, so left padding would shift the positions
  of short texts; with right padding and causal attention a text's vectors do not depend on its batch.

The sentence-transformers modules are written by hand (sentence_transformers_config.py), so exporting does
not need sentence-transformers installed. The export is checked before it is published (the saved tokenizer
must reproduce embedtune's token ids) and appears complete or not at all.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedtune.config import Config, ModelConfig
from embedtune.errors import ConfigError, StorageError
from embedtune.export.adapter_only import ADAPTER_FILES, ADAPTER_STEPS, adapter_files, write_adapter_only
from embedtune.export.card import discover_card_info, model_card
from embedtune.export.merged import MERGED_STEPS, write_merged
from embedtune.export.metadata import export_info
from embedtune.export.precision import EXPORT_DTYPES, check_dtype, export_dtype
from embedtune.export.sentence_transformers_config import check_prompts
from embedtune.export.servers import server_support
from embedtune.export.tokenizer_files import configure_tokenizer_files, verify_tokenizer
from embedtune.files import write_folder_atomically
from embedtune.models.export_format import EXPORT_INFO_FILE
from embedtune.models.lora import require_adapter
from embedtune.progress import progress_bar

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

__all__ = ["ADAPTER_FILES", "EXPORT_DTYPES", "EXPORT_INFO_FILE", "configure_tokenizer_files", "discover_card_info",
           "export", "export_model", "model_card", "verify_tokenizer"]
log = logging.getLogger(__name__)


def export_model(model: ModelConfig, out: str | Path, *, adapter_only: bool = False,
                 card_info: dict | None = None, dtype: str | None = None,
                 prompts: dict[str, str | None] | None = None, show_progress: bool = True,
                 format: str = "st") -> Path:
    """Write `out` and return it: merged sentence-transformers folder, or (adapter_only) the adapter files
    of `model.adapter` with the tokenizer and sentence-transformers files that load them.

    `card_info` feeds the model card: {"config": {...training config...}, "scores": eval result dict,
    "base_scores": eval result dict of the base model, "notes": str}. Missing entries are taken from the run
    the adapter came from (report.json and config.json, see card.py) and otherwise left out of the card.
    `dtype` (fp32, bf16, fp16; merged only): the saved weights' dtype; None: the run's precision (precision.py).
    `prompts`: {"query": ..., "document": ...} prefixes recorded for callers to pick by name.
    `format` "onnx" adds onnx/model.onnx to the merged folder (export/onnx.py), checked under ONNX Runtime.
    """
    out = _checked_target(out)
    _check_request(model, adapter_only, dtype)
    _check_format(format, adapter_only)
    named_prompts = check_prompts(prompts)
    info = {**discover_card_info(model.adapter), **(card_info or {}), "onnx": format == "onnx"}
    dtype, source = export_dtype(dtype, info)
    if not adapter_only:
        log.info("exporting the weights in %s (%s)", dtype, source)
    elif model.num_layers is not None:
        log.warning("num_layers=%d: embedtune cuts the base to those layers, but sentence-transformers loading this "
                    "adapter-only folder runs the whole base model (a merged export keeps the cut)", model.num_layers)
    steps = ADAPTER_STEPS if adapter_only else MERGED_STEPS
    with progress_bar(total=len(steps) + 1, desc="export", unit="step", disable=not show_progress) as bar:
        bar.set_postfix_str("loading and merging the model")
        embedder = _export_embedder(model)
        meta = export_info(embedder, model, merged=not adapter_only, dtype=dtype, prompts=named_prompts)
        card = model_card(meta, info)

        def step(name: str) -> None:
            bar.update()
            bar.set_postfix_str(name)

        def write(folder: Path) -> None:
            if adapter_only:
                write_adapter_only(folder, model.adapter, meta, card, embedder, named_prompts, step)
            else:
                write_merged(folder, embedder, meta, card, dtype=dtype, prompts=named_prompts, step=step)
            if format == "onnx":
                from embedtune.export.onnx import write_onnx

                write_onnx(folder, embedder)

        try:
            written = write_folder_atomically(out, write, "export")  # the folder appears complete or not at all
        except StorageError as err:
            raise StorageError(f"{err}; no export was made (nothing under {out})", err.errno, err.filename) from None
        bar.update()
        bar.set_postfix_str("done")
    if not adapter_only:
        for server, verdict in server_support(written).items():
            log.info("%s: %s", {"tei": "Text Embeddings Inference", "vllm": "vLLM"}[server], verdict)
    return written


def export(model: Any, adapter: str | None, out: str | Path, *, adapter_only: bool = False,
           card_info: dict | None = None, dtype: str | None = None, prompts: dict[str, str | None] | None = None,
           format: str = "st", **options: Any) -> Path:
    """A merged sentence-transformers folder (or adapter-only) that appends EOS by itself (the Python API's
    `embedtune.export`).

    `model` is a --model value or a ModelConfig; `adapter` (None: the ModelConfig's) and `options` (ModelConfig
    fields: pooling, prompt, max_length, trust_remote_code) are set on it.
    """
    config = Config()
    if isinstance(model, ModelConfig):
        config.model = dataclasses.replace(model)
    else:
        config.model.name = model
    given = {**options, **({"adapter": adapter} if adapter is not None else {})}
    config.update({"model": given} if given else {}, "export()")
    return export_model(config.validate().model, out, adapter_only=adapter_only, card_info=card_info, dtype=dtype,
                        prompts=prompts, format=format)


class _CallablePackage(types.ModuleType):
    """`embedtune.export(...)` is the API function above; but once this package is imported (training and
    evaluation import parts of it), Python binds the name `embedtune.export` to the package, so the package
    answers a call as the function does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage


def _checked_target(out: str | Path) -> Path:
    """The export folder; it must not exist yet, or be empty (an export never overwrites work)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export target exists and is not an empty folder: {out} (remove it or pick another)")
    return out


def _check_request(model: ModelConfig, adapter_only: bool, dtype: str | None) -> None:
    """Fail on a missing adapter, a bad prompt or dtype before the (slow) model load."""
    check_dtype(dtype)
    if adapter_only and not model.adapter:
        raise ConfigError("an adapter-only export needs --adapter")
    if adapter_only and dtype is not None:
        raise ConfigError("--dtype applies to a merged export; an adapter-only export copies the adapter as it is")
    if model.adapter:
        require_adapter(model.adapter)
    if adapter_only:
        adapter_files(model.adapter)
    if model.prompt is not None and model.prompt.count("{}") > 1:
        raise ConfigError(f"prompt may hold '{{}}' at most once, got {model.prompt!r}")


def _check_format(format: str, adapter_only: bool) -> None:
    """A known --format, one the export kind allows, and its extra installed: before the (slow) model load."""
    from embedtune.export.onnx import FORMATS

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "onnx":
        if adapter_only:
            raise ConfigError("--format onnx exports the merged model; it cannot go with --adapter-only")
        from embedtune.extras import require

        require("onnx", "--format onnx")


def _export_embedder(model: ModelConfig) -> Embedder:
    """The embedder being exported, in fp32 on the CPU (the weights are saved as they are), with a max length
    the model's positions allow: sentence-transformers caps it there, and embedtune must agree."""
    from embedtune.models.backend import Backend
    from embedtune.models.embedder import Embedder

    embedder = Embedder.from_config(model, backend=Backend.for_device("cpu", "fp32"))
    positions = getattr(embedder.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < embedder.max_length:
        log.warning("max_length %d exceeds the model's %d positions; exporting with %d", embedder.max_length,
                    positions, positions)
        embedder.max_length = positions
    return embedder
