"""Checkpoints: one directory per step (adapter + one state dict), written atomically, the last K kept.

A checkpoint holds everything needed to continue exactly: adapter weights (safetensors), optimizer, scheduler,
RNG states, the step (which fixes the data position) and the best dev score so far. Its manifest (sizes and
SHA-256 of every file) is written last; `latest_checkpoint` checks it and parses both files, and skips, with a
warning naming it, a checkpoint that is truncated or corrupt, in favour of the one before.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedtune.files import TEMP_TAG, remove_temporaries, write_folder_atomically
from embedtune.models.export_format import write_export_info
from embedtune.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
ADAPTER_DIR = "adapter"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step-(\d+)")

log = logging.getLogger(__name__)


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


def save_adapter_atomically(model, target: Path, kind: str | None = None,
                            weights: dict[str, torch.Tensor] | None = None, settings: dict | None = None) -> Path:
    """Write a peft adapter folder under a temporary name, then rename it into place. `weights`: the full
    model state where an engine (FSDP, ZeRO-3) shards it, gathered by the caller; peft keeps the adapter's.
    `settings` (the embedder's pooling, prompt, max length, layers) go beside it in embedtune_export.json, so
    that loading the adapter onto its base gets them back: a saved folder is its own config."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder, state_dict=weights)
        if settings is not None:
            write_export_info(folder, settings)

    return write_folder_atomically(target, write, kind)


def save_checkpoint(output_dir: Path, step: int, model, state: dict[str, Any], keep: int,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder / ADAPTER_DIR, state_dict=weights)
        buffer = io.BytesIO()  # through Python's own file writes: a full disk is then an OSError, not torch's
        torch.save(state, buffer)  # "unexpected pos" RuntimeError
        (folder / STATE_FILE).write_bytes(buffer.getbuffer())

    target = write_folder_atomically(output_dir / CHECKPOINTS / f"step-{step:07d}", write, "checkpoint",
                                     marker=(MANIFEST, manifest))
    # Newer step folders belong to a superseded run (restarted without --resume, or resumed past a corrupt
    # checkpoint); of the rest the newest `keep` stay. Renamed first, so that a kill never leaves half of one.
    found = _step_dirs(output_dir)
    older = [p for p in found if _step(p) <= step]
    for old in older[:-keep] + [p for p in found if _step(p) > step]:
        doomed = old.with_name(f".{old.name}{TEMP_TAG}removed")
        shutil.rmtree(doomed, ignore_errors=True)
        old.replace(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return target


def manifest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    return json.dumps({"files": entries}, indent=1) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def _step_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)), key=_step)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Step folders holding a state file, oldest first (not validated: see latest_checkpoint)."""
    return [p for p in _step_dirs(output_dir) if (p / STATE_FILE).is_file()]


def remove_stale_files(output_dir: Path) -> list[Path]:
    """Temporaries that killed writes left in OUTPUT and OUTPUT/checkpoints (never a complete checkpoint)."""
    return remove_temporaries(output_dir) + remove_temporaries(output_dir / CHECKPOINTS)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint in `path` cannot be resumed from, or None when it is complete and readable."""
    from safetensors.torch import load_file

    state_file, weights = path / STATE_FILE, path / ADAPTER_DIR / ADAPTER_WEIGHTS
    for needed in (state_file, weights, path / ADAPTER_DIR / ADAPTER_CONFIG):
        if not needed.is_file():
            return f"{needed.relative_to(path)} is missing"
    listed = path / MANIFEST
    if listed.is_file():  # checkpoints written before manifests existed are checked by parsing only
        try:
            entries = json.loads(listed.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST} is unreadable"
        for name, entry in entries.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != entry["size"]:
                return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['size']}"
            if _sha256(file) != entry["sha256"]:
                return f"{name} does not match its SHA-256 in the manifest"
    try:
        json.loads((path / ADAPTER_DIR / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{ADAPTER_DIR}/{ADAPTER_CONFIG} is not valid JSON"
    try:
        load_file(str(weights))
    except Exception as err:  # safetensors reports a bad header or a short file in its own error type
        return f"{weights.relative_to(path)} is not a readable safetensors file ({_first_line(err)})"
    try:
        state = torch.load(state_file, weights_only=True)
    except Exception as err:  # a truncated zip, a bad pickle opcode...
        return f"{STATE_FILE} cannot be loaded ({_first_line(err)})"
    if not isinstance(state, dict) or state.get("step") != _step(path):
        return f"{STATE_FILE} is not the state of step {_step(path)}"
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that is complete and readable; each newer, bad one is skipped with a warning."""
    for path in reversed(_step_dirs(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def load_checkpoint(path: Path, model) -> dict[str, Any]:
    """Load adapter weights into the (peft) model and return the state dict."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / ADAPTER_DIR / ADAPTER_WEIGHTS))
    set_peft_model_state_dict(model, weights)
    return torch.load(path / STATE_FILE, weights_only=True)
