"""embedtune: contrastive LoRA fine-tuning that turns small LMs into text-embedding models, and STS scoring.

Public API (names only; the logic lives in the modules named beside each), imported lazily. Importing embedtune
changes nothing in the process, no environment variable included: the `embedtune` command sets its process up in
its entry point (embedtune.launch), and a Python user who wants the same calls
embedtune.runtime.configure_process() first.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from embedtune.hooks import FAULT_ENV

if os.environ.get(FAULT_ENV):  # the reliability tests' faults (docs/RELIABILITY.md): never set in normal use
    from embedtune.testing.faults import arm_from_environment

    arm_from_environment()

# mteb itself is imported only when an adapter is built.
_EXPORTS = {"encode": "embedtune.api", "evaluate": "embedtune.api", "export": "embedtune.api", "mine": "embedtune.api",
            "run": "embedtune.api", "train": "embedtune.api", "Config": "embedtune.config",
            "Embedder": "embedtune.models.embedder", "as_mteb_model": "embedtune.mteb_model",
            "average_adapters": "embedtune.models.adapter_average"}
__all__ = ["Config", "Embedder", "as_mteb_model", "average_adapters", "encode", "evaluate", "export", "mine", "run",
           "train"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedtune' has no attribute '{name}'")
