"""Hard-negative mining on given scores: each guard alone drops what it should, the rank range applies after the
guards, every candidate lands in one count, bad settings are one line naming the value, and the result is
sentence-transformers' mine_hard_negatives on the same vectors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from embedtune.data.mining import MiningCounts, MiningSettings, build_mining_data, read_corpus, select_negatives
from embedtune.errors import ConfigError, DataError

SCORES = np.array([[0.9, 0.8, 0.7, 0.5, 0.3, 0.1]], dtype=np.float32)
INDEX = np.array([[10, 11, 12, 13, 14, 15]])


def pick(settings: MiningSettings, positive: float = 0.75, excluded=frozenset(), range_max: int = 6,
         scores=SCORES, index=INDEX) -> tuple[list[int], MiningCounts]:
    negatives, _, counts = select_negatives(scores, index, np.array([positive], dtype=np.float32), [set(excluded)],
                                            settings.validate(), range_max)
    total = (sum(counts.dropped.values()) + counts.skipped_range_min + counts.beyond_range_max + counts.not_sampled
             + counts.negatives)
    assert total == counts.candidates  # every candidate ends in exactly one count
    return negatives[0], counts


def dropped(counts: MiningCounts) -> dict[str, int]:
    return {guard: n for guard, n in counts.dropped.items() if n}


def test_without_guards_the_best_candidates_are_taken():
    negatives, counts = pick(MiningSettings(num_negatives=2))
    assert negatives == [10, 11] and dropped(counts) == {} and counts.not_sampled == 4


def test_the_anchor_and_its_positives_are_never_negatives():
    negatives, counts = pick(MiningSettings(num_negatives=2), excluded={10, 12})
    assert negatives == [11, 13] and dropped(counts) == {"anchor_or_positive": 2}


def test_the_absolute_margin_keeps_only_candidates_that_far_below_the_positive():
    # dropped when score + 0.1 > 0.75: 0.9, 0.8 and 0.7 (0.8 > 0.75); 0.5 is kept
    negatives, counts = pick(MiningSettings(num_negatives=2, absolute_margin=0.1))
    assert negatives == [13, 14] and dropped(counts) == {"absolute_margin": 3}
    negatives, counts = pick(MiningSettings(absolute_margin=0.0))  # 0: never above the positive
    assert negatives == [12] and dropped(counts) == {"absolute_margin": 2}


def test_the_relative_margin_is_a_fraction_of_the_positives_magnitude():
    # 0.75 - 0.75 * 0.2 = 0.6: 0.9, 0.8, 0.7 dropped
    negatives, counts = pick(MiningSettings(relative_margin=0.2))
    assert negatives == [13] and dropped(counts) == {"relative_margin": 3}
    # a negative positive score: -0.2 - |-0.2| * 0.5 = -0.3; the threshold goes down, not up
    scores = np.array([[-0.1, -0.25, -0.35, -0.5]], dtype=np.float32)
    negatives, counts = pick(MiningSettings(relative_margin=0.5), positive=-0.2, scores=scores,
                             index=np.array([[1, 2, 3, 4]]), range_max=4)
    assert negatives == [3] and dropped(counts) == {"relative_margin": 2}


def test_max_and_min_score_bound_the_similarity_to_the_anchor():
    negatives, counts = pick(MiningSettings(num_negatives=6, max_score=0.85))
    assert negatives == [11, 12, 13, 14, 15] and dropped(counts) == {"max_score": 1}
    negatives, counts = pick(MiningSettings(num_negatives=6, min_score=0.4))
    assert negatives == [10, 11, 12, 13] and dropped(counts) == {"min_score": 2}


def test_a_candidate_failing_several_guards_counts_under_the_first():
    _, counts = pick(MiningSettings(absolute_margin=0.1, max_score=0.85))
    assert dropped(counts) == {"absolute_margin": 3}


def test_the_rank_range_counts_the_candidates_that_passed_the_guards():
    negatives, counts = pick(MiningSettings(range_min=2))
    assert negatives == [12] and counts.skipped_range_min == 2
    # as in sentence-transformers: the guards drop 10, 11, 12 first, then range_min skips 13
    negatives, counts = pick(MiningSettings(range_min=1, absolute_margin=0.1))
    assert negatives == [14] and counts.skipped_range_min == 1
    negatives, counts = pick(MiningSettings(num_negatives=3), range_max=2)
    assert negatives == [10, 11] and counts.beyond_range_max == 4 and counts.anchors_short == 1


def test_random_sampling_stays_in_the_range_in_score_order_and_follows_the_seed():
    seen = set()
    for seed in range(30):
        negatives, counts = pick(MiningSettings(num_negatives=2, range_min=1, sampling="random", seed=seed),
                                 range_max=4)
        assert set(negatives) <= {11, 12, 13} and negatives == sorted(negatives) and counts.not_sampled == 1
        seen.update(negatives)
    assert seen == {11, 12, 13}
    first = pick(MiningSettings(num_negatives=2, sampling="random", seed=7), range_max=6)[0]
    assert pick(MiningSettings(num_negatives=2, sampling="random", seed=7), range_max=6)[0] == first


def test_padding_of_a_short_row_is_no_candidate():
    negatives, counts = pick(MiningSettings(num_negatives=3), scores=np.array([[0.5, -np.inf]], dtype=np.float32),
                             index=np.array([[4, -1]]))
    assert negatives == [4] and counts.candidates == 1 and counts.anchors_short == 1


def test_counts_add_up_over_chunks_and_say_what_they_mean():
    total = MiningCounts()
    for _ in range(2):
        total.add(pick(MiningSettings(absolute_margin=0.1))[1])
    assert total.anchors == 2 and total.dropped["absolute_margin"] == 6 and total.negatives == 2
    assert "6 absolute margin" in total.summary()


@pytest.mark.parametrize("settings, message", [
    (MiningSettings(num_negatives=-1), "--num-negatives must be an integer >= 1, got -1"),
    (MiningSettings(num_negatives=0), "--num-negatives must be an integer >= 1, got 0"),
    (MiningSettings(num_negatives=True), "--num-negatives must be an integer >= 1, got True"),
    (MiningSettings(range_min=-2), "--range-min must be an integer >= 0, got -2"),
    (MiningSettings(range_min=5, range_max=3), "--range-min must be below --range-max, got 5 and 3"),
    (MiningSettings(range_min=3, range_max=3), "--range-min must be below --range-max, got 3 and 3"),
    (MiningSettings(num_negatives=4, range_max=3), "--num-negatives 4 does not fit in ranks 0 to 3"),
    (MiningSettings(absolute_margin=-0.1), "--absolute-margin must be a number in [0, 2], got -0.1"),
    (MiningSettings(absolute_margin=2.5), "--absolute-margin must be a number in [0, 2], got 2.5"),
    (MiningSettings(relative_margin=math.nan), "--relative-margin must be a number in [0, 1], got nan"),
    (MiningSettings(relative_margin=1.5), "--relative-margin must be a number in [0, 1], got 1.5"),
    (MiningSettings(max_score=math.inf), "--max-score must be a number in [-1, 1], got inf"),
    (MiningSettings(min_score="0.5"), "--min-score must be a number in [-1, 1], got '0.5'"),
    (MiningSettings(min_score=0.5, max_score=0.4), "--min-score must be below --max-score, got 0.5 and 0.4"),
    (MiningSettings(sampling="best"), "--sampling must be one of top, random, got 'best'"),
])
def test_a_bad_setting_is_one_line_naming_the_value(settings, message):
    with pytest.raises(ConfigError) as err:
        settings.validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_range_max_is_derived_as_sentence_transformers_does():
    assert MiningSettings(num_negatives=3).derived_range_max(max_positives=2) == 5
    assert MiningSettings(num_negatives=3, range_min=4, relative_margin=0.05).derived_range_max(1) == 35
    assert MiningSettings(num_negatives=3, range_max=8).derived_range_max(5) == 8
    assert MiningSettings(num_negatives=3).candidates_to_retrieve(max_positives=2) == 8


def test_pairs_are_grouped_by_anchor_and_the_positives_join_the_corpus():
    pairs = [("a", "p1"), ("b", "p2"), ("a", "p3"), ("a", "p1")]
    data = build_mining_data(pairs, ["x", "P1", "x", "p2"])
    assert data.anchors == ["a", "b"] and data.corpus == ["x", "P1", "p2", "p1", "p3"]
    assert data.positives == [[3, 4], [2]] and data.pairs == [(0, 3), (1, 2), (0, 4), (0, 3)]
    assert (data.corpus_read, data.corpus_duplicates, data.positives_added, data.max_positives) == (4, 1, 2, 2)
    # 'P1' is the positive p1 up to case: no negative of a
    assert data.exclusions() == [{1, 3, 4}, {2}]
    alone = build_mining_data(pairs)
    assert alone.corpus == ["p1", "p2", "p3"] and alone.corpus_read == 0 and alone.positives_added == 3


def test_corpus_formats(tmp_path):
    beir = tmp_path / "corpus.jsonl"
    beir.write_text('{"_id": "1", "title": "Cats", "text": "purr."}\n\n{"_id": "2", "text": " Dogs bark. "}\n')
    assert read_corpus(beir) == ["Cats purr.", "Dogs bark."]
    txt = tmp_path / "corpus.txt"
    txt.write_text("one\n\n two \r\nthree")
    assert read_corpus(txt) == ["one", " two ", "three"]
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("id\tbody\n1\tfirst\n2\tsecond\n")
    assert read_corpus(tsv, "body") == ["first", "second"]


@pytest.mark.parametrize("name, content, column, message", [
    ("c.docx", "x", "text", "c.docx: unsupported corpus type '.docx' (use one of .jsonl"),
    ("c.txt", "\n  \n", "text", "c.txt: empty corpus (no non-blank line)"),
    ("c.jsonl", "", "text", "c.jsonl: no data rows"),
    ("c.tsv", "text\n", "text", "c.tsv:1: no data rows"),
    ("c.tsv", "body\nx\n", "text", "c.tsv:1, field 'text': missing column (found: body)"),
    ("c.jsonl", '{"text": 3}\n', "text", "c.jsonl:1, field 'text': document text got a number, not a string"),
    ("c.csv", "text\n\"\"\n", "text", "c.csv:2, field 'text': empty sentence"),
])
def test_a_bad_corpus_is_one_line_naming_file_and_place(tmp_path, name, content, column, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_corpus(path, column)
    assert str(err.value).startswith(str(tmp_path / message)) and "\n" not in str(err.value)


def test_a_missing_corpus_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_corpus(tmp_path / "none.jsonl")
