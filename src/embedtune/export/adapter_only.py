"""The adapter-only export: the LoRA weights alone (megabytes), plus the settings they were trained with.

The folder also holds the exported tokenizer and the sentence-transformers module files (as a merged export
does), so that `SentenceTransformer(folder)` takes it as it is: sentence-transformers sees adapter_config.json,
loads the base model its `base_model_name_or_path` names, applies the adapter through peft, and pools as
1_Pooling/config.json says. embedtune itself loads it as `Embedder(base, adapter=folder)`.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from embedtune.errors import ModelError
from embedtune.export.merged import write_tokenizer
from embedtune.export.metadata import write_export_info
from embedtune.export.sentence_transformers_config import write_sentence_transformers_config
from embedtune.export.tokenizer_files import verify_tokenizer
from embedtune.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

# Adapter folders from training may hold optimizer state and more; only these travel with an adapter-only export.
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin")
ADAPTER_STEPS = ("copying adapter", "writing tokenizer", "checking tokenizer", "writing sentence-transformers modules",
                 "writing card")


def adapter_files(adapter: str | Path) -> list[Path]:
    """The files an adapter-only export copies; fails when the folder has a config but no weights."""
    found = [Path(adapter) / name for name in ADAPTER_FILES if (Path(adapter) / name).is_file()]
    if len(found) < 2 or found[0].name != ADAPTER_CONFIG:
        raise ModelError(f"adapter folder has no adapter weights ({ADAPTER_WEIGHTS}): {adapter}")
    return found


def write_adapter_only(folder: Path, adapter: str | Path, info: dict, card: str, embedder: Embedder | None = None,
                       prompts: dict[str, str] | None = None, step: Callable[[str], None] = lambda _: None) -> None:
    """Adapter config and weights, metadata (pooling, prompt, max length as defaults for loading) and card; with
    `embedder` (the base with the adapter applied) also the tokenizer and sentence-transformers files."""
    step(ADAPTER_STEPS[0])
    for path in adapter_files(adapter):
        shutil.copy2(path, folder / path.name)
    if embedder is not None:
        step(ADAPTER_STEPS[1])
        write_tokenizer(folder, embedder)
        step(ADAPTER_STEPS[2])
        verify_tokenizer(folder, embedder)
        step(ADAPTER_STEPS[3])
        write_sentence_transformers_config(folder, embedder, prompts)
    step(ADAPTER_STEPS[4])
    write_export_info(folder, info)
    (folder / "README.md").write_text(card, encoding="utf-8")

