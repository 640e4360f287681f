"""Checkpoints: one directory per step (adapter + one state dict), written atomically, the last K kept.

A checkpoint holds everything needed to continue exactly: adapter weights (safetensors), optimizer, scheduler,
RNG states, the step (which fixes the data position) and the best dev score so far.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedtune.files import write_folder_atomically

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
ADAPTER_DIR = "adapter"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


def save_adapter_atomically(model, target: Path) -> Path:
    """Write a peft adapter folder under a temporary name, then rename it into place."""
    return write_folder_atomically(target, model.save_pretrained)


def save_checkpoint(output_dir: Path, step: int, model, state: dict[str, Any], keep: int) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder / ADAPTER_DIR)
        torch.save(state, folder / STATE_FILE)

    target = write_folder_atomically(output_dir / CHECKPOINTS / f"step-{step:07d}", write)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, model) -> dict[str, Any]:
    """Load adapter weights into the (peft) model and return the state dict."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    return torch.load(path / STATE_FILE, weights_only=True)
