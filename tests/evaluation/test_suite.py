"""`embedtune eval` over mixed kinds: the STS part exactly as alone, other kinds in their own sections."""
from __future__ import annotations

import json

import pytest

from embedtune.cli import main
from embedtune.errors import ConfigError
from embedtune.evaluation.report import eval_markdown
from embedtune.evaluation.suite import EvaluationSuite

STS_KEYS = {"model", "pooling", "prompt", "tasks", "average", "std", "seconds", "sentences", "unique_sentences",
            "sentences_per_s", "computed_with"}
FLAGS = ["--batch-size", "8", "--precision", "fp32"]


def test_mixed_kinds_keep_the_sts_part_and_add_a_section_each(tiny_model_dir, tiny_tasks_data_dir, tmp_path, capsys):
    data = ["--model", str(tiny_model_dir), "--data-dir", str(tiny_tasks_data_dir)]
    alone, mixed = tmp_path / "alone.json", tmp_path / "mixed.json"
    assert main(["eval", *data, "--tasks", "sts12", "biosses", *FLAGS, "--output", str(alone)]) == 0
    assert main(["eval", *data, "--tasks", "sts12", "tiny-pairs", "biosses", "tiny-retrieval", *FLAGS,
                 "--query-prompt", "{} is:", "--output", str(mixed)]) == 0
    a, m = json.loads(alone.read_text()), json.loads(mixed.read_text())
    assert set(m) == STS_KEYS | {"pair_classification", "retrieval"} and set(a) == STS_KEYS
    assert m["tasks"] == a["tasks"] and (m["average"], m["std"]) == (a["average"], a["std"])
    pairs = m["pair_classification"]["tasks"]["tiny-pairs"]
    assert pairs["kind"] == "pair_classification" and pairs["main_score"] == pairs["ap"] and pairs["n"] == 16
    assert 0 <= pairs["ap"] <= 100 and pairs["positives"] == 8
    retrieval = m["retrieval"]["tasks"]["tiny-retrieval"]
    assert retrieval["kind"] == "retrieval" and retrieval["main_score"] == retrieval["ndcg@10"]
    assert (retrieval["queries"], retrieval["documents"]) == (5, 12) and m["retrieval"]["query_prompt"] == "{} is:"
    assert m["retrieval"]["average"] == retrieval["ndcg@10"]
    table = mixed.with_suffix(".md").read_text()
    assert "| STS12 |" in table and "## Pair classification" in table and "| tiny-pairs |" in table
    assert "## Retrieval" in table and "| tiny-retrieval |" in table and f"{retrieval['ndcg@10']:.2f}" in table
    assert "## Pair classification" in capsys.readouterr().out


def test_other_kinds_alone_have_no_sts_average(tiny_model_dir, tiny_tasks_data_dir):
    from embedtune.models.embedder import Embedder

    suite = EvaluationSuite.from_tasks(["tiny-pairs"], tiny_tasks_data_dir, show_progress=False)
    result = suite(Embedder(str(tiny_model_dir), precision="fp32"))
    assert result["tasks"] == {} and result["average"] is None and "retrieval" not in result
    markdown = eval_markdown(result)
    assert markdown.startswith("# Evaluation: ") and "Spearman" not in markdown and "| tiny-pairs |" in markdown


def test_a_bad_file_of_any_kind_fails_before_the_model_loads(tiny_tasks_data_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_tasks_data_dir, root, symlinks=True)
    qrels = root / "retrieval" / "tiny-retrieval" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q1\td99\tlots\n")
    code = main(["eval", "--model", str(tmp_path / "no-such-model"), "--data-dir", str(root), "--tasks", "sts12",
                 "tiny-retrieval"])
    err = capsys.readouterr().err
    assert code != 0 and "test.tsv:17, field 'score': not a number: 'lots'" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="unknown task.*tiny-pair;.*pair classification: .*tiny-pairs"):
        EvaluationSuite.from_tasks(["tiny-pair"], root)
