"""levers, eval_speed and compare_peer in their smallest mode, on the tiny random Gemma and the tiny data dir:
the whole script path runs against the current library and prints every figure it promises."""
from __future__ import annotations

import math
import re

import pytest

NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"


def figures(pattern: str, text: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, text, re.M)
    return [m if isinstance(m, tuple) else (m,) for m in found]


def positive(text: str) -> bool:
    value = float(text)
    return math.isfinite(value) and value > 0


@pytest.mark.slow
def test_levers_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("levers", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--steps", "1",
                           "--batch", "4", "--eval-texts", "16", "--device", "cpu")
    alone = figures(rf"^  (\S+)\s+{NUMBER} s/step  x{NUMBER}$", stdout)
    assert [name for name, *_ in alone] == ["baseline", "+chunks", "+bf16", "+dropout"]
    paired = figures(rf"^  (\S+)\s+{NUMBER} s/step median\s+{NUMBER} best  x{NUMBER}$", stdout)
    assert [name for name, *_ in paired] == ["+dropout", "+math-attn", "+packing", "+fused", "+compiled"]
    evaluation = figures(rf"^  (\S+)\s+{NUMBER} s\s+{NUMBER} sentences/s  x{NUMBER}$", stdout)
    assert [name for name, *_ in evaluation] == ["fp32", "autocast", "bf16", "+fused"]
    assert "evaluation, 16 unique sentences" in stdout
    for row in alone + paired + evaluation:
        assert all(positive(x) for x in row[-2:])  # the ratio and the throughput or best time
    assert alone[0][2] == "1.00" and paired[0][3] == "1.00" and evaluation[0][3] == "1.00"


@pytest.mark.slow
def test_lever_switches(tiny_gemma_dir, tiny_data_dir):
    """Each paired level really turns its lever on: fused forwards (eager, then compiled), the short-text
    attention function, packing; and everything is off again after the block."""
    from benchmarks import harness, levers
    from embedtune.config import LoraConfig
    from embedtune.models.embedder import Embedder
    from embedtune.models.lora import prepare_for_training

    embedder = Embedder(str(tiny_gemma_dir), backend=levers.plain_backend("cpu", "bf16"))
    assert not embedder.backend.fuse_gemma and not embedder.backend.short_text_attention
    prepare_for_training(embedder, LoraConfig())
    loss_fn = levers.InfoNCELoss(embedder)

    def state() -> tuple:
        fused = [m for m in embedder.model.modules() if "forward" in m.__dict__]
        attention = {c._attn_implementation for c in [embedder.model.config]}
        return len(fused), {getattr(m, "compile_kernels", None) for m in fused}, attention, loss_fn.packing

    assert state()[0] == 0
    seen = []
    for level in range(5):
        with levers.lever_state(embedder, loss_fn, level):
            seen.append(state())
        assert state()[0] == 0
    assert [s[0] > 0 for s in seen] == [False, False, False, True, True]
    assert seen[3][1] == {False} and seen[4][1] == {True}
    assert [("embedtune_sdpa" in s[2]) for s in seen] == [False, True, True, True, True]
    assert [s[3] for s in seen] == [False, False, True, True, True]

    autocast = levers.autocast_over_fp32(Embedder(str(tiny_gemma_dir), backend=levers.plain_backend("cpu", "fp32")))
    assert next(autocast.model.parameters()).dtype.is_floating_point
    assert str(next(autocast.model.parameters()).dtype) == "torch.float32" and str(autocast.dtype) == "torch.bfloat16"
    triplets = harness.shared_triplets(tiny_data_dir, 8)
    ids = autocast.tokenize([t.anchor for t in triplets])
    one_chunk = levers.OneChunkInfoNCELoss(autocast, packing=False)
    assert one_chunk.embed_unique(ids).shape == (len(ids), autocast.hidden_size)


@pytest.mark.slow
def test_eval_speed_quick(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("eval_speed", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--quick")
    rows = dict((name, (float(a), float(b))) for name, a, b in
                figures(rf"^(\w+)\s+{NUMBER}\s+{NUMBER}(?:\s|$)", stdout))
    assert {"sts17", "biosses", "stsbenchmark", "average"} <= set(rows)
    ours, peer = rows["average"]
    assert abs(ours - peer) < 5.0  # the same model, EOS pooling both sides: the same scores up to bf16 rounding
    for key in ("embedtune_seconds", "peer_seconds"):  # seconds to 0.1 s: 0.0 for a fast side on tiny sets
        ((seconds, per_second),) = figures(rf"^{key} {NUMBER}  \({NUMBER} sentences/s\)$", stdout)
        assert float(seconds) >= 0 and positive(per_second)
    ((ratio,),) = figures(rf"^ratio eval_speed {NUMBER}$", stdout)
    assert positive(ratio)
    assert "sets: 3, sentences: 72" in stdout
    machine_lines(stdout, "embedtune", "peer")
    for side in ("embedtune", "peer"):  # first use, apart from the warm evaluation
        ((load, warmup),) = figures(rf"^{side}_first_use load {NUMBER} s, warm-up {NUMBER} s$", stdout)
        assert float(load) > 0 and float(warmup) >= 0
    ((total,),) = figures(rf"^ratio eval_speed with first use {NUMBER}$", stdout)
    assert positive(total)


def machine_lines(stdout: str, ours: str, peer: str) -> None:
    """The CPU and the precision both sides ran are named before any figure."""
    assert re.search(r"^cpu .+, \d+ logical CPUs; ", stdout, re.M)
    assert re.search(rf"^precision {ours} (fp32|bf16), {peer} \1 \(", stdout, re.M)


@pytest.mark.slow
def test_eval_speed_cold_fp32_repeat(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("eval_speed", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--tasks",
                           "biosses", "--precision", "fp32", "--cold", "--repeat", "2")
    assert re.search(r"^precision embedtune fp32, peer fp32 \(asked for\)$", stdout, re.M)
    assert "embedtune's inductor cache: empty (" in stdout
    assert figures(rf"^embedtune_passes {NUMBER}, {NUMBER} s$", stdout)
    assert "sets: 1," in stdout


@pytest.mark.slow
def test_compare_peer_quick(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    stdout = run_benchmark("compare_peer", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir, "--quick",
                           "--batches", "4", "--steps", "3", "--probe-seconds", "0.2", timeout=600)
    training = figures(rf"^(ours|peer)\s+4\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%$", stdout)
    assert [row[0] for row in training] == ["ours", "peer"]
    assert all(positive(x) for row in training for x in row[1:4])  # s/step, tokens/s, peak RSS
    quality = figures(rf"^(ours|peer)\s+average {NUMBER}  sts17 {NUMBER} biosses {NUMBER} stsbenchmark {NUMBER}$",
                      stdout)
    assert [row[0] for row in quality] == ["ours", "peer"]
    assert re.search(rf"^ours {NUMBER} s, peer {NUMBER} s; ours {NUMBER} GFLOP/s$", stdout, re.M)
    probes = figures(rf"start {NUMBER}, after training {NUMBER}, end {NUMBER} GFLOP/s", stdout)
    assert probes and all(positive(x) for x in probes[0])
    machine_lines(stdout, "ours", "peer")
    first_use = figures(rf"^  (ours|peer)\s+batch 4: set-up {NUMBER} s, steps 1-2 {NUMBER} s", stdout)
    assert [row[0] for row in first_use] == ["ours", "peer"] and all(positive(r[1]) for r in first_use)
    assert figures(rf"^first use, before the timed pass: ours load {NUMBER} s, warm-up {NUMBER} s", stdout)
    last = stdout.strip().splitlines()[-3:]
    assert [line.rsplit(" ", 1)[0] for line in last] == ["ratio train_tokens_per_s", "ratio eval_speed",
                                                          "ratio train_peak_rss"]
    assert all(positive(line.rsplit(" ", 1)[1]) for line in last)


@pytest.mark.slow
def test_memory_anatomy_smallest(run_benchmark, tiny_gemma_dir, tiny_data_dir):
    """The per-step figures come from a training callback: one row per step, in each of the three settings;
    live malloc bytes under glibc only."""
    from embedtune.runtime import mimalloc_library

    stdout = run_benchmark("memory_anatomy", "--model", tiny_gemma_dir, "--data-dir", tiny_data_dir,
                           "--batch", "4", "--steps", "3")
    for name in ("mimalloc", "glibc", "glibc-default-caches"):
        block = stdout.split(f"\n{name} (batch 4)\n", 1)[1].split("\n\n", 1)[0]
        rows = figures(rf"^\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+(\S+)$", block)
        assert [int(r[0]) for r in rows] == [1, 2, 3]
        assert all(positive(r[1]) or r[1] == "0.00" for r in rows) and all(positive(r[2]) for r in rows)
        live = [r[3] for r in rows]
        if name == "mimalloc" and mimalloc_library() is not None:
            assert live == ["-"] * 3
        else:
            assert all(positive(x) for x in live)
        assert re.search(rf"^{name}: median s/step \(steps 3\+\) {NUMBER}, peak RSS {NUMBER} GB$", block, re.M)
