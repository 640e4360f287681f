"""The adapter-only export: the LoRA weights alone (megabytes), plus the settings they were trained with."""
from __future__ import annotations

import shutil
from pathlib import Path

from embedtune.errors import ModelError
from embedtune.export.metadata import write_export_info
from embedtune.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

# Adapter folders from training may hold optimizer state and more; only these travel with an adapter-only export.
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin")


def adapter_files(adapter: str | Path) -> list[Path]:
    """The files an adapter-only export copies; fails when the folder has a config but no weights."""
    found = [Path(adapter) / name for name in ADAPTER_FILES if (Path(adapter) / name).is_file()]
    if len(found) < 2 or found[0].name != ADAPTER_CONFIG:
        raise ModelError(f"adapter folder has no adapter weights ({ADAPTER_WEIGHTS}): {adapter}")
    return found


def write_adapter_only(folder: Path, adapter: str | Path, info: dict, card: str) -> None:
    """Adapter config and weights, metadata (pooling, prompt, max length as defaults for loading) and card."""
    for path in adapter_files(adapter):
        shutil.copy2(path, folder / path.name)
    write_export_info(folder, info)
    (folder / "README.md").write_text(card, encoding="utf-8")
