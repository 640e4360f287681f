"""What a result was computed with: this process's versions and hardware (environment.json), and the precision,
device and versions of one evaluation (an evaluation result's "computed_with")."""
from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedtune.runs.records import ComputedWith, Environment

if TYPE_CHECKING:
    from embedtune.models.backend import Backend

VERSIONED = ("embedtune", "torch", "transformers", "peft")


@functools.cache
def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide a score (None: not installed)."""
    import importlib.metadata as metadata

    found: dict[str, str | None] = {}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def environment() -> dict[str, Any]:
    """Versions (embedtune, torch, transformers, peft, python) and hardware (CPU, cores, memory, GPUs) of this
    process, as environment.json holds them."""
    import psutil

    hardware = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
                "gpus": gpus()}
    return {"versions": {**versions(), "python": platform.python_version()}, "hardware": hardware,
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def capture_environment() -> Environment:
    return Environment.from_dict(environment())


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return found


def computed_with(backend: Backend, precision_asked: str | None = None) -> ComputedWith:
    """How an evaluation on `backend` computes: its dtype and device, the probe's figure where `auto` measured one
    (the same model scores differently in bf16 and fp32), and the library versions."""
    import torch

    from embedtune.models.backend import cpu_bf16_speedup

    device = backend.device
    speedup = None
    if precision_asked == "auto" and device.type == "cpu" and cpu_bf16_speedup.cache_info().currsize:
        speedup = round(cpu_bf16_speedup(), 2)  # measured once per process, when `auto` chose the dtype
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name, shown = torch.cuda.get_device_name(index), f"cuda:{index}"
    else:
        name, shown = cpu_model(), str(device)
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(backend.dtype, str(backend.dtype))
    return ComputedWith(precision=precision, precision_asked=precision_asked, bf16_speedup=speedup, device=shown,
                        device_name=name, versions=dict(versions()))
