"""Hard-negative mining: the false-negative guards and the choice of negatives, on given scores (no model here).

For each anchor the retriever gives its candidates, best first (`scores`, `index` into the corpus; -1 pads a
short row). The guards follow sentence-transformers' `mine_hard_negatives`, in its order, each candidate counted
under the first guard that drops it:

1. **the anchor or a positive**: a candidate whose text is the anchor itself or one of the anchor's positives
   (up to case and spacing: a near-duplicate of the positive is no negative);
2. **absolute margin** m: dropped when `score + m > positive_score` (kept only at least m below the positive);
3. **relative margin** r: dropped when `score > positive_score - |positive_score| * r` (r = 0.05: kept only 5%
   of the positive's magnitude below it, NV-Retriever's TopK-PercPos);
4. **max score** s: dropped when `score > s` (near-duplicates of the anchor); **min score**: when `score < s`.

Where an anchor has several positives, `positive_score` is the lowest of theirs (the hardest positive), as
sentence-transformers does. The **rank range** then applies to the candidates that passed the guards, in score
order, as in sentence-transformers: the first `range_min` are skipped and those from rank `range_max` on are not
used; `sampling` takes the top `num_negatives` of the rest, or a seeded random `num_negatives` of them (then in
score order). Every candidate ends in exactly one count (`MiningCounts.candidates` is their sum).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedtune.data.nli import normalise
from embedtune.data.retrieval import document_text
from embedtune.data.tables import LINE_BREAK, read_table, read_text_strict, text_field
from embedtune.errors import ConfigError, DataError

SAMPLINGS = ("top", "random")
GUARDS = ("anchor_or_positive", "absolute_margin", "relative_margin", "max_score", "min_score")


@dataclass(frozen=True)
class MiningSettings:
    """How negatives are chosen. `range_max` None: derived as sentence-transformers does (`derived_range_max`)."""

    num_negatives: int = 1
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int = 42

    def validate(self) -> MiningSettings:
        """A one-line ConfigError naming the first bad value (before any data is read or model loaded)."""
        _integer("--num-negatives", self.num_negatives, 1)
        _integer("--range-min", self.range_min, 0)
        _integer("--seed", self.seed, 0)
        if self.range_max is not None:
            _integer("--range-max", self.range_max, 1)
            self.check_range(self.range_max)
        # Similarities are cosines, in [-1, 1]: a margin is a difference of two (at most 2); a relative margin
        # is a fraction of the positive's score.
        _number("--absolute-margin", self.absolute_margin, 0.0, 2.0)
        _number("--relative-margin", self.relative_margin, 0.0, 1.0)
        _number("--max-score", self.max_score, -1.0, 1.0)
        _number("--min-score", self.min_score, -1.0, 1.0)
        if self.min_score is not None and self.max_score is not None and self.min_score >= self.max_score:
            raise ConfigError(f"--min-score must be below --max-score, got {self.min_score} and {self.max_score}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        return self

    def check_range(self, range_max: int) -> None:
        if self.range_min >= range_max:
            raise ConfigError(f"--range-min must be below --range-max, got {self.range_min} and {range_max}")
        if self.num_negatives > range_max - self.range_min:
            raise ConfigError(f"--num-negatives {self.num_negatives} does not fit in ranks {self.range_min} to "
                              f"{range_max} ({range_max - self.range_min} candidates): lower it or widen the range")

    def derived_range_max(self, max_positives: int) -> int:
        """The given range_max, else sentence-transformers' default: room for `num_negatives` (ten times as many
        when a margin or max score will drop some) past range_min and the anchor's own positives."""
        if self.range_max is not None:
            return self.range_max
        guarded = any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score))
        return self.range_min + self.num_negatives * (10 if guarded else 1) + max_positives

    def candidates_to_retrieve(self, max_positives: int) -> int:
        """Candidates per anchor to ask the retriever for: the range, plus slots the anchor and its positives
        may take (as sentence-transformers retrieves)."""
        return self.derived_range_max(max_positives) + max_positives + 1


def _integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


@dataclass
class MiningCounts:
    """What became of the candidates, and of the anchors and pairs."""

    anchors: int = 0
    pairs: int = 0
    candidates: int = 0  # retrieved, over all anchors (pads of short rows not counted)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GUARDS, 0))  # by guard
    skipped_range_min: int = 0  # passed the guards, among the first range_min
    beyond_range_max: int = 0  # passed the guards, at rank range_max or later
    not_sampled: int = 0  # in the range, not among the num_negatives taken
    negatives: int = 0  # taken (per anchor; each of its pairs gets them all)
    anchors_short: int = 0  # anchors that got fewer than num_negatives
    anchors_without_negative: int = 0
    rows: int = 0  # (anchor, positive, negative) rows written
    pairs_without_negative: int = 0  # pairs left out of the output

    def add(self, other: MiningCounts) -> None:
        for name, value in asdict(other).items():
            if isinstance(value, dict):
                for key, n in value.items():
                    self.dropped[key] += n
            else:
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        guards = ", ".join(f"{n} {g.replace('_', ' ')}" for g, n in self.dropped.items() if n) or "none"
        short = (f"; {self.anchors_short} anchors got fewer negatives than asked ({self.anchors_without_negative} "
                 f"none: their {self.pairs_without_negative} pairs are left out)") if self.anchors_short else ""
        return (f"{self.pairs} pairs of {self.anchors} anchors; {self.candidates} candidates: dropped by guard: "
                f"{guards}; {self.skipped_range_min} skipped by --range-min, {self.beyond_range_max} beyond "
                f"--range-max, {self.not_sampled} not sampled; {self.negatives} negatives taken{short}; "
                f"{self.rows} rows written")


def guard_masks(scores: np.ndarray, positive_scores: np.ndarray,
                settings: MiningSettings) -> list[tuple[str, np.ndarray]]:
    """(guard, where it would drop) for the score guards that are set, in the order they apply."""
    positive = positive_scores[:, None]
    masks = []
    if settings.absolute_margin is not None:
        masks.append(("absolute_margin", scores + settings.absolute_margin > positive))
    if settings.relative_margin is not None:
        masks.append(("relative_margin", scores > positive - np.abs(positive) * settings.relative_margin))
    if settings.max_score is not None:
        masks.append(("max_score", scores > settings.max_score))
    if settings.min_score is not None:
        masks.append(("min_score", scores < settings.min_score))
    return masks


def select_negatives(scores: np.ndarray, index: np.ndarray, positive_scores: np.ndarray,
                     excluded: Sequence[set[int]], settings: MiningSettings, range_max: int,
                     rng: np.random.Generator | None = None) -> tuple[list[list[int]], list[list[float]], MiningCounts]:
    """Per anchor, its negatives (corpus indices, best first) and their scores, and the counts.

    `scores`/`index`: (anchors, k) candidates best first, index -1 where a row is short; `positive_scores`: per
    anchor, the lowest score of its positives; `excluded`: per anchor, the corpus indices of its own text and its
    positives' (up to case and spacing)."""
    counts = MiningCounts(anchors=len(scores))
    present = index >= 0
    counts.candidates = int(present.sum())
    alive = present.copy()
    same = np.array([[i in excluded[r] for i in row] for r, row in enumerate(index)], dtype=bool).reshape(index.shape)
    counts.dropped["anchor_or_positive"] = int((alive & same).sum())
    alive &= ~same
    for guard, mask in guard_masks(scores, positive_scores, settings):
        counts.dropped[guard] = int((alive & mask).sum())
        alive &= ~mask
    rng = rng if rng is not None else np.random.default_rng(settings.seed)
    chosen_index, chosen_scores = [], []
    for r in range(len(scores)):
        survivors = np.flatnonzero(alive[r])  # already in score order
        window = survivors[settings.range_min : range_max]
        counts.skipped_range_min += min(len(survivors), settings.range_min)
        counts.beyond_range_max += max(0, len(survivors) - range_max)
        if settings.sampling == "random" and len(window) > settings.num_negatives:
            picked = np.sort(rng.choice(window, settings.num_negatives, replace=False))
        else:
            picked = window[: settings.num_negatives]
        counts.not_sampled += len(window) - len(picked)
        counts.negatives += len(picked)
        counts.anchors_short += len(picked) < settings.num_negatives
        counts.anchors_without_negative += len(picked) == 0
        chosen_index.append([int(i) for i in index[r, picked]])
        chosen_scores.append([float(s) for s in scores[r, picked]])
    return chosen_index, chosen_scores, counts


# ---- the texts: pairs grouped by anchor, the corpus ------------------------------------------------------------

CORPUS_SUFFIXES = (".jsonl", ".json", ".txt", ".tsv", ".csv", ".parquet")


@dataclass
class MiningData:
    """Unique anchors (input order), the corpus (the corpus file's texts, then the positives it lacks, each text
    once), each anchor's positives as corpus indices, and the input pairs as (anchor, corpus index)."""

    anchors: list[str]
    corpus: list[str]
    positives: list[list[int]]
    pairs: list[tuple[int, int]]
    corpus_read: int = 0  # texts read from the corpus file (0 without one)
    corpus_duplicates: int = 0  # of those, repeats of an earlier text (kept once)
    positives_added: int = 0  # positives not in the corpus file, added to it (all of them without one)

    @property
    def max_positives(self) -> int:
        return max(len(p) for p in self.positives)

    def exclusions(self) -> list[set[int]]:
        """Per anchor, the corpus indices whose text is the anchor or one of its positives, up to case and
        spacing: never its negatives."""
        where: dict[str, list[int]] = {}
        for i, text in enumerate(self.corpus):
            where.setdefault(normalise(text), []).append(i)
        out = []
        for anchor, positives in zip(self.anchors, self.positives, strict=True):
            keys = {normalise(anchor), *(normalise(self.corpus[p]) for p in positives)}
            out.append({i for key in keys for i in where.get(key, ())})
        return out

    def counts(self) -> dict[str, int]:
        return {"anchors": len(self.anchors), "pairs": len(self.pairs), "corpus": len(self.corpus),
                "corpus_read": self.corpus_read, "corpus_duplicates": self.corpus_duplicates,
                "positives_added": self.positives_added}


def build_mining_data(pairs: Sequence[tuple[str, str]], corpus: Sequence[str] | None = None) -> MiningData:
    """Group the pairs by anchor; the corpus is `corpus` plus every positive (the positives alone without one:
    the other anchors' positives are the candidates, as sentence-transformers does)."""
    texts = list(dict.fromkeys(corpus or ()))
    position = {t: i for i, t in enumerate(texts)}
    added = 0
    for _, positive in pairs:
        if positive not in position:
            position[positive] = len(texts)
            texts.append(positive)
            added += 1
    anchor_of: dict[str, int] = {}
    positives: list[list[int]] = []
    rows = []
    for anchor, positive in pairs:
        a = anchor_of.setdefault(anchor, len(anchor_of))
        if a == len(positives):
            positives.append([])
        if position[positive] not in positives[a]:
            positives[a].append(position[positive])
        rows.append((a, position[positive]))
    read = len(corpus or ())
    return MiningData(list(anchor_of), texts, positives, rows, read, read - (len(texts) - added), added)


def read_corpus(path: str | Path, column: str = "text") -> list[str]:
    """The texts of a corpus file: .jsonl (BEIR's corpus.jsonl: `title` and `text` joined as MTEB does), .txt
    (one a line; blank lines skipped), .tsv/.csv/.parquet (the `column` column). Bad cells are DataErrors naming
    file, line and field."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CORPUS_SUFFIXES:
        raise DataError(f"unsupported corpus type '{suffix}' (use one of {', '.join(CORPUS_SUFFIXES)})",
                        file=str(path))
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    if suffix == ".txt":
        lines = [line for line in LINE_BREAK.split(read_text_strict(path)) if line.strip()]
        if not lines:
            raise DataError("empty corpus (no non-blank line)", file=str(path))
        return lines
    rows = read_table(path, [column])
    if suffix in (".jsonl", ".json") and column == "text":
        return [document_text(path, row) for row in rows]
    return [text_field(path, row, column).strip() for row in rows]
