"""The dtype an export saves its weights in (`--dtype`), and where the default comes from.

An fp32 export of a 270M model is 1.1 GB; bf16 halves it with no change to what the model computes when it was
trained (and scored) in bf16. So the default is the run's own precision: the training config's `train.precision`
when it names one, else (`auto`) the precision the run's tuned evaluation ran in (its `computed_with`), else fp32.
"""
from __future__ import annotations

from typing import Any

import torch

from embedtune.errors import ConfigError

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_dtype(dtype: str | None) -> None:
    """Fail on a dtype name the export does not know, before any model work."""
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}")


def export_dtype(asked: str | None, info: dict[str, Any]) -> tuple[str, str]:
    """(dtype name, where it came from): the one asked for, else the run's precision (see the module's doc)."""
    check_dtype(asked)
    if asked is not None:
        return asked, "--dtype"
    config = info.get("config") or {}
    trained = (config.get("train") or {}).get("precision") if isinstance(config, dict) else None
    if trained in EXPORT_DTYPES:
        return trained, "the run's train.precision"
    computed = ((info.get("scores") or {}).get("computed_with") or {}).get("precision")
    if computed in EXPORT_DTYPES:
        return computed, "the precision the run's tuned model was scored in (train.precision auto)"
    return "fp32", "default (no run precision found)"


def cast_weights(model: torch.nn.Module, dtype: str) -> None:
    """Cast the weights in place and record the dtype in the model's config (config.json's `dtype`), so that
    loaders that read it (AutoModel with dtype='auto', TEI, vLLM's dtype='auto') agree with the saved file."""
    target = EXPORT_DTYPES[dtype]
    model.to(target)
    model.config.dtype = target  # transformers >= 4.56 writes "dtype" (older ones read "torch_dtype")
