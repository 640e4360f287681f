"""embedtune_export.json: what an export is and the settings it was made with, so that it can be loaded back.

The settings recorded are the embedder's resolved ones (pooling, prompt, max length as the export used them,
never the raw options, which may be None): `Embedder(folder)` and `Embedder(base, adapter=folder)` read them
back as defaults (embedtune.models.loading.saved_settings / adapter_settings).
"""
from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedtune.config import ModelConfig
from embedtune.models.loading import EXPORT_INFO_FILE, MERGED_FORMAT

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

ADAPTER_FORMAT = "peft-lora-adapter"


def export_info(embedder: Embedder, model: ModelConfig, *, merged: bool) -> dict[str, Any]:
    """The metadata of one export, from the embedder that was exported (its settings are the resolved ones)."""
    return {
        "format": MERGED_FORMAT if merged else ADAPTER_FORMAT,
        "base_model": model.name,
        "adapter": str(model.adapter) if model.adapter else None,
        "pooling": embedder.pooling,
        "prompt": embedder.prompt or "",
        "max_length": embedder.max_length,
        "num_layers": embedder.num_layers,  # the decoder layers it runs: an adapter needs its base cut to them
        # In a merged folder the tokenizer adds EOS and prompt itself; an adapter leaves both to embedtune.
        "eos_appended": embedder.eos_id is not None if merged else None,
        "prompt_in_tokenizer": bool(embedder.prompt) if merged else False,
        "dimensions": embedder.hidden_size,
        "versions": versions(),
    }


def write_export_info(folder: Path, info: dict[str, Any]) -> None:
    write_json(folder / EXPORT_INFO_FILE, info)


def write_json(path: Path, value: Any) -> None:
    """Readable JSON (non-ASCII kept as is: prompts and tokens may hold any text)."""
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def versions() -> dict[str, str]:
    """Versions of the libraries that made the export: cards and bug reports need them."""
    found = {}
    for name in ("embedtune", "transformers", "torch"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found
