"""`embedtune sweep`: grid parsing and run names, the base model scored once, failed runs, and a sweep killed in
the middle of a run (a real SIGKILL through EMBEDTUNE_FAULT) that the same command then finishes."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedtune.cli import main
from embedtune.config import Config, ModelConfig
from embedtune.errors import ConfigError
from embedtune.models.embedder import Embedder
from embedtune.runs import load_sweep
from embedtune.sweep import Baselines, parse_grid, parse_zip, plan_runs, split_values
from embedtune.testing.faults import FAULT_ENV

SAFE_NAME = re.compile(r"[A-Za-z0-9._+,=~-]+")


# ---- the grid, without any model ------------------------------------------------------------------------------

def test_commas_inside_quotes_and_brackets_do_not_split():
    assert split_values("'a, b',[c, d],e,it's,\"x\\\", y\"", "w") == ["'a, b'", "[c, d]", "e", "it's", '"x\\", y"']
    assert split_values(",{} is:", "w") == ["", "{} is:"]  # the shell has removed the quotes of ''
    (prompt, targets, tasks, steps) = parse_grid(["model.prompt=,{} is:,'{}, in short:'",
                                                  "lora.targets='q_proj,v_proj',all-linear",
                                                  "eval.tasks=[sts12, sts13],[sickr]", "train.max_steps=null,3"])
    assert [v.value for v in prompt.values] == ["", "{} is:", "{}, in short:"]
    assert [v.value for v in targets.values] == ["q_proj,v_proj", "all-linear"]
    assert [v.value for v in tasks.values] == [["sts12", "sts13"], ["sickr"]]
    assert [v.value for v in steps.values] == [None, "3"]


def test_values_are_coerced_and_checked_like_yaml_values():
    axes = parse_grid(["train.lr=5e-3,5e-4", "train.hard_negatives=true,off", "lora.r=4"])
    runs = plan_runs(Config(), axes, Path("/sweep"))
    assert [(r.config.train.lr, r.config.train.hard_negatives, r.config.lora.r) for r in runs] == [
        (5e-3, True, 4), (5e-3, False, 4), (5e-4, True, 4), (5e-4, False, 4)]
    assert {r.config.train.resume for r in runs} == {True}
    assert runs[1].config.train.output_dir == "/sweep/runs/lr=5e-3,hard_negatives=off,r=4"


def test_run_names_are_stable_file_system_safe_and_distinct():
    axes = parse_grid(["model.prompt=,{} is:,{} is;,plain", "train.batch_size=8", "eval.batch_size=16,32"])
    names = [run.name for run in plan_runs(Config(), axes, Path("/s"))]
    assert names[:2] == ["prompt=~da39a3,train.batch_size=8,eval.batch_size=16",  # sha1('') starts da39a3
                         "prompt=~da39a3,train.batch_size=8,eval.batch_size=32"]
    assert names[2] == "prompt=is~947168,train.batch_size=8,eval.batch_size=16"
    assert names[4].startswith("prompt=is~") and names[4] != names[2]  # '{} is;' and '{} is:' do not clash
    assert names[6] == "prompt=plain,train.batch_size=8,eval.batch_size=16"
    assert len(set(names)) == 8 and all(SAFE_NAME.fullmatch(n) for n in names)
    assert names == [run.name for run in plan_runs(Config(), axes, Path("/s"))]
    long = plan_runs(Config(), parse_grid(["model.prompt='" + "x" * 400 + "'"]), Path("/s"))[0].name
    assert len(long) <= 150 and SAFE_NAME.fullmatch(long)


@pytest.mark.parametrize("spec,message", [
    ("lr=1", "expected SECTION.FIELD=V1,V2,... (e.g. train.lr=5e-4,5e-5); sections: model, data, lora, train, eval"),
    ("trian.lr=1", "--grid trian.lr: unknown section 'trian' (valid: model, data, lora, train, eval)"),
    ("train.lrr=1,2", "--grid train.lrr: unknown field 'lrr' in train (valid: all_directions, batch_size, "),
    ("train.lr=abc", "train.lr: expected float, got 'abc'"),
    ("train.lr=5e-3,0.005", "--grid train.lr: '5e-3' and '0.005' are the same value"),
    ("train.lr=0,1e-3", "--grid run lr=0: train.lr must be > 0, got 0.0"),
    ("eval.tasks=[sts12],[sts99]", "unknown task(s): sts99"),
    ("train.output_dir=a,b", "--grid train.output_dir: not a field to sweep"),
    ("model.prompt='{} is:", "--grid model.prompt: missing closing '"),
    ("eval.tasks=[sts12", "--grid eval.tasks: missing closing ]"),
])
def test_a_bad_grid_fails_in_one_line_before_any_model_loads(spec, message, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Embedder, "from_config", no_model)
    assert main(["sweep", "--output-dir", str(tmp_path / "o"), "--grid", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_zipped_fields_move_together_and_cross_the_grid():
    axes = parse_grid(["lora.r=8,16"])
    zipped = parse_zip(["train.seed=1,2,42", "train.cosent=0,0.3,0.3"], axes)  # 0.3 twice: allowed when zipped
    runs = plan_runs(Config(), axes, Path("/s"), zipped)
    assert [(r.config.train.seed, r.config.train.cosent, r.config.lora.r) for r in runs] == [
        (1, 0.0, 8), (1, 0.0, 16), (2, 0.3, 8), (2, 0.3, 16), (42, 0.3, 8), (42, 0.3, 16)]
    assert [r.name for r in runs[:3]] == ["seed=1,cosent=0,r=8", "seed=1,cosent=0,r=16", "seed=2,cosent=0.3,r=8"]
    assert runs[2].overrides == {"train.seed": "2", "train.cosent": "0.3", "lora.r": "8"}
    assert [r.name for r in plan_runs(Config(), [], Path("/s"), zipped)] == [
        "seed=1,cosent=0", "seed=2,cosent=0.3", "seed=42,cosent=0.3"]


@pytest.mark.parametrize("args,message", [
    (["--zip", "train.seed=1,2", "--zip", "train.cosent=0"],
     "--zip train.cosent: 1 values, but --zip train.seed has 2 (zipped fields list one value per point)"),
    (["--zip", "train.seed=1,1"], "--zip: points 1 and 2 are the same (1)"),
    (["--zip", "train.seed=1,2", "--zip", "train.lr=1e-3,2e-3,3e-3"], "--zip train.lr: 3 values, but"),
    (["--grid", "train.seed=1,2", "--zip", "train.seed=3,4"], "--zip train.seed: given twice"),
    ([], "sweep: give at least one --grid SECTION.FIELD=V1,V2,... (e.g. --grid train.lr=5e-4,5e-5) or --zip"),
    (["--grid", "model.prompt=,{} is:", "--average-adapters"],
     "--average-adapters: runs prompt=~da39a3 and prompt=is~947168 differ in model.prompt; only adapters of one "
     "embedder"),
    (["--grid", "lora.targets=attention,all-linear", "--average-adapters"], "differ in lora.targets"),
    (["--grid", "lora.r=2,4", "--average-scale", "0.5"], "--average-scale scales the averaged adapters: give "
                                                         "--average-adapters too"),
    (["--grid", "lora.r=2,4", "--average-adapters", "--average-scale", "0"], "--average-scale must be > 0, got 0.0"),
    (["--grid", "lora.r=2", "--average-adapters"], "--average-adapters: the grid has one run, nothing to average"),
])
def test_a_bad_zip_or_average_fails_in_one_line_before_any_model_loads(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Embedder, "from_config", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["sweep", "--output-dir", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_field_given_twice_and_no_grid_are_errors():
    with pytest.raises(ConfigError, match="--grid train.lr: given twice"):
        parse_grid(["train.lr=1e-3", "train.lr=2e-3"])
    with pytest.raises(ConfigError, match="give at least one --grid"):
        parse_grid([])


def test_baseline_keys_survive_a_new_model_field_at_its_default_and_change_with_any_setting():
    config = Config()
    extended = dataclasses.make_dataclass("ExtendedModelConfig", [("future_switch", bool, False)],
                                          bases=(ModelConfig,))
    with_new_field = dataclasses.replace(config, model=extended(**dataclasses.asdict(config.model)))
    assert Baselines.key(with_new_field) == Baselines.key(config)  # base scores filed before the field stay found
    switched = dataclasses.replace(config, model=extended(**dataclasses.asdict(config.model), future_switch=True))
    cut, prompted = (dataclasses.replace(config, model=dataclasses.replace(config.model, **change))
                     for change in ({"num_layers": 14}, {"prompt": "{} is:"}))
    assert len({Baselines.key(c) for c in (config, switched, cut, prompted)}) == 4


# ---- sweeps on the tiny model ---------------------------------------------------------------------------------

def sweep_args(model_dir, data_dir, out, config: Path, *grid: str, steps: int = 2) -> list[str]:
    return ["sweep", "--config", str(config), "--model", str(model_dir), "--data-dir", str(data_dir),
            "--output-dir", str(out), "--tasks", "sts12", "--batch-size", "8", "--max-steps", str(steps),
            "--save-steps", "2", "--eval-steps", "2", "--select", "final", "--precision", "fp32",
            *[arg for spec in grid for arg in ("--grid", spec)]]


@pytest.fixture
def eval_config(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text("eval:\n  precision: fp32\n  batch_size: 16\n")  # no timing-based precision choice
    return path


@pytest.fixture
def base_loads(monkeypatch) -> list[tuple[str | None, str | None]]:
    """(prompt, adapter) of every Embedder built through from_config: the base evaluations have no adapter."""
    real = Embedder.from_config.__func__
    loads = []

    def recording(cls, config, *, adapter=None, **kwargs):
        loads.append((config.prompt, adapter))
        return real(cls, config, adapter=adapter, **kwargs)

    monkeypatch.setattr(Embedder, "from_config", classmethod(recording))
    return loads


def test_a_sweep_scores_each_base_model_once_and_reports_every_run(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                   eval_config, base_loads, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, tiny_data_dir, out, eval_config, "train.lr=1e-3,2e-3", "model.prompt=,{} is:")
    assert main(args) == 0
    names = ["lr=1e-3,prompt=~da39a3", "lr=1e-3,prompt=is~947168", "lr=2e-3,prompt=~da39a3",
             "lr=2e-3,prompt=is~947168"]
    # Two base models (two prompts) for four runs: each scored once; the trainer builds its model itself.
    assert [load for load in base_loads if load[1] is None] == [("", None), ("{} is:", None)]
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == names and report["counts"]["done"] == 4
    scored = {b["prompt"]: b for b in (json.loads(p.read_text()) for p in (out / "baselines").glob("*.json"))}
    assert sorted(scored) == ["", "{} is:"]
    for run in report["runs"]:
        tuned = json.loads((out / "runs" / run["name"] / "tuned.json").read_text())
        assert (run["status"], run["average"], run["tasks"]) == ("done", tuned["average"],
                                                                 {"sts12": tuned["tasks"]["sts12"]["spearman"]})
        base = json.loads((out / "runs" / run["name"] / "base.json").read_text())
        assert base == scored[run["overrides"]["model.prompt"]]  # the shared evaluation, as run reports it
        assert run["train_seconds"] > 0
    assert report["best"] == max(report["runs"], key=lambda r: r["average"])["name"]
    assert sorted(b["label"] for b in report["baselines"]) == ["base model (prompt '')", "base model (prompt '{} is:')"]
    markdown = (out / "report.md").read_text()
    best = next(r for r in report["runs"] if r["name"] == report["best"])
    assert (f"| **{best['name']}** | done | {best['tasks']['sts12']:.2f} | {best['average']:.2f} ± 0.00 | "
            f"{best['train_seconds']:.1f} s |") in markdown
    assert "| STS12 | average ± std | training |" in markdown
    assert (out / "dev_curves.png").is_file() and (out / "averages.png").is_file()
    page = (out / "report.html").read_text()
    assert page.count("<section class=run ") == 4 and all(name in page for name in names)
    assert all((out / "runs" / name / "report.html").is_file() for name in names)
    assert "best: " + report["best"] in capsys.readouterr().out


def test_a_failed_run_is_reported_and_the_sweep_goes_on_then_a_rerun_retries_only_it(
        tiny_model_dir, tiny_data_dir, tmp_path, eval_config, capsys):
    out = tmp_path / "sweep"
    # max_train_samples 1 passes the config check but leaves too little data: that run fails when it trains.
    args = sweep_args(tiny_model_dir, tiny_data_dir, out, eval_config, "data.max_train_samples=1,64")
    assert main(args) == 1
    report = json.loads((out / "report.json").read_text())
    failed, done = report["runs"]
    assert (failed["name"], failed["status"], done["status"]) == ("max_train_samples=1", "failed", "done")
    assert failed["error"].startswith("DataError: no training data left after cleaning")
    assert failed["average"] is None and "Traceback" in (out / "runs" / failed["name"] / "error.txt").read_text()
    assert report["counts"] == {"done": 1, "failed": 1, "interrupted": 0, "pending": 0}
    assert f"max_train_samples=1 failed: {failed['error']}" in (out / "report.md").read_text()
    assert "sweep: 1 done, 1 failed" in capsys.readouterr().out
    finished_at = (out / "runs" / done["name"] / "report.json").stat().st_mtime_ns
    assert main(args) == 1  # the failed run is tried again (and fails again); the finished one is skipped
    assert (out / "runs" / done["name"] / "report.json").stat().st_mtime_ns == finished_at
    assert json.loads((out / "report.json").read_text())["counts"] == report["counts"]


def test_averaged_adapters_are_the_scaled_mean_update_of_the_runs_scored_beside_them_and_kept_on_a_rerun(
        tiny_model_dir, tiny_data_dir, tmp_path, eval_config, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, tiny_data_dir, out, eval_config, "lora.r=2,4")
    args += ["--zip", "train.seed=1,2", "--zip", "train.lr=1e-3,3e-3", "--average-adapters", "--average-scale", "0.5"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    names = ["seed=1,lr=1e-3,r=2", "seed=1,lr=1e-3,r=4", "seed=2,lr=3e-3,r=2", "seed=2,lr=3e-3,r=4"]
    assert [r["name"] for r in report["runs"]] == names and report["counts"]["done"] == 4
    averaged = report["averaged"]
    tuned = json.loads((out / "averaged" / "tuned.json").read_text())
    assert (averaged["status"], averaged["average"], averaged["averaged_from"], averaged["scale"]) == (
        "done", tuned["average"], names, 0.5)
    assert averaged["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in report["runs"]))
    assert report["best"] in names  # the average is shown beside the runs, not ranked among them

    # The averaged adapter's update of a module is half the mean of the runs' updates (ranks 2, 4, 2, 4 stacked).
    def update(folder: Path, module: str) -> torch.Tensor:
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = load_file(folder / "adapter_model.safetensors")
        a, b = (weights[f"{module}.lora_{x}.weight"].float() for x in "AB")
        return b @ a * config["lora_alpha"] / config["r"]

    module = next(k for k in load_file(out / "averaged" / "adapter" / "adapter_model.safetensors")
                  if k.endswith("lora_A.weight")).removesuffix(".lora_A.weight")
    finals = [out / "runs" / name / "final" for name in names]
    mean = sum(update(f, module) for f in finals) / 4
    assert torch.allclose(update(out / "averaged" / "adapter", module), 0.5 * mean, atol=1e-6)
    assert mean.abs().max() > 0

    markdown = (out / "report.md").read_text()
    assert f"| averaged (4 runs) | done | {tuned['tasks']['sts12']['spearman']:.2f} |" in markdown
    page = (out / "report.html").read_text()
    assert page.count("<section class=run ") == 5 and "The adapters of 4 runs averaged" in page
    assert f"4 runs: 4 done; their adapters averaged: {tuned['average']:.2f}." in page
    assert "zipped: the i-th values" in page and "the mean of theirs times 0.5" in page
    own_page = (out / "averaged" / "report.html").read_text()
    assert "Best run: <b>averaged (4 runs)</b>" not in own_page and "<b>averaged</b>" in own_page
    assert f"averaged adapters: {tuned['average']:.2f}" in capsys.readouterr().out

    made_at = (out / "averaged" / "report.json").stat().st_mtime_ns
    assert main(args) == 0  # nothing to train: the runs and their average stay as they were
    assert (out / "averaged" / "report.json").stat().st_mtime_ns == made_at
    assert main(args[:-2]) == 0  # another scale: made again, from the same runs
    assert json.loads((out / "report.json").read_text())["averaged"]["scale"] == 1.0
    assert torch.allclose(update(out / "averaged" / "adapter", module), mean, atol=1e-6)
    made_at = (out / "averaged" / "report.json").stat().st_mtime_ns
    (out / "runs" / names[3] / "report.json").unlink()  # that run is redone, so the average is made again
    assert main(args[:-2]) == 0
    assert (out / "averaged" / "report.json").stat().st_mtime_ns != made_at
    assert json.loads((out / "report.json").read_text())["averaged"]["status"] == "done"


def test_an_average_waits_for_every_run(tiny_model_dir, tiny_data_dir, tmp_path, eval_config, capsys):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, tiny_data_dir, out, eval_config, "data.max_train_samples=1,64") + [
        "--average-adapters"]
    assert main(args) == 1  # the first run fails (too little data): no average of the one that finished
    averaged = json.loads((out / "report.json").read_text())["averaged"]
    assert (averaged["status"], averaged["average"]) == ("skipped", None)
    assert averaged["error"] == "not every run finished (max_train_samples=1)"
    assert not (out / "averaged" / "report.json").exists()
    assert "No averaged adapter: skipped, not every run finished" in (out / "report.md").read_text()
    assert "averaged adapters: skipped" in capsys.readouterr().out


# ---- killed in the middle of a run, then the same command -----------------------------------------------------

def embedtune(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "embedtune", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_killed_sweep_rerun_skips_finished_runs_resumes_the_interrupted_one_and_reports_each_once(
        tiny_model_dir, tiny_data_dir, tmp_path, eval_config):
    out = tmp_path / "sweep"
    args = sweep_args(tiny_model_dir, tiny_data_dir, out, eval_config, "train.lr=1e-3,2e-3,3e-3", steps=4)
    args[args.index("--eval-steps") + 1] = "0"
    first, second, third = (out / "runs" / f"lr={lr}" for lr in ("1e-3", "2e-3", "3e-3"))
    # Checkpoints at steps 2 and 4 of each run: the 4th checkpoint write of the process is the second run's at
    # step 4; the kill comes in the middle of it, so that run has step 2 to resume from.
    done = embedtune(args, "kill:checkpoint:4")
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    recorded = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in recorded] == ["done", "running", "pending"]
    assert (first / "report.json").is_file() and not (second / "report.json").exists() and not third.exists()
    assert not (out / "report.json").exists() and not (out / "report.html").exists()  # nothing looks finished
    assert [run.status for run in load_sweep(out).runs] == ["done", "interrupted", "pending"]
    finished_at = (first / "report.json").stat().st_mtime_ns

    done = embedtune(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping lr=1e-3: finished ({first / 'report.json'})" in done.stderr
    assert re.findall(r"resuming from (\S+) \(step (\d+)\)", done.stderr) == [
        (str(second / "checkpoints" / "step-0000002"), "2")]  # the third run starts from the beginning
    assert (first / "report.json").stat().st_mtime_ns == finished_at
    steps = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the resumed run's steps once each
    report = json.loads((out / "report.json").read_text())
    assert [(r["name"], r["status"]) for r in report["runs"]] == [("lr=1e-3", "done"), ("lr=2e-3", "done"),
                                                                  ("lr=3e-3", "done")]
    page = (out / "report.html").read_text()
    assert page.count("<section class=run ") == 3 and page.count(">lr=2e-3</a>") == 1
    assert "interrupted" not in page.replace(".status.interrupted", "")


@pytest.mark.slow
def test_one_run_per_gpu_side_by_side_gives_what_one_after_another_gives(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                        eval_config, monkeypatch, capsys):
    """The worker-per-GPU path, on CPU: two pretend GPUs (each worker pinned with CUDA_VISIBLE_DEVICES)."""
    from embedtune import sweep

    grid = ("train.lr=1e-3,2e-3,3e-3",)
    assert main(sweep_args(tiny_model_dir, tiny_data_dir, tmp_path / "in_turn", eval_config, *grid)) == 0
    monkeypatch.setattr(sweep, "gpu_slots", lambda config: ["0", "1"])
    assert main(sweep_args(tiny_model_dir, tiny_data_dir, tmp_path / "side_by_side", eval_config, *grid)) == 0
    printed = capsys.readouterr().out
    assert "lr=1e-3 on GPU 0" in printed and "lr=2e-3 on GPU 1" in printed and "lr=3e-3 on GPU " in printed

    def scores(out: Path) -> list[tuple[str, str, float]]:
        return [(r["name"], r["status"], r["average"]) for r in json.loads((out / "report.json").read_text())["runs"]]

    assert scores(tmp_path / "side_by_side") == scores(tmp_path / "in_turn")
    assert len(list((tmp_path / "side_by_side" / "baselines").glob("*.json"))) == 1  # scored here, once


def test_a_run_folder_with_a_retired_option_still_counts_as_made_with_its_settings():
    from embedtune.sweep.plan import _comparable

    # config.json of a run made before train.log_steps was retired: the same settings, so the run is not redone.
    assert _comparable({"train": {"log_steps": 1, "lr": 5e-4}}) == _comparable({"train": {"lr": 5e-4}})
    assert _comparable({"train": {"lr": 5e-4}}) != _comparable({"train": {"lr": 5e-5}})
