"""What a training step reports: metrics.jsonl events, real tokens/s, model FLOPs and peak memory."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

METRICS = "metrics.jsonl"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 ** 3 if sys.platform == "darwin" else peak / 1024 ** 2


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that do work per token (the token-embedding table is a lookup)."""
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embedding


class MetricsLog:
    """metrics.jsonl: one JSON object per event, appended and flushed so that a crash loses nothing."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        else:  # drop events from after the checkpoint we resume from: they will be logged again
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step] if path.exists() else []
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, event: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")
