"""BEIR folders: corpus, queries and qrels read exactly; bad cells named; unmatched qrels rows counted."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from embedtune.data.retrieval import RETRIEVAL_TASKS, RetrievalTask, load_retrieval, read_beir_folder
from embedtune.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def beir(folder: Path, corpus=None, queries=None, qrels=None) -> Path:
    write(folder / "corpus.jsonl", corpus if corpus is not None else jsonl(
        {"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": 2, "title": "", "text": " Dogs bark. "},
        {"_id": "d3", "text": "No title here."}))
    write(folder / "queries.jsonl", queries if queries is not None else jsonl(
        {"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "what barks"}, {"_id": "q3", "text": "unjudged"}))
    write(folder / "qrels" / "test.tsv", qrels if qrels is not None else
          "query-id\tcorpus-id\tscore\nq2\t2\t1\nq1\td1\t2\nq1\td3\t0\n")
    return folder


def test_packaged_records_are_mtebs_sets_at_mtebs_revisions():
    assert set(RETRIEVAL_TASKS) == {"scifact", "nfcorpus", "arguana"}
    assert RETRIEVAL_TASKS["scifact"].revision == "d56462d0e63a25450459c4f213e49ffdb866f7f9"
    assert RETRIEVAL_TASKS["arguana"].ignore_identical_ids and not RETRIEVAL_TASKS["nfcorpus"].ignore_identical_ids


def test_a_beir_folder_reads_as_mteb_sees_it(tmp_path):
    beir(tmp_path / "retrieval" / "mine")
    data = load_retrieval(RetrievalTask("mine"), tmp_path)
    assert data.doc_ids == ["d1", "2", "d3"]  # integer ids become strings, as MTEB casts them
    assert data.documents == ["Cats Cats purr.", "Dogs bark.", "No title here."]  # title + text, stripped
    assert data.query_ids == ["q1", "q2"] and data.queries == ["what purrs", "what barks"]  # judged queries only
    assert data.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"2": 1}}
    assert data.skipped == {}


def test_qrels_rows_with_unknown_ids_are_counted(tmp_path, caplog):
    folder = beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone\t1\nq9\td1\t1\nq9\td3\t1\n")
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        data = read_beir_folder(folder, "x")
    assert data.skipped == {"qrels_rows_unknown_query": 2, "qrels_rows_unknown_document": 1}
    assert data.qrels == {"q1": {"d1": 1, "gone": 1}}  # an unknown document stays relevant, never retrieved
    assert "2 qrels row(s) name a query not in the queries file" in caplog.text


@pytest.mark.parametrize("part,content,pattern", [
    ("corpus", jsonl({"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}),
     r"corpus.jsonl:2, field '_id': duplicate _id 'd1' \(first on line 1\)"),
    ("corpus", jsonl({"_id": "d1", "text": "a"}, {"_id": True, "text": "b"}),
     r"corpus.jsonl:2, field '_id': bad id \(got a boolean, not a string\)"),
    ("corpus", jsonl({"_id": "d1", "text": "a"}, {"_id": "d2", "title": " ", "text": ""}),
     r"corpus.jsonl:2, field 'text': empty document \(no title, no text\)"),
    ("corpus", jsonl({"_id": "d1", "text": "a"}, {"_id": "d2", "title": 5, "text": "b"}),
     r"corpus.jsonl:2, field 'title': title must be a string, got a number"),
    ("corpus", jsonl({"_id": "d1", "text": "a"}, {"_id": "d2", "text": None}),
     r"corpus.jsonl:2, field 'text': document text got null, not a string"),
    ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"\n',
     r"corpus.jsonl:2: invalid JSON"),
    ("corpus", jsonl({"id": "d1", "text": "a"}), r"corpus.jsonl:1, field '_id': missing column \(found: id, text\)"),
    ("queries", jsonl({"_id": "q1", "text": ""}), r"queries.jsonl:1, field 'text': empty sentence"),
    ("queries", jsonl({"_id": "q1", "text": "a \ud800"}).replace("\\ud800", "\\ud800"),
     r"queries.jsonl:1, field 'text': not valid Unicode"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td1\t1.5\n",
     r"test.tsv:2, field 'score': relevance must be an integer, got '1.5'"),
    ("qrels", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n",
     r"test.tsv:3, field 'corpus-id': duplicate qrels row for query 'q1' and document 'd1' \(first on line 2\)"),
    ("qrels", "query-id corpus-id score\nq1 d1 1\n", r"test.tsv:1, field 'query-id': missing column"),
    ("qrels", "query-id\tcorpus-id\tscore\nq7\td1\t1\n",
     r"test.tsv: no qrels row names a query of the queries file \(1 query ids in the qrels\)"),
])
def test_bad_files_are_named_in_one_line(tmp_path, part, content, pattern):
    folder = beir(tmp_path, **{part: content})
    with pytest.raises(DataError, match=pattern) as caught:
        read_beir_folder(folder, "x")
    assert len(str(caught.value).splitlines()) == 1


def test_a_missing_file_is_named(tmp_path):
    folder = beir(tmp_path)
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"qrels/test.tsv: qrels file for retrieval task 'x' not found"):
        read_beir_folder(folder, "x")
    with pytest.raises(DataError, match=r"retrieval/other/corpus.jsonl: corpus file"):
        load_retrieval(RetrievalTask("other"), tmp_path)


def test_hub_configs_become_the_same_record(monkeypatch):
    import datasets

    from embedtune.data import retrieval

    parts = {"corpus": {"_id": [1, 2], "title": ["T", ""], "text": ["x", "y "]},
             "queries": {"_id": [10, 11], "text": ["q", "r"]},
             "default": {"query-id": [10, 10], "corpus-id": [1, 2], "score": [1, 0]}}
    monkeypatch.setattr(retrieval, "_hub_part", lambda task, config, split: datasets.Dataset.from_dict(parts[config]))
    data = load_retrieval(RETRIEVAL_TASKS["arguana"], None)
    assert (data.doc_ids, data.documents) == (["1", "2"], ["T x", "y"])
    assert (data.query_ids, data.queries, data.qrels) == (["10"], ["q"], {"10": {"1": 1, "2": 0}})
    assert data.ignore_identical_ids
