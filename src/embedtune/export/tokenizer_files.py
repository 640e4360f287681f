"""The exported tokenizer does everything embedtune does to a text before the model runs.

sentence-transformers only calls the tokenizer, so EOS, prompt, right padding and the length limit must live
in tokenizer.json / tokenizer_config.json, and no chat template may remain (sentence-transformers would render
texts through it). `verify_tokenizer` checks the result against embedtune's own token ids before publishing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedtune.errors import ModelError
from embedtune.export.metadata import write_json

if TYPE_CHECKING:
    from embedtune.models.embedder import Embedder

VERIFY_TEXTS = (
    "A man is playing a guitar.",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "  leading and trailing spaces  ",
    "Ünïcödé, digits 12345 and punctuation!?",
)
# Keys that would change what the generic fast tokenizer adds or how it renders texts.
DROPPED_CONFIG_KEYS = ("chat_template", "add_bos_token", "add_eos_token")
PROBE_TEXT = "embedtune probe text"


def configure_tokenizer_files(folder: Path, embedder: Embedder) -> None:
    """Bake EOS, prompt, padding side and length into the saved tokenizer; drop any chat template."""
    _bake_tokenizer_json(folder / "tokenizer.json", embedder)
    _rewrite_tokenizer_config(folder / "tokenizer_config.json", embedder.max_length)
    strip_chat_templates(folder)


def _bake_tokenizer_json(path: Path, embedder: Embedder) -> None:
    """EOS post-processor and prompt normalizers in tokenizer.json; its own truncation/padding removed."""
    if not path.is_file():
        raise ModelError(f"{embedder.name}: tokenizer has no tokenizer.json (a fast tokenizer is needed to export)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if embedder.eos_id is not None:
        spec["post_processor"] = eos_post_processor(embedder.tokenizer, embedder.eos_id)
    if embedder.prompt:
        spec["normalizer"] = prompt_normalizer(embedder.prompt, spec.get("normalizer"))
    # The library's own truncation/padding settings would override the ones sentence-transformers asks for.
    spec["truncation"] = None
    spec["padding"] = None
    write_json(path, spec)


def _rewrite_tokenizer_config(path: Path, max_length: int) -> None:
    """Generic fast tokenizer class, right padding and truncation, the export's length."""
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key in DROPPED_CONFIG_KEYS:
        config.pop(key, None)
    # The generic fast tokenizer loads tokenizer.json verbatim; model-specific classes (GemmaTokenizer...)
    # rebuild parts of it (the normalizer) in their constructors, which would drop the prompt.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["padding_side"] = "right"
    config["truncation_side"] = "right"
    config["model_max_length"] = max_length
    write_json(path, config)


def strip_chat_templates(folder: Path) -> None:
    """Remove chat template files: sentence-transformers would otherwise treat inputs as chat messages."""
    for path in [*folder.glob("chat_template*"), folder / "additional_chat_templates"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()


def eos_post_processor(tokenizer: Any, eos_id: int) -> dict:
    """The tokenizer's own special tokens around a text, with exactly one EOS at the very end."""
    prefix, suffix = _special_tokens_around_text(tokenizer)
    while suffix and suffix[-1] == eos_id:
        suffix.pop()
    suffix.append(eos_id)

    def piece(token_id: int, type_id: int) -> dict:
        return {"SpecialToken": {"id": tokenizer.convert_ids_to_tokens(token_id), "type_id": type_id}}

    def sequence(name: str, type_id: int) -> dict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    single = [piece(t, 0) for t in prefix] + [sequence("A", 0)] + [piece(t, 0) for t in suffix]
    pair = single + [sequence("B", 1)] + [piece(t, 1) for t in suffix]
    special = {}
    for token_id in prefix + suffix:
        token = tokenizer.convert_ids_to_tokens(token_id)
        special[token] = {"id": token, "ids": [token_id], "tokens": [token]}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


def _special_tokens_around_text(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BOS for Gemma/Llama), found on a probe text."""
    with_special = list(tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    start = find_sublist(with_special, plain)
    if start is None:
        raise ModelError("cannot export: the tokenizer's special tokens do not wrap the text as a prefix/suffix")
    return with_special[:start], with_special[start + len(plain):]


def prompt_normalizer(prompt: str, existing: dict | None) -> dict:
    """Normalizers that turn `text` into embedtune's prompted text before the tokenizer's own normalizer:
    exactly `prompt.replace('{}', text)` (a prompt without '{}' is a prefix)."""
    head, _, tail = prompt.partition("{}") if "{}" in prompt else (prompt, "", "")
    steps = []
    if head:
        steps.append({"type": "Prepend", "prepend": head})
    if tail:
        steps.append({"type": "Replace", "pattern": {"Regex": r"\z"}, "content": tail})
    if existing:
        steps.append(existing)
    return {"type": "Sequence", "normalizers": steps}


def find_sublist(haystack: list[int], needle: list[int]) -> int | None:
    """Start of the first occurrence of `needle` in `haystack`, or None."""
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return None


def verify_tokenizer(folder: Path, embedder: Embedder) -> None:
    """The saved tokenizer, called the way sentence-transformers calls it, must give embedtune's token ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if getattr(tokenizer, "chat_template", None):
        raise ModelError("export check failed: the saved tokenizer still has a chat template")
    if tokenizer.padding_side != "right":
        raise ModelError(f"export check failed: the saved tokenizer pads on the {tokenizer.padding_side}")
    texts = list(VERIFY_TEXTS) + [" ".join(["the quick brown fox"] * embedder.max_length)]  # truncated
    expected = embedder.tokenize(texts)
    # As sentence-transformers calls it: truncation to the tokenizer's model_max_length, no explicit length.
    got = tokenizer(texts, truncation="longest_first")["input_ids"]
    for text, want, have in zip(texts, expected, got, strict=True):
        if list(have) != list(want):
            raise ModelError(
                f"export check failed: the saved tokenizer gives {list(have)[-6:]} for {text[:30]!r}, "
                f"embedtune gives {list(want)[-6:]} (prompt {embedder.prompt!r} cannot be baked in exactly?)"
            )
