"""`embedtune mine`: the same triplets as sentence-transformers' mine_hard_negatives, exact and faiss search
agree, the output trains, bad inputs fail in one line before the model loads, and a failed or killed mine
leaves no half-written output."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedtune import extras
from embedtune.cli import main
from embedtune.data.mining import MiningSettings
from embedtune.errors import DataError, StorageError
from embedtune.files import TEMP_TAG
from embedtune.hooks import FAULT_ENV
from embedtune.mine_files import counts_path, mine_negatives, prepare_mining, search_candidates
from embedtune.testing.faults import injected_faults

ANCHORS = [f"anchor {i}" for i in range(12)]
POSITIVES = {a: [f"positive {i}.{j}" for j in range(1 + i % 3)] for i, a in enumerate(ANCHORS)}
CORPUS = [f"document {i}" for i in range(40)]


class StubEmbedder:
    """Fixed random unit vectors per text: what mining needs of an Embedder, without a model."""

    def __init__(self, texts, dim: int = 8, seed: int = 0, fail: bool = False):
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((len(texts), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = dict(zip(texts, vectors, strict=True))
        self.fail = fail

    def encode(self, texts, batch_size=64, show_progress=False, desc=""):
        if self.fail:
            raise RuntimeError("model broke mid-encoding")
        return np.stack([self.vectors[t] for t in texts])


ALL_TEXTS = ANCHORS + [p for ps in POSITIVES.values() for p in ps] + CORPUS


def write_pairs(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sent0", "sent1"])
        writer.writerows((a, p) for a, ps in POSITIVES.items() for p in ps)
    return path


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    return path


def read_rows(path: Path) -> list[tuple[str, str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["sent0", "sent1", "hard_neg"]
    return [tuple(r) for r in rows[1:]]


class FakeSentenceTransformer:
    """What sentence-transformers' mine_hard_negatives asks of its model, on the stub's vectors."""

    def __init__(self, stub: StubEmbedder):
        import torch

        self.stub, self.device, self.torch = stub, torch.device("cpu"), torch

    def encode_document(self, texts, **_):
        return self.stub.encode(texts)

    encode_query = encode_document

    def similarity(self, a, b):
        return self.torch.as_tensor(np.asarray(a)) @ self.torch.as_tensor(np.asarray(b)).T

    def similarity_pairwise(self, a, b):
        return (self.torch.as_tensor(np.asarray(a)) * self.torch.as_tensor(np.asarray(b))).sum(-1)


@pytest.mark.parametrize("settings", [
    MiningSettings(num_negatives=3),
    MiningSettings(num_negatives=2, range_min=2, relative_margin=0.05),
    MiningSettings(num_negatives=2, absolute_margin=0.1, max_score=0.6),
    MiningSettings(num_negatives=2, range_min=1, range_max=9, min_score=-0.2),
])
def test_the_triplets_are_sentence_transformers(tmp_path, settings):
    pytest.importorskip("sentence_transformers")
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    stub = StubEmbedder(ALL_TEXTS)
    plan = prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv", write_corpus(tmp_path / "c.jsonl"),
                          settings, search="exact")
    report = mine_negatives(stub, plan, show_progress=False)
    ours = read_rows(tmp_path / "out.tsv")
    pairs = Dataset.from_dict({"anchor": [a for a, ps in POSITIVES.items() for _ in ps],
                               "positive": [p for ps in POSITIVES.values() for p in ps]})
    theirs = mine_hard_negatives(pairs, FakeSentenceTransformer(stub), corpus=CORPUS, range_min=settings.range_min,
                                 range_max=settings.range_max, absolute_margin=settings.absolute_margin,
                                 relative_margin=settings.relative_margin, max_score=settings.max_score,
                                 min_score=settings.min_score, num_negatives=settings.num_negatives, verbose=False)
    assert Counter(ours) == Counter(zip(theirs["anchor"], theirs["positive"], theirs["negative"], strict=True))
    assert report["rows"] == len(ours) > 0


def test_the_counts_are_written_beside_the_output(tmp_path):
    settings = MiningSettings(num_negatives=2, relative_margin=0.05)
    plan = prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv", write_corpus(tmp_path / "c.jsonl"),
                          settings, search="exact")
    stub = StubEmbedder(ALL_TEXTS)
    report = mine_negatives(stub, plan, show_progress=False)
    saved = json.loads(counts_path(tmp_path / "out.tsv").read_text())
    _, retrieved = search_candidates(stub.encode(plan.data.anchors), stub.encode(plan.data.corpus),
                                     saved["settings"]["candidates_retrieved"], "exact", show_progress=False)
    own_positives_retrieved = sum(len(set(row) & set(ps))
                                  for row, ps in zip(retrieved, plan.data.positives, strict=True))
    counts = saved["counts"]
    assert saved["texts"] == {"anchors": 12, "pairs": 24, "corpus": 64, "corpus_read": 40, "corpus_duplicates": 0,
                              "positives_added": 24}
    assert counts["anchors"] == 12 and counts["pairs"] == 24 and saved["rows"] == len(read_rows(tmp_path / "out.tsv"))
    assert counts["candidates"] == 12 * saved["settings"]["candidates_retrieved"]
    assert counts["dropped"]["anchor_or_positive"] == own_positives_retrieved > 0
    assert counts["candidates"] == (sum(counts["dropped"].values()) + counts["skipped_range_min"]
                                    + counts["beyond_range_max"] + counts["not_sampled"] + counts["negatives"])
    assert saved["settings"]["range_max"] == 2 * 10 + 3 and saved["search"] == "exact"
    assert saved["scores"]["positive"]["mean"] > saved["scores"]["negative"]["mean"] - 1
    assert report["summary"].startswith("24 pairs of 12 anchors")


class FakeFaiss:
    """faiss's flat inner-product index, in numpy: the faiss path without faiss installed."""

    used = 0

    class IndexFlatIP:
        def __init__(self, dim):
            self.vectors = np.zeros((0, dim), dtype=np.float32)

        def add(self, vectors):
            self.vectors = np.vstack([self.vectors, vectors])

        def search(self, queries, k):
            FakeFaiss.used += 1
            scores = queries @ self.vectors.T
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(scores, order, 1), order


def test_faiss_and_exact_search_agree(monkeypatch):
    rng = np.random.default_rng(1)
    documents = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((1500, 16)).astype(np.float32)  # two chunks of anchors
    exact = search_candidates(queries, documents, 20, "exact", show_progress=False)
    if extras.available("mining"):
        real = search_candidates(queries, documents, 20, "faiss", show_progress=False)
        np.testing.assert_allclose(real[0], exact[0], atol=1e-5)
        # The same documents, rank for rank, except where two scores tie (to float rounding) and either order is right.
        tied = np.zeros_like(exact[0], dtype=bool)
        close = np.abs(np.diff(exact[0], axis=1)) < 1e-5
        tied[:, 1:] |= close
        tied[:, :-1] |= close
        assert tied.mean() < 0.01
        np.testing.assert_array_equal(real[1][~tied], exact[1][~tied])
    monkeypatch.setattr(extras, "load", lambda module, extra, purpose: FakeFaiss)
    faked = search_candidates(queries, documents, 20, "faiss", show_progress=False)
    assert FakeFaiss.used == 2
    np.testing.assert_array_equal(faked[1], exact[1])
    np.testing.assert_allclose(faked[0], exact[0], atol=1e-5)


def test_search_auto_takes_faiss_when_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(extras, "available", lambda extra: True)
    plan = prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv")
    assert plan.search == "faiss"
    monkeypatch.setattr(extras, "available", lambda extra: False)
    assert prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv").search == "exact"


def test_a_failed_mine_writes_nothing_and_keeps_an_older_output(tmp_path):
    plan = prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv", search="exact")
    with pytest.raises(RuntimeError):
        mine_negatives(StubEmbedder(ALL_TEXTS, fail=True), plan, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.tsv"]
    (tmp_path / "out.tsv").write_text("older")
    with injected_faults("enospc:mine:1"), pytest.raises(StorageError):
        mine_negatives(StubEmbedder(ALL_TEXTS), plan, show_progress=False)
    assert (tmp_path / "out.tsv").read_text() == "older" and not counts_path(tmp_path / "out.tsv").exists()
    assert not list(tmp_path.glob(f"*{TEMP_TAG}*"))


def test_a_killed_mine_leaves_no_half_written_output(tiny_model_dir, tmp_path):
    pairs, out = write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv"
    code = (f"from embedtune.cli import main\nmain(['mine', '--model', {str(tiny_model_dir)!r}, '--input', "
            f"{str(pairs)!r}, '--output', {str(out)!r}, '--device', 'cpu'])")
    env = {**os.environ, FAULT_ENV: "kill:mine:1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not out.exists() and not counts_path(out).exists()
    (partial,) = tmp_path.glob(f".out.tsv{TEMP_TAG}*")  # the cut write, never renamed into place
    partial.unlink()


def tiny_sentences(n: int, seed: int) -> list[str]:
    from tests.conftest import TINY_WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(TINY_WORDS[:60], size=rng.integers(3, 8))) for _ in range(n)]


def test_a_tiny_model_mines_a_tiny_corpus_and_train_reads_the_result(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                   capsys):
    anchors, positives = tiny_sentences(16, 1), tiny_sentences(16, 2)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sent0": a, "sent1": p}) + "\n"
                             for a, p in zip(anchors, positives, strict=True)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(30, 3)) + "\n")
    out = tmp_path / "mined.tsv"
    assert main(["mine", "--model", str(tiny_model_dir), "--input", str(pairs), "--corpus", str(corpus),
                 "--output", str(out), "--num-negatives", "2", "--range-min", "1", "--device", "cpu",
                 "--search", "exact"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 32 rows to {out}" in printed and "16 pairs of 16 anchors" in printed
    rows = read_rows(out)
    assert len(rows) == 32 and {(a, p) for a, p, _ in rows} == set(zip(anchors, positives, strict=True))
    assert all(n not in (a, p) for a, p, n in rows)
    assert main(["train", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--train-file", str(out),
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8", "--eval-steps", "0",
                 "--precision", "fp32", "--no-decontaminate"]) == 0
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()


def bad(tmp_path: Path, *extra: str, pairs: Path | None = None) -> list[str]:
    pairs = pairs or write_pairs(tmp_path / "pairs.tsv")
    return ["mine", "--model", "/nonexistent/model", "--input", str(pairs), "--output", str(tmp_path / "o.tsv"),
            *extra]


@pytest.mark.parametrize("extra, message", [
    (["--num-negatives", "-1"], "--num-negatives must be an integer >= 1, got -1"),
    (["--range-min", "5", "--range-max", "3"], "--range-min must be below --range-max, got 5 and 3"),
    (["--absolute-margin", "3"], "--absolute-margin must be a number in [0, 2], got 3.0"),
    (["--relative-margin", "-0.1"], "--relative-margin must be a number in [0, 1], got -0.1"),
    (["--max-score", "nan"], "--max-score must be a number in [-1, 1], got nan"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--num-negatives", "30", "--range-max", "20"], "--num-negatives 30 does not fit in ranks 0 to 20"),
])
def test_a_bad_value_is_one_line_before_the_model_loads(tmp_path, capsys, extra, message):
    assert main(bad(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embedtune: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "o.tsv").exists()


@pytest.mark.parametrize("case, message", [
    ("missing column", "pairs.tsv:1, field 'sent1': missing column (found: sent0, other)"),
    ("empty corpus", "corpus.txt: empty corpus (no non-blank line)"),
    ("unknown corpus format", "corpus.docx: unsupported corpus type '.docx'"),
    ("unknown output format", "o.xlsx: unsupported output type '.xlsx' (use one of .tsv, .csv, .jsonl)"),
    ("output over input", "pairs.tsv: the output would overwrite an input"),
    ("no pairs", "pairs.tsv: no (anchor, positive) pairs left"),
])
def test_a_bad_file_is_one_line_before_the_model_loads(tmp_path, capsys, case, message):
    args = bad(tmp_path)
    if case == "missing column":
        (tmp_path / "pairs.tsv").write_text("sent0\tother\na\tb\n")
    elif case == "empty corpus":
        (tmp_path / "corpus.txt").write_text("\n")
        args += ["--corpus", str(tmp_path / "corpus.txt")]
    elif case == "unknown corpus format":
        (tmp_path / "corpus.docx").write_text("x")
        args += ["--corpus", str(tmp_path / "corpus.docx")]
    elif case == "unknown output format":
        args += ["--output", str(tmp_path / "o.xlsx")]
    elif case == "output over input":
        args += ["--output", str(tmp_path / "pairs.tsv")]
    else:
        (tmp_path / "pairs.tsv").write_text("sent0\tsent1\nsame\tsame\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embedtune: error: {tmp_path / message}") and err.count("\n") == 1, err


def test_search_faiss_without_faiss_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(bad(tmp_path, "--search", "faiss")) == 2
    assert capsys.readouterr().err == ("embedtune: error: --search faiss needs the 'mining' extra (faiss is not "
                                       "installed): pip install 'embedtune[mining]'\n")


def test_raw_nli_pairs_give_premise_and_entailed_pairs(tmp_path):
    raw = tmp_path / "nli.tsv"
    raw.write_text("premise\thypothesis\tlabel\nA man sleeps.\tA person rests.\tentailment\n"
                   "A man sleeps.\tA man runs.\tcontradiction\nA dog barks.\tAn animal makes noise.\tentailment\n"
                   "A dog barks.\tThe dog is a cat.\tneutral\n")
    plan = prepare_mining(raw, tmp_path / "out.tsv", search="exact")
    assert plan.data.anchors == ["A man sleeps.", "A dog barks."]
    assert plan.data.corpus == ["A person rests.", "An animal makes noise."]
    assert plan.cleaning.pairs_read == 4 and plan.cleaning.pairs_neutral == 1


def test_no_negative_found_is_an_error_and_writes_nothing(tmp_path):
    plan = prepare_mining(write_pairs(tmp_path / "pairs.tsv"), tmp_path / "out.tsv",
                          settings=MiningSettings(min_score=0.99), search="exact")
    with pytest.raises(DataError, match="no negatives found, nothing written"):
        mine_negatives(StubEmbedder(ALL_TEXTS), plan, show_progress=False)
    assert not (tmp_path / "out.tsv").exists()


def test_the_python_api_takes_the_flags_as_keywords_and_returns_the_counts(tiny_model_dir, tmp_path):
    import embedtune

    out = tmp_path / "mined.jsonl"
    report = embedtune.mine(str(tiny_model_dir), write_pairs(tmp_path / "pairs.tsv"), out, num_negatives=2,
                            sampling="random", seed=3, search="exact", pooling="mean", device="cpu",
                            show_progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == report["rows"] == 48 and set(lines[0]) == {"sent0", "sent1", "hard_neg"}
    assert json.loads(counts_path(out).read_text())["settings"]["sampling"] == "random"
    with pytest.raises(Exception, match="model.pooling must be one of eos, mean, cls, got 'max'"):
        embedtune.mine(str(tiny_model_dir), tmp_path / "pairs.tsv", tmp_path / "o.tsv", pooling="max")
