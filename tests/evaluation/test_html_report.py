"""The HTML report: hand-made run and sweep folders, hand-checked tables, escaping, no external resources, the
`report` command, and (slow) the page in headless Chromium."""
from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.config import Config
from embedtune.evaluation.html_report import render_html, write_html_report
from embedtune.runs import environment, load_source

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


class Tables(HTMLParser):
    """Every table of a page as rows of cell texts; the img sources; the tags seen."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table_with(self, header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and header in t[0])


def result(scores: dict[str, float], model: str = "tiny", prompt: str | None = None) -> dict:
    values = list(scores.values())
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"model": model, "pooling": "eos", "prompt": prompt, "average": mean, "std": std, "seconds": 1.0,
            "tasks": {task: {"spearman": score, "n": 10} for task, score in scores.items()}}


def png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_run(folder: Path, tuned: dict[str, float] | None, base: dict[str, float] | None = None,
             model: str = "tiny", prompt: str | None = None, steps: tuple[float, ...] = (1.5, 2.5)) -> Path:
    """A run folder as `run` leaves it: base.json, metrics (steps of the given seconds, dev evaluations at 1 and 2),
    config, data cleaning, environment, plots, and report.json when `tuned` is given (a finished run)."""
    folder.mkdir(parents=True)
    base_result = result(base or {"sts12": 40.0, "sickr": 60.0}, model, prompt)
    (folder / "base.json").write_text(json.dumps(base_result))
    events = [{"step": i + 1, "loss": 3.0 - i, "seconds": s, "tokens_per_s": 100.0} for i, s in enumerate(steps)]
    events += [{"step": i + 1, "eval": {"stsbenchmark-dev": 20.0 + 10 * i}} for i in range(len(steps))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    config = Config.from_dict({"model": {"name": model, "prompt": prompt}, "train": {"lr": 1e-3}})
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "data_report.json").write_text(json.dumps({"read": 64, "duplicate": 4, "kept": 60}))
    (folder / "environment.json").write_text(json.dumps({
        "versions": {"embedtune": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.0", "peft": None,
                     "python": "3.11.7"},
        "hardware": {"cpu": "Test CPU", "logical_cores": 2, "physical_cores": 1, "memory_gib": 8.0,
                     "platform": "Linux", "gpus": [{"name": "NVIDIA H200", "memory_gib": 139.8}]}}))
    (folder / "loss.png").write_bytes(png())
    if tuned is not None:
        tuned_result = result(tuned, model, prompt)
        report = {"base": base_result, "tuned": tuned_result, "gain": tuned_result["average"] - base_result["average"],
                  "plan": {"steps": 2, "eval_steps": 1, "estimated_s": 9.0}, "seconds": 12.0,
                  "selected": {"adapter": str(folder / "best"), "by": "best", "step": 2, "dev_score": 30.0}}
        (folder / "report.json").write_text(json.dumps(report))
    return folder


def make_sweep(folder: Path) -> Path:
    """Four runs: done (average 60), done (average 65, the best), failed, interrupted, pending."""
    runs = [("lr=1e-3", "done", None), ("lr=2e-3", "done", None), ("lr=3e-3", "failed", "DataError: <bad> data"),
            ("lr=4e-3", "running", None), ("lr=5e-3", "pending", None)]
    make_run(folder / "runs" / "lr=1e-3", {"sts12": 50.0, "sickr": 70.0})
    make_run(folder / "runs" / "lr=2e-3", {"sts12": 55.0, "sickr": 75.0}, steps=(1.0, 1.0, 1.0))
    make_run(folder / "runs" / "lr=4e-3", None)
    state = {"grid": [{"field": "train.lr", "values": ["1e-3", "2e-3", "3e-3", "4e-3", "5e-3"]}],
             "runs": [{"name": name, "dir": f"runs/{name}", "overrides": {"train.lr": name[3:]}, "status": status,
                       "error": error, "config": Config().to_dict()} for name, status, error in runs]}
    (folder / "sweep.json").write_text(json.dumps(state))
    return folder


def test_a_run_page_holds_the_hand_checked_tables(tmp_path):
    run = make_run(tmp_path / "exp", {"sts12": 50.0, "sickr": 70.0})
    page = Tables(render_html([load_source(run)]))
    results = page.table_with("average ± std")
    assert results == [["run", "status", "STS12", "SICK-R", "average ± std", "training time"],
                       ["base model", "base", "40.00", "60.00", "50.00 ± 10.00", "–"],
                       ["exp", "done", "50.00", "70.00", "60.00 ± 10.00", "4.0 s"]]
    assert page.table_with("gain") == [["task", "base", "tuned", "gain"], ["STS12", "40.00", "50.00", "+10.00"],
                                       ["SICK-R", "60.00", "70.00", "+10.00"],
                                       ["Average", "50.00 ± 10.00", "60.00 ± 10.00", "+10.00"]]
    assert ["read", "64"] in page.tables[2] and ["duplicate", "4"] in page.tables[2]
    changed = page.tables[3]  # the config fields that differ from the defaults
    assert ["train.lr", "0.001"] in changed and ["model.name", '"tiny"'] in changed and len(changed) == 2
    environment_rows = page.tables[-1]
    assert ["torch", "2.13.0+cpu"] in environment_rows and ["peft", "not installed"] in environment_rows
    assert ["GPU", "NVIDIA H200 (139.8 GiB)"] in environment_rows and ["CPU", "Test CPU"] in environment_rows
    text = render_html([load_source(run)])
    assert "Best run: <b>exp</b>, average 60.00 ± 10.00 (+10.00 over its base model)" in text
    assert "Training: 2 steps, final loss 2.0000, mean 100 tokens/s, 4.0 s in steps." in text


def test_tasks_of_other_kinds_show_their_main_score(tmp_path):
    run = make_run(tmp_path / "exp", {"sts12": 50.0}, {"sts12": 40.0})
    report = json.loads((run / "report.json").read_text())
    report["tuned"]["tasks"]["scifact"] = {"kind": "retrieval", "main_score": 33.25, "ndcg@10": 33.25}
    (run / "report.json").write_text(json.dumps(report))
    page = Tables(render_html([load_source(run)]))
    assert page.table_with("average ± std")[0][2:4] == ["STS12", "scifact"]
    assert page.table_with("average ± std")[2][2:4] == ["50.00", "33.25"]
    assert ["scifact", "–", "33.25", "–"] in page.table_with("gain")


def test_every_text_is_escaped_and_the_page_needs_nothing_outside_it(tmp_path):
    run = make_run(tmp_path / "exp", {"sts12": 50.0}, {"sts12": 40.0}, model=HOSTILE, prompt='"><img src=x>{}')
    page_text = render_html([load_source(run)])
    page = Tables(page_text)
    assert HOSTILE not in page_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page_text
    assert "<img src=x>" not in page_text and "&quot;&gt;&lt;img src=x&gt;{}" in page_text
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert not re.search(r"(src|href)=\"(https?:)?//", page_text) and "url(" not in page_text
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC) for src in page.images)
    assert len(page.images) == 2  # the averages as bars, and the run's loss.png (no dev-curve comparison alone)


def test_a_sweep_folder_lists_each_run_once_with_its_status_and_the_best_run(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    source = load_source(sweep)
    assert [(r.name, r.status) for r in source.runs] == [
        ("lr=1e-3", "done"), ("lr=2e-3", "done"), ("lr=3e-3", "failed"), ("lr=4e-3", "interrupted"),
        ("lr=5e-3", "pending")]
    text = render_html([source])
    page = Tables(text)
    rows = page.table_with("average ± std")[1:]
    assert [row[:2] for row in rows] == [["base model", "base"], ["lr=1e-3", "done"], ["lr=2e-3", "done"],
                                         ["lr=3e-3", "failed"], ["lr=4e-3", "interrupted"], ["lr=5e-3", "pending"]]
    assert rows[2] == ["lr=2e-3", "done", "55.00", "75.00", "65.00 ± 10.00", "3.0 s"]
    assert rows[3][2:] == rows[4][2:] == rows[5][2:] == ["–", "–", "–", "–"]  # nothing half-finished shown as done
    assert "Best run: <b>lr=2e-3</b>, average 65.00 ± 10.00" in text
    assert "5 runs: 2 done, 1 failed, 1 interrupted, 1 pending." in text
    assert "DataError: &lt;bad&gt; data" in text and text.count("<section class=run ") == 5
    assert len(page.images) == 2 + 3  # dev curves on one axes, averages as bars; three runs' loss.png


def test_the_report_command_renders_run_and_sweep_folders_on_one_page(tmp_path, capsys):
    run = make_run(tmp_path / "exp", {"sts12": 50.0, "sickr": 70.0})
    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "page.html"
    assert main(["report", str(run), str(sweep), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    rows = Tables(out.read_text()).table_with("average ± std")[1:]
    assert [row[0] for row in rows] == ["base model", "exp", "lr=1e-3", "lr=2e-3", "lr=3e-3", "lr=4e-3", "lr=5e-3"]
    assert write_html_report([run]) == run / "report.html" and (run / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: neither a run folder" in capsys.readouterr().err


def test_environment_names_the_versions_and_the_hardware():
    import platform

    import torch

    found = environment()
    assert found["versions"]["torch"] == torch.__version__ and found["versions"]["python"] == platform.python_version()
    assert set(found["versions"]) == {"embedtune", "torch", "transformers", "peft", "python"}
    assert found["hardware"]["logical_cores"] == os.cpu_count() and found["hardware"]["cpu"]
    assert len(found["hardware"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


# ---- in a real browser ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_page_loads_in_headless_chromium_without_errors_and_shows_tables_and_plots(tmp_path):
    from benchmarks.check_report_in_browser import check, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium (apt-get install -y chromium, or make browser)")
    page = write_html_report([make_sweep(tmp_path / "sweep")], tmp_path / "report.html")
    seen, problems = check(page, chromium, tmp_path / "shot.png")
    assert problems == []
    assert seen["tables"] >= 10 and len(seen["images"]) == 5 and all(i["width"] > 0 for i in seen["images"])
    assert (tmp_path / "shot.png").read_bytes().startswith(PNG_MAGIC)
    # The check can fail: a console error, an uncaught exception and a picture from outside are each caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<table><tr><td>x</td></tr></table><script>console.error('boom'); undefined_name();</script>"
                   "<img alt=remote src=\"https://example.invalid/x.png\">")
    _, problems = check(bad, chromium)
    assert any("console error: boom" in p for p in problems)
    assert any("uncaught exception" in p and "undefined_name" in p for p in problems)
    assert "reference outside the file: https://example.invalid/x.png" in problems
    assert any("did not decode" in p for p in problems) and any("script(s)" in p for p in problems)
