"""Weight averaging ("model soup") of LoRA adapters trained on one base model, exact in the merged weights.

Averaging each adapter's A and B separately is not the average of their updates B·A (a product of means is not a
mean of products), and adapters from different seeds start from different random A. Stacking them along the rank
instead is exact: [w1·s1·B1, w2·s2·B2] · [A1; A2] = w1·s1·B1·A1 + w2·s2·B2·A2, so the averaged adapter's rank is the
sum of the ranks, and its scale is folded into B (alpha = r).

`scale` multiplies the averaged update: below 1 it moves the embedder from the adapters' weights toward the base
model's along the straight line between them (WiSE-FT's weight-space interpolation, Wortsman et al. 2022), exactly,
since the merged weight is W + scale x mean(update). With a scale, one adapter is enough.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from embedtune.errors import ModelError
from embedtune.files import write_folder_atomically
from embedtune.models.export_format import EXPORT_INFO_FILE
from embedtune.models.loading import adapter_settings
from embedtune.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, require_adapter

SOURCES = "averaged_from.json"


def average_adapters(adapters: Sequence[str | Path], out: str | Path,
                     weights: Sequence[float] | None = None, scale: float = 1.0) -> Path:
    """One adapter in `out` whose update is `scale` x the weighted mean of the given adapters' updates (uniform
    by default)."""
    if not math.isfinite(scale) or scale <= 0:
        raise ModelError(f"the scale of the averaged update must be > 0, got {scale}")
    if len(adapters) < (1 if scale != 1 else 2):
        raise ModelError("averaging needs at least two adapters (or one, with a scale other than 1)")
    weights = [w * scale for w in _normalised(weights, len(adapters))]
    configs = [_read_config(Path(a)) for a in adapters]
    states = [_read_weights(Path(a)) for a in adapters]
    _check_same_modules(adapters, states)
    averaged: dict[str, torch.Tensor] = {}
    for key in states[0]:
        rank_dim = _rank_dim(key)
        if rank_dim == 0:  # A
            averaged[key] = torch.cat([s[key] for s in states], dim=0)
        elif rank_dim == 1:  # B, carrying each adapter's scale and weight
            scaled = [s[key].float() * _scale(c) * w for s, c, w in zip(states, configs, weights, strict=True)]
            averaged[key] = torch.cat(scaled, dim=1).to(states[0][key].dtype)
        elif scale != 1:  # a scaled update of a whole weight would need the base weight: not handled
            raise ModelError(f"cannot scale an adapter that trains whole weights ({key}): give no scale")
        else:  # weights trained whole (modules_to_save): their plain weighted mean
            mean = sum(s[key].float() * w for s, w in zip(states, weights, strict=True))
            averaged[key] = mean.to(states[0][key].dtype)
    sources = [{"adapter": str(a), "weight": w / scale, "scale": scale} for a, w in zip(adapters, weights, strict=True)]
    return _write(Path(out), _averaged_config(configs), averaged, sources, _shared_settings_file(adapters))


def _shared_settings_file(adapters: Sequence[str | Path]) -> Path | None:
    """The settings file the adapters were saved with (pooling, prompt, layers: embedtune_export.json), to copy
    beside the average so that it loads as they do. Adapters that record none (saved by peft alone) do not
    object; adapters that record different settings do not average."""
    recorded = [(a, found) for a in adapters if (found := adapter_settings(a))]
    for adapter, found in recorded[1:]:
        if found != recorded[0][1]:
            raise ModelError(f"{adapter} was trained with other settings than {recorded[0][0]} ({found} against "
                             f"{recorded[0][1]}): only adapters of the same embedder can be averaged")
    return Path(recorded[0][0]) / EXPORT_INFO_FILE if recorded else None


def _normalised(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ModelError(f"need {n} non-negative weights, one per adapter, got {list(weights)}")
    return [w / sum(weights) for w in weights]


def _read_config(adapter: Path) -> dict:
    require_adapter(str(adapter))
    config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ModelError(f"not a LoRA adapter (peft_type {config.get('peft_type')!r}): {adapter}")
    # Under these one module's update is not B·A times the adapter's one scale.
    for key in ("use_dora", "rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ModelError(f"cannot average adapters with {key}={config[key]!r}: {adapter}")
    return config


def _read_weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"adapter folder has no {ADAPTER_WEIGHTS} (re-save it with safetensors): {adapter}")
    state = load_file(adapter / ADAPTER_WEIGHTS)
    if any("lora_embedding_" in key for key in state):  # other orientation than A and B of a Linear: not handled
        raise ModelError(f"cannot average adapters on embedding layers: {adapter}")
    return state


def _check_same_modules(adapters: Sequence[str | Path], states: list[dict[str, torch.Tensor]]) -> None:
    """Adapters of one base and the same targets: the same weight names, and the same shapes outside the rank."""
    for adapter, state in zip(adapters[1:], states[1:], strict=True):
        if state.keys() != states[0].keys():
            missing = sorted(state.keys() ^ states[0].keys())[0]
            raise ModelError(f"{adapter} adapts other modules than {adapters[0]} (e.g. {missing}): "
                             "only adapters with the same base model and targets can be averaged")
        for key, tensor in state.items():
            rank_dim = _rank_dim(key)
            shape, first = list(tensor.shape), list(states[0][key].shape)
            if rank_dim is not None:
                shape[rank_dim] = first[rank_dim] = 0
            if shape != first:
                raise ModelError(f"{adapter} and {adapters[0]} differ in the shape of {key}: "
                                 "not adapters of the same base model")


def _rank_dim(key: str) -> int | None:
    """The rank's dimension of a LoRA weight: rows of A (r x in), columns of B (out x r); None for other weights."""
    return 0 if ".lora_A." in key else 1 if ".lora_B." in key else None


def _scale(config: dict) -> float:
    """peft's multiplier of B·A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r = config["r"]
    return config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)


def _averaged_config(configs: list[dict]) -> dict:
    config = dict(configs[0])
    rank = sum(c["r"] for c in configs)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, inference_mode=True)  # scale 1: folded into B
    return config


def _write(out: Path, config: dict, weights: dict[str, torch.Tensor], sources: list[dict],
           settings_file: Path | None) -> Path:
    """The whole folder or nothing: a crash leaves no adapter_config.json beside half the weights."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / ADAPTER_WEIGHTS))
        (folder / SOURCES).write_text(json.dumps(sources, indent=2) + "\n", encoding="utf-8")
        if settings_file is not None:
            shutil.copyfile(settings_file, folder / EXPORT_INFO_FILE)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(out, write, "averaged adapter")
