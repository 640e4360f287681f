"""How a step's backward, gradient clipping and weight access run: plain torch in one process, accelerate's
DDP / FSDP / DeepSpeed (chosen by `accelerate launch --config_file`, DDP under plain torchrun) across ranks.

Exactness across ranks rests on three things, each checked by tests/training/test_distributed.py:
- each rank's loss is the mean over its own anchors against every rank's candidates, gathered with gradient
  (losses/infonce.py); the gather's backward sums the other ranks' gradients into each rank's candidates;
- the engine averages parameter gradients over ranks, so the result is the gradient of the global mean loss,
  equal to one process's on the same global batch (not 1/K of it), and clipping sees the same norm;
- parameters outside the wrapped model (a learnable temperature) are averaged here, the same way.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import torch

from embedtune.distributed import Ranks, average_gradients, engine
from embedtune.errors import ConfigError

log = logging.getLogger(__name__)


def shards_weights(ranks: Ranks) -> bool:
    """FSDP and DeepSpeed ZeRO-3 split the weights themselves across ranks: no rank holds the whole model."""
    if not ranks.distributed:
        return False
    chosen = engine()
    return chosen == "fsdp" or (chosen == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


class Engine:
    """One process: the model itself. Several: the model as accelerate prepared it, and its optimizer."""

    def __init__(self, ranks: Ranks, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator=None):
        self.ranks = ranks
        self.wrapped = wrapped  # the model itself in one process
        self.optimizer = optimizer
        self.accelerator = accelerator

    @classmethod
    def create(cls, ranks: Ranks, embedder, optimizer: torch.optim.Optimizer, batch_size: int) -> Engine:
        """Wrap the embedder's model for the launch (and point its graph-building forwards at the wrapper);
        `batch_size` is the global batch."""
        if not ranks.distributed:
            return cls(ranks, embedder.model, optimizer)
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # Buffers (rotary tables) never change, and ranks run different numbers of forwards per step (their
        # slices dedupe to different numbers of texts): a buffer broadcast per forward would mismatch.
        handlers = [DistributedDataParallelKwargs(broadcast_buffers=False)]
        accelerator = Accelerator(cpu=embedder.device.type == "cpu", kwargs_handlers=handlers)
        if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed wants it, and we prepare no dataloader
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
                batch_size // ranks.world_size)
        wrapped, prepared = accelerator.prepare(embedder.model, optimizer)
        embedder.training_module = wrapped
        log.info("rank %d of %d: %s engine on %s", ranks.rank, ranks.world_size, engine(), embedder.device)
        return cls(ranks, wrapped, prepared, accelerator)

    def backward(self, loss: torch.Tensor, loss_parameters: Sequence[torch.nn.Parameter]) -> None:
        if self.accelerator is None:
            loss.backward()
            return
        self.accelerator.backward(loss)
        average_gradients(loss_parameters)

    def clip(self, parameters: Sequence[torch.nn.Parameter], max_norm: float) -> float | None:
        """Clip to `max_norm`; the global norm before clipping (None where DeepSpeed clips inside its own step
        and has not reported it)."""
        if self.accelerator is None:
            norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        elif engine() == "fsdp":  # FSDP's own method: the norm over every rank's shards, not this rank's
            norm = self.wrapped.clip_grad_norm_(max_norm)
        else:
            norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
        return None if norm is None else float(norm)

    @contextlib.contextmanager
    def no_sync(self, skip: bool) -> Iterator[None]:
        """Forward + backward of one GradCache chunk; all but the last skip the gradient all-reduce."""
        if skip and self.accelerator is not None and hasattr(self.wrapped, "no_sync"):
            with self.wrapped.no_sync():
                yield
        else:
            yield

    def adapter_state(self) -> dict[str, torch.Tensor] | None:
        """Full model weights where the engine shards them (every rank must call: it is a collective)."""
        if not shards_weights(self.ranks):
            return None
        return self.accelerator.get_state_dict(self.wrapped)


def check_engine_supports(ranks: Ranks, eval_steps: int) -> None:
    """What a sharding engine cannot do here, refused before the model loads."""
    if shards_weights(ranks) and eval_steps:
        raise ConfigError(f"dev evaluation runs on rank 0 alone and {engine()} shards the weights across ranks: "
                          "pass --eval-steps 0 and evaluate the saved adapter with `embedtune eval`")

