"""The merged export: LoRA folded into the weights, a folder that sentence-transformers and embedtune load as is."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedtune.export.metadata import write_export_info
from embedtune.export.sentence_transformers_config import write_sentence_transformers_config
from embedtune.export.tokenizer_files import configure_tokenizer_files, verify_tokenizer

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder


def write_merged(folder: Path, embedder: Embedder, info: dict, card: str) -> None:
    """Weights, a tokenizer that does embedtune's text handling, the sentence-transformers modules, metadata
    and card, into `folder` (a staging folder: it is published only when all of this succeeded)."""
    embedder.model.save_pretrained(folder, safe_serialization=True)
    embedder.tokenizer.save_pretrained(folder)
    configure_tokenizer_files(folder, embedder)
    verify_tokenizer(folder, embedder)
    write_sentence_transformers_config(folder, embedder)
    write_export_info(folder, info)
    (folder / "README.md").write_text(card, encoding="utf-8")
