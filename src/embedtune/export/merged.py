"""The merged export: LoRA folded into the weights, a folder that sentence-transformers and embedtune load as is."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from embedtune.errors import ModelError
from embedtune.export.metadata import write_export_info, write_json
from embedtune.export.precision import EXPORT_DTYPES, cast_weights
from embedtune.export.sentence_transformers_config import write_sentence_transformers_config
from embedtune.export.tokenizer_files import configure_tokenizer_files, verify_tokenizer

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

# What write_merged does, in order: each is one step of the export's progress bar.
MERGED_STEPS = ("casting weights", "writing weights", "writing tokenizer", "checking tokenizer",
                "writing sentence-transformers modules", "writing card")


def write_merged(folder: Path, embedder: Embedder, info: dict, card: str, *, dtype: str = "fp32",
                 prompts: dict[str, str] | None = None, step: Callable[[str], None] = lambda _: None) -> None:
    """Weights (in `dtype`), a tokenizer that does embedtune's text handling, the sentence-transformers modules,
    metadata and card, into `folder` (a staging folder: it is published only when all of this succeeded).
    `step(name)` is called as each of MERGED_STEPS starts."""
    step(MERGED_STEPS[0])
    cast_weights(embedder.model, dtype)
    step(MERGED_STEPS[1])
    embedder.model.save_pretrained(folder, safe_serialization=True)
    record_dtype(folder / "config.json", dtype)
    step(MERGED_STEPS[2])
    write_tokenizer(folder, embedder)
    step(MERGED_STEPS[3])
    verify_tokenizer(folder, embedder)
    step(MERGED_STEPS[4])
    write_sentence_transformers_config(folder, embedder, prompts)
    step(MERGED_STEPS[5])
    write_export_info(folder, info)
    (folder / "README.md").write_text(card, encoding="utf-8")


def write_tokenizer(folder: Path, embedder: Embedder) -> None:
    """The tokenizer files, with EOS, prompt, padding and length baked in (tokenizer_files.py)."""
    embedder.tokenizer.save_pretrained(folder)
    configure_tokenizer_files(folder, embedder)


def record_dtype(config_path: Path, dtype: str) -> None:
    """config.json names the saved dtype under both keys: `dtype` (transformers >= 4.56, vLLM) and `torch_dtype`
    (older transformers). Fails when the library wrote another dtype than the one cast to."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = str(EXPORT_DTYPES[dtype]).removeprefix("torch.")
    written = config.get("dtype", config.get("torch_dtype"))
    if written not in (None, name):
        raise ModelError(f"export check failed: config.json records dtype {written!r}, the weights are {name}")
    config["dtype"] = config["torch_dtype"] = name
    write_json(config_path, config)
