"""gpu_check's whole path (build, packed-vs-padded check, both trainers, both evaluations, the summary) at the
tiny shape on CPU: what the GPU machine runs at paper size."""
from __future__ import annotations

import json
import math
import re

import pytest


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(run_benchmark, tiny_data_dir, tmp_path):
    out = tmp_path / "gpu_check.json"
    stdout = run_benchmark("gpu_check", "--tiny", "--device", "cpu", "--data-dir", tiny_data_dir, "--json", out,
                           "--work-dir", tmp_path, timeout=600)
    report = json.loads(out.read_text())
    assert report["options"]["arch"] == ["tiny"] and report["options"]["device"] == "cpu"
    assert report["versions"]["torch"] and report["versions"]["sentence-transformers"]
    result = report["archs"]["tiny"]
    errors = {stage: r["error"] for stage, r in result.items() if isinstance(r, dict) and "error" in r}
    assert not errors

    build = result["build"]
    assert build["device"] == "cpu"
    assert all(positive(build[k]) for k in ("parameters", "non_embedding_parameters", "tokens_per_triplet",
                                             "matmul_peak_gflops"))
    assert build["non_embedding_parameters"] < build["parameters"]
    packing = build["packing"]
    assert packing["packable"] and packing["passed"] and packing["texts"] > 0
    assert packing["bf16"]["min"] > 0.99 and packing["fp32"]["min"] > 0.999

    steps, warmup = report["options"]["steps"], report["options"]["warmup"]
    for side in ("ours", "peer"):
        run = result[side]
        assert positive(run["seconds_per_step"]) and positive(run["peak_rss_gb"])
        assert len(run["step_seconds"]) == steps and all(positive(s) for s in run["step_seconds"])
        assert len(run["losses"]) == steps and all(positive(x) for x in run["losses"])
        # in-batch + hard negatives: the untrained loss is near log(2B) for both sides
        assert abs(run["losses"][0] - math.log(2 * report["options"]["batch"])) < 0.5
    assert steps > warmup
    for side in ("eval_ours", "eval_peer"):
        assert positive(result[side]["seconds"]) and math.isfinite(result[side]["average"])
    assert result["eval_ours"]["unique_sentences"] <= result["eval_ours"]["sentences"]

    summary = result["summary"]
    assert summary["packing_passed"] is True
    assert all(positive(summary[k]) for k in ("train_speed_ratio", "train_memory_ratio", "eval_speed_ratio"))
    assert summary["train_memory_measure"] == "peak_rss_gb"  # no GPU: the processes' peak RSS
    # The same random model on both sides: their STS averages agree up to bf16 rounding.
    assert summary["eval_average_gap"] < 5.0

    printed = {m[0]: float(m[1]) for m in re.findall(r"^ratio (\S+) \([^)]*\) ([0-9.]+)$", stdout, re.M)}
    assert printed["train_tokens_per_s"] == pytest.approx(summary["train_speed_ratio"], abs=0.006)
    assert printed["train_peak_rss_gb"] == pytest.approx(summary["train_memory_ratio"], abs=0.006)
    assert printed["eval_speed"] == pytest.approx(summary["eval_speed_ratio"], abs=0.006)
    assert "-> PASS" in stdout and re.search(r"^wall time \d+ s; results in ", stdout, re.M)
