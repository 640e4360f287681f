"""The run folder's records (embedtune.runs): load and save round trips, files from older or newer versions read
without losing a field, every evaluation saying how it was computed, and the report only rendering."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embedtune.cli import main
from embedtune.runs import (
    ComputedWith,
    Environment,
    EvalResult,
    Plan,
    Reuse,
    RunReport,
    Selected,
    SweepRecord,
    SweepRunState,
    layout,
    load_run,
)
from embedtune.runs.capture import versions

STS = {"spearman": 61.25, "n": 12, "kind": "sts", "main_score": 61.25}
EVAL = {"model": "tiny", "pooling": "eos", "prompt": "", "tasks": {"sts12": STS, "sickr": {**STS, "spearman": 40.5}},
        "average": 50.875, "std": 10.375, "seconds": 1.23, "sentences": 48, "unique_sentences": 40,
        "sentences_per_s": 39.0}
COMPUTED = {"precision": "bf16", "precision_asked": "auto", "bf16_speedup": 1.87, "device": "cpu",
            "device_name": "Test CPU", "versions": {"embedtune": "0.1.0", "torch": "2.5.1", "transformers": "4.5",
                                                    "peft": None}}
PLAN = {"budget_s": 1200.0, "steps": 33, "eval_steps": 11, "step_s": 9.21, "dev_eval_s": 12.5, "final_eval_s": 410.0,
        "estimated_s": 1185.42, "notes": ["steps 198 -> 33 to fit the budget"]}
SELECTED = {"adapter": "/r/best", "by": "best", "step": 22, "dev_score": 71.5}


def report_dict() -> dict:
    tuned = {**EVAL, "average": 60.0, "computed_with": COMPUTED}
    return {"base": {**EVAL, "computed_with": COMPUTED}, "tuned": tuned, "gain": 9.125, "plan": PLAN,
            "seconds": 1190.2, "selected": SELECTED}


@pytest.mark.parametrize("kind,data", [
    (EvalResult, {**EVAL, "computed_with": COMPUTED}),
    (EvalResult, {**EVAL, "pair_classification": {"tasks": {"p": {"ap": 70.0}}, "average": 70.0},
                  "reused": {"source": "cache", "path": "/c/k.json", "key": "k"}}),
    (RunReport, report_dict()),
    (RunReport, {**report_dict(), "plan": None, "averaged_from": ["a", "b"], "adapters": ["/a", "/b"],
                 "scale": 0.5, "train_seconds": 12.5}),
    (Plan, PLAN),
    (Environment, {"versions": {"torch": "2.5.1", "python": "3.11.7"}, "hardware": {"cpu": "x", "gpus": []},
                   "recorded": "2025-01-01 00:00:00 +0000"}),
    (SweepRecord, {"grid": [{"field": "train.lr", "values": ["1e-3"]}],
                   "runs": [{"name": "lr=1e-3", "dir": "runs/lr=1e-3", "overrides": {"train.lr": "1e-3"},
                             "status": "done", "error": None, "seconds": 3.5, "config": {"train": {"lr": 0.001}}}],
                   "updated": "2025-01-01 00:00:00", "averaged": {"status": "skipped", "error": "why"}}),
])
def test_a_saved_record_loads_back_as_the_same_file(kind, data, tmp_path):
    path = tmp_path / "record.json"
    record = kind.from_dict(data)
    assert record.to_dict() == data and list(record.to_dict()) == list(data)  # the fields, in the file's order
    record.save(path)
    assert json.loads(path.read_text()) == data and path.read_text().endswith("}\n")
    assert kind.load(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # written atomically: no temporary left


def test_fields_a_newer_version_wrote_are_kept_and_written_back(tmp_path):
    newer = report_dict()
    newer["from_the_future"] = {"x": 1}
    newer["base"]["calibration"] = [1, 2]
    newer["base"]["computed_with"] = {**COMPUTED, "compiler": "inductor"}
    newer["selected"]["why"] = "dev score"
    (tmp_path / "report.json").write_text(json.dumps(newer))
    report = RunReport.load(tmp_path / "report.json")
    assert report.base.extra == {"calibration": [1, 2]} and report.base.computed_with.precision == "bf16"
    assert report.base.computed_with.extra == {"compiler": "inductor"} and report.selected.by == "best"
    report.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == newer


def test_files_an_older_version_wrote_read_with_their_fields_and_gain_none(tmp_path):
    """A report.json from before the records (no computed_with, a plan with fewer fields) reads back, and saving
    it adds no optional field it lacked."""
    old_eval = {"model": "tiny", "pooling": "eos", "prompt": None, "average": 50.0, "std": 10.0, "seconds": 1.0,
                "tasks": {"sts12": {"spearman": 40.0, "n": 10}, "sickr": {"spearman": 60.0, "n": 10}}}
    old = {"base": old_eval, "tuned": {**old_eval, "average": 60.0}, "gain": 10.0,
           "plan": {"steps": 2, "eval_steps": 1, "estimated_s": 9.0}, "seconds": 12.0, "selected": SELECTED}
    (tmp_path / "report.json").write_text(json.dumps(old))
    report = RunReport.load(tmp_path / "report.json")
    assert report.base.computed_with is None and report.base.reused is None and report.base.sentences is None
    assert (report.plan.steps, report.plan.budget_s, report.plan.notes) == (2, None, [])
    assert report.tuned.score("sickr") == 60.0 and report.base.spearman() == {"sts12": 40.0, "sickr": 60.0}
    assert report.adapter == "/r/best" and report.complete
    saved = report.to_dict()
    assert set(saved) == set(old) and {"computed_with", "reused"}.isdisjoint(saved["base"])
    assert {k: saved["base"][k] for k in old_eval} == old_eval  # the known fields as they were


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "null"])
def test_an_absent_or_broken_file_loads_as_none(content, tmp_path):
    assert EvalResult.load(tmp_path / "absent.json") is None
    (tmp_path / "broken.json").write_text(content)
    assert RunReport.load(tmp_path / "broken.json") is None and Plan.load(tmp_path / "broken.json") is None


def test_a_report_json_without_its_evaluations_is_not_a_finished_run(tmp_path):
    (tmp_path / layout.REPORT_FILE).write_text(json.dumps({"gain": 1.0, "selected": SELECTED}))
    (tmp_path / layout.BASE_FILE).write_text(json.dumps(EVAL))
    run = load_run(tmp_path)
    assert run.status == "unfinished" and run.tuned is None and run.base.average == 50.875


def test_the_plan_rounds_as_the_time_budget_always_has():
    plan = Plan(900.0, 10, 5, 1.23456, 2.0, 30.0, 812.3456, ["note"])
    assert plan.as_dict() == {"budget_s": 900.0, "steps": 10, "eval_steps": 5, "step_s": 1.23, "dev_eval_s": 2.0,
                              "final_eval_s": 30.0, "estimated_s": 812.35, "notes": ["note"]}


def test_a_sweep_state_names_its_runs_and_skips_entries_without_a_name():
    state = SweepRecord.from_dict({"grid": [], "runs": [{"name": "a"}, {"status": "done"}, "junk", {"name": 3}]})
    assert [run.name for run in state.named_runs()] == ["a"] and state.averaged is None
    assert state.named_runs()[0] == SweepRunState("a")


def test_computed_with_describes_precision_probe_device_and_versions():
    text = ComputedWith.from_dict(COMPUTED).describe()
    assert text == "bf16 (auto, bf16 1.87x fp32) on cpu (Test CPU); embedtune 0.1.0, torch 2.5.1, transformers 4.5"
    assert ComputedWith("fp32", "fp32", None, "cuda:0", "NVIDIA H100").describe().startswith(
        "fp32 on cuda:0 (NVIDIA H100)")


# ---- every evaluation says how it was computed ----------------------------------------------------------------

def test_eval_output_says_how_it_was_computed(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "eval" / "scores.json"
    args = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts12",
            "--device", "cpu", "--output", str(out)]
    assert main([*args, "--precision", "fp32"]) == 0
    result = json.loads(out.read_text())
    assert result["computed_with"] == {"precision": "fp32", "precision_asked": "fp32", "bf16_speedup": None,
                                       "device": "cpu", "device_name": result["computed_with"]["device_name"],
                                       "versions": versions()}
    assert result["computed_with"]["versions"]["torch"] == torch.__version__
    assert set(result["computed_with"]["versions"]) == {"embedtune", "torch", "transformers", "peft"}
    assert "Computed with fp32 on cpu (" in out.with_suffix(".md").read_text()
    assert "Computed with fp32 on cpu (" in capsys.readouterr().out

    from embedtune.models.backend import BF16_MIN_SPEEDUP, cpu_bf16_speedup

    assert main([*args, "--precision", "auto"]) == 0  # the probe chose: its figure is recorded
    computed = json.loads(out.read_text())["computed_with"]
    assert computed["precision_asked"] == "auto" and computed["bf16_speedup"] == round(cpu_bf16_speedup(), 2)
    assert computed["precision"] == ("bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32")


def test_a_run_records_how_both_evaluations_were_computed_and_the_environment_beside(tiny_model_dir, tiny_data_dir,
                                                                                    tmp_path):
    from embedtune.config import Config
    from embedtune.experiment import run_experiment

    config = Config.from_dict({"model": {"name": str(tiny_model_dir), "device": "cpu"},
                               "data": {"data_dir": str(tiny_data_dir)},
                               "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 8,
                                         "save_steps": 2, "eval_steps": 0, "precision": "fp32", "select": "final"},
                               "eval": {"tasks": ["sts12"], "precision": "fp32"}})
    run_experiment(config)
    out = tmp_path / "run"
    report = json.loads((out / layout.REPORT_FILE).read_text())
    for name in ("base", "tuned"):
        assert report[name]["computed_with"]["precision"] == "fp32"
        assert report[name]["computed_with"]["versions"] == versions()
    for name in (layout.BASE_FILE, layout.TUNED_FILE):
        assert json.loads((out / name).read_text())["computed_with"] == report["tuned"]["computed_with"]
    assert "Computed with fp32 on cpu" in (out / layout.REPORT_MARKDOWN).read_text()
    assert "base and tuned: computed with fp32 on cpu" in (out / layout.REPORT_HTML).read_text()
    environment = Environment.load(out / layout.ENVIRONMENT_FILE)
    assert environment.versions["torch"] == torch.__version__ and environment.hardware["logical_cores"]


def test_the_html_report_renders_and_writes_nothing_else(tmp_path):
    from embedtune.evaluation.html_report import write_run_page

    report = RunReport.of(EvalResult.from_dict(EVAL), EvalResult.from_dict({**EVAL, "average": 60.0}),
                          selected=Selected.from_dict(SELECTED), seconds=1.0)
    report.base.reused = Reuse("cache", "/cache/baselines/k.json", "k")
    tmp_path.mkdir(exist_ok=True)
    page = write_run_page(tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == [layout.REPORT_HTML] and page == tmp_path / "report.html"
    assert "base: reused from the cache (<code>/cache/baselines/k.json</code>)" in page.read_text()


def test_layout_spells_each_run_file_name_once():
    """Every file a run folder holds, by its constant: the literals live in embedtune/runs/layout.py only."""
    source = Path(__file__).parents[1] / "src" / "embedtune"
    names = ["report.json", "base.json", "tuned.json", "plan.json", "sweep.json", "environment.json",
             "metrics.jsonl", "data_report.json", "best.json"]
    found = {name: sorted(str(p.relative_to(source)) for p in source.rglob("*.py")
                          if f'"{name}"' in p.read_text(encoding="utf-8")) for name in names}
    assert found == {name: ["runs/layout.py"] for name in names}
