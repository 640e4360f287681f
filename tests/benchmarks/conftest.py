"""Fixtures for the benchmark tests: a tiny random Gemma folder and a runner for `python -m benchmarks.X`.

The benchmarks are run as their users run them, each in its own process from the repository root, with one
intra-op thread (the test machines are small and shared).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_gemma_dir(tiny_data_dir, tmp_path_factory) -> Path:
    """gpu_check's tiny Gemma (2 layers, width 32, random, seeded) with a word-level tokenizer over the tiny
    data dir's words, saved as one HF folder that both embedtune and sentence-transformers load by path."""
    import torch
    from transformers import AutoModel

    from benchmarks import harness
    from benchmarks.gpu_check import model_config, tiny_tokenizer

    texts = [t for row in harness.read_triplet_rows(tiny_data_dir / "nli" / "triplets" / "tiny.tsv") for t in row]
    for data in harness.sts_sets(tiny_data_dir, None):
        texts += data.sentences1 + data.sentences2
    tokenizer = tiny_tokenizer(texts)
    torch.manual_seed(0)
    model = AutoModel.from_config(model_config("tiny", tokenizer))
    path = tmp_path_factory.mktemp("tiny_gemma")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def run_benchmark():
    """run_benchmark(name, *args, timeout=...) -> stdout of `python -m benchmarks.<name> args` (fails the test,
    with the end of stderr, on a non-zero exit)."""

    def run(name: str, *args: str, timeout: float = 300) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"benchmarks.{name} exited {done.returncode}:\n{done.stderr[-4000:]}"
        return done.stdout

    return run
