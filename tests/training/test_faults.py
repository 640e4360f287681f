"""Killed, corrupted and diverging runs (issue 16): SIGKILL at steps and inside the checkpoint writer, --resume
each time; truncated or corrupt checkpoints skipped; NaN/inf/spike losses stopped or skipped. Nothing may be lost:
the final adapter and the per-step losses equal an uninterrupted run's.

The kills are real (`EMBEDTUNE_FAULT`, embedtune/testing/faults.py) in `python -m embedtune` subprocesses on the tiny
model.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedtune.config import Config
from embedtune.errors import ConfigError, StorageError, TrainingError
from embedtune.files import TEMP_TAG, write_text_atomically
from embedtune.hooks import hook
from embedtune.testing.faults import FAULT_ENV, FaultCallback, injected_faults, parse_faults
from embedtune.training import checkpoint as ckpt
from embedtune.training.trainer import METRICS, train

STEPS, SAVE = 12, 2
RESUMED = re.compile(r"resuming from (\S+) \(step (\d+)\)")


def train_args(model_dir, data_dir, out, steps=STEPS, save=SAVE, *extra) -> list[str]:
    return ["train", "--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--batch-size", "8", "--lr", "1e-3", "--max-steps", str(steps), "--save-steps", str(save),
            "--save-total-limit", "2", "--eval-steps", "0", "--warmup-ratio", "0.2", "--precision", "fp32",
            "--resume", *extra]


def embedtune(args: list[str], fault: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m embedtune ARGS` in a child process (one thread, like the tests), with EMBEDTUNE_FAULT set."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "embedtune", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in map(json.loads, (out / METRICS).read_text().splitlines()) if "loss" in e]


def assert_same_adapter(a: Path, b: Path) -> None:
    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert left.keys() == right.keys() and len(left) == 16
    assert [k for k in left if not torch.equal(left[k], right[k])] == []


def resumed_step(done: subprocess.CompletedProcess) -> int | None:
    found = RESUMED.findall(done.stderr)
    return int(found[-1][1]) if found else None


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for folder in (out, out / ckpt.CHECKPOINTS) if folder.is_dir() for p in folder.glob(".*"))


def test_sigkill_at_five_moments_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tiny_data_dir, tmp_path):
    full = tmp_path / "full"
    done = embedtune(train_args(tiny_model_dir, tiny_data_dir, full))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    rng = random.Random(16)
    latest = 0  # the newest complete checkpoint's step, as the next run must find it
    kills = 0

    def kill(fault: str) -> subprocess.CompletedProcess:
        nonlocal kills
        done = embedtune(train_args(tiny_model_dir, tiny_data_dir, out), fault)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert (resumed_step(done) or 0) == latest  # the run started from the newest complete checkpoint
        kills += 1
        return done

    step = rng.randint(2, 5)  # 1. between steps
    kill(f"kill:step:{step}")
    latest = step - step % SAVE
    kill("kill:checkpoint:2")  # 2. inside the second checkpoint write: half its bytes on disk, no rename
    partial = [p for p in (out / ckpt.CHECKPOINTS).iterdir() if TEMP_TAG in p.name]
    assert len(partial) == 1 and partial[0].name.startswith(f".step-{latest + 2 * SAVE:07d}")
    assert not (partial[0] / ckpt.MANIFEST).exists()  # the manifest is only ever written into complete folders
    latest += SAVE  # the first write in that run completed
    assert ckpt.latest_checkpoint(out).name == f"step-{latest:07d}"
    for _ in range(2):  # 3., 4. between steps, at random later steps
        step = rng.randint(latest + 1, STEPS - 1)
        kill(f"kill:step:{step}")
        latest = step - step % SAVE
    kill("kill:final:1")  # 5. inside the final adapter's write, after the last checkpoint
    latest = STEPS
    assert not (out / "final").exists()

    done = embedtune(train_args(tiny_model_dir, tiny_data_dir, out))
    assert done.returncode == 0, done.stderr
    assert resumed_step(done) == STEPS
    assert kills == 5
    assert losses(out) == losses(full) and [s for s, _ in losses(out)] == list(range(1, STEPS + 1))
    assert_same_adapter(out / "final", full / "final")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000010", "step-0000012"]
    assert all(ckpt.checkpoint_problem(p) is None for p in ckpt.list_checkpoints(out))
    assert temporaries(out) == []  # what the kills left behind was cleaned up


@pytest.mark.slow
def test_kill_soak_with_dev_evaluation_and_best_adapter_swaps(tiny_model_dir, tiny_data_dir, tmp_path):
    """25 kills over rounds of a 12-step run with dev evaluation every 2 steps: at steps, in checkpoint writes, in
    best-adapter writes and between moving the old best aside and renaming the new one in."""
    args = ["--eval-steps", "2"]
    full = tmp_path / "full"
    assert embedtune(train_args(tiny_model_dir, tiny_data_dir, full, STEPS, SAVE, *args)).returncode == 0
    rng = random.Random(1)
    kills = rounds = runs = 0
    fired: dict[str, int] = {}
    while kills < 25:
        out = tmp_path / f"round{rounds}"
        rounds += 1
        while True:
            newest = ckpt.latest_checkpoint(out)
            start = int(newest.name.split("-")[1]) if newest else 0
            step = f"kill:step:{rng.randint(start + 1, STEPS)}" if start < STEPS else None
            fault = rng.choice([step, f"kill:checkpoint:{rng.randint(1, 3)}", f"kill:best:{rng.randint(1, 2)}",
                                f"kill-swap:best:{rng.randint(1, 2)}"])
            done = embedtune(train_args(tiny_model_dir, tiny_data_dir, out, STEPS, SAVE, *args), fault)
            runs += 1
            assert (resumed_step(done) or 0) == start, done.stderr[-2000:]
            if done.returncode == 0:
                break
            assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
            kills += 1
            where = fault.split(":")
            fired[f"{where[0]}:{where[1]}"] = fired.get(f"{where[0]}:{where[1]}", 0) + 1
        assert losses(out) == losses(full)
        assert_same_adapter(out / "final", full / "final")
        assert_same_adapter(out / "best", full / "best")
        assert json.loads((out / "best.json").read_text()) == json.loads((full / "best.json").read_text())
        assert temporaries(out) == []
    print(f"soak: {kills} kills survived in {runs} runs over {rounds} rounds: {fired}")


# ---- truncated and corrupt checkpoints ------------------------------------------------------------------------

def tiny_config(model_dir, data_dir, out, **train) -> Config:
    return Config.from_dict({
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir)}, "lora": {"dropout": 0.1},
        "train": {"output_dir": str(out), "batch_size": 8, "lr": 1e-3, "max_steps": 6, "precision": "fp32",
                  "eval_steps": 0, "save_steps": 2, "warmup_ratio": 0.2, **train},
    }).validate()


def _bad_header(path: Path) -> None:
    weights = path / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"{garbage"  # the JSON header starts at byte 8
    weights.write_bytes(bytes(data))


def _truncate(name: str):
    def cut(path: Path) -> None:
        file = path / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return cut


def _flip_byte(path: Path) -> None:  # same size, parses maybe: only the manifest's hash tells
    file = path / "state.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _legacy_truncated_state(path: Path) -> None:  # no manifest (an older checkpoint): parsing must catch it
    (path / ckpt.MANIFEST).unlink()
    _truncate("state.pt")(path)


CORRUPTIONS = {
    "bad safetensors header": (_bad_header, "adapter_model.safetensors"),
    "truncated safetensors": (_truncate("adapter/adapter_model.safetensors"), "adapter_model.safetensors"),
    "missing state.pt": (lambda p: (p / "state.pt").unlink(), "state.pt is missing"),
    "truncated state.pt": (_truncate("state.pt"), "state.pt"),
    "flipped byte in state.pt": (_flip_byte, "state.pt"),
    "legacy checkpoint, truncated state.pt": (_legacy_truncated_state, "state.pt cannot be loaded"),
    "missing adapter config": (lambda p: (p / "adapter" / "adapter_config.json").unlink(), "adapter_config.json"),
}


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tiny_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000004", "step-0000006"]
    return out


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(trained_run, tmp_path, corruption, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    damage, reason = CORRUPTIONS[corruption]
    damage(out / ckpt.CHECKPOINTS / "step-0000006")
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        assert ckpt.latest_checkpoint(out) == out / ckpt.CHECKPOINTS / "step-0000004"
    (message,) = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert str(out / ckpt.CHECKPOINTS / "step-0000006") in message and reason in message


def test_resume_past_a_corrupt_checkpoint_equals_the_uninterrupted_run(trained_run, tiny_model_dir, tiny_data_dir,
                                                                       tmp_path, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    _truncate("state.pt")(out / ckpt.CHECKPOINTS / "step-0000006")
    (out / "final").rename(tmp_path / "final-before")
    with caplog.at_level(logging.INFO, logger="embedtune"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))
    assert any("resuming from" in r.getMessage() and "step-0000004" in r.getMessage() for r in caplog.records)
    assert losses(out) == losses(trained_run)
    assert_same_adapter(out / "final", trained_run / "final")
    assert ckpt.checkpoint_problem(out / ckpt.CHECKPOINTS / "step-0000006") is None  # rewritten, whole


def test_a_superseded_newer_checkpoint_never_displaces_the_current_ones(tiny_model_dir, tiny_data_dir, tmp_path):
    """Keep 1, resume from step 4 past a corrupt step 8: saving step 6 must keep 6 (not the bad 8)."""
    from embedtune.training.callbacks import Callback

    class Watch(Callback):
        seen: dict[int, list[str]] = {}

        def on_step_end(self, state, event):
            self.seen[state.step] = [p.name for p in ckpt.list_checkpoints(out)]

    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=8, save_total_limit=3))
    _truncate("state.pt")(out / ckpt.CHECKPOINTS / "step-0000008")
    (out / ckpt.CHECKPOINTS / "step-0000006").rename(tmp_path / "aside")
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=8, save_total_limit=1, resume=True),
          callbacks=[Watch()])
    assert Watch.seen == {5: ["step-0000004", "step-0000008"], 6: ["step-0000004", "step-0000008"],
                          7: ["step-0000006"], 8: ["step-0000006"]}
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000008"]
    assert ckpt.checkpoint_problem(out / ckpt.CHECKPOINTS / "step-0000008") is None


# ---- NaN, inf and loss spikes ---------------------------------------------------------------------------------

def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def test_nan_stops_keeps_the_last_good_checkpoint_and_resume_continues(tiny_model_dir, tiny_data_dir, tmp_path):
    full = tmp_path / "full"
    train(tiny_config(tiny_model_dir, tiny_data_dir, full))
    out = tmp_path / "run"
    with injected_faults("nan:loss:5"), pytest.raises(TrainingError) as stopped:
        train(tiny_config(tiny_model_dir, tiny_data_dir, out))
    message = str(stopped.value)
    assert message.startswith("loss is nan at step 5; stopped. Last good checkpoint: ")
    assert message.endswith("step-0000004. Try a lower --lr, --precision fp32 or --on-bad-loss skip.")
    assert "\n" not in message
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002", "step-0000004"]
    assert all(ckpt.checkpoint_problem(p) is None for p in ckpt.list_checkpoints(out))
    assert [e["step"] for e in events(out)] == [1, 2, 3, 4]  # nothing logged for the bad step
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))  # e.g. after lowering the lr; here: same
    assert losses(out) == losses(full)
    assert_same_adapter(out / "final", full / "final")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_skip_drops_the_bad_steps_update_and_counts_it(tiny_model_dir, tiny_data_dir, tmp_path, value, caplog):
    out = tmp_path / "run"
    with injected_faults(f"{value}:loss:3"), caplog.at_level(logging.WARNING, logger="embedtune"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, on_bad_loss="skip", save_steps=1,
                          save_total_limit=10))
    skipped = [e for e in events(out) if "skipped" in e]
    assert skipped == [{"step": 3, "skipped": f"loss is {value}", "lr": skipped[0]["lr"],
                        "seconds": skipped[0]["seconds"]}]
    assert [s for s, _ in losses(out)] == [1, 2, 4, 5, 6]
    adapter = {s: load_file(out / ckpt.CHECKPOINTS / f"step-{s:07d}" / "adapter" / "adapter_model.safetensors")
               for s in (2, 3, 4)}
    assert all(torch.equal(adapter[2][k], adapter[3][k]) for k in adapter[2])  # step 3 changed no weight
    assert not all(torch.equal(adapter[3][k], adapter[4][k]) for k in adapter[3])  # step 4 trained again
    assert all(torch.isfinite(t).all() for t in load_file(out / "final" / "adapter_model.safetensors").values())
    state = torch.load(out / ckpt.CHECKPOINTS / "step-0000006" / "state.pt", weights_only=True)
    assert (state["bad_loss"]["skipped"], state["bad_loss"]["consecutive"]) == (1, 0)
    warnings = [r.getMessage() for r in caplog.records]
    assert f"step 3 skipped: loss is {value} (1 skipped so far, 1 in a row)" in warnings
    assert any("1 steps were skipped for a bad loss" in w for w in warnings)


def test_skip_still_stops_after_max_bad_steps_in_a_row(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    with injected_faults("nan:loss:3,inf:loss:4,nan:loss:5"), pytest.raises(TrainingError) as stopped:
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, on_bad_loss="skip", max_bad_steps=3))
    assert str(stopped.value).startswith("3 bad steps in a row (the last: loss is nan at step 5); stopped. "
                                         "Last good checkpoint: ")
    assert str(stopped.value).endswith("step-0000004. Try a lower --lr, --precision fp32.")
    assert [e.get("skipped") for e in events(out)] == [None, None, "loss is nan", "loss is inf"]
    assert all(ckpt.checkpoint_problem(p) is None for p in ckpt.list_checkpoints(out))


def test_a_non_finite_gradient_is_a_bad_step_too(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(params, max_norm):
        calls["n"] += 1
        norm = real(params, max_norm)
        return norm * float("inf") if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, on_bad_loss="skip", max_steps=3))
    assert [e.get("skipped") for e in events(out)] == [None, "the gradient norm is inf", None]
    out = tmp_path / "stop"
    calls["n"] = 0
    with pytest.raises(TrainingError, match="the gradient norm is inf at step 2; stopped"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=3))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_loss_spike_above_the_running_median(tiny_model_dir, tiny_data_dir, tmp_path, policy):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=9, spike_factor=3.0, on_bad_loss=policy)
    with injected_faults("spike:loss:8"):  # 1000x the loss of step 8
        if policy == "stop":
            with pytest.raises(TrainingError, match=r"loss \S+ is above 3 x the running median \S+ at step 8; "
                                                    r"stopped\. .*step-0000006\. Try a lower --lr, --precision "
                                                    r"fp32, a larger --spike-factor or --on-bad-loss skip\."):
                train(config)
            return
        train(config)
    assert [e["step"] for e in events(out) if "skipped" in e] == [8]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6, 7, 9]
    median = sorted(loss for _, loss in losses(out)[:7])[3]
    assert all(loss < 3 * median for _, loss in losses(out))  # no real step was judged a spike


def test_bad_loss_options_from_flags_and_their_checks():
    from embedtune.cli import MODEL_FLAGS, TRAIN_FLAGS, build_parser, config_from_args

    args = build_parser().parse_args(["train", "--output-dir", "o", "--on-bad-loss", "skip", "--max-bad-steps", "3",
                                      "--spike-factor", "4"])
    t = config_from_args(args, MODEL_FLAGS | TRAIN_FLAGS).train
    assert (t.on_bad_loss, t.max_bad_steps, t.spike_factor) == ("skip", 3, 4.0)
    default = Config().train
    assert (default.on_bad_loss, default.max_bad_steps, default.spike_factor) == ("stop", 5, None)
    for bad, match in (({"on_bad_loss": "retry"}, "on_bad_loss must be one of stop, skip"),
                       ({"max_bad_steps": 0}, "max_bad_steps must be >= 1"),
                       ({"spike_factor": 1.0}, "spike_factor must be > 1")):
        with pytest.raises(ConfigError, match=match):
            Config.from_dict({"train": bad}).validate()


def test_fault_specs_are_checked():
    assert [(f.action, f.kind, f.number) for f in parse_faults("kill:step:3, enospc:report.json:*")] == [
        ("kill", "step", 3), ("enospc", "report.json", None)]
    for bad in ("kill:step", "explode:step:1", "kill:step:x", "kill::1"):
        with pytest.raises(ConfigError, match="EMBEDTUNE_FAULT: expected ACTION:KIND:N"):
            parse_faults(bad)


def test_the_hook_is_a_no_op_until_a_test_arms_it(tmp_path):
    """Unarmed, the product's one hook answers None and writes go through; injected_faults arms it for its block
    only (that a normal process never imports embedtune.testing: tests/test_runtime.py)."""
    path = tmp_path / "x.json"
    assert hook("train-callbacks") is None and hook("mid-write", kind="x.json", path=path, tmp=tmp_path) is None
    with injected_faults("enospc:x.json:2"):
        (callback,) = hook("train-callbacks")
        assert isinstance(callback, FaultCallback)
        write_text_atomically(path, "1")
        with pytest.raises(StorageError, match=r"cannot write .*x\.json: No space left on device"):
            write_text_atomically(path, "2")  # the second write of that kind
        assert path.read_text() == "1"
    assert hook("train-callbacks") is None
    write_text_atomically(path, "3")
    write_text_atomically(path, "4")  # a second write again, unarmed: nothing fires
    assert path.read_text() == "4"


# ---- `embedtune run`: killed at each stage --------------------------------------------------------------------

def run_args(model_dir, data_dir, out, config: Path) -> list[str]:
    return ["run", "--config", str(config), "--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir",
            str(out), "--tasks", "sts12", "sickr", "--batch-size", "8", "--lr", "1e-3", "--max-steps", "6",
            "--save-steps", "2", "--eval-steps", "0", "--select", "final", "--precision", "fp32", "--resume"]


def comparable(report: dict) -> dict:
    """A report without what differs between two runs of the same work: timings and the output folder."""
    timing = {"seconds", "sentences_per_s"}
    return {"base": {k: v for k, v in report["base"].items() if k not in timing},
            "tuned": {k: v for k, v in report["tuned"].items() if k not in timing},
            "gain": report["gain"], "selected": {k: report["selected"][k] for k in ("by", "step", "dev_score")},
            "plan_steps": report["plan"]["steps"] if report["plan"] else None}


def test_run_killed_in_each_stage_reports_only_at_the_end_what_an_uninterrupted_run_reports(
        tiny_model_dir, tiny_data_dir, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  precision: fp32\n  batch_size: 16\n")  # no timing-based precision choice
    full = tmp_path / "full"
    done = embedtune(run_args(tiny_model_dir, tiny_data_dir, full, config))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    finished = ("report.json", "report.md", "tuned.json")
    for fault, present, absent in (
            ("kill:base.json:1", [], ["base.json", "metrics.jsonl"]),  # in the baseline's write
            ("kill:step:3", ["base.json", "checkpoints/step-0000002"], ["final"]),  # in training
            ("kill:tuned.json:1", ["final", "tuned.md"], [])):  # in the tuned evaluation's write
        done = embedtune(run_args(tiny_model_dir, tiny_data_dir, out, config), fault)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert [name for name in present if not (out / name).exists()] == []
        assert [name for name in (*absent, *finished) if (out / name).exists()] == []  # nothing looks done
    done = embedtune(run_args(tiny_model_dir, tiny_data_dir, out, config))
    assert done.returncode == 0, done.stderr
    assert "reusing the baseline" in done.stderr and resumed_step(done) == 6
    report = json.loads((out / "report.json").read_text())
    assert comparable(report) == comparable(json.loads((full / "report.json").read_text()))
    assert report["selected"]["adapter"] == str(out / "final")
    assert losses(out) == losses(full)
    assert_same_adapter(out / "final", full / "final")
    assert temporaries(out) == []


def test_a_run_removes_the_previous_runs_report_before_it_starts(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                  monkeypatch):
    from embedtune import experiment

    out = tmp_path / "run"
    out.mkdir()
    for name in ("report.json", "report.md", "tuned.json", "tuned.md", "plan.json"):
        (out / name).write_text("{}")

    def crash(config, callbacks=()):
        raise TrainingError("crashed in training")

    monkeypatch.setattr(experiment, "train", crash)
    config = tiny_config(tiny_model_dir, tiny_data_dir, out)
    config.eval.tasks, config.eval.precision = ["sts12"], "fp32"
    with pytest.raises(TrainingError):
        experiment.run_experiment(config)
    assert sorted(p.name for p in out.iterdir()) == ["base.json", "base.md"]
    assert set(json.loads((out / "base.json").read_text())["tasks"]) == {"sts12"}
    (out / "base.json").write_text('{"tasks": {"sts12": {"spearman": 1.0')  # half a file (an old writer's crash)
    config.train.resume = True
    with pytest.raises(TrainingError):
        experiment.run_experiment(config)
    assert set(json.loads((out / "base.json").read_text())["tasks"]) == {"sts12"}  # evaluated again, whole
