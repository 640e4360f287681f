"""The sentence-transformers module files (Transformer -> Pooling -> Normalize), written by hand.

The long-standing format with legacy module paths loads in old and new sentence-transformers versions alike,
and exporting does not need sentence-transformers installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedtune.errors import ConfigError
from embedtune.export.metadata import versions, write_json
from embedtune.models.export_format import PROMPT_NAMES
from embedtune.models.loading import ST_POOLING

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

POOLING_DIR, NORMALIZE_DIR = "1_Pooling", "2_Normalize"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"},
]
# Legacy boolean flag -> sentence-transformers mode; every flag is written so old versions read the file.
POOLING_FLAGS = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max",
                 "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean_tokens": "weightedmean",
                 "lasttoken": "lasttoken"}


def check_prompts(prompts: dict[str, str | None] | None) -> dict[str, str]:
    """The named prompts an export records, without the unset ones. sentence-transformers, TEI and vLLM's
    clients put a named prompt in front of the text, so it must be a non-empty prefix, not a '{}' template."""
    checked = {}
    for name, text in (prompts or {}).items():
        if text is None:
            continue
        if name not in PROMPT_NAMES:
            raise ConfigError(f"unknown prompt name {name!r} (known: {', '.join(PROMPT_NAMES)})")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"--{name}-prompt must be a non-empty text, got {text!r}")
        if "{}" in text:
            raise ConfigError(f"--{name}-prompt is a prefix put before each text, not a '{{}}' template: {text!r} "
                              "(put a template in --prompt)")
        checked[name] = text
    return checked


def write_sentence_transformers_config(folder: Path, embedder: Embedder, prompts: dict[str, str] | None = None
                                       ) -> None:
    """modules.json and each module's config: what SentenceTransformer(folder) needs beside the weights;
    `prompts`: named prefixes (sentence-transformers' and TEI's `prompt_name`)."""
    write_json(folder / "modules.json", MODULES)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": embedder.max_length, "do_lower_case": False})
    (folder / POOLING_DIR).mkdir()
    write_json(folder / POOLING_DIR / "config.json", pooling_config(embedder.pooling, embedder.hidden_size))
    (folder / NORMALIZE_DIR).mkdir()
    write_json(folder / NORMALIZE_DIR / "config.json", {})
    write_json(folder / "config_sentence_transformers.json",
               {"__version__": versions(), "prompts": dict(prompts or {}), "default_prompt_name": None,
                "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"})


def pooling_config(pooling: str, dimensions: int) -> dict:
    """The Pooling module's config for embedtune's pooling (eos -> lasttoken)."""
    mode = ST_POOLING[pooling]
    config: dict = {"word_embedding_dimension": dimensions}
    config |= {f"pooling_mode_{flag}": flag_mode == mode for flag, flag_mode in POOLING_FLAGS.items()}
    config["include_prompt"] = True  # the prompt is part of the text the tokenizer sees
    return config
