"""Embedding-space diagnostics run before training."""
from __future__ import annotations

import pytest

from embedtune.evaluation import diagnostics
from embedtune.models.embedder import Embedder


def test_nearly_parallel_embeddings_trigger_an_lr_warning(tiny_model_dir, caplog, monkeypatch):
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    ids = [[5, 6, 1], [7, 8, 1], [9, 1]]
    monkeypatch.setattr(diagnostics, "mean_cosine", lambda e, ids: 0.93)
    with caplog.at_level("WARNING"):
        diagnostics.warn_if_anisotropic(embedder, ids, lr=5e-5)
    assert "nearly parallel" in caplog.text and "lr 2e-4 to 5e-4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        diagnostics.warn_if_anisotropic(embedder, ids, lr=5e-4)
    assert "nearly parallel" not in caplog.text


def test_mean_cosine_of_identical_texts_is_one(tiny_model_dir):
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    ids = embedder.tokenize(["hello world", "hello world", "hello world"])
    assert diagnostics.mean_cosine(embedder, ids) == pytest.approx(1.0, abs=1e-5)


def test_mean_cosine_of_different_texts_is_below_one(tiny_model_dir):
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    ids = embedder.tokenize(["hello world", "the dog runs in the park", "x"])
    assert diagnostics.mean_cosine(embedder, ids) < 0.999
