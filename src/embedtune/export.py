"""Ship a trained embedder: a merged sentence-transformers folder, or the LoRA adapter alone.

The merged folder is self-contained: `SentenceTransformer(folder)` and `Embedder(folder)` give embedtune's
vectors with no extra arguments. Everything embedtune does to a text before the model runs lives in the
exported tokenizer (tokenizer.json), because sentence-transformers does none of it by itself:

* EOS: a TemplateProcessing post-processor appends the EOS token once, after the special tokens the tokenizer
  already adds (BOS for Gemma/Llama). Truncation leaves room for it, as embedtune does.
* prompt: a `{}` template (or a plain prefix) becomes normalizers that prepend/append the prompt text to every
  input before it is split into tokens, which is exactly embedtune's `prompt.replace('{}', text)`. (One
  difference: the tokenizers library does not normalize an empty string, so "" gets no prompt there.)
* no chat template: sentence-transformers would render texts through one (its "message" modality), so the
  exported tokenizer has none.
* right padding: sentence-transformers passes no position ids, so left padding would shift the positions
  of short texts; with right padding and causal attention a text's vectors do not depend on its batch.

The sentence-transformers modules are written by hand in the long-standing format (Transformer ->
Pooling -> Normalize with legacy module paths), so exporting does not need sentence-transformers installed
and the folder loads in old and new versions alike. The export is checked before it is published: the
saved tokenizer must reproduce embedtune's token ids on sample texts.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from embedtune.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

EXPORT_INFO_FILE = "embedtune_export.json"
# Adapter folders from training may hold optimizer state and more; only these travel with an adapter-only export.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
ST_POOLING = {"eos": "lasttoken", "mean": "mean", "cls": "cls"}
VERIFY_TEXTS = (
    "A man is playing a guitar.",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "  leading and trailing spaces  ",
    "Ünïcödé, digits 12345 and punctuation!?",
)
CONFIG_NAMES = ("config.yaml", "config.yml", "train_config.yaml", "config.json")


def export_model(
    model: str,
    adapter: str | None,
    out: str | Path,
    *,
    adapter_only: bool = False,
    pooling: str | None = None,
    prompt: str | None = None,
    max_length: int = 512,
    trust_remote_code: bool = False,
    card_info: dict | None = None,
) -> Path:
    """Write `out` and return it: merged sentence-transformers folder, or (adapter_only) the adapter files.

    `card_info` feeds the model card: {"config": {...training config...}, "scores": eval result dict,
    "base_scores": eval result dict of the base model, "notes": str}. Missing entries are looked for beside
    the adapter (a config.yaml / config.json, eval result JSON files) and otherwise left out of the card.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export target exists and is not an empty folder: {out} (remove it or pick another)")
    if adapter_only and not adapter:
        raise ConfigError("an adapter-only export needs --adapter")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"adapter not found (no adapter_config.json): {adapter}")
    if prompt is not None and prompt.count("{}") > 1:
        raise ConfigError(f"prompt may hold '{{}}' at most once, got {prompt!r}")
    info = {**discover_card_info(adapter), **(card_info or {})}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-export-"))
    try:
        if adapter_only:
            _write_adapter_only(staging, model, adapter, pooling, prompt, max_length, info)
        else:
            _write_merged(staging, model, adapter, pooling, prompt, max_length, trust_remote_code, info)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)  # the folder appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# ---- merged sentence-transformers folder -------------------------------------------------------------------
def _write_merged(folder: Path, model: str, adapter: str | None, pooling: str | None, prompt: str | None,
                  max_length: int, trust_remote_code: bool, info: dict) -> None:
    from embedtune.models.embedder import Embedder

    embedder = Embedder(model, adapter=adapter, pooling=pooling, prompt=prompt, max_length=max_length,
                        precision="fp32", trust_remote_code=trust_remote_code, device="cpu")
    positions = getattr(embedder.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < embedder.max_length:
        # sentence-transformers caps the length at the model's positions; embedtune must agree with it.
        log.warning("max_length %d exceeds the model's %d positions; exporting with %d", max_length, positions,
                    positions)
        embedder.max_length = max_length = positions
    embedder.model.save_pretrained(folder, safe_serialization=True)
    embedder.tokenizer.save_pretrained(folder)
    configure_tokenizer_files(folder, embedder)
    verify_tokenizer(folder, embedder)
    _write_sentence_transformers_config(folder, embedder)
    meta = _export_meta(model, adapter, embedder.pooling, prompt, max_length, merged=True)
    meta["dimensions"] = embedder.hidden_size
    (folder / EXPORT_INFO_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(meta, info))


def configure_tokenizer_files(folder: Path, embedder) -> None:
    """Bake EOS, prompt, padding side and length into the saved tokenizer; drop any chat template."""
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelError(f"{embedder.name}: tokenizer has no tokenizer.json (a fast tokenizer is needed to export)")
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if embedder.eos_id is not None:
        spec["post_processor"] = _eos_post_processor(embedder.tokenizer, embedder.eos_id)
    if embedder.prompt:
        spec["normalizer"] = _prompt_normalizer(embedder.prompt, spec.get("normalizer"))
    # The library's own truncation/padding settings would override the ones sentence-transformers asks for.
    spec["truncation"] = None
    spec["padding"] = None
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")

    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    for key in ("chat_template", "add_bos_token", "add_eos_token"):
        config.pop(key, None)
    # The generic fast tokenizer loads tokenizer.json verbatim; model-specific classes (GemmaTokenizer...)
    # rebuild parts of it (the normalizer) in their constructors, which would drop the prompt.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["padding_side"] = "right"
    config["truncation_side"] = "right"
    config["model_max_length"] = embedder.max_length
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for path in folder.glob("chat_template*"):
        path.unlink() if path.is_file() else shutil.rmtree(path)
    for path in (folder / "additional_chat_templates",):
        if path.is_dir():
            shutil.rmtree(path)


def _eos_post_processor(tokenizer, eos_id: int) -> dict:
    """The tokenizer's own special tokens around a text, with exactly one EOS at the very end."""
    probe = "embedtune probe text"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    start = _find_sublist(with_special, plain)
    if start is None:
        raise ModelError("cannot export: the tokenizer's special tokens do not wrap the text as a prefix/suffix")
    prefix = with_special[:start]
    suffix = with_special[start + len(plain):]
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


def _prompt_normalizer(prompt: str, existing: dict | None) -> dict:
    """Normalizers that turn `text` into embedtune's prompted text before the tokenizer's own normalizer."""
    head, _, tail = prompt.partition("{}") if "{}" in prompt else (prompt, "", "")
    steps = []
    if head:
        steps.append({"type": "Prepend", "prepend": head})
    if tail:
        steps.append({"type": "Replace", "pattern": {"Regex": r"\z"}, "content": tail})
    if existing:
        steps.append(existing)
    return {"type": "Sequence", "normalizers": steps}


def _find_sublist(haystack: list[int], needle: list[int]) -> int | None:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return None


def verify_tokenizer(folder: Path, embedder) -> None:
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
    for text, want, have in zip(texts, expected, got):
        if list(have) != list(want):
            raise ModelError(
                f"export check failed: the saved tokenizer gives {list(have)[-6:]} for {text[:30]!r}, "
                f"embedtune gives {list(want)[-6:]} (prompt {embedder.prompt!r} cannot be baked in exactly?)"
            )


def _write_sentence_transformers_config(folder: Path, embedder) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": embedder.max_length, "do_lower_case": False})
    mode = ST_POOLING[embedder.pooling]
    pooling = {"word_embedding_dimension": embedder.hidden_size}
    pooling |= {f"pooling_mode_{name}": name_mode == mode for name, name_mode in (
        ("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"),
        ("mean_sqrt_len_tokens", "mean_sqrt_len_tokens"), ("weightedmean_tokens", "weightedmean"),
        ("lasttoken", "lasttoken"))}
    pooling["include_prompt"] = True
    (folder / "1_Pooling").mkdir()
    _write_json(folder / "1_Pooling" / "config.json", pooling)
    (folder / "2_Normalize").mkdir()
    _write_json(folder / "2_Normalize" / "config.json", {})
    _write_json(folder / "config_sentence_transformers.json",
                {"__version__": _versions(), "prompts": {}, "default_prompt_name": None,
                 "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"})


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("embedtune", "transformers", "torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


# ---- adapter only ------------------------------------------------------------------------------------------
def _write_adapter_only(folder: Path, model: str, adapter: str, pooling: str | None, prompt: str | None,
                        max_length: int, info: dict) -> None:
    copied = [name for name in ADAPTER_FILES if (Path(adapter) / name).is_file()]
    if "adapter_config.json" not in copied or len(copied) < 2:
        raise ModelError(f"adapter folder has no adapter weights (adapter_model.safetensors): {adapter}")
    for name in copied:
        shutil.copy2(Path(adapter) / name, folder / name)
    meta = _export_meta(model, adapter, pooling, prompt, max_length, merged=False)
    (folder / EXPORT_INFO_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(meta, info))


def _export_meta(model: str, adapter: str | None, pooling: str | None, prompt: str | None, max_length: int,
                 merged: bool) -> dict:
    return {"format": "sentence-transformers" if merged else "peft-lora-adapter", "base_model": model,
            "adapter": str(adapter) if adapter else None, "pooling": pooling, "prompt": prompt,
            "max_length": max_length, "eos_appended": pooling == "eos" if merged else None,
            "versions": _versions()}


# ---- model card --------------------------------------------------------------------------------------------
def discover_card_info(adapter: str | None) -> dict:
    """Training config and STS results found beside an adapter (in its folder or the run folder above it)."""
    if not adapter:
        return {}
    info: dict[str, Any] = {}
    folders = [Path(adapter), Path(adapter).parent]
    for folder in folders:
        for name in CONFIG_NAMES:
            path = folder / name
            if "config" not in info and path.is_file() and path.name != "adapter_config.json":
                loaded = _read_mapping(path)
                if loaded and not {"architectures", "model_type"} & set(loaded):  # not an HF model config
                    info["config"] = loaded
    results = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            loaded = _read_mapping(path)
            if loaded and isinstance(loaded.get("tasks"), dict) and "average" in loaded:
                results.append((path.stem.lower(), loaded))
    base = [r for stem, r in results if any(k in stem for k in ("base", "before", "baseline"))]
    tuned = [r for stem, r in results if not any(k in stem for k in ("base", "before", "baseline"))]
    if tuned:
        preferred = [r for stem, r in results if any(k in stem for k in ("tuned", "final", "after"))]
        info["scores"] = (preferred or tuned)[-1]
    if base:
        info["base_scores"] = base[-1]
    return info


def _read_mapping(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        else:
            value = json.loads(text)
    except Exception:  # a broken side file must not stop an export
        return None
    return value if isinstance(value, dict) else None


def _display_name(spec: str) -> str:
    """A hub id or alias as given; a local path by its last part only (cards travel, home paths should not)."""
    path = Path(spec).expanduser()
    return path.name if path.is_absolute() or path.exists() else spec


def _strip_paths(value: Any) -> Any:
    """Absolute paths in a config shown by their last part only."""
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~"))):
        return Path(value).name
    return value


def model_card(meta: dict, info: dict) -> str:
    from embedtune.evaluation.report import DISPLAY_NAMES, comparison_markdown

    merged = meta["format"] == "sentence-transformers"
    title = f"{_display_name(meta['base_model'])} embedder" + ("" if meta["adapter"] else " (no adapter)")
    lines = ["---", "library_name: sentence-transformers" if merged else "library_name: peft",
             "pipeline_tag: sentence-similarity" if merged else "pipeline_tag: feature-extraction",
             "tags:", "- embedtune", "- sentence-transformers" if merged else "- lora", "- text-embeddings",
             "---", "", f"# {title}", "",
             "Built with embedtune (contrastive LoRA fine-tuning of a decoder LM into a text-embedding model).", ""]
    lines += ["## Model", "", "| | |", "|---|---|", f"| base model | `{_display_name(meta['base_model'])}` |",
              f"| adapter | `{_display_name(meta['adapter'])}` |" if meta["adapter"] else "| adapter | none |",
              f"| pooling | {meta['pooling'] or 'model default'} |", f"| prompt | {meta['prompt']!r} |",
              f"| max tokens | {meta['max_length']} |"]
    if merged:
        eos = "yes" if meta["eos_appended"] else "no"
        lines += [f"| dimensions | {meta.get('dimensions')} |", f"| EOS appended by the tokenizer | {eos} |",
                  "| similarity | cosine (vectors are L2-normalised) |"]
    lines.append("")
    if merged:
        lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
                  "model = SentenceTransformer('path/to/this/folder')",
                  "vectors = model.encode(['A man is playing a guitar.', 'Someone plays an instrument.'])",
                  "```", "", ("The tokenizer appends the EOS token and applies the prompt itself: pass raw texts, "
                              "no prompt and no chat template. The same vectors from embedtune:"), "", "```bash",
                  "embedtune encode --model path/to/this/folder --input texts.txt --output vectors.npy",
                  "embedtune serve --model path/to/this/folder   # OpenAI-compatible POST /v1/embeddings",
                  "```", ""]
    else:
        lines += ["## Usage", "", "A LoRA adapter (peft) for the base model; embedtune merges it at load time:", "",
                  "```bash", (f"embedtune encode --model {_display_name(meta['base_model'])} "
                              "--adapter path/to/this/folder --input texts.txt --output vectors.npy"), "```", ""]
    scores, base = info.get("scores"), info.get("base_scores")
    if scores:
        lines += ["## STS scores (Spearman x100)", ""]
        if base:
            lines.append(comparison_markdown(base, scores).split("\n", 1)[1].strip())
        else:
            lines += ["| task | Spearman x100 |", "|---|---:|"]
            for name, task in scores["tasks"].items():
                lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {task['spearman']:.2f} |")
            lines.append(f"| **Average** | **{scores['average']:.2f} ± {scores.get('std', 0.0):.2f}** |")
        lines.append("")
    else:
        lines += ["## STS scores", "",
                  "Not recorded with this export (run `embedtune eval --model <this folder>`).", ""]
    if info.get("config"):
        import yaml

        lines += ["## Training configuration", "", "```yaml",
                  yaml.safe_dump(_strip_paths(info["config"]), sort_keys=False).strip(), "```", ""]
    if info.get("notes"):
        lines += ["## Notes", "", str(info["notes"]).strip(), ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines += ["## Versions", "", versions or "unknown", ""]
    return "\n".join(lines)
