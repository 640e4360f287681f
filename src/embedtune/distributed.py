"""Ranks: who does what when embedtune runs under `torchrun` or `accelerate launch`.

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK; `launched_ranks()` reads them before any process group exists,
so that checks (a batch the world size does not divide, a missing engine) fail before the model loads. `join()`
creates the process group through accelerate (gloo on CPU, nccl on CUDA). One process (no launcher) never touches
torch.distributed, so a single-process run is exactly what it was.

Semantics (docs/DISTRIBUTED.md): `--batch-size` is global; rank r trains on its contiguous slice of exactly the
rows a single process would take at that step; evaluation splits the unique texts across ranks and gathers the
vectors; rank 0 alone writes into the output folder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from embedtune.errors import ConfigError

log = logging.getLogger(__name__)
# How long a collective may wait for a peer before the rank gives up with an error (a dead or stuck rank then
# stops the others instead of hanging them). Dev evaluation runs on rank 0 while the others wait in the next
# step's gather, so this must exceed one evaluation; EMBEDTUNE_DIST_TIMEOUT (seconds) overrides it.
TIMEOUT_ENV = "EMBEDTUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
ENGINE_PACKAGES = {"deepspeed": "deepspeed"}  # engine -> the PyPI package it needs


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by a launcher: a process group and the engine's wrapper, even for one rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched

    def slice(self, rows: Sequence[int]) -> list[int]:
        """This rank's contiguous share of a global batch (the world size divides it: check_batch_size)."""
        n = len(rows) // self.world_size
        return list(rows[self.rank * n:(self.rank + 1) * n])


def launched_ranks() -> Ranks:
    """The ranks the launcher declared (torchrun, accelerate launch set WORLD_SIZE, even to 1); a plain process
    otherwise, which never touches torch.distributed."""
    if not os.environ.get("WORLD_SIZE"):
        return Ranks()
    return Ranks(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0), launched=True)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"${name} must be an integer, not '{value}' (set by torchrun / accelerate launch)") from None


def engine() -> str:
    """The training engine `accelerate launch` asked for (ddp unless its config chose fsdp or deepspeed)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def check_launch(batch_size: int | None = None) -> Ranks:
    """The launch as declared, checked before any model work: the batch splits evenly, the engine is installed."""
    ranks = launched_ranks()
    if batch_size is not None and batch_size % ranks.world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must be divisible by the world size "
                          f"{ranks.world_size} (each rank takes an equal slice); try "
                          f"{max(ranks.world_size, batch_size // ranks.world_size * ranks.world_size)}")
    if ranks.distributed:
        check_engine_available(engine())
    return ranks


def check_engine_available(chosen: str) -> None:
    """DeepSpeed installed where asked for; FSDP and DeepSpeed on GPUs (accelerate has no CPU device for them)."""
    if chosen in ENGINE_PACKAGES and importlib.util.find_spec(chosen) is None:
        raise ConfigError(f"the accelerate config asks for {chosen}, which is not installed: "
                          f"pip install {ENGINE_PACKAGES[chosen]}")
    if chosen in ("fsdp", "deepspeed") and not torch.cuda.is_available():
        raise ConfigError(f"{chosen} needs CUDA GPUs and this machine has none; on CPUs use DDP "
                          "(torchrun --nproc_per_node K -m embedtune ..., or configs/accelerate/ddp.yaml)")


ACCELERATE_ENGINES = {"MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "NO": "ddp", "FSDP": "fsdp", "DEEPSPEED": "deepspeed"}


def check_accelerate_config(path: str) -> str:
    """The engine an accelerate config file chooses, with one-line errors for a file that is missing, does not
    parse, names an unknown distributed_type, or needs what this machine lacks."""
    import yaml

    file = os.path.expanduser(path)
    if not os.path.isfile(file):
        raise ConfigError(f"accelerate config file not found: {path} (examples: configs/accelerate/*.yaml)")
    try:
        with open(file, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}:{line} is not a readable YAML file ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an accelerate config must be a mapping (accelerate config writes one)")
    kind = str(raw.get("distributed_type", "NO"))
    if kind not in ACCELERATE_ENGINES:
        raise ConfigError(f"{path}: distributed_type '{kind}' is not one embedtune runs "
                          f"(valid: {', '.join(ACCELERATE_ENGINES)})")
    chosen = ACCELERATE_ENGINES[kind]
    check_engine_available(chosen)
    return chosen


def accelerate_command(config_file: str, num_processes: int | None, argv: Sequence[str]) -> list[str]:
    """`accelerate launch` of this same embedtune command (argv without the launch flags)."""
    import sys

    extra = ["--num_processes", str(num_processes)] if num_processes else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, *extra,
            "-m", "embedtune", *argv]


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def join(device: torch.device) -> Ranks:
    """Create (once) the process group of a launched run; a no-op for a single process."""
    ranks = launched_ranks()
    if not ranks.distributed:
        return ranks
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", timeout=timeout())
    if state.num_processes != ranks.world_size:
        raise ConfigError(f"accelerate set up {state.num_processes} processes, the launcher declared "
                          f"{ranks.world_size}")
    return Ranks(state.process_index, state.num_processes, state.local_process_index, launched=True)


def leave() -> None:
    """Tear down the process group before the interpreter exits: left to exit, a rank's communication threads can
    abort it ("terminate called without an active exception") after its work is done and its files are written."""
    if is_joined():
        torch.distributed.destroy_process_group()


def is_joined() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main() -> bool:
    """Rank 0, or the only process: the one that prints, shows progress and writes files."""
    return not is_joined() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if is_joined():
        torch.distributed.barrier()


def mean_and_sum(mean_part: float, sum_part: int) -> tuple[float, int]:
    """The mean over ranks of one number and the sum of another, in one collective (a step's loss, its tokens):
    every rank's loss is the mean over an equal share of the batch, so their mean is the global batch's loss."""
    if not is_joined():
        return mean_part, sum_part
    values = torch.tensor([mean_part, float(sum_part)], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(values)
    return values[0].item() / torch.distributed.get_world_size(), int(values[1].item())


def agree(stop: bool, total_steps: int, eval_steps: int) -> tuple[bool, int, int]:
    """What all ranks do next: stop if any rank was asked to; run length and dev interval as rank 0 has them."""
    if not is_joined():
        return stop, total_steps, eval_steps
    views = same_on_every_rank((stop, total_steps, eval_steps))
    return any(v[0] for v in views), views[0][1], views[0][2]


def same_on_every_rank(value: object) -> list[object]:
    """Every rank's `value`, in rank order (small objects: a step number, a checkpoint name)."""
    if not is_joined():
        return [value]
    gathered: list[object] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Mean of the gradients of parameters that live outside the wrapped model (a learnable temperature).

    Each rank's loss is the mean over its own anchors and the global loss the mean of those, so the global
    gradient of a parameter used only in the loss is the mean of the ranks' gradients.
    """
    if not is_joined():
        return
    for p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
            p.grad /= torch.distributed.get_world_size()


def shares(n: int, world_size: int) -> list[list[int]]:
    """Indices of n items dealt round-robin to ranks (texts in length order then give each rank a similar load)."""
    return [list(range(r, n, world_size)) for r in range(world_size)]


def encode_across_ranks(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """`encode(texts)` with the texts split across ranks and every rank getting all vectors, in input order.

    Texts are dealt by length so that ranks finish together; one process encodes everything itself.
    """
    if not is_joined() or torch.distributed.get_world_size() == 1:
        return encode(list(texts))
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    rows = [[by_length[i] for i in share] for share in shares(len(texts), world)]  # input rows, per rank
    local = torch.from_numpy(np.ascontiguousarray(encode([texts[i] for i in rows[rank]]), dtype=np.float32))
    padded = torch.zeros((len(rows[0]), local.shape[1]), dtype=torch.float32)  # rank 0's share is the largest
    padded[:len(rows[rank])] = local
    device = _collective_device()
    gathered = [torch.empty_like(padded, device=device) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded.to(device))
    result = np.zeros((len(texts), padded.shape[1]), dtype=np.float32)
    for part, ranks_rows in zip(gathered, rows, strict=True):
        result[ranks_rows] = part[:len(ranks_rows)].cpu().numpy()
    return result


def _collective_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo CPU tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
