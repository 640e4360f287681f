"""One typed configuration shared by the CLI, YAML files and the Python API, validated up front.

YAML files use the section names below (`model:`, `data:`, `lora:`, `train:`, `eval:`); CLI flags set the
same fields (a flag given on the command line wins over the file). Unknown keys are errors, not warnings.
Each field declares its option once (`options.option`: help, flag, choices, check): the CLI's flags, the loader's
type checks and `validate()` are all built from these declarations; CROSS_CHECKS holds what reads two fields.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from embedtune.errors import ConfigError
from embedtune.options import EVAL, MODEL, RUN, TRAIN, Check, above, at_least, declared, one_line, option, shown, within

# Each choice is spelled here once; the CLI, the Embedder and the backend read these tuples.
PRECISIONS = ("auto", "bf16", "fp32")
POOLINGS = ("eos", "mean", "cls")
DEVICES = ("auto", "cpu", "cuda")  # plus "cuda:N"
LOSSES = ("infonce", "cached")
# Which negatives the hardness weighting reaches: the anchor's own hard negative (EmbeddingGemma), the other
# triplets' texts (Lan et al. 2025), or both.
HARDNESS_MODES = ("hard_negatives", "in_batch", "all")
QUANTIZATIONS = ("int8",)  # dynamic int8 of the frozen linear layers, CPU inference only
LORA_TARGET_PRESETS = ("attention", "qv", "all-linear")
SELECTIONS = ("best", "final")  # which adapter `run` evaluates and reports: best by dev score, or the last one
# After the linear warm-up: cosine decay to zero, linear decay to zero (transformers' Trainer default), or the
# peak rate to the end.
SCHEDULES = ("cosine", "linear", "constant")
BAD_LOSS_POLICIES = ("stop", "skip")  # a NaN/inf loss or gradient, or a loss spike: stop, or drop that step
DEFAULT_MAX_LENGTH = 512  # when neither the config nor a saved embedder folder says otherwise
# The learnable temperature is kept where logits stay finite and the softmax keeps a gradient (CLIP's bound).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """'20m', '1h30m', '90s' or plain seconds ('900') -> seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ConfigError(f"time budget must look like 20m, 1h30m, 90s or 900 (seconds), got {shown(text)}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


NO_BUDGET = ("off", "none")  # a time budget that lifts the config's (configs/cpu-quick.yaml sets 20m)


def budget_seconds(text: str | None) -> float | None:
    """A time budget in seconds; None for no budget: unset, 'off', 'none' or zero."""
    if text is None or text.strip().lower() in NO_BUDGET:
        return None
    return parse_duration(text) or None


def is_device(name: str) -> bool:
    return name in DEVICES or (name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit())


def distinct_positive(values: list[int]) -> bool:
    """Embedding sizes: each >= 1, none twice (they are sorted where used, so only a repeat is a mistake)."""
    return all(v >= 1 for v in values) and len(set(values)) == len(values)


DIMS_CHECK = Check(distinct_positive, "must be distinct whole numbers >= 1, got {shown}")


def evaluation_dims(config: Config) -> list[int]:
    """The sizes an evaluation also scores truncated vectors at: eval.dims, else the sizes Matryoshka training
    used (`run` then scores base and tuned at those), sorted; [] for none."""
    return sorted(config.eval.dims or config.train.matryoshka_dims)


# Each field declares its option once (options.option): help, flag, choices, check. `on` names the commands whose
# parser has the flag (MODEL: every command that loads a model; EVAL: eval; TRAIN: train, run, sweep; RUN: run,
# sweep); a section's helper below gives its fields their usual commands and --help group.
_model = partial(option, on=(MODEL,), group="model")
_data = partial(option, on=(TRAIN,), group="data")
_lora = partial(option, on=(TRAIN,), group="LoRA")
_train = partial(option, on=(TRAIN,), group="training")
_eval = partial(option, on=(EVAL,), group="evaluation")
_SAVED = "the saved folder's, else"  # None: what an exported or trained folder saved, else a default
_PRECISION_HELP = "auto: bf16 where this machine runs it faster than fp32 (measured at start), else fp32"


@dataclass
class ModelConfig:
    name: str = _model("gemma3-270m", "packaged alias (gemma3-270m, smollm2-135m, all-minilm-l6-v2), hub id, local "
                       "Hugging Face folder or .gguf file", flag="--model")
    adapter: str | None = _model(None, "LoRA adapter folder to apply (merged at load)", default_text="none",
                                 metavar="DIR")
    pooling: str | None = _model(None, "how the token vectors become one vector", choices=POOLINGS,
                                 default_text=f"{_SAVED} eos for decoder LMs and mean for encoders")
    prompt: str | None = _model(None, "prompt template, '{}' marks where the text goes (e.g. '{} is:', the paper's "
                                "Table 6)", default_text=f"{_SAVED} none", metavar="TEMPLATE")
    max_length: int | None = _model(None, "tokens per text", check=at_least(2),
                                    default_text=f"{_SAVED} {DEFAULT_MAX_LENGTH}")
    num_layers: int | None = _model(None, "keep the first N decoder layers and pool after them: the layers above are "
                                    "dropped, so training and encoding skip their compute", check=at_least(1),
                                    default_text=f"{_SAVED} every layer")
    trust_remote_code: bool = _model(False, "allow the model's own Python code (MiniCPM-2B loads natively without it)")
    allow_pickle: bool = _model(False, "load pickled weights (pytorch_model.bin, .pt) where a folder has no "
                                "safetensors: a pickle can run code, so only for files you trust")
    device: str = _model("auto", "auto (a CUDA GPU when there is one) | cpu | cuda | cuda:N",
                         check=Check(is_device, f"must be one of {', '.join(DEVICES)} or cuda:N, got '{{value}}'"))
    quantize: str | None = _model(None, "int8: dynamic int8 linear layers for CPU inference (eval, encode, serve)",
                                  choices=QUANTIZATIONS, default_text="none")


@dataclass
class DataConfig:
    data_dir: str | None = _data(None, "folder holding nli/ (training triplets or pairs) and sts/ (the STS sets)",
                                 on=(EVAL, TRAIN), metavar="DIR",
                                 default_text="$EMBEDTUNE_DATA_DIR, else the Hugging Face Hub")
    train_files: list[str] = _data([], "training files: CSV/TSV/JSONL/parquet triplets or raw NLI pairs",
                                   flag="--train-file", default_text="DATA_DIR/nli/triplets/*", metavar="FILE")
    anchor_column: str = _data("sent0", "column holding the anchor text", metavar="NAME")
    positive_column: str = _data("sent1", "column holding the positive text", metavar="NAME")
    negative_column: str = _data("hard_neg", "column holding the hard negative", metavar="NAME")
    decontaminate: bool = _data(True, "drop training rows whose sentences occur in the STS evaluation sets")
    max_train_samples: int | None = _data(None, "train on at most this many rows", check=at_least(1, "or unset"),
                                          default_text="every row")
    all_entailed: bool = _data(False, "raw NLI pairs: one triplet per entailed hypothesis (hard negatives: the "
                               "premise's contradicted ones in turn), not only one per premise; without --train-file, "
                               "reads DATA_DIR/nli/pairs/")


@dataclass
class LoraConfig:
    r: int = _lora(8, "LoRA rank", flag="--lora-r", check=at_least(1))
    alpha: int = _lora(32, "LoRA scale: the update is multiplied by alpha / r", flag="--lora-alpha", check=above(0))
    dropout: float = _lora(0.1, "dropout on LoRA's input", flag="--lora-dropout", check=within(0, 1))
    targets: str = _lora("attention", "modules LoRA adapts: attention (q,k,v,o) | qv (the paper repo's q_proj, "
                         "v_proj) | all-linear | comma-separated module names", flag="--lora-targets")


@dataclass
class TrainConfig:
    output_dir: str = _train("runs/embedtune", "folder for checkpoints, the final adapter and the report",
                             group="output", required=True, metavar="DIR")
    batch_size: int = _train(60, "triplets per step (each anchor's negatives include the other triplets' texts)",
                             check=at_least(2, "in-batch negatives need company"))
    lr: float = _train(5e-5, "peak learning rate", check=above(0, finite=True))
    epochs: int = _train(1, "passes over the training data", check=at_least(1))
    max_steps: int | None = _train(None, "stop after this many steps", check=at_least(1),
                                   default_text="the epochs' steps")
    warmup_ratio: float = _train(0.05, "share of the steps that warm the learning rate up linearly",
                                 check=within(0, 1))
    schedule: str = _train("cosine", "learning rate after the warm-up: cosine or linear decay to zero, or constant",
                           choices=SCHEDULES)
    weight_decay: float = _train(0.01, "AdamW weight decay", check=at_least(0))
    max_grad_norm: float = _train(1.0, "clip the gradient's norm to this", check=above(0))
    temperature: float = _train(0.05, "InfoNCE temperature: the logits are cosines / temperature", check=above(0))
    learnable_temperature: bool = _train(False, f"learn the temperature (kept in [{MIN_TEMPERATURE}, "
                                         f"{MAX_TEMPERATURE}])")
    hard_negatives: bool = _train(True, "use the hard-negative column (off: the paper's Table 5 ablation)")
    symmetric: bool = _train(False, "also train each positive to find its anchor among all anchors, averaging both "
                             "directions")
    all_directions: bool = _train(False, "GTE's loss: one softmax per triplet that also holds the other anchors and, "
                                  "for the positive, every anchor and the other triplets' texts (replaces --symmetric)")
    hardness: float = _train(0.0, "weight negatives by how hard they are: add this x their cosine (no gradient "
                             "through it) to their logits; EmbeddingGemma used 5 on hard negatives",
                             check=at_least(0, finite=True), default_text="0, off")
    hardness_mode: str = _train("hard_negatives", "negatives --hardness reaches: each anchor's own hard negative, "
                                "the other triplets' texts (in_batch), or both (all)", choices=HARDNESS_MODES)
    cosent: float = _train(0.0, "add this x CoSENT's ranking loss: every (anchor, positive) cosine of the batch "
                           "above every (anchor, hard negative) one, as STS ranks pairs; needs hard negatives",
                           check=at_least(0, finite=True), default_text="0, off")
    matryoshka_dims: list[int] = _train([], "Matryoshka training: the loss is the weighted sum of the loss over the "
                                        "vectors' first D dimensions, re-normalised, for each D given (e.g. "
                                        "64,128,256,640; list the full width too, it is not added for you)",
                                        check=DIMS_CHECK, default_text="none, full vectors only", metavar="D")
    matryoshka_weights: list[float] = _train([], "one weight per --matryoshka-dims size, in the same order",
                                             check=Check(lambda ws: all(math.isfinite(w) and w > 0 for w in ws),
                                                         "must be finite numbers > 0, got {shown}"),
                                             default_text="1 each", metavar="W")
    gradient_checkpointing: bool = _train(False, "trade compute for activation memory")
    precision: str = _train("auto", _PRECISION_HELP, choices=PRECISIONS)
    seed: int = _train(42, "random seed: data order, LoRA's initial weights, dropout")
    eval_steps: int = _train(50, "score the STSBenchmark dev set every N steps, 0 for never", check=at_least(0),
                             group="evaluation")
    save_steps: int = _train(100, "write a checkpoint every N steps", check=at_least(1), group="output")
    save_total_limit: int = _train(2, "checkpoints kept", check=at_least(1), group="output")
    resume: bool = _train(False, "continue from the newest checkpoint in --output-dir", group="output")
    chunk_tokens: int = _train(4096, "tokens per forward call (a padded chunk or a packed row) inside a batch: "
                               "lower it to save memory", check=at_least(16))
    packing: bool = _train(True, "pack each batch's texts into rows without padding (causal decoders)")
    loss: str = _train("infonce", "cached = GradCache: the same loss and gradients, one mini-batch's activations in "
                       "memory at a time (about one extra forward)", choices=LOSSES)
    mini_batch_tokens: int = _train(1024, "--loss cached: tokens per mini-batch", check=at_least(16))
    gather_with_grad: bool = _train(True, "across ranks (torchrun, accelerate): gather the other ranks' positives "
                                    "and negatives with gradient, so the gradient equals one process's (off: a "
                                    "cheaper, approximate backward)", group="distributed")
    time_budget: str | None = _train(None, "wall-clock budget, e.g. 20m or 1h30m: the steps and dev evaluations are "
                                     "sized to fit; off (or 0) lifts one a config file sets", on=(RUN,),
                                     default_text="none", metavar="DURATION",
                                     check=Check(lambda t: (budget_seconds(t) or 1) > 0, "must be a duration"))
    select: str = _train("best", "adapter to evaluate and report: best by STSBenchmark dev score (the final one when "
                         "no dev evaluation ran) or final", choices=SELECTIONS, on=(RUN,), group="evaluation")
    on_bad_loss: str = _train("stop", "a NaN/inf loss or gradient (or a loss spike): stop (the last good checkpoint "
                              "stays) or skip that step's update", choices=BAD_LOSS_POLICIES)
    max_bad_steps: int = _train(5, "--on-bad-loss skip: stop anyway after this many bad steps in a row",
                                check=at_least(1))
    spike_factor: float | None = _train(None, "count a loss above this x the running median of recent losses as bad",
                                        check=above(1, "or unset", finite=True), default_text="off")


@dataclass
class EvalConfig:
    tasks: list[str] = _eval([], "sets to score: STS (sts12 sts13 sts14 sts15 sts16 sts17 stsbenchmark biosses "
                             "sickr), pair-classification and retrieval sets, by packaged name or folder under "
                             "DATA_DIR/pairs/ and DATA_DIR/retrieval/", on=(EVAL, TRAIN),
                             default_text="the nine STS sets", metavar="TASK")
    batch_size: int = _eval(64, "texts per batch when encoding for evaluation", check=at_least(1), on=(EVAL, TRAIN),
                            flag={EVAL: "--batch-size", TRAIN: "--eval-batch-size"})
    precision: str = _eval("auto", _PRECISION_HELP, choices=PRECISIONS)
    output: str | None = _eval(None, "results JSON (a Markdown table is written beside it)", group="output",
                               default_text="none, the table is only printed", metavar="FILE")
    query_prompt: str | None = _eval(None, "retrieval: prompt template for queries", default_text="--prompt",
                                     metavar="TEMPLATE")
    document_prompt: str | None = _eval(None, "retrieval: prompt template for documents", default_text="--prompt",
                                        metavar="TEMPLATE")
    dims: list[int] = _eval([], "also score the vectors truncated to each of these sizes and re-normalised "
                            "(Matryoshka): a per-size section in the JSON and a table; run: base and tuned",
                            on=(EVAL, RUN), check=DIMS_CHECK, default_text="none; run: --matryoshka-dims",
                            metavar="D")
    cache: bool = _eval(True, "reuse the base model's evaluation from the cache, keyed by the model, the evaluation "
                        "settings and the data files' content (--no-cache scores it again)", on=(RUN,))


# Options read by nothing any more: a file that still sets one loads, with a warning naming it.
RETIRED = {"train.log_steps": "nothing read it"}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        config = cls()
        config.update(raw, source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = _load_yaml(path)
        if raw is None:  # an empty file, or only comments
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {_kind(raw)}")
        return cls.from_dict(raw, str(path))

    def update(self, raw: dict[str, Any], source: str = "config") -> None:
        """Set fields from a {section: {key: value}} mapping; unknown sections and keys are errors."""
        sections = {f.name: getattr(self, f.name) for f in fields(self)}
        for section_name, values in raw.items():
            if section_name not in sections:
                raise ConfigError(f"{source}: unknown section {shown(section_name)}{_bool_key_hint(section_name)} "
                                  f"(valid: {', '.join(sections)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section_name}' must be a mapping")
            _set_fields(sections[section_name], section_name, values, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Reject invalid values before any long work starts: each field's own check, then CROSS_CHECKS."""
        for declared_option in OPTIONS:
            problem = declared_option.problem(getattr(getattr(self, declared_option.section), declared_option.name))
            if problem is not None:
                raise ConfigError(one_line(problem))
        for ok, message in CROSS_CHECKS:
            if not ok(self):
                raise ConfigError(one_line(message.format(c=self)))
        return self


OPTIONS = declared(Config)
_BY_KEY = {o.key: o for o in OPTIONS}

# The checks that read more than one field ({c} in a message is the config).
CROSS_CHECKS: tuple[tuple[Callable[[Config], bool], str], ...] = (
    (lambda c: not c.train.learnable_temperature or MIN_TEMPERATURE <= c.train.temperature <= MAX_TEMPERATURE,
     f"train.temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] when learnable (it is clamped to that "
     "range during training), got {c.train.temperature}"),
    (lambda c: not (c.train.symmetric and c.train.all_directions),
     "train.all_directions already scores each positive against every anchor: turn train.symmetric off "
     "(--no-symmetric)"),
    (lambda c: not c.train.hardness or c.train.hard_negatives or c.train.hardness_mode != "hard_negatives",
     "train.hardness with hardness_mode hard_negatives weights the hard negatives, which are off "
     "(--no-hard-negatives): pick --hardness-mode in_batch or all"),
    (lambda c: not c.train.matryoshka_weights or len(c.train.matryoshka_weights) == len(c.train.matryoshka_dims),
     "train.matryoshka_weights needs one weight per size of train.matryoshka_dims: got "
     "{c.train.matryoshka_weights} for {c.train.matryoshka_dims}"),
    (lambda c: not c.train.cosent or c.train.hard_negatives,
     "train.cosent ranks (anchor, positive) pairs above (anchor, hard negative) pairs, and hard negatives are off "
     "(--no-hard-negatives)"),
)


def _set_fields(section: Any, section_name: str, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in fields(section)}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {section_name}: key {shown(key)} is not a name{_bool_key_hint(key)}")
        name = key.replace("-", "_")
        retired = RETIRED.get(f"{section_name}.{name}")
        if retired:
            logging.getLogger(__name__).warning(f"{source}: {section_name}.{key} is ignored ({retired}; it is no "
                                                f"longer an option): remove it")
            continue
        if name not in known:
            raise ConfigError(f"{source}: {section_name}: unknown key {shown(key)} "
                              f"(valid: {', '.join(sorted(known))})")
        setattr(section, name, _BY_KEY[f"{section_name}.{name}"].take(value, f"{source}: {section_name}.{key}"))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", str: "a string", dict: "a mapping"}.get(type(value), type(value).__name__)


def _bool_key_hint(key: Any) -> str:
    return " (YAML reads on/off/yes/no/true/false as booleans: quote the key)" if isinstance(key, bool) else ""


def _load_yaml(path: Path) -> Any:
    """The parsed file, or a one-line ConfigError (PyYAML's own messages span several lines)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(p for p in (err.context, err.problem) if p) or type(err).__name__
        raise ConfigError(one_line(f"{where}: invalid YAML ({problem})")) from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(f"{path}:{line}: invalid YAML ({err.reason}: character U+{code:04X})") from None
    except yaml.YAMLError as err:
        raise ConfigError(one_line(f"{path}: invalid YAML ({str(err).strip().splitlines()[0]})")) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:
        # PyYAML's constructors fail this way on scalars such as 2001-13-45, !!int abc, !!bool maybe, !!timestamp x
        # or an integer of more than 4300 digits.
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(one_line(f"{path}: invalid YAML (a value PyYAML cannot construct: {detail})", 200)) \
            from None


