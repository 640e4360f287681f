"""The optimiser, its schedule, and stop requests: the parts of the loop that are not the step itself."""
from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from embedtune.models.lora import trainable_parameters

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, loss_fn: torch.nn.Module, lr: float,
                    weight_decay: float) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """AdamW over the trainable weights; the loss's own parameters (a learnable temperature) get no weight
    decay, which would pull the logit scale towards zero (CLIP and open_clip exclude it too)."""
    decayed = list({id(p): p for p in trainable_parameters(model)}.values())
    seen = {id(p) for p in decayed}
    undecayed = [p for p in trainable_parameters(loss_fn) if id(p) not in seen]
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr), decayed + undecayed


def warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_ratio: float, total: Callable[[], int],
                      schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then `schedule` (config.SCHEDULES): cosine or linear
    decay to zero, or the peak rate held. `total()` is read at every step, so a run resized early (a time budget)
    decays over its new length."""
    decay = _DECAYS[schedule]

    def factor(step: int) -> float:
        steps = total()
        warmup = int(warmup_ratio * steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return decay(min((step - warmup) / max(1, steps - warmup), 1.0))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# progress through the decay (0 -> 1) -> fraction of the peak learning rate
_DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


@contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the end of the step."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:  # a second signal: the user insists
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("signal %s: saving a checkpoint after this step, then stopping", signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
