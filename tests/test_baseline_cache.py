"""`run` and `sweep` reuse the base model's evaluation from the user's cache: the same model, evaluation settings,
data and precision score once; --no-cache, a changed data file or another precision score again; the output and
the reports say which; a budgeted run spends the saved minutes on training."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.config import Config
from embedtune.evaluation.sts import STSEvaluator
from embedtune.models.embedder import Embedder
from embedtune.runs import EvalResult, baseline_key, data_fingerprint, layout
from embedtune.runs.baselines import BaselineFolder

REUSING = "reusing the base model's evaluation from the cache ("


@pytest.fixture
def eval_config(tmp_path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text("eval:\n  precision: fp32\n  batch_size: 16\n")  # no timing-based precision choice
    return path


@pytest.fixture
def base_loads(monkeypatch) -> list[str | None]:
    """The adapter of every Embedder built through from_config (a base evaluation's has none; the trainer's is
    ''), each Embedder tagged with it."""
    real = Embedder.from_config.__func__
    loads = []

    def recording(cls, config, *, adapter=None, **kwargs):
        loads.append(adapter)
        embedder = real(cls, config, adapter=adapter, **kwargs)
        embedder.built_with_adapter = adapter
        return embedder

    monkeypatch.setattr(Embedder, "from_config", classmethod(recording))
    return loads


@pytest.fixture
def scored(monkeypatch, base_loads) -> list[str]:
    """One entry per evaluation of the STS test sets (the dev set left out), "base" or "tuned": any other encode
    of them would show up here."""
    real = STSEvaluator.__call__
    calls = []

    def recording(self, embedder):
        if not self.name_suffix:
            calls.append("tuned" if getattr(embedder, "built_with_adapter", None) else "base")
        return real(self, embedder)

    monkeypatch.setattr(STSEvaluator, "__call__", recording)
    return calls


def run_args(model_dir, data_dir, out, config: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(config), "--model", str(model_dir), "--data-dir", str(data_dir), "--output-dir",
            str(out), "--tasks", "sts12", "sickr", "--batch-size", "8", "--max-steps", "2", "--save-steps", "2",
            "--eval-steps", "0", "--select", "final", "--precision", "fp32", *extra]


def base_evaluations(loads: list[str | None]) -> int:
    return sum(adapter is None for adapter in loads)


def test_a_second_run_reuses_the_base_models_evaluation_and_says_so(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                    eval_config, base_loads, capsys,
                                                                    tiny_baseline_cache):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(run_args(tiny_model_dir, tiny_data_dir, first, eval_config)) == 0
    assert base_evaluations(base_loads) == 1 and REUSING not in capsys.readouterr().out
    cached = list(tiny_baseline_cache.glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == json.loads((first / layout.BASE_FILE).read_text())

    assert main(run_args(tiny_model_dir, tiny_data_dir, second, eval_config)) == 0
    assert base_evaluations(base_loads) == 1  # no second base model: nothing of the STS sets encoded for it
    printed = capsys.readouterr().out
    assert f"{REUSING}{cached[0]}); --no-cache scores it again" in printed and "1/3 baseline evaluation" in printed
    report, before = (json.loads((out / layout.REPORT_FILE).read_text()) for out in (second, first))
    assert report["base"]["reused"] == {"source": "cache", "path": str(cached[0]), "key": cached[0].stem}
    assert {k: v for k, v in report["base"].items() if k != "reused"} == before["base"]  # the same evaluation
    assert "reused" not in before["base"]
    assert json.loads((second / layout.BASE_FILE).read_text()) == before["base"]  # base.json: the evaluation as made
    assert "Baseline: reused the base model's evaluation from the cache" in (second / "report.md").read_text()
    assert "Baseline:" not in (first / "report.md").read_text()
    assert "base: reused from the cache" in (second / layout.REPORT_HTML).read_text()


def test_no_cache_a_changed_data_file_or_another_precision_score_again(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                      eval_config, scored, capsys,
                                                                      tiny_baseline_cache):
    assert main(run_args(tiny_model_dir, tiny_data_dir, tmp_path / "a", eval_config)) == 0
    assert scored == ["base", "tuned"]
    assert main(run_args(tiny_model_dir, tiny_data_dir, tmp_path / "b", eval_config, "--no-cache")) == 0
    assert scored[2:] == ["base", "tuned"] and REUSING not in capsys.readouterr().out
    assert "reused" not in json.loads((tmp_path / "b" / layout.REPORT_FILE).read_text())["base"]

    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    assert main(run_args(tiny_model_dir, data, tmp_path / "c", eval_config)) == 0  # a copy: the same content
    assert scored[4:] == ["tuned"] and REUSING in capsys.readouterr().out
    sts12 = data / "sts" / "sts12" / "test.tsv"
    rows = sts12.read_text().splitlines()
    sentence1, sentence2, _ = rows[1].split("\t")
    sts12.write_text("\n".join([rows[0], f"{sentence1}\t{sentence2}\t4.99", *rows[2:]]) + "\n")  # one gold score
    assert main(run_args(tiny_model_dir, data, tmp_path / "d", eval_config)) == 0
    assert scored[5:] == ["base", "tuned"] and REUSING not in capsys.readouterr().out

    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text("eval:\n  precision: bf16\n  batch_size: 16\n")
    assert main(run_args(tiny_model_dir, tiny_data_dir, tmp_path / "e", bf16)) == 0
    assert scored[7:] == ["base", "tuned"]
    assert json.loads((tmp_path / "e" / layout.BASE_FILE).read_text())["computed_with"]["precision"] == "bf16"
    assert len(list(tiny_baseline_cache.glob("*.json"))) == 3  # fp32, fp32 with the changed file, bf16


def test_a_sweep_and_a_run_share_the_cache(tiny_model_dir, tiny_data_dir, tmp_path, eval_config, base_loads,
                                           capsys):
    assert main(run_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", eval_config)) == 0
    assert base_evaluations(base_loads) == 1
    sweep = tmp_path / "sweep"
    args = run_args(tiny_model_dir, tiny_data_dir, sweep, eval_config, "--grid", "train.lr=1e-3,2e-3")
    assert main(["sweep", *args[1:]]) == 0
    assert base_evaluations(base_loads) == 1 and REUSING in capsys.readouterr().out
    filed = list((sweep / layout.BASELINES_DIR).glob("*.json"))
    assert len(filed) == 1  # the sweep keeps its copy, as when it scores the base model itself
    base = json.loads((tmp_path / "run" / layout.BASE_FILE).read_text())
    assert json.loads(filed[0].read_text()) == base
    report = json.loads((sweep / "runs" / "lr=1e-3" / layout.REPORT_FILE).read_text())
    assert report["base"]["reused"]["source"] == "cache"


def test_the_key_holds_the_data_the_precision_and_the_model_folders_files(tiny_model_dir, tiny_data_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = Config.from_dict({"model": {"name": str(model)}, "eval": {"tasks": ["sts12"]}})
    data = data_fingerprint(STSEvaluator.from_tasks(["sts12"], tiny_data_dir).datasets)
    other = data_fingerprint(STSEvaluator.from_tasks(["sts13"], tiny_data_dir).datasets)
    key = baseline_key(config, data, "cpu/float32")
    assert key == baseline_key(config, data, "cpu/float32") and len(key) == 16
    assert len({key, baseline_key(config, other, "cpu/float32"), baseline_key(config, data, "cpu/bfloat16"),
                baseline_key(dataclasses.replace(config, eval=dataclasses.replace(config.eval, batch_size=8)),
                             data, "cpu/float32")}) == 4
    weights = model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # the same path, trained again
    assert baseline_key(config, data, "cpu/float32") != key


def test_an_unwritable_cache_costs_the_next_run_an_evaluation_not_this_one(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    BaselineFolder(blocked / "baselines", "cache").keep("k", EvalResult(tasks={}))  # a warning, no error
    assert "could not keep the base model's evaluation in the cache" in caplog.text


def test_a_budgeted_run_spends_the_minutes_of_a_reused_baseline_on_training(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                           eval_config, monkeypatch, base_loads,
                                                                           capsys):
    """The base evaluation is made slow (5 s, and it says so, as a real one would); with a 12 s budget the run
    that scores it has no time left for steps after the three that time them, and the run that reuses it has those
    5 s for training."""
    from embedtune import experiment

    slow_s, real = 5.0, STSEvaluator.__call__

    def slow_base(self, embedder):
        result = real(self, embedder)
        if not self.name_suffix and not getattr(embedder, "built_with_adapter", None):
            time.sleep(slow_s)
            result["seconds"] += slow_s
        return result

    monkeypatch.setattr(STSEvaluator, "__call__", slow_base)
    monkeypatch.setattr(experiment, "REPORT_S", 0.0)  # the budget keeps no margin for the report here

    def planned_steps(out: Path, *extra: str) -> int:
        args = run_args(tiny_model_dir, tiny_data_dir, out, eval_config, "--time-budget", "12s", *extra)
        args[args.index("--max-steps") + 1] = "200"
        assert main(args) == 0
        return json.loads((out / layout.REPORT_FILE).read_text())["plan"]["steps"]

    scored_steps = planned_steps(tmp_path / "scored")
    reused_steps = planned_steps(tmp_path / "reused")
    assert REUSING in capsys.readouterr().out
    assert reused_steps > scored_steps, (scored_steps, reused_steps)
