"""as_mteb_model: mteb's own evaluations, run offline on local data, give `embedtune eval`'s scores."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

mteb = pytest.importorskip("mteb")

import embedtune  # noqa: E402
from embedtune.config import Config  # noqa: E402
from embedtune.data.pairs import read_pairs_file  # noqa: E402
from embedtune.data.retrieval import read_beir_folder  # noqa: E402
from embedtune.evaluation.suite import EvaluationSuite  # noqa: E402
from embedtune.models.embedder import Embedder  # noqa: E402

FP32 = Config.from_dict({"eval": {"precision": "fp32", "batch_size": 8}})


def offline(task, split_data) -> object:
    """An mteb task whose test split is `split_data` (nothing loads from the hub)."""
    task.dataset = {"default": {"test": split_data}}
    task.data_loaded = True
    return task


def mteb_scores(model, task) -> dict:
    result = mteb.evaluate(model, task, cache=None, overwrite_strategy="always", show_progress_bar=False,
                           encode_kwargs={"batch_size": 8})
    return result.task_results[0].scores["test"][0]


def sts_split(path: Path):
    import datasets

    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return datasets.Dataset.from_dict({"sentence1": [r["sentence1"] for r in rows],
                                       "sentence2": [r["sentence2"] for r in rows],
                                       "score": [float(r["score"]) for r in rows]})


def sts_sources(tiny_data_dir) -> list[Path]:
    shared = os.environ.get("EMBEDTUNE_DATA_DIR")
    real = [Path(shared) / "sts" / "biosses" / "test.tsv"] if shared else []
    return [tiny_data_dir / "sts" / "biosses" / "test.tsv"] + [p for p in real if p.is_file()]


def test_the_adapter_implements_mtebs_encoder_protocol(tiny_model_dir):
    from mteb.models import EncoderProtocol, ModelMeta

    model = embedtune.as_mteb_model(str(tiny_model_dir), prompt="{} is:", precision="fp32")
    assert isinstance(model, EncoderProtocol)
    meta = model.mteb_model_meta
    assert isinstance(meta, ModelMeta) and meta.name == f"embedtune/{tiny_model_dir.name}"
    assert meta.embed_dim == 64 and meta.similarity_fn_name == "cosine" and meta.n_parameters > 0
    assert model.embedder.prompt == "{} is:" and model.embedder.pooling == "eos"


def test_importing_embedtune_does_not_import_mteb():
    import subprocess

    code = "import embedtune, sys; embedtune.Config; print('mteb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_mtebs_sts_evaluation_gives_embedtune_evals_spearman(tiny_model_dir, tiny_data_dir):
    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    model = embedtune.as_mteb_model(embedder)
    for path in sts_sources(tiny_data_dir):
        ours = embedtune.evaluate(embedder, config=FP32, tasks=["biosses"], data_dir=str(path.parents[2]),
                                  show_progress=False)["tasks"]["biosses"]["spearman"]
        scores = mteb_scores(model, offline(mteb.get_task("BIOSSES"), sts_split(path)))
        assert scores["cosine_spearman"] * 100 == pytest.approx(ours, abs=1e-4), path
        assert scores["main_score"] == scores["cosine_spearman"]


def test_mtebs_pair_classification_gives_our_average_precision(tiny_model_dir, tiny_tasks_data_dir):
    import datasets

    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    data = read_pairs_file(tiny_tasks_data_dir / "pairs" / "tiny-pairs" / "test.tsv", "tiny-pairs")
    split = datasets.Dataset.from_dict({"sentence1": data.sentences1, "sentence2": data.sentences2,
                                        "labels": data.labels})
    scores = mteb_scores(embedtune.as_mteb_model(embedder), offline(mteb.get_task("SprintDuplicateQuestions"), split))
    ours = EvaluationSuite.from_tasks(["tiny-pairs"], tiny_tasks_data_dir, show_progress=False)(embedder)
    task = ours["pair_classification"]["tasks"]["tiny-pairs"]
    assert task["ap"] == pytest.approx(scores["cosine_ap"] * 100, abs=1e-6)
    assert task["f1"] == pytest.approx(scores["cosine_f1"] * 100, abs=1e-6)
    assert task["accuracy"] == pytest.approx(scores["cosine_accuracy"] * 100, abs=1e-6)


def test_mtebs_retrieval_gives_our_metrics_with_query_and_document_prompts(tiny_model_dir, tiny_tasks_data_dir):
    import datasets

    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    data = read_beir_folder(tiny_tasks_data_dir / "retrieval" / "tiny-retrieval", "tiny-retrieval")
    split = {"corpus": datasets.Dataset.from_dict({"id": data.doc_ids, "text": data.documents}),
             "queries": datasets.Dataset.from_dict({"id": data.query_ids, "text": data.queries}),
             "relevant_docs": data.qrels, "top_ranked": None}
    prompts = {"query_prompt": "{} is:", "document_prompt": "a {}"}
    scores = mteb_scores(embedtune.as_mteb_model(embedder, **prompts), offline(mteb.get_task("SciFact"), split))
    ours = EvaluationSuite.from_tasks(["tiny-retrieval"], tiny_tasks_data_dir, show_progress=False,
                                      **prompts)(embedder)["retrieval"]["tasks"]["tiny-retrieval"]
    for key, theirs in (("ndcg@10", "ndcg_at_10"), ("recall@10", "recall_at_10"), ("recall@100", "recall_at_100"),
                        ("mrr@10", "mrr_at_10"), ("map@10", "map_at_10")):
        assert ours[key] == pytest.approx(scores[theirs] * 100, abs=1e-3), key  # mteb rounds to 5 decimals
    assert embedder.prompt is None  # the prompts applied to their texts only
