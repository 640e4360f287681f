"""The real default model (Gemma-3-270M, shipped in a PyPI package as GGUF, converted on first use): one check
that it loads and embeds sensibly on CPU, as every benchmark's default --model.

The base model is a weak embedder (nine-set STS average ~19, docs/RESULTS.md): single pairs do not rank
reliably. "A man plays the guitar." is *less* similar to "A man is playing a guitar." (cosine 0.365) than "The
stock market fell sharply today." is (0.396), in sentence-transformers too; so the semantic check here is
STS17's Spearman over 250 pairs (base: 42.9), and the vectors are checked against sentence-transformers' own
last-token pooling of the same model.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

GUITAR, PARAPHRASE, UNRELATED = ("A man is playing a guitar.", "A man plays the guitar.",
                                 "The stock market fell sharply today.")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_embedder():
    from embedtune.models.embedder import Embedder

    return Embedder("gemma3-270m", precision="fp32", device="cpu")


@pytest.mark.slow
def test_default_model_embeds(default_embedder):
    vectors = default_embedder.encode([GUITAR, PARAPHRASE, UNRELATED])
    assert vectors.shape == (3, 640) and vectors.dtype == np.float32
    assert vectors[0].shape == (640,)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # one text alone embeds as it does in a batch (padding does not change a vector)
    np.testing.assert_allclose(default_embedder.encode([GUITAR])[0], vectors[0], atol=1e-4)

    from sentence_transformers import SentenceTransformer, models

    from embedtune.models.loading import resolve_model

    transformer = models.Transformer(resolve_model("gemma3-270m").location)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    peer = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    reference = peer.encode([t + peer.tokenizer.eos_token for t in (GUITAR, PARAPHRASE, UNRELATED)])
    np.testing.assert_allclose(vectors, reference, atol=2e-3)
    cosines = vectors @ vectors.T
    np.testing.assert_allclose(cosines, reference @ reference.T, atol=1e-3)


@pytest.mark.slow
def test_default_model_ranks_sts17_pairs(default_embedder):
    from embedtune.evaluation.sts import STSEvaluator

    data_dir = os.environ.get("EMBEDTUNE_DATA_DIR") or ROOT.parent / "shared" / "data"
    if not (Path(data_dir) / "sts" / "sts17" / "test.tsv").is_file():
        pytest.skip(f"no STS17 test set under {data_dir}")
    result = STSEvaluator.from_tasks(["sts17"], data_dir, show_progress=False)(default_embedder)
    assert 30 < result["tasks"]["sts17"]["spearman"] < 60, result["tasks"]
