"""One typed configuration shared by the CLI, YAML files and the Python API, validated up front.

YAML files use the section names below (`model:`, `data:`, `lora:`, `train:`, `eval:`); CLI flags set the
same fields (a flag given on the command line wins over the file). Unknown keys are errors, not warnings.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from embedtune.errors import ConfigError

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


@dataclass
class ModelConfig:
    name: str = "gemma3-270m"  # packaged alias, hub id, local HF folder or .gguf file
    adapter: str | None = None
    pooling: str | None = None  # None: eos for decoder LMs, mean for encoders
    prompt: str | None = None  # e.g. '{} is:' (paper Table 6); '{}' marks where the text goes
    max_length: int | None = None  # None: the saved embedder folder's length, else DEFAULT_MAX_LENGTH
    # Keep the first N decoder layers and pool after them: the layers above are dropped, so training and encoding
    # skip their compute. None: the saved folder's count, else every layer.
    num_layers: int | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False  # pickled weights (pytorch_model.bin, .pt) can run code when loaded: refused unless set
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    quantize: str | None = None  # int8: dynamic int8 linear layers for CPU inference (eval, encode, serve)


@dataclass
class DataConfig:
    data_dir: str | None = None  # holds nli/triplets/ and sts/; $EMBEDTUNE_DATA_DIR when unset
    train_files: list[str] = field(default_factory=list)  # CSV/TSV/JSONL/parquet triplets or NLI pairs
    anchor_column: str = "sent0"
    positive_column: str = "sent1"
    negative_column: str = "hard_neg"
    decontaminate: bool = True  # drop training rows whose sentences occur in the STS evaluation sets
    max_train_samples: int | None = None
    # Raw NLI pairs: one triplet per entailed hypothesis (hard negatives: the premise's contradicted ones in turn),
    # not only one per premise; without train_files, training then reads DATA_DIR/nli/pairs/.
    all_entailed: bool = False


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    targets: str = "attention"  # attention (q,k,v,o) | qv (the paper repo's q_proj,v_proj) | all-linear | a,b,c


@dataclass
class TrainConfig:
    output_dir: str = "runs/embedtune"
    batch_size: int = 60
    lr: float = 5e-5
    epochs: int = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # after warm-up: cosine | linear (both to zero) | constant (SCHEDULES)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    temperature: float = 0.05
    learnable_temperature: bool = False
    hard_negatives: bool = True
    symmetric: bool = False  # also score each positive against every anchor and average the two directions
    # GTE's improved contrastive loss: one softmax per triplet that also holds anchor-anchor, positive-anchor and
    # positive-text similarities (the symmetric loss's reverse direction is one of them, so not both).
    all_directions: bool = False
    hardness: float = 0.0  # > 0: add hardness x stop_grad(cosine) to the logits of the negatives hardness_mode picks
    hardness_mode: str = "hard_negatives"  # hard_negatives | in_batch | all (HARDNESS_MODES)
    # > 0: add this x CoSENT's ranking term, every (anchor, positive) cosine above every (anchor, hard negative)
    # one across the batch (losses/cosent.py); needs hard negatives.
    cosent: float = 0.0
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto: the backend measures whether this machine runs bf16 faster than fp32
    seed: int = 42
    eval_steps: int = 50  # 0 turns dev evaluation off
    save_steps: int = 100
    save_total_limit: int = 2
    resume: bool = False
    chunk_tokens: int = 4096  # token budget per forward call (padded chunk or packed row) inside a batch
    packing: bool = True  # causal decoders: pack texts into rows without padding (models/packing.py)
    loss: str = "infonce"  # infonce | cached (GradCache: one mini-batch's activations at a time, ~1 extra forward)
    mini_batch_tokens: int = 1024  # cached loss: tokens per mini-batch
    # Across ranks: other ranks' candidates gathered with gradient (exact: the single-process gradient), or
    # without (cheaper backward; each rank's candidates then get only its own anchors' gradient).
    gather_with_grad: bool = True
    log_steps: int = 1
    time_budget: str | None = None  # `run` only: e.g. '20m', '1h30m'; sizes steps and dev evaluation to fit
    select: str = "best"  # `run` only: best (by dev score; final when no dev evaluation ran) | final
    on_bad_loss: str = "stop"  # stop | skip (drop that step's update, count it; stop after max_bad_steps in a row)
    max_bad_steps: int = 5  # skip: consecutive bad steps that stop the run anyway
    spike_factor: float | None = None  # a loss above this x the running median counts as bad (None: off)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # empty: all nine
    batch_size: int = 64
    precision: str = "auto"
    output: str | None = None
    # Retrieval tasks: templates ('{}' marks the text) replacing model.prompt for queries / documents; None: keep it.
    query_prompt: str | None = None
    document_prompt: str | None = None
    # `run` and `sweep`: reuse a base model's evaluation from the cache (keyed by the model, the evaluation
    # settings and the data files' content); False scores it again.
    cache: bool = True


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
                raise ConfigError(f"{source}: unknown section {_shown(section_name)}{_bool_key_hint(section_name)} "
                                  f"(valid: {', '.join(sections)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section_name}' must be a mapping")
            _set_fields(sections[section_name], values, f"{source}: {section_name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Reject invalid values before any long work starts."""
        t, m, lo = self.train, self.model, self.lora
        checks = [
            (t.lr > 0 and math.isfinite(t.lr), f"train.lr must be > 0, got {t.lr}"),
            (t.batch_size >= 2, f"train.batch_size must be >= 2 (in-batch negatives need company), got {t.batch_size}"),
            (t.temperature > 0, f"train.temperature must be > 0, got {t.temperature}"),
            (not t.learnable_temperature or MIN_TEMPERATURE <= t.temperature <= MAX_TEMPERATURE,
             f"train.temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] when learnable (it is clamped "
             f"to that range during training), got {t.temperature}"),
            (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
            (t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}"),
            (0 <= t.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}"),
            (t.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{t.schedule}'"),
            (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
            (t.max_grad_norm > 0, f"train.max_grad_norm must be > 0, got {t.max_grad_norm}"),
            (t.eval_steps >= 0, f"train.eval_steps must be >= 0, got {t.eval_steps}"),
            (t.save_steps >= 1, f"train.save_steps must be >= 1, got {t.save_steps}"),
            (t.save_total_limit >= 1, f"train.save_total_limit must be >= 1, got {t.save_total_limit}"),
            (t.chunk_tokens >= 16, f"train.chunk_tokens must be >= 16, got {t.chunk_tokens}"),
            (t.loss in LOSSES, f"train.loss must be one of {', '.join(LOSSES)}, got '{t.loss}'"),
            (not (t.symmetric and t.all_directions),
             "train.all_directions already scores each positive against every anchor: turn train.symmetric off "
             "(--no-symmetric)"),
            (t.hardness >= 0 and math.isfinite(t.hardness), f"train.hardness must be >= 0, got {t.hardness}"),
            (t.hardness_mode in HARDNESS_MODES,
             f"train.hardness_mode must be one of {', '.join(HARDNESS_MODES)}, got '{t.hardness_mode}'"),
            (not t.hardness or t.hard_negatives or t.hardness_mode != "hard_negatives",
             "train.hardness with hardness_mode hard_negatives weights the hard negatives, which are off "
             "(--no-hard-negatives): pick --hardness-mode in_batch or all"),
            (t.cosent >= 0 and math.isfinite(t.cosent), f"train.cosent must be >= 0, got {t.cosent}"),
            (not t.cosent or t.hard_negatives,
             "train.cosent ranks (anchor, positive) pairs above (anchor, hard negative) pairs, and hard negatives "
             "are off (--no-hard-negatives)"),
            (t.select in SELECTIONS, f"train.select must be one of {', '.join(SELECTIONS)}, got '{t.select}'"),
            (t.on_bad_loss in BAD_LOSS_POLICIES,
             f"train.on_bad_loss must be one of {', '.join(BAD_LOSS_POLICIES)}, got '{t.on_bad_loss}'"),
            (t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}"),
            (t.spike_factor is None or (t.spike_factor > 1 and math.isfinite(t.spike_factor)),
             f"train.spike_factor must be > 1 (or unset), got {t.spike_factor}"),
            (t.mini_batch_tokens >= 16, f"train.mini_batch_tokens must be >= 16, got {t.mini_batch_tokens}"),
            (t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got '{t.precision}'"),
            (self.eval.precision in PRECISIONS, f"eval.precision must be one of {', '.join(PRECISIONS)}"),
            (self.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.eval.batch_size}"),
            (m.pooling is None or m.pooling in POOLINGS, f"model.pooling must be one of {', '.join(POOLINGS)}"),
            (m.max_length is None or m.max_length >= 2, f"model.max_length must be >= 2, got {m.max_length}"),
            (m.num_layers is None or m.num_layers >= 1, f"model.num_layers must be >= 1, got {m.num_layers}"),
            (m.quantize is None or m.quantize in QUANTIZATIONS,
             f"model.quantize must be one of {', '.join(QUANTIZATIONS)}, got '{m.quantize}'"),
            (is_device(m.device), f"model.device must be one of {', '.join(DEVICES)} or cuda:N, got '{m.device}'"),
            (lo.r >= 1, f"lora.r must be >= 1, got {lo.r}"),
            (lo.alpha > 0, f"lora.alpha must be > 0, got {lo.alpha}"),
            (0 <= lo.dropout < 1, f"lora.dropout must be in [0, 1), got {lo.dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(_one_line(message))
        for f in fields(self):  # inf passes checks such as "> 0": no float option means anything at infinity
            for name, value in vars(getattr(self, f.name)).items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{f.name}.{name} must be a finite number, got {value}")
        if self.data.max_train_samples is not None and self.data.max_train_samples < 1:
            raise ConfigError(f"data.max_train_samples must be >= 1 (or unset), got {self.data.max_train_samples}")
        if t.time_budget is not None:
            if parse_duration(t.time_budget) <= 0:
                raise ConfigError(f"train.time_budget must be positive, got {_shown(t.time_budget)}")
        return self


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlevel = 40, 40, 30, 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4


def _shown(value: Any) -> str:
    """A value for a message: repr, cut short, one line whatever it holds."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an integer past Python's 4300-digit limit for str()
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"


def _one_line(message: str, limit: int = 300) -> str:
    """Line breaks and other unprintable characters escaped, and long messages cut: an error is one short line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise ConfigError(_one_line(f"{where}: invalid YAML ({problem})")) from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(f"{path}:{line}: invalid YAML ({err.reason}: character U+{code:04X})") from None
    except yaml.YAMLError as err:
        raise ConfigError(_one_line(f"{path}: invalid YAML ({str(err).strip().splitlines()[0]})")) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:
        # PyYAML's constructors fail this way on scalars such as 2001-13-45, !!int abc, !!bool maybe, !!timestamp x
        # or an integer of more than 4300 digits.
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(_one_line(f"{path}: invalid YAML (a value PyYAML cannot construct: {detail})", 200)) \
            from None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """'20m', '1h30m', '90s' or plain seconds ('900') -> seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ConfigError(f"time budget must look like 20m, 1h30m, 90s or 900 (seconds), got {_shown(text)}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def is_device(name: str) -> bool:
    return name in DEVICES or (name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit())


def _set_fields(section: Any, values: dict[str, Any], where: str) -> None:
    hints = get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {_shown(key)} is not a name{_bool_key_hint(key)}")
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}: unknown key {_shown(key)} (valid: {', '.join(sorted(known))})")
        setattr(section, name, _coerce(value, hints[name], f"{where}.{key}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML/CLI value against the field's type; ints are accepted where floats are expected."""
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if text.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_shown(value)}")
        for item in value:  # names and paths: a nested list, a mapping or a null is a mistake, not a name
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ConfigError(f"{where}: expected a list of names, got {_shown(item)} in it")
        return [str(v) for v in value]
    for kind in (bool, int, float, str):
        if kind.__name__ in text:
            return _as(kind, value, where)
    return value


def _as(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,4000}", value):  # ASCII digits only: not '²' or '--5'
            return int(value)
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
            pass
    elif kind is str:
        if not isinstance(value, (list, dict, set, tuple, bytes)):
            return str(value)
    raise ConfigError(f"{where}: expected {kind.__name__}, got {_shown(value)}")
