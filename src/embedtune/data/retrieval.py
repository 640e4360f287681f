"""Retrieval tasks in BEIR's layout, one declarative record each, and the readers of BEIR's files.

Offline, a task is the folder `<data_dir>/retrieval/<name>/` with `corpus.jsonl` (`_id, title, text`),
`queries.jsonl` (`_id, text`) and `qrels/<split>.tsv` (`query-id, corpus-id, score`); any folder there is a task
of that name. Online, the hub datasets MTEB uses (configs corpus, queries and default = qrels), pinned to MTEB's
revisions. A document is its title and text joined by a space, as MTEB encodes it.

Every bad cell is a DataError naming file, line and field. Qrels rows that name a query missing from the queries
file cannot be scored: they are dropped, counted by reason in `RetrievalData.skipped` and logged; rows that name
a document missing from the corpus stay (the document counts as relevant and is never found, as pytrec_eval
and MTEB score it) and are counted too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from embedtune.data.hub import hub_dataset
from embedtune.data.tables import Row, check_unicode, number_field, read_table, shown, text_field
from embedtune.errors import DataError

log = logging.getLogger(__name__)

QRELS_COLUMNS = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class RetrievalTask:
    name: str
    hub_id: str | None = None  # None: a local set only
    revision: str | None = None  # MTEB's pinned dataset revision
    split: str = "test"
    # MTEB drops a document whose id equals the query's from that query's results (ArguAna: each query is
    # itself in the corpus).
    ignore_identical_ids: bool = False
    kind: ClassVar[str] = "retrieval"

    def local_dir(self, data_dir: Path) -> Path:
        return data_dir / "retrieval" / self.name


RETRIEVAL_TASKS: dict[str, RetrievalTask] = {
    task.name: task
    for task in (
        RetrievalTask("scifact", "mteb/scifact", "d56462d0e63a25450459c4f213e49ffdb866f7f9"),
        RetrievalTask("nfcorpus", "mteb/nfcorpus", "ec0fa4fe99da2ff19ca1214b7966684033a58814"),
        RetrievalTask("arguana", "mteb/arguana", "c22ab2a51041ffd869aaddef7af8d8215647e41a", ignore_identical_ids=True),
    )
}


@dataclass(frozen=True)
class RetrievalData:
    """A corpus, the queries that have qrels in the split, and the qrels (query id -> {document id: relevance})."""

    name: str
    doc_ids: list[str]
    documents: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    ignore_identical_ids: bool = False
    skipped: dict[str, int] = field(default_factory=dict)  # counted drops and oddities, by reason
    blank_lines: int = 0


def id_field(path: Path | str, row: Row, column: str) -> str:
    """An id: a non-empty string, or a JSON integer (MTEB casts ids to strings)."""
    value = row.values.get(column)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        return str(value)
    if not isinstance(value, str) or not value.strip():
        what = "missing on this line" if column not in row.values else (
            "empty" if isinstance(value, str) else f"got {_kind(value)}, not a string")
        raise DataError(f"bad id ({what})", file=str(path), line=row.line, field=column)
    check_unicode(path, row, column)
    return value


def _kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(
        type(value), type(value).__name__)


def document_text(path: Path | str, row: Row) -> str:
    """MTEB's document text: `title text` stripped, the text alone when there is no title."""
    title = row.values.get("title")
    if title is not None and not isinstance(title, str):
        raise DataError(f"title must be a string, got {_kind(title)}", file=str(path), line=row.line, field="title")
    text = row.values.get("text")
    if not isinstance(text, str):
        what = "missing on this line" if "text" not in row.values else f"got {_kind(text)}, not a string"
        raise DataError(f"document text {what}", file=str(path), line=row.line, field="text")
    check_unicode(path, row, "title")
    check_unicode(path, row, "text")
    joined = (title + " " + text).strip() if title else text.strip()
    if not joined:
        raise DataError("empty document (no title, no text)", file=str(path), line=row.line, field="text")
    return joined


def _unique(path: Path, row: Row, ident: str, seen: dict[str, int]) -> None:
    if ident in seen:
        raise DataError(f"duplicate _id {shown(ident)} (first on line {seen[ident]})", file=str(path), line=row.line,
                        field="_id")
    seen[ident] = row.line


def read_corpus(path: Path) -> tuple[list[str], list[str], int]:
    """(ids, document texts, blank lines) of a BEIR corpus.jsonl."""
    rows = read_table(path, ["_id", "text"])
    seen: dict[str, int] = {}
    ids, texts = [], []
    for row in rows:
        ident = id_field(path, row, "_id")
        _unique(path, row, ident, seen)
        ids.append(ident)
        texts.append(document_text(path, row))
    return ids, texts, rows.blank_lines


def read_queries(path: Path) -> tuple[dict[str, str], int]:
    """{id: text} (file order) and blank lines of a BEIR queries.jsonl."""
    rows = read_table(path, ["_id", "text"])
    seen: dict[str, int] = {}
    queries: dict[str, str] = {}
    for row in rows:
        ident = id_field(path, row, "_id")
        _unique(path, row, ident, seen)
        queries[ident] = text_field(path, row, "text")
    return queries, rows.blank_lines


def relevance_field(path: Path | str, row: Row) -> int:
    """An integer relevance grade (pytrec_eval takes integers only)."""
    value = number_field(path, row, "score")
    if value != int(value) or abs(value) > 2**31 - 1:
        raise DataError(f"relevance must be an integer, got {shown(row.values.get('score'))}", file=str(path),
                        line=row.line, field="score")
    return int(value)


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], int]:
    """{query id: {document id: relevance}} in file order, and blank lines."""
    rows = read_table(path, list(QRELS_COLUMNS))
    qrels: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        query, doc = text_field(path, row, "query-id"), text_field(path, row, "corpus-id")
        if (query, doc) in seen:
            raise DataError(f"duplicate qrels row for query {shown(query)} and document {shown(doc)} "
                            f"(first on line {seen[query, doc]})", file=str(path), line=row.line, field="corpus-id")
        seen[query, doc] = row.line
        qrels.setdefault(query, {})[doc] = relevance_field(path, row)
    return qrels, rows.blank_lines


def read_beir_folder(folder: Path, name: str, split: str = "test", ignore_identical_ids: bool = False) -> RetrievalData:
    """A BEIR folder, every file checked; qrels against queries and corpus, with what does not match counted."""
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for what, path in paths.items():
        if not path.is_file():
            raise DataError(f"{what} file for retrieval task '{name}' not found", file=str(path))
    doc_ids, documents, corpus_blank = read_corpus(paths["corpus"])
    queries, query_blank = read_queries(paths["queries"])
    qrels, qrels_blank = read_qrels(paths["qrels"])
    return match_qrels(name, doc_ids, documents, queries, qrels, ignore_identical_ids, str(paths["qrels"]),
                       corpus_blank + query_blank + qrels_blank)


def match_qrels(name: str, doc_ids: list[str], documents: list[str], queries: dict[str, str],
                qrels: dict[str, dict[str, int]], ignore_identical_ids: bool, where: str,
                blank_lines: int = 0) -> RetrievalData:
    """Keep the queries that have qrels (in the queries' order); count qrels rows naming unknown ids."""
    known_docs = set(doc_ids)
    unknown_query_rows = sum(len(docs) for q, docs in qrels.items() if q not in queries)
    kept = {q: docs for q, docs in qrels.items() if q in queries}
    unknown_doc_rows = sum(1 for docs in kept.values() for d in docs if d not in known_docs)
    skipped = {"qrels_rows_unknown_query": unknown_query_rows, "qrels_rows_unknown_document": unknown_doc_rows}
    skipped = {k: v for k, v in skipped.items() if v}
    if unknown_query_rows:
        log.warning("%s: %d qrels row(s) name a query not in the queries file; dropped", where, unknown_query_rows)
    if unknown_doc_rows:
        log.warning("%s: %d qrels row(s) name a document not in the corpus; scored as never retrieved", where,
                    unknown_doc_rows)
    if not kept:
        raise DataError(f"no qrels row names a query of the queries file ({len(qrels)} query ids in the qrels)",
                        file=where)
    query_ids = [q for q in queries if q in kept]
    return RetrievalData(name, doc_ids, documents, query_ids, [queries[q] for q in query_ids],
                         {q: kept[q] for q in query_ids}, ignore_identical_ids, skipped, blank_lines)


def load_retrieval(task: RetrievalTask, data_dir: Path | None, split: str | None = None) -> RetrievalData:
    """Local folder when a data dir is known, else the pinned hub dataset."""
    split = split or task.split
    if data_dir is not None:
        return read_beir_folder(task.local_dir(data_dir), task.name, split, task.ignore_identical_ids)
    return _load_from_hub(task, split)


def _load_from_hub(task: RetrievalTask, split: str) -> RetrievalData:
    corpus = _hub_part(task, "corpus", split)
    queries = _hub_part(task, "queries", split)
    qrels_rows = _hub_part(task, "default", split)
    doc_ids = [str(i) for i in corpus["_id"]]
    titles = corpus["title"] if "title" in corpus.column_names else [""] * len(doc_ids)
    documents = [((t + " " + x).strip() if t else x.strip()) for t, x in zip(titles, corpus["text"], strict=True)]
    qrels: dict[str, dict[str, int]] = {}
    for q, d, s in zip(qrels_rows["query-id"], qrels_rows["corpus-id"], qrels_rows["score"], strict=True):
        qrels.setdefault(str(q), {})[str(d)] = int(s)
    texts = dict(zip((str(i) for i in queries["_id"]), queries["text"], strict=True))
    return match_qrels(task.name, doc_ids, documents, texts, qrels, task.ignore_identical_ids, task.hub_id or "")


def _hub_part(task: RetrievalTask, config: str, split: str):
    """One config of a BEIR hub dataset; as MTEB does, its only split when it has no split of that name."""
    import datasets

    try:
        splits = datasets.get_dataset_split_names(task.hub_id, config, revision=task.revision)
    except Exception:  # offline: hub_dataset below says so in its one line
        splits = [split]
    chosen = split if split in splits or len(splits) != 1 else splits[0]
    return hub_dataset(task.hub_id, config, chosen, task.revision, task.name)
