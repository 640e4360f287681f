"""STS scoring: Spearman against hand-computed values, the paper's average/std convention, and MTEB equivalence."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedtune.data.sts import STS_TASKS, load_sts
from embedtune.evaluation.sts import STSEvaluator, average_and_std, paired_cosine, spearman_x100
from embedtune.models.embedder import Embedder

SHARED_DATA = Path(os.environ.get("EMBEDTUNE_DATA_DIR", Path(__file__).parents[3] / "shared" / "data"))
needs_shared_data = pytest.mark.skipif(not (SHARED_DATA / "sts").is_dir(), reason="../shared/data not present")


def test_spearman_is_the_pearson_correlation_of_ranks_times_100():
    # No ties: ranks [1, 3, 2, 4] vs [1, 2, 3, 4], sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman_x100([0.1, 0.4, 0.3, 0.9], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(80.0, abs=1e-12)
    # Ties in gold (as in STS) take their average rank: [1, 2.5, 2.5, 4]; Pearson with [1, 3, 2, 4] is
    # 4.5 / sqrt(5 * 4.5) = 3 / sqrt(10).
    assert spearman_x100([0.1, 0.4, 0.3, 0.9], [0.0, 2.5, 2.5, 5.0]) == pytest.approx(300 / np.sqrt(10), abs=1e-12)
    assert spearman_x100([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(-100.0, abs=1e-12)


def test_average_and_population_std_follow_the_paper():
    gemma_tuned = [75.80, 85.45, 80.08, 85.02, 83.33, 88.22, 85.61, 73.83, 76.69]  # paper Table 2
    average, std = average_and_std(gemma_tuned)
    assert round(average, 2) == 81.56
    assert round(std, 2) == 4.83


def test_paired_cosine_ignores_vector_norms():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[5.0, 0.0], [-2.0, -2.0]])
    assert paired_cosine(a, b) == pytest.approx([1.0, -1.0])


def test_each_unique_sentence_is_encoded_once(tiny_model_dir, tiny_data_dir, monkeypatch):
    evaluator = STSEvaluator.from_tasks(None, tiny_data_dir, show_progress=False)
    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    seen: list[str] = []
    real_encode = Embedder.encode

    def recording_encode(self, texts, **kwargs):
        seen.extend(texts)
        return real_encode(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode", recording_encode)
    result = evaluator(embedder)
    assert len(seen) == len(set(seen)) == result["unique_sentences"]
    all_sentences = {s for data in evaluator.datasets for s in data.sentences1 + data.sentences2}
    assert set(seen) == all_sentences
    assert result["sentences"] == 9 * 12 * 2
    assert list(result["tasks"]) == list(STS_TASKS)
    scores = np.array([t["spearman"] for t in result["tasks"].values()])
    assert result["average"] == pytest.approx(scores.mean(), abs=1e-9)
    assert result["std"] == pytest.approx(np.sqrt(np.mean((scores - scores.mean()) ** 2)), abs=1e-9)  # population


class _FixedEncoder:
    """An mteb EncoderProtocol that returns precomputed embeddings for the texts mteb asks for."""

    mteb_model_meta = None

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [t for batch in inputs for t in batch["text"]]
        return np.stack([self.vectors[t] for t in texts])

    def similarity(self, a, b):
        raise NotImplementedError

    def similarity_pairwise(self, a, b):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(a, b)


@needs_shared_data
@pytest.mark.parametrize("task_name,mteb_name,subset", [("sts17", "STS17", "en-en"), ("biosses", "BIOSSES", "default"),
                                                       ("stsbenchmark", "STSBenchmark", "default")])
def test_scores_equal_mtebs_own_sts_evaluator(tiny_model_dir, task_name, mteb_name, subset):
    import datasets
    import mteb
    from mteb.timing import TimingStack

    data = load_sts(STS_TASKS[task_name], SHARED_DATA)
    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    evaluator = STSEvaluator([data], show_progress=False)
    ours = evaluator(embedder)["tasks"][task_name]["spearman"]

    vectors = dict(zip(evaluator.unique_sentences, embedder.encode(evaluator.unique_sentences), strict=True))
    task = mteb.get_task(mteb_name)
    split = datasets.Dataset.from_dict({"sentence1": data.sentences1, "sentence2": data.sentences2,
                                        "score": data.scores})
    metrics = task._evaluate_subset(_FixedEncoder(vectors), split, encode_kwargs={"batch_size": 64},
                                    hf_split="test", hf_subset=subset, timer=TimingStack())
    assert ours == pytest.approx(metrics["cosine_spearman"] * 100, abs=1e-4)
