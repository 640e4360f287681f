"""embedtune_export.json: the format of the settings file beside an export's (or a trained adapter's) weights.

One module holds the format: the file name, its fields and version, the writer (embedtune.export and the
trainer's adapter folders, training/checkpoint.py) and the reader (models/loading.py: a saved folder is its own
config). It lives in models/, not in export/ as DESIGN.md sketched (export/format.py): the reader runs whenever
a model loads, and models/ may not import export/ (export builds on models; tests/test_architecture.py keeps the
layers one-way), so the format sits on the lower of its two users' layers.

The settings recorded are the embedder's resolved ones (pooling, prompt, max length as the export used them,
never the raw options, which may be None); loading them back, explicit options still win.
"""
from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path
from typing import Any, Protocol

from embedtune.config import POOLINGS, ModelConfig
from embedtune.files import read_json_or

EXPORT_INFO_FILE = "embedtune_export.json"
FORMAT_VERSION = 1  # "format_version"; a file without it was written before the field existed, with these fields
MERGED_FORMAT = "sentence-transformers"  # "format" of a merged export (a sentence-transformers folder)
ADAPTER_FORMAT = "peft-lora-adapter"  # "format" of an adapter-only export or a trained adapter folder
FIELDS = {  # every field the writer writes: its meaning
    "format": f"{MERGED_FORMAT} or {ADAPTER_FORMAT}",
    "format_version": "this file's layout version",
    "base_model": "the base model as given (alias, hub id or folder)",
    "adapter": "the adapter folder a merged export merged, else null",
    "pooling": f"one of {', '.join(POOLINGS)} (read back)",
    "prompt": "the prompt template, '{}' marks the text; '' for none (read back)",
    "max_length": "tokens per text (read back)",
    "num_layers": "decoder layers it runs: an adapter needs its base cut to them (read back)",
    "eos_appended": "merged: whether the tokenizer appends EOS itself; an adapter: null",
    "prompt_in_tokenizer": "merged: the tokenizer applies the prompt itself, so a loader must not add it again",
    "dimensions": "the embedding's size",
    "matryoshka_dims": "the sizes Matryoshka training trained (truncate, then re-normalise), else null (read back as "
                       "the Embedder's matryoshka_dims; a file without it reads as null)",
    "versions": "the libraries that wrote it (embedtune, transformers, torch)",
    "dtype": "merged: the saved weights' dtype (fp32, bf16 or fp16); an adapter: null (optional: newer files)",
    "prompts": "named prompts a caller picks by name, e.g. {\"query\": \"query: \"}: prefixes put before a text "
               "(optional: newer files; {} when none)",
}
LOADED_FIELDS = ("pooling", "prompt", "max_length", "num_layers", "prompts")  # what a load takes back as defaults
PROMPT_NAMES = ("query", "document")  # the prompts an export may record


class Exported(Protocol):
    """What the writer reads of an Embedder (named by its attributes: models/embedder.py loads through the reader
    here, so this module may not import it back)."""

    pooling: str
    prompt: str | None
    max_length: int
    eos_id: int | None
    matryoshka_dims: tuple[int, ...] | None
    # (and, optionally, `prompts`: the query/document prompts loaded from an earlier export)

    @property
    def num_layers(self) -> int | None: ...

    @property
    def hidden_size(self) -> int: ...


def export_info(embedder: Exported, model: ModelConfig, *, merged: bool, dtype: str | None = None,
                prompts: dict[str, str] | None = None) -> dict[str, Any]:
    """The file's content for one export, from the embedder that was exported (its settings are the resolved
    ones); `merged`: a merged sentence-transformers folder, else an adapter; `dtype`: the saved weights' dtype
    name; `prompts`: named prefixes (query, document) a caller picks by name, by default the embedder's own (those
    of the export it was loaded from)."""
    if prompts is None:
        prompts = getattr(embedder, "prompts", None) or {}
    return {
        "format": MERGED_FORMAT if merged else ADAPTER_FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": model.name,
        "adapter": str(model.adapter) if model.adapter else None,
        "pooling": embedder.pooling,
        "prompt": embedder.prompt or "",
        "max_length": embedder.max_length,
        "num_layers": embedder.num_layers,
        # In a merged folder the tokenizer adds EOS and prompt itself; an adapter leaves both to embedtune.
        "eos_appended": embedder.eos_id is not None if merged else None,
        "prompt_in_tokenizer": bool(embedder.prompt) if merged else False,
        "dimensions": embedder.hidden_size,
        # getattr: a stand-in for an embedder (tests, scripts) may predate the attribute; it trained no sizes.
        "matryoshka_dims": list(dims) if (dims := getattr(embedder, "matryoshka_dims", None)) else None,
        "versions": versions(),
        "dtype": dtype if merged else None,
        "prompts": {name: prompts[name] for name in PROMPT_NAMES if prompts.get(name) is not None},
    }


def write_export_info(folder: str | Path, info: dict[str, Any]) -> Path:
    """FOLDER/embedtune_export.json, readable (non-ASCII kept as is: a prompt may hold any text). Plain write: the
    callers fill a temporary folder that the atomic writer (files.py) renames into place whole."""
    path = Path(folder) / EXPORT_INFO_FILE
    path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_export_info(folder: str | Path) -> dict[str, Any]:
    """The file in `folder` as written, or {} when it is absent or unreadable: a folder without one (a plain HF
    model, an adapter peft saved alone) records nothing, and a broken one must not stop a load."""
    return read_json_or(Path(folder).expanduser() / EXPORT_INFO_FILE)


def saved_export_settings(folder: str | Path) -> dict[str, Any]:
    """The settings a load takes back from `folder`'s file (only valid ones: a bad value is ignored, so the
    embedder's default applies). A merged export's tokenizer applies the prompt itself, so its prompt comes back
    as "": the Embedder must not prepend it a second time."""
    info = read_export_info(folder)
    settings: dict[str, Any] = {}
    if info.get("pooling") in POOLINGS:
        settings["pooling"] = info["pooling"]
    if isinstance(info.get("prompt"), str):
        settings["prompt"] = info["prompt"]
    if is_whole(info.get("max_length"), at_least=2):
        settings["max_length"] = info["max_length"]
    if is_whole(info.get("num_layers"), at_least=1):
        settings["num_layers"] = info["num_layers"]
    prompts = info.get("prompts")
    if isinstance(prompts, dict) and prompts and all(
            name in PROMPT_NAMES and isinstance(prompt, str) for name, prompt in prompts.items()):
        settings["prompts"] = dict(prompts)
    if info.get("format") == MERGED_FORMAT and info.get("prompt"):
        settings["prompt"] = ""
    return settings


def saved_matryoshka_dims(folder: str | Path | None, width: int | None = None) -> tuple[int, ...] | None:
    """The Matryoshka sizes recorded in `folder`'s file (increasing), or None: absent (an older file, a model
    trained without them) or not a list of distinct sizes within `width`, which a load ignores like any bad value."""
    if not folder:
        return None
    dims = read_export_info(folder).get("matryoshka_dims")
    if not isinstance(dims, list) or not dims or not all(is_whole(d, at_least=1) for d in dims):
        return None
    if len(set(dims)) != len(dims) or (width is not None and max(dims) > width):
        return None
    return tuple(sorted(dims))


def is_whole(value: Any, at_least: int) -> bool:
    """A whole number (not a bool, not a float) of at least `at_least`: what a saved length or layer count is."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def versions() -> dict[str, str]:
    """Versions of the libraries that made the export: cards and bug reports need them."""
    found = {}
    for name in ("embedtune", "transformers", "torch"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def saved_prompts(folder: str | Path) -> dict[str, str]:
    """The named prompts recorded in `folder`'s file ({} when none, or when the field is malformed)."""
    prompts = read_export_info(folder).get("prompts")
    if not isinstance(prompts, dict):
        return {}
    return {name: text for name, text in prompts.items() if isinstance(name, str) and isinstance(text, str)}
