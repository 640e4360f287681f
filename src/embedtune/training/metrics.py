"""What a training step reports: metrics.jsonl events, real tokens/s, model FLOPs and peak memory."""
from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path

import torch

from embedtune.files import storage_error, write_text_atomically
from embedtune.runs.layout import METRICS_FILE

METRICS = METRICS_FILE  # metrics.jsonl in the run folder

log = logging.getLogger(__name__)


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

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled  # off on ranks other than 0, which never write into the output folder
        if not enabled:
            return
        if resume_step is None:
            write_text_atomically(path, "")
        else:  # drop events from after the checkpoint we resume from: they will be logged again
            kept = [line for line in path.read_text().splitlines() if _step_of(line, path) <= resume_step
                    ] if path.exists() else []
            write_text_atomically(path, "".join(line + "\n" for line in kept))

    def write(self, event: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError as err:
            raise storage_error(self.path, err) from err


def _step_of(line: str, path: Path) -> float:
    """An event's step; a line a killed process left half-written counts as after any step (it is dropped)."""
    try:
        return json.loads(line)["step"] if line.strip() else float("inf")
    except (ValueError, KeyError, TypeError):
        log.warning("%s: dropping an incomplete line (%r)", path, line[:80])
        return float("inf")
