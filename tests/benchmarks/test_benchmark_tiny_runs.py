"""The benchmarks that back a claim in docs/ and had no run of their own in the tests: each one end to end at its
smallest, on the tiny random Gemma and the tiny data dir, so that a quoted command cannot silently break and the
figures it prints keep their meaning."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"


@pytest.mark.slow
def test_anisotropy_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("anisotropy", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--n", "8")
    cosine = re.search(rf"mean cosine between unrelated sentences {NUMBER} \(min {NUMBER}\); EOS state norm "
                       rf"{NUMBER}, top-4 dimensions hold {NUMBER}% of its squared norm", stdout)
    assert cosine, stdout
    mean, smallest, norm, top4 = map(float, cosine.groups())
    assert -1 <= smallest <= mean <= 1 and norm > 0 and 0 < top4 <= 100
    loss = re.search(rf"untrained InfoNCE loss {NUMBER} vs chance log\(2B\) = {NUMBER}", stdout)
    assert loss, stdout
    assert float(loss.group(1)) > 0 and float(loss.group(2)) == round(math.log(16), 3)  # 8 triplets: 2B = 16


# The paper's three models at their published sizes, LoRA r 8 on q, k, v, o: docs/DISTRIBUTED.md's table quotes
# these counts, which depend on the shapes and the LoRA targets only (not on the tokenizer or the data).
PAPER_LORA = {"MiniCPM-2B": "5.90M", "Phi-2": "5.24M", "Gemma-2B": "1.84M"}


@pytest.mark.slow
def test_distributed_cost_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("distributed_cost", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir,
                           "--gpus", "8", "64", "512")
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")
            and not line.startswith("| model")]
    table = [[cell.strip() for cell in row] for row in rows]
    assert [(r[0], r[2]) for r in table] == [(m, k) for m in PAPER_LORA for k in ("8", "64", "512")]
    for model, lora, gpus, batch, compute_ms, gathered, _, lora_mb, _, efficiency, without_grad in table:
        assert lora == PAPER_LORA[model] and int(batch) == 8 * int(gpus)  # --per-rank-batch 8
        assert float(lora_mb) == pytest.approx(4 * float(lora[:-1]), abs=0.1)  # fp32 gradients, whatever K
        assert float(compute_ms) > 0 and float(gathered) > 0
        assert int(without_grad.rstrip("%")) >= int(efficiency.rstrip("%"))
    for model in PAPER_LORA:  # the same compute per rank, more communication as K grows
        mine = [r for r in table if r[0] == model]
        assert len({r[4] for r in mine}) == 1
        assert [int(r[9].rstrip("%")) for r in mine] == sorted((int(r[9].rstrip("%")) for r in mine), reverse=True)


@pytest.mark.slow
def test_paired_versions_of_one_tree_train_and_score_alike(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    """The same checkout on both sides: the ratios are printed and the losses and scores agree exactly, which
    is what the benchmark's reader compares when a change must leave behaviour alone."""
    stdout = run_benchmark("paired_versions", "--before", ROOT, "--after", ROOT, "--model", tiny_gemma_dir,
                           "--data-dir", tiny_data_dir, "--rounds", "1", "--steps", "3", "--batch", "8",
                           "--precision", "fp32", "--tasks", "biosses", timeout=600)
    ratios = dict(re.findall(rf"^ratio after/before (\w+) {NUMBER}$", stdout, re.M))
    assert set(ratios) == {"step_s", "peak_rss_gb", "eval_s"} and all(float(v) > 0 for v in ratios.values())
    sides = dict((name, (losses, average)) for name, losses, average in
                 re.findall(rf"^(before|after) losses (\[.*\]) eval average {NUMBER}$", stdout, re.M))
    assert set(sides) == {"before", "after"}
    losses = json.loads(sides["before"][0])
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert sides["after"] == sides["before"]


@pytest.mark.slow
def test_scaling_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("scaling", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--batch", "4",
                           "--steps", "3", "--ranks", "2", "--threads", "2", timeout=600)
    rows = re.findall(rf"^(1 process|2 ranks)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", stdout, re.M)
    assert [r[0] for r in rows] == ["1 process", "2 ranks"]
    assert all(float(x) > 0 for r in rows for x in r[1:]), rows  # tokens/s, step s, peak GB, wall s
    ratio = re.search(rf"^ratio 2_ranks_vs_1_process tokens_per_s {NUMBER} peak_memory {NUMBER}$", stdout, re.M)
    assert ratio and float(ratio.group(1)) > 0
    assert float(ratio.group(2)) > 1  # two processes each hold the model: more memory than one


@pytest.mark.slow
def test_serve_load_smallest(run_benchmark, tiny_gemma_dir, tmp_path):
    out = tmp_path / "serve_load.json"
    stdout = run_benchmark("serve_load", "--model", tiny_gemma_dir, "--clients", "1,4", "--seconds", "1",
                           "--warmup", "0.5", "--json", out, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"on", "off"}
    for mode, levels in results.items():
        assert [row["clients"] for row in levels] == [1, 4]
        for row in levels:
            assert row["requests"] > 0 and row["errors"] == 0, (mode, row)
            assert row["p50_ms"] <= row["p99_ms"]
    # without dynamic batching each request is one model call; with it, concurrent requests may share one
    assert all(row["requests_per_model_call"] == 1.0 for row in results["off"])
    assert all(row["requests_per_model_call"] >= 1.0 for row in results["on"])
    assert "| clients | batching | req/s | p50 ms | p99 ms | requests per model call |" in stdout
    assert re.search(rf"^4 clients: dynamic batching gives {NUMBER}x the throughput", stdout, re.M)


@pytest.mark.slow
def test_int8_sensitivity_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    """fp32 is its own reference (cosine 1); each int8 scheme gets a row with a cosine and a score per task;
    --layers adds the one-part-at-a-time table."""
    stdout = run_benchmark("int8_sensitivity", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--tasks",
                           "biosses", "sts17", "--schemes", "per-tensor", "per-channel", "--layers")
    assert re.search(r"^scheme\tseconds\tcosine mean\tcosine min\tbiosses\tsts17$", stdout, re.M)
    rows = {name: values for name, *values in
            re.findall(rf"^(fp32|per-tensor|per-channel)\t{NUMBER}\t{NUMBER}\t{NUMBER}\t{NUMBER}\t{NUMBER}$",
                       stdout, re.M)}
    assert set(rows) == {"fp32", "per-tensor", "per-channel"}
    assert float(rows["fp32"][1]) == pytest.approx(1.0, abs=1e-4) and float(rows["fp32"][2]) == pytest.approx(
        1.0, abs=1e-4)
    for seconds, mean, smallest, *scores in rows.values():
        assert float(seconds) >= 0 and -1 <= float(smallest) <= float(mean) <= 1.0001
        assert all(-100 <= float(s) <= 100 for s in scores)
    assert "int8 (per-channel) in one part only, cosine to fp32 over" in stdout
    parts = re.findall(rf"^(\S+)\t{NUMBER}\t{NUMBER}$", stdout.split("in one part only", 1)[1], re.M)
    assert parts and all(-1 <= float(low) <= float(mean) <= 1.0001 for _, mean, low in parts)
