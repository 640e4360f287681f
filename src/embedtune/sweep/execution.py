"""Running a sweep's runs: one after another in this process, or side by side, one per GPU, each in a worker
process pinned to its GPU. A failed run is recorded with its error (traceback in runs/NAME/error.txt) and the
sweep goes on; a stop on request (signal, Ctrl-C) stops the sweep too."""
from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from embedtune.config import Config
from embedtune.errors import TrainingStopped
from embedtune.experiment import Baselines, run_experiment
from embedtune.files import write_text_atomically
from embedtune.runs import layout
from embedtune.sweep.plan import SweepRun, SweepState, made_with

log = logging.getLogger(__name__)


def prepare(todo: Sequence[SweepRun]) -> None:
    """Runs about to start: one whose folder holds another config's results starts afresh (no resume), and no
    previous result of it may stay behind to be reported."""
    for run in todo:
        if not made_with(run):
            log.warning("%s was made with other settings: starting it afresh", run.dir)
            run.config.train.resume = False
        for name in layout.RESULT_FILES + (layout.ERROR_FILE,):  # nor an earlier failure's traceback
            (run.dir / name).unlink(missing_ok=True)


def run_in_turn(todo: Sequence[SweepRun], done: int, total: int, state: SweepState, bases: Baselines) -> None:
    for i, run in enumerate(todo, start=done + 1):
        print(f"[{i}/{total}] {run.name}", flush=True)
        state.set(run.name, "running")  # stays so if the process is killed: the report says "interrupted"
        started = time.perf_counter()
        try:
            run_experiment(run.config, base=bases.get(run.config))
        except (TrainingStopped, KeyboardInterrupt):
            raise  # stopped on request: the sweep stops too; re-running continues
        except Exception as err:
            record_failure(run, state, err, traceback.format_exc(), time.perf_counter() - started)
        else:
            state.set(run.name, "done", seconds=round(time.perf_counter() - started, 1))
        finally:
            release_memory()


def record_failure(run: SweepRun, state: SweepState, err: BaseException | str, trace: str, seconds: float) -> None:
    error = one_line(err)
    log.error("%s failed: %s (traceback in %s)", run.name, error, run.dir / layout.ERROR_FILE)
    write_text_atomically(run.dir / layout.ERROR_FILE, trace)
    state.set(run.name, "failed", error, round(seconds, 1))


def one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_slots(config: Config) -> list[str]:
    """The CUDA devices to run on side by side, one run each, when the config leaves the device open (auto or
    cuda) and more than one is visible; [] to run one after another in this process."""
    if config.model.device not in ("auto", "cuda"):
        return []
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def _pin(gpu: str, level: int) -> None:
    """A worker's set-up: its one GPU (before CUDA starts in it) and the parent's log level."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("embedtune").setLevel(level)


def _run_child(config: dict, base: dict) -> tuple[str | None, str, float]:
    """One run in a worker process: (error or None, traceback, seconds)."""
    started = time.perf_counter()
    try:
        run_experiment(Config.from_dict(config), base=base)
        return None, "", time.perf_counter() - started
    except Exception as err:
        return one_line(err), traceback.format_exc(), time.perf_counter() - started


def run_parallel(todo: Sequence[SweepRun], slots: Sequence[str], state: SweepState, bases: Baselines) -> None:
    """The baselines here first, then each run in a worker process pinned to one GPU (a worker per GPU, so that
    a GPU's runs always land in the process whose CUDA started on it)."""
    import multiprocessing

    scored = {}
    for run in todo:
        try:
            scored[run.name] = bases.get(run.config)
        except Exception as err:
            record_failure(run, state, err, traceback.format_exc(), 0.0)
    release_memory()
    queue = [run for run in todo if run.name in scored]
    context = multiprocessing.get_context("spawn")  # CUDA cannot start in a forked child
    level = logging.getLogger("embedtune").getEffectiveLevel()
    pools = {gpu: ProcessPoolExecutor(1, context, initializer=_pin, initargs=(gpu, level)) for gpu in slots}
    busy: dict[Future, tuple[str, SweepRun]] = {}
    try:
        while queue or busy:
            for gpu in [g for g in slots if g not in {slot for slot, _ in busy.values()}]:
                if queue:
                    run = queue.pop(0)
                    print(f"{run.name} on GPU {gpu}", flush=True)
                    state.set(run.name, "running")
                    busy[pools[gpu].submit(_run_child, run.config.to_dict(), scored[run.name].to_dict())] = (gpu, run)
            finished_now, _ = wait(list(busy), return_when=FIRST_COMPLETED)
            for future in finished_now:
                gpu, run = busy.pop(future)
                try:
                    error, trace, seconds = future.result()
                except BrokenProcessPool:
                    error, trace, seconds = "the worker process died (killed, or out of memory)", "", 0.0
                    pools[gpu] = ProcessPoolExecutor(1, context, initializer=_pin, initargs=(gpu, level))
                if error is None:
                    state.set(run.name, "done", seconds=round(seconds, 1))
                else:
                    record_failure(run, state, error, trace, seconds)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
