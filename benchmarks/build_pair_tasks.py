"""Build a data folder with local pair-classification sets from the shared data, for offline `embedtune eval`.

    .venv/bin/python -m benchmarks.build_pair_tasks --data-dir ../shared/data --out /tmp/embedtune-data

writes OUT/pairs/<name>/test.tsv (sentence1, sentence2, label) and links OUT/sts and OUT/nli to the source's,
so that `--data-dir OUT` trains and evaluates as before and also knows the pair sets:

- `nli-heldout`: raw NLI pairs (nli/pairs/*.tsv) labelled entailment (1) or contradiction (0) whose premise and
  hypothesis both occur nowhere in nli/triplets/* (the default training files). The triplets hold the first
  entailed and contradicted hypothesis of each premise that has both, so the held-out rows are the premises with
  only one of the two (and hypotheses the triplets never picked): text no training step has seen.
- `sickr-related`: SICK pairs (sts/sickr/test.tsv) with relatedness >= 4 as related (1) and < 3 as unrelated (0);
  the middle band [3, 4) is left out, and counted.

Neither folder may lie inside the source folder or this repository (the shared data stays read-only, and data
is never copied into the repo). Prints what each set holds and every row it left out, by reason.
"""
from __future__ import annotations

import argparse
import csv
import os
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NLI_LABELS = {"entailment": 1, "contradiction": 0}
SICK_RELATED, SICK_UNRELATED = 4.0, 3.0  # relatedness 1-5: >= 4 related, < 3 unrelated, between left out


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_pairs(path: Path, rows: list[tuple[str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows(rows)


def nli_heldout(source: Path) -> tuple[list[tuple[str, str, int]], Counter]:
    """Entailment/contradiction pairs whose texts no triplet file holds; dropped rows counted by reason."""
    seen_in_training = {text for path in sorted((source / "nli" / "triplets").glob("*.tsv"))
                        for row in read_tsv(path) for text in (row["sent0"], row["sent1"], row["hard_neg"])}
    rows, dropped, kept = [], Counter(), set()
    for path in sorted((source / "nli" / "pairs").glob("*.tsv")):
        for row in read_tsv(path):
            premise, hypothesis, label = row["premise"], row["hypothesis"], row["label"]
            if label not in NLI_LABELS:
                dropped[f"label {label!r}"] += 1
            elif premise in seen_in_training:
                dropped["premise in the triplets"] += 1
            elif hypothesis in seen_in_training:
                dropped["hypothesis in the triplets"] += 1
            elif (premise, hypothesis) in kept:
                dropped["duplicate pair"] += 1
            else:
                kept.add((premise, hypothesis))
                rows.append((premise, hypothesis, NLI_LABELS[label]))
    return rows, dropped


def sickr_related(source: Path) -> tuple[list[tuple[str, str, int]], Counter]:
    rows, dropped = [], Counter()
    for row in read_tsv(source / "sts" / "sickr" / "test.tsv"):
        score = float(row["score"])
        if SICK_UNRELATED <= score < SICK_RELATED:
            dropped[f"relatedness in [{SICK_UNRELATED:g}, {SICK_RELATED:g})"] += 1
        else:
            rows.append((row["sentence1"], row["sentence2"], int(score >= SICK_RELATED)))
    return rows, dropped


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDTUNE_DATA_DIR", "../shared/data"),
                        help="the source folder (nli/pairs, nli/triplets, sts/sickr); read only")
    parser.add_argument("--out", required=True, help="the folder to write (outside the source and the repo)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    source, out = Path(args.data_dir).resolve(), Path(args.out).resolve()
    for folder, what in ((source, "the source folder"), (REPO, "the repository")):
        if inside(out, folder) or inside(folder, out):
            raise SystemExit(f"--out {out} overlaps {what} ({folder}): choose a folder outside both")
    out.mkdir(parents=True, exist_ok=True)
    for part in ("sts", "nli"):
        link = out / part
        if link.is_symlink() or link.exists():
            if link.resolve() != (source / part).resolve():
                raise SystemExit(f"{link} exists and is not a link to {source / part}")
        else:
            link.symlink_to(source / part, target_is_directory=True)
    for name, build in (("nli-heldout", nli_heldout), ("sickr-related", sickr_related)):
        rows, dropped = build(source)
        write_pairs(out / "pairs" / name / "test.tsv", rows)
        positives = sum(label for _, _, label in rows)
        left_out = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common()) or "none"
        print(f"{name}: {len(rows)} pairs ({positives} label 1, {len(rows) - positives} label 0); left out: "
              f"{left_out}")
    print(f"wrote {out}/pairs; use --data-dir {out}")


if __name__ == "__main__":
    main()
