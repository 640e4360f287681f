"""The model card (README.md) of an export, and the run information it shows.

A run folder written by `embedtune run` holds everything the card needs: `report.json` ({"base", "tuned",
"gain"}, each an eval result) and the training `config.json` (the full config). They are read (through
embedtune.runs) from the adapter's folder or the run folder above it (runs/exp/final -> runs/exp/); a run stopped
before its report still has its stage files base.json and tuned.json. Explicit `card_info` entries win over what
is found.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from embedtune.config import Config
from embedtune.files import read_json_or
from embedtune.models.export_format import MERGED_FORMAT
from embedtune.models.loading import display_name
from embedtune.runs import layout
from embedtune.runs.records import EvalResult, RunReport

# The per-stage results `embedtune run` writes before report.json: card_info key -> file name.
STAGE_RESULTS = {"base_scores": layout.BASE_FILE, "scores": layout.TUNED_FILE}
REPORT_KEYS = {"base_scores": "base", "scores": "tuned"}
CONFIG_SECTIONS = frozenset(f.name for f in fields(Config))


# ---- run information ---------------------------------------------------------------------------------------
def discover_card_info(adapter: str | Path | None) -> dict:
    """{"config", "scores", "base_scores", "data"} of the run an adapter came from (only the entries found)."""
    if not adapter:
        return {}
    info: dict[str, Any] = {}
    for folder in (Path(adapter), Path(adapter).parent):
        for key, value in run_info(folder).items():
            info.setdefault(key, value)  # the adapter's own folder first
    return info


def run_info(folder: Path) -> dict:
    """Scores from a run folder's report.json (else its stage files) and its training config.json."""
    info: dict[str, Any] = {}
    report = RunReport.load(folder / layout.REPORT_FILE) or RunReport()
    for key, report_key in REPORT_KEYS.items():
        result = getattr(report, report_key)
        if not is_eval_result(result):
            result = EvalResult.load(folder / STAGE_RESULTS[key])
        if is_eval_result(result):
            info[key] = result.to_dict()
    config = read_json_or(folder / layout.CONFIG_FILE)
    if is_run_config(config):
        info["config"] = config
    counts = read_json_or(folder / layout.DATA_REPORT_FILE)
    if isinstance(counts, dict) and counts and all(isinstance(v, int) for v in counts.values()):
        info["data"] = counts  # the training data's cleaning counts (data/nli.py CleaningReport)
    return info


def is_eval_result(value: Any) -> bool:
    """An `embedtune eval` result: per-task scores and their average."""
    if isinstance(value, EvalResult):
        return isinstance(value.tasks, dict) and value.average is not None
    return isinstance(value, dict) and isinstance(value.get("tasks"), dict) and "average" in value


def is_run_config(value: Any) -> bool:
    """A training config.json (embedtune's sections), not a Hugging Face model config of the same name."""
    return (isinstance(value, dict) and bool(value) and set(value) <= CONFIG_SECTIONS
            and all(isinstance(section, dict) for section in value.values()))


# ---- the card ----------------------------------------------------------------------------------------------
def model_card(meta: dict, info: dict) -> str:
    """README.md for an export: what it is, how to use it, its scores and training config (no local paths)."""
    merged = meta["format"] == MERGED_FORMAT
    sections = [_front_matter(meta, merged), _model_table(meta, merged),
                _merged_usage() if merged else _adapter_usage(meta), _onnx_usage() if info.get("onnx") else [],
                _matryoshka_usage(matryoshka_dims(meta, info.get("config")), merged),
                _scores(info.get("scores"), info.get("base_scores")), _data(info.get("data")),
                _config(info.get("config")), _notes(info.get("notes")), _versions(meta), _citation()]
    return "\n".join(line for section in sections for line in section)


def _front_matter(meta: dict, merged: bool) -> list[str]:
    title = f"{display_name(meta['base_model'])} embedder" + ("" if meta["adapter"] else " (no adapter)")
    return ["---", "library_name: sentence-transformers" if merged else "library_name: peft",
            "pipeline_tag: sentence-similarity" if merged else "pipeline_tag: feature-extraction",
            "tags:", "- embedtune", "- sentence-transformers" if merged else "- lora", "- text-embeddings",
            "---", "", f"# {title}", "",
            "Built with embedtune (contrastive LoRA fine-tuning of a decoder LM into a text-embedding model).", ""]


def _model_table(meta: dict, merged: bool) -> list[str]:
    adapter = f"`{display_name(meta['adapter'])}`" if meta["adapter"] else "none"
    lines = ["## Model", "", "| | |", "|---|---|", f"| base model | `{display_name(meta['base_model'])}` |",
             f"| adapter | {adapter} |", f"| pooling | {meta['pooling'] or 'model default'} |",
             f"| prompt | {meta['prompt']!r} |", f"| max tokens | {meta['max_length']} |"]
    if merged:
        eos = "yes" if meta["eos_appended"] else "no"
        lines += [f"| dimensions | {meta.get('dimensions')} |", f"| EOS appended by the tokenizer | {eos} |",
                  "| similarity | cosine (vectors are L2-normalised) |"]
    return lines + [""]


def _merged_usage() -> list[str]:
    return ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
            "model = SentenceTransformer('path/to/this/folder')",
            "vectors = model.encode(['A man is playing a guitar.', 'Someone plays an instrument.'])",
            "```", "", ("The tokenizer appends the EOS token and applies the prompt itself: pass raw texts, "
                        "no prompt and no chat template. The same vectors from embedtune:"), "", "```bash",
            "embedtune encode --model path/to/this/folder --input texts.txt --output vectors.npy",
            "embedtune serve --model path/to/this/folder   # OpenAI-compatible POST /v1/embeddings",
            "```", ""]


def _matryoshka_usage(dims: list[int], merged: bool) -> list[str]:
    """How to use the trained Matryoshka sizes. Only here and in embedtune_export.json: sentence-transformers
    (>= 3) reads a `truncate_dim` in config_sentence_transformers.json as the default truncation of every encode,
    which would silently shorten the full vectors, so the export leaves that file's default (none) alone."""
    if not dims:
        return []
    sizes, smallest = ", ".join(str(d) for d in dims), min(dims)
    lines = ["## Matryoshka dimensions", "", (f"Trained so that the first {sizes} dimensions of each vector work on "
                                              "their own: keep a prefix, then L2-normalise it again."), ""]
    if merged:
        lines += ["```python", f"model = SentenceTransformer('path/to/this/folder', truncate_dim={smallest})",
                  "vectors = model.encode(texts, normalize_embeddings=True)  # truncated, then re-normalised",
                  "```", ""]
    return lines + ["```bash", f"embedtune encode --model path/to/this/folder --dims {smallest} --input texts.txt "
                    "--output vectors.npy", "```", ""]


def _adapter_usage(meta: dict) -> list[str]:
    return ["## Usage", "", ("A LoRA adapter (peft) for the base model; embedtune merges it at load time and "
                             "takes pooling, prompt and max tokens from this folder:"), "",
            "```bash", (f"embedtune encode --model {display_name(meta['base_model'])} "
                        "--adapter path/to/this/folder --input texts.txt --output vectors.npy"), "```", ""]


def _onnx_usage() -> list[str]:
    return ["### ONNX Runtime", "", ("`onnx/model.onnx` takes `input_ids` and `attention_mask` from this folder's "
                                     "tokenizer and outputs `sentence_embedding` (pooled and normalised):"), "",
            "```python", "import onnxruntime", "from transformers import AutoTokenizer", "",
            "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')",
            "session = onnxruntime.InferenceSession('path/to/this/folder/onnx/model.onnx')",
            "batch = tokenizer(['A man is playing a guitar.'], padding=True, truncation=True, return_tensors='np')",
            "(vectors,) = session.run(['sentence_embedding'], {k: batch[k] for k in ('input_ids', 'attention_mask')})",
            "```", ""]


def matryoshka_dims(meta: dict, config: dict | None) -> list[int]:
    """The Matryoshka dimensions the model was trained for: the export's record, else the training config's."""
    dims = meta.get("matryoshka_dims") or ((config or {}).get("train") or {}).get("matryoshka_dims")
    return [int(d) for d in dims] if isinstance(dims, (list, tuple)) else []


def _scores(scores: dict | None, base: dict | None) -> list[str]:
    from embedtune.evaluation.report import DISPLAY_NAMES, comparison_markdown

    if not scores:
        return ["## STS scores", "", "Not recorded with this export (run `embedtune eval --model <this folder>`).", ""]
    tuned = _card_result(scores)
    lines = ["## STS scores (Spearman x100)", ""]
    if base:
        table = comparison_markdown(_card_result(base), tuned)
        lines.append(table.split("\n", 1)[1].strip())  # without its title
    else:
        lines += ["| task | Spearman x100 |", "|---|---:|"]
        for name, task in tuned.tasks.items():
            lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {task['spearman']:.2f} |")
        lines.append(f"| **Average** | **{tuned.average:.2f} ± {tuned.std:.2f}** |")
    if tuned.computed_with:
        lines += ["", f"Computed with {tuned.computed_with.describe()}."]
    return lines + [""]


def _card_result(result: dict) -> EvalResult:
    """An eval result as the tables need it, with the model shown by name only."""
    card = EvalResult.of(result)
    card.model = display_name(str(card.model or "?"))
    card.std = card.std if card.std is not None else 0.0
    return card


def _data(counts: dict | None) -> list[str]:
    if not counts:
        return []
    rows = [f"| {name.replace('_', ' ')} | {value} |" for name, value in counts.items()]
    return ["## Training data", "", "NLI rows read and cleaned (kept: what training saw):", "", "| | rows |",
            "|---|---:|", *rows, ""]


def _config(config: dict | None) -> list[str]:
    if not config:
        return []
    import yaml

    return ["## Training configuration", "", "```yaml", yaml.safe_dump(strip_paths(config), sort_keys=False).strip(),
            "```", ""]


def _notes(notes: Any) -> list[str]:
    return ["## Notes", "", str(notes).strip(), ""] if notes else []


def _versions(meta: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return ["## Versions", "", versions or "unknown", ""]


CITATION = """@article{ukarapol2024improving,
  title   = {Improving Text Embeddings for Smaller Language Models Using Contrastive Fine-tuning},
  author  = {Ukarapol, Trapoom and Lee, Zhicheng and Xin, Amy},
  journal = {arXiv preprint arXiv:2408.00690},
  year    = {2024}
}"""


def _citation() -> list[str]:
    return ["## Citation", "", ("The training recipe (LoRA, InfoNCE on NLI triplets with hard negatives, the EOS "
                                "token's last hidden state as the embedding) is the one of arXiv 2408.00690:"), "",
            "```bibtex", CITATION, "```", ""]


def strip_paths(value: Any) -> Any:
    """Absolute paths in a config shown by their last part only."""
    if isinstance(value, dict):
        return {k: strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return Path(value).name
    return value
