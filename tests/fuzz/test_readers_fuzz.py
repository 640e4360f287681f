"""Fuzzing the data readers: STS files, triplet files, raw NLI pair files, and the text inputs of `embedtune encode`.

Whatever the bytes, a reader returns rows or raises a one-line DataError that names the file (and the line and
field where there is one); nothing else escapes. Files a standard writer produced read back exactly, with or
without a BOM and CRLF line ends, whatever the text holds; skipped blank lines are counted, never lost.
Pair-classification files (0/1 labels) and BEIR folders (corpus and queries JSON lines, qrels TSV) are fuzzed the
same way: the first bad cell is the one named, and qrels rows that match no query or document are counted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from embedtune.config import DataConfig
from embedtune.data.nli import CleaningReport, clean_triplets, load_triplets, read_training_file
from embedtune.data.pairs import read_pairs_file
from embedtune.data.retrieval import match_qrels, read_corpus, read_qrels, read_queries
from embedtune.data.sts import read_sts_file
from embedtune.data.tables import read_table
from embedtune.encode_files import read_texts
from embedtune.errors import DataError

SOAK = settings(max_examples=3000)
# Hypothesis warns when it builds the repr of an example holding a 140 000-character cell: that is on purpose here.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# Characters and clusters that break naive text handling: BOMs and zero-width marks, bidi controls, combining
# marks, emoji sequences, RTL scripts, Unicode line separators, C0/C1 controls (NUL included), quotes, delimiters.
EDGE = [
    "\ufeff", "\u200b", "\u200c", "\u200d", "\u2060", "\u200e", "\u200f", "\u202e", "\u2067", "\u0301", "e\u0301",
    "\u0915\u094d\u0937", "\U0001f600", "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f3",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\ufdfa", "\ufffd", "\uffff",
    "\U0010ffff", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1e", "\x00", "\x7f", "\r", "\n", "\r\n",
    "\t", '"', '""', "'", ",", ";", "|", "\\", " ", "\u3000", "\xa0", "\u0130", "\ufb01",
]
HUGE = "h" * 140_000  # past csv's default field size limit (131072 characters)
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line for the readers (not \x85, \u2028 and the like)


def text(min_size: int = 0, max_size: int = 4, huge: bool = False, breaks: bool = True) -> st.SearchStrategy[str]:
    parts = st.one_of(st.text(max_size=6), st.sampled_from(EDGE + [HUGE] if huge else EDGE))
    strategy = st.lists(parts, min_size=min_size, max_size=max_size).map("".join)
    return strategy if breaks else strategy.map(lambda s: s.replace("\r", "").replace("\n", ""))


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def outcome(call):
    """(result, None) or (None, the DataError); any other exception fails the test."""
    try:
        return call(), None
    except DataError as err:
        return None, err


def check_error(err: DataError, path: Path, one_line, max_line: int | None = None) -> DataError:
    """One short line that starts with the file's name; line (when given) inside the file."""
    message = one_line(str(err), limit=400 + len(str(path)))
    assert err.file == str(path) and message.startswith(str(path)), message
    assert err.line is None or (isinstance(err.line, int) and 1 <= err.line <= (max_line or err.line)), message
    return err


def max_lines(data: bytes) -> int:
    return data.count(b"\n") + data.count(b"\r") + 1


def record(cells: list[str], delimiter: str) -> str:
    """One CSV/TSV record without its line end (a "\r\n" terminator makes the writer quote any \r or \n)."""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2]


@st.composite
def delimited(draw, header=None, cells=None, max_rows: int = 5):
    """(file text, header, rows, first line of each row, blank lines) of a well-formed CSV/TSV file."""
    delimiter = draw(st.sampled_from(["\t", ","]))
    header = header or draw(st.lists(text(max_size=3), min_size=1, max_size=4, unique=True))
    cells = text(huge=True) if cells is None else cells
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=max_rows))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    blank = st.sampled_from(["", " "] if len(header) > 1 else [""])  # one blank space is no 1-column row
    bom = draw(st.booleans()) or header[0].startswith("\ufeff")  # a reader takes a leading U+FEFF for a BOM
    out = ("\ufeff" if bom else "") + record(header, delimiter) + end
    lines, blanks = [], 0
    for row in rows:
        for _ in range(draw(st.integers(0, 1))):
            out += draw(blank) + end
            blanks += 1
        lines.append(len(LINE_BREAK.findall(out)) + 1)
        out += record(row, delimiter) + end
    if draw(st.booleans()):
        out, blanks = out + draw(blank) + end, blanks + 1
    elif rows and draw(st.booleans()):
        out = out[: -len(end)]  # no line end after the last record
    return out, delimiter, header, rows, lines, blanks


# ---- any bytes at all ----------------------------------------------------------------------------------------------

TOKENS = [b"\t", b",", b";", b'"', b"'", b"\r\n", b"\n", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xff", b"\xc3",
          b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xe2\x80\xa8", b"{", b"}", b"[", b"]", b":", b'"text"', b'"sent0"',
          b'"\\ud800"', b"null", b"1" * 5000, b"[" * 3000, b"sentence1", b"sentence2", b"score", b"text", b"sent0",
          b"sent1", b"hard_neg", b"premise", b"hypothesis", b"label", b"entailment", b'"_id"', b'"title"', b"query-id",
          b"corpus-id", b"0", b"-3", b"2", b"1.5", b"nan", b"a b",
          b" ", b"x" * 140_000, b"PAR1"]
HEADERS = [b"", b"sentence1\tsentence2\tscore\n", b"sentence1\tsentence2\tlabel\n", b"query-id\tcorpus-id\tscore\n",
           b'{"_id": "d1", "title": "t", "text": "a"}\n', b"\xef\xbb\xbfsentence1,sentence2,score\r\n", b"text\n",
           b"id,text\r\n", b"sent0\tsent1\thard_neg\n", b"premise\thypothesis\tlabel\n", b'{"text": "a"}\n']
BYTES = st.one_of(st.binary(max_size=200),
                  st.tuples(st.sampled_from(HEADERS), st.lists(st.sampled_from(TOKENS), max_size=25))
                  .map(lambda t: t[0] + b"".join(t[1])))
READERS = {
    "table.tsv": lambda p: read_table(p, ["text"]),
    "table.csv": lambda p: read_table(p, []),
    "table.jsonl": lambda p: read_table(p, ["text"]),
    "table.json": lambda p: read_table(p, []),
    "table.parquet": lambda p: read_table(p, ["text"]),
    "sts.tsv": lambda p: read_sts_file(p, "x"),
    "sts.csv": lambda p: read_sts_file(p, "x"),
    "pairs.tsv": lambda p: read_pairs_file(p, "x"),
    "pairs.jsonl": lambda p: read_pairs_file(p, "x"),
    "corpus.jsonl": read_corpus,
    "queries.jsonl": read_queries,
    "qrels.tsv": read_qrels,
    "encode.txt": read_texts,
    "encode.jsonl": read_texts,
    "encode.csv": read_texts,
    "encode.tsv": read_texts,
    "train.tsv": lambda p: read_training_file(str(p), DataConfig(), True, CleaningReport()),
    "train.csv": lambda p: read_training_file(str(p), DataConfig(), False, CleaningReport()),
    "train.jsonl": lambda p: read_training_file(str(p), DataConfig(), True, CleaningReport()),
}


def check_any_bytes(fuzz_dir, one_line, name, data):
    path = write(fuzz_dir, name, data)
    _, err = outcome(lambda: READERS[name](path))
    if err is not None:
        check_error(err, path, one_line, max_lines(data))


@given(name=st.sampled_from(sorted(READERS)), data=BYTES)
def test_any_bytes_give_rows_or_a_located_error(fuzz_dir, one_line, name, data):
    check_any_bytes(fuzz_dir, one_line, name, data)


@pytest.mark.slow
@SOAK
@given(name=st.sampled_from(sorted(READERS)), data=BYTES)
def test_any_bytes_give_rows_or_a_located_error_soak(fuzz_dir, one_line, name, data):
    check_any_bytes(fuzz_dir, one_line, name, data)


# ---- well-formed CSV/TSV: exact round trip, lines, blank lines ---------------------------------------------------

def check_round_trip(fuzz_dir, one_line, table):
    content, delimiter, header, rows, lines, blanks = table
    path = write(fuzz_dir, "t.tsv" if delimiter == "\t" else "t.csv", content)
    result, err = outcome(lambda: read_table(path, [header[0]]))
    if not rows:
        assert err is not None and err.line == 1 and "no data rows" in str(err), err
        check_error(err, path, one_line)
        return
    assert err is None, err
    assert [r.values for r in result] == [dict(zip(header, row, strict=True)) for row in rows]
    assert [r.line for r in result] == lines
    assert result.blank_lines == blanks  # skipped, and counted


@given(table=delimited())
def test_written_tables_read_back_exactly(fuzz_dir, one_line, table):
    check_round_trip(fuzz_dir, one_line, table)


@pytest.mark.slow
@SOAK
@given(table=delimited())
def test_written_tables_read_back_exactly_soak(fuzz_dir, one_line, table):
    check_round_trip(fuzz_dir, one_line, table)


# ---- damaged CSV/TSV: stray quotes, wrong delimiters, missing and extra fields, NULs, cut files --------------------

MUTATIONS = ['"', '"', "\t", ",", "\x00", "\r", "\n", "\ufeff", "\t\t", ",,", '"' + HUGE]


@st.composite
def damaged(draw):
    content, delimiter, header, *_ = draw(delimited(header=["sentence1", "sentence2", "score"], max_rows=4))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(content)))
        kind = draw(st.sampled_from(["insert", "delete", "swap", "cut"]))
        if kind == "insert":
            content = content[:at] + draw(st.sampled_from(MUTATIONS)) + content[at:]
        elif kind == "delete":
            content = content[:at] + content[at + draw(st.integers(1, 8)):]
        elif kind == "swap":
            other = "\t" if delimiter == "," else ","
            content = content.replace(delimiter, draw(st.sampled_from([";", "|", " ", other])))
        else:
            content = content[:at]
    return content, delimiter


def check_damaged(fuzz_dir, one_line, case, reader):
    content, delimiter = case
    data = content.encode("utf-8")
    path = write(fuzz_dir, ("d.tsv" if delimiter == "\t" else "d.csv"), data)
    result, err = outcome(lambda: reader(path))
    if err is not None:
        check_error(err, path, one_line, max_lines(data))
    elif reader is read_table_any:
        header = list(result[0].values)
        assert all(list(r.values) == header and all(isinstance(v, str) for v in r.values.values()) for r in result)
        assert [r.line for r in result] == sorted({r.line for r in result}) and result[0].line >= 2


def read_table_any(path):
    return read_table(path, [])


DAMAGED_READERS = st.sampled_from([read_table_any, lambda p: read_sts_file(p, "x"), lambda p: read_texts(p, "score")])


@given(case=damaged(), reader=DAMAGED_READERS)
def test_damaged_tables_give_rows_or_a_located_error(fuzz_dir, one_line, case, reader):
    check_damaged(fuzz_dir, one_line, case, reader)


@pytest.mark.slow
@SOAK
@given(case=damaged(), reader=DAMAGED_READERS)
def test_damaged_tables_give_rows_or_a_located_error_soak(fuzz_dir, one_line, case, reader):
    check_damaged(fuzz_dir, one_line, case, reader)


# ---- STS files: the first bad cell is the one named ---------------------------------------------------------------

SCORES = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr), st.integers(-5, 5).map(str),
                   st.sampled_from(["nan", "inf", "-Infinity", "high", "", " ", "1_0", " 2.5 ", "9" * 400, "1e999",
                                    "0x10", "\u0663", "2,5", "\u2212" + "1", "3\x00"]))


def first_bad_sts_cell(rows, lines):
    """(line, field) of the error read_sts_file must raise: sentence1 of every row first, then sentence2, then score."""
    for column in (0, 1):
        for row, line in zip(rows, lines, strict=True):
            if not row[column].strip():
                return line, ("sentence1", "sentence2")[column]
    for row, line in zip(rows, lines, strict=True):
        try:
            if math.isfinite(float(row[2])):
                continue
        except ValueError:
            pass
        return line, "score"
    return None


def check_sts(fuzz_dir, one_line, table):
    content, delimiter, header, rows, lines, blanks = table
    path = write(fuzz_dir, "sts.tsv" if delimiter == "\t" else "sts.csv", content)
    result, err = outcome(lambda: read_sts_file(path, "x"))
    if not rows:
        assert err is not None and err.line == 1
        return
    expected = first_bad_sts_cell(rows, lines)
    if expected is None:
        assert err is None, err
        assert (result.sentences1, result.sentences2) == ([r[0] for r in rows], [r[1] for r in rows])
        assert result.scores == [float(r[2]) for r in rows] and result.blank_lines == blanks
    else:
        assert err is not None, f"accepted; expected an error at {expected}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == expected, str(err)


STS_TABLES = delimited(header=["sentence1", "sentence2", "score"], max_rows=6, cells=st.one_of(text(huge=True), SCORES))


@given(table=STS_TABLES)
def test_sts_files_name_the_first_bad_cell(fuzz_dir, one_line, table):
    check_sts(fuzz_dir, one_line, table)


@pytest.mark.slow
@SOAK
@given(table=STS_TABLES)
def test_sts_files_name_the_first_bad_cell_soak(fuzz_dir, one_line, table):
    check_sts(fuzz_dir, one_line, table)


# ---- .txt inputs of `embedtune encode` -----------------------------------------------------------------------------

@st.composite
def txt_files(draw):
    lines = draw(st.lists(text(breaks=False, huge=True), max_size=6))
    ends = [draw(st.sampled_from(["\n", "\r\n", "\r"])) for _ in lines]  # mixed, as after a careless merge
    for i in range(len(lines) - 1):
        if ends[i] == "\r" and not lines[i + 1] and ends[i + 1] != "\r":
            ends[i] = "\n"  # "\r" then "\n" would be one line end, not an empty line
    content = "".join(line + end for line, end in zip(lines, ends, strict=True))
    if lines and lines[-1] and draw(st.booleans()):
        content = content[: -len(ends[-1])]
    bom = draw(st.booleans())
    if lines and not bom and lines[0].startswith("\ufeff"):
        lines = [lines[0][1:], *lines[1:]]  # read as a BOM
    return ("\ufeff" if bom else "") + content, lines


def check_txt(fuzz_dir, one_line, case):
    content, lines = case
    path = write(fuzz_dir, "in.txt", content)
    result, err = outcome(lambda: read_texts(path))
    bad = next((i for i, line in enumerate(lines, start=1) if not line.strip()), None)
    if not lines:
        assert err is not None and "no texts" in str(err)
    elif bad is not None:
        assert err is not None and err.line == bad and "empty line" in str(err), err
    else:
        assert err is None and result == lines, err
    if err is not None:
        check_error(err, path, one_line)


@given(case=txt_files())
def test_txt_inputs_are_their_lines(fuzz_dir, one_line, case):
    check_txt(fuzz_dir, one_line, case)


@pytest.mark.slow
@SOAK
@given(case=txt_files())
def test_txt_inputs_are_their_lines_soak(fuzz_dir, one_line, case):
    check_txt(fuzz_dir, one_line, case)


# ---- JSON lines (encode inputs and training files): wrong types, junk lines, deep nesting, huge ints --------------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text(huge=True),
                         st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2))  # lone surrogates
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(text(max_size=2), inner, max_size=3), max_leaves=6)
JUNK_LINES = ["{", "oops", "[1, 2]", '"text"', "null", "7", "1" * 5000, '{"text": ' + "1" * 5000 + "}",
              "[" * 3000 + "]" * 3000, '{"text": ' + "[" * 3000 + "]" * 3000 + "}", '{"text": "a"} extra',
              '{"text": "tab\there"}', '{"text": "nul\x00"}', "\ufeff{}", '{"text": NaN}', "{'text': 'single'}"]
BLANK_LINES = ["", " ", "\t", "\u3000"]


def is_good_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not re.search("[\ud800-\udfff]", value)


def json_line(draw, columns: list[str]):
    kind = draw(st.sampled_from(["object"] * 6 + ["blank", "junk"]))
    if kind == "blank":
        return draw(st.sampled_from(BLANK_LINES)), "blank", None
    if kind == "junk":
        return draw(st.sampled_from(JUNK_LINES)), "junk", None
    record = {c: draw(st.one_of(text(min_size=1, huge=True), JSON_VALUES)) for c in columns if draw(st.booleans())
              or draw(st.booleans())}
    record.update(draw(st.dictionaries(text(max_size=2), JSON_VALUES, max_size=2)))
    for c in columns:  # mostly texts where texts belong
        if c in record and not draw(st.booleans()):
            record[c] = draw(text(min_size=1))
    raw = json.dumps(record, ensure_ascii=False)  # raw U+2028, U+0085 and the like inside strings
    if draw(st.booleans()) or re.search("[\ud800-\udfff]", raw):
        raw = json.dumps(record)  # \\uXXXX escapes (lone surrogates can only come this way)
    return raw, "object", json.loads(raw)  # what the file holds: two escaped surrogates may make one character


@st.composite
def jsonl_files(draw, columns=("text",)):
    lines = [json_line(draw, list(columns)) for _ in range(draw(st.integers(0, 6)))]
    end = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.booleans())
    content = ("\ufeff" if bom else "") + end.join(t for t, _, _ in lines)
    if lines and (not lines[-1][0] or draw(st.booleans())):  # an empty last line exists only with a line end
        content += end
    return content, lines, bom


def expected_jsonl(lines, bom):
    """('error', line, field) the reader must raise first, or ('ok', [(line, record)...], blank lines)."""
    records, blanks = [], 0
    for number, (raw, kind, record) in enumerate(lines, start=1):
        if kind == "blank":
            blanks += 1
        elif kind == "junk":
            try:
                parsed = json.loads(raw.removeprefix("\ufeff") if number == 1 and not bom else raw)
            except (ValueError, RecursionError):
                return "error", number, None
            if not isinstance(parsed, dict):
                return "error", number, None
            records.append((number, parsed))
        else:
            records.append((number, record))
    if not records:
        return "error", None, None
    return "ok", records, blanks


def check_jsonl_texts(fuzz_dir, one_line, case):
    content, lines, bom = case
    path = write(fuzz_dir, "in.jsonl", content)
    result, err = outcome(lambda: read_texts(path))
    want = expected_jsonl(lines, bom)
    if want[0] == "ok":
        records = want[1]
        if "text" not in records[0][1]:
            want = ("error", records[0][0], "text")
        else:
            bad = next(((n, "text") for n, r in records if not is_good_text(r.get("text"))), None)
            want = ("error", *bad) if bad else ("ok", [r["text"] for _, r in records])
    if want[0] == "ok":
        assert err is None and result == want[1], err
    else:
        assert err is not None, f"accepted; expected an error at line {want[1]}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == want[1:], str(err)


@given(case=jsonl_files())
def test_jsonl_inputs_are_texts_or_a_located_error(fuzz_dir, one_line, case):
    check_jsonl_texts(fuzz_dir, one_line, case)


@pytest.mark.slow
@SOAK
@given(case=jsonl_files())
def test_jsonl_inputs_are_texts_or_a_located_error_soak(fuzz_dir, one_line, case):
    check_jsonl_texts(fuzz_dir, one_line, case)


# ---- triplet files: the rows training sees, every drop counted -----------------------------------------------------

TRIPLET = ["sent0", "sent1", "hard_neg"]


def cells_of(record, columns):
    cells = [record.get(c) for c in columns]
    if any(not isinstance(c, str) or not c.strip() for c in cells):
        return None
    return tuple(c.strip() for c in cells)


def check_jsonl_triplets(fuzz_dir, one_line, case, hard_negatives):
    content, lines, bom = case
    path = write(fuzz_dir, "train.jsonl", content)
    report = CleaningReport()
    result, err = outcome(lambda: read_training_file(str(path), DataConfig(), hard_negatives, report))
    want = expected_jsonl(lines, bom)
    columns = TRIPLET if hard_negatives else TRIPLET[:2]
    if want[0] == "ok":
        records = want[1]
        missing = next((c for c in columns if c not in records[0][1]), None)
        if missing:
            want = ("error", records[0][0], missing)
        else:
            bad = next(((n, c) for n, r in records for c in columns
                        if isinstance(r.get(c), str) and re.search("[\ud800-\udfff]", r[c])), None)
            want = ("error", *bad) if bad else ("ok", [cells_of(r, columns) for _, r in records], want[2])
    if want[0] == "ok":
        assert err is None and result == want[1], err
        assert report.blank_lines == want[2]
        clean_triplets(result, None, report)
        assert report.read == len(result) and report.empty_field == result.count(None)
        assert report.read == report.empty_field + report.degenerate + report.duplicate + report.kept
    else:
        assert err is not None, f"accepted; expected an error at {want[1:]}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == want[1:], str(err)


@given(case=jsonl_files(columns=TRIPLET), hard_negatives=st.booleans())
def test_jsonl_triplets_are_rows_or_a_located_error(fuzz_dir, one_line, case, hard_negatives):
    check_jsonl_triplets(fuzz_dir, one_line, case, hard_negatives)


@pytest.mark.slow
@SOAK
@given(case=jsonl_files(columns=TRIPLET), hard_negatives=st.booleans())
def test_jsonl_triplets_are_rows_or_a_located_error_soak(fuzz_dir, one_line, case, hard_negatives):
    check_jsonl_triplets(fuzz_dir, one_line, case, hard_negatives)


@st.composite
def triplet_tables(draw):
    header = draw(st.permutations(TRIPLET + draw(st.lists(st.sampled_from(["id", "x", ""]), max_size=2, unique=True))))
    if draw(st.integers(0, 4)) == 0:
        header = [c for c in header if c != "hard_neg"]  # a pairs-only file
    cells = st.one_of(text(huge=True), st.sampled_from(["a", "b", " a ", "A", "", " "]))
    return draw(delimited(header=header, cells=cells, max_rows=6))


def check_delimited_triplets(fuzz_dir, one_line, table, hard_negatives):
    content, delimiter, header, rows, lines, blanks = table
    path = write(fuzz_dir, "train.tsv" if delimiter == "\t" else "train.csv", content)
    report = CleaningReport()
    result, err = outcome(lambda: read_training_file(str(path), DataConfig(), hard_negatives, report))
    if not rows:
        assert err is not None and err.line == 1
    elif hard_negatives and "hard_neg" not in header:
        assert err is not None and (err.line, err.field) == (1, "hard_neg") and "--no-hard-negatives" in str(err)
    else:
        columns = TRIPLET if hard_negatives else TRIPLET[:2]
        assert err is None, err
        assert result == [cells_of(dict(zip(header, row, strict=True)), columns) for row in rows]
        assert report.blank_lines == blanks
    if err is not None:
        check_error(err, path, one_line)


@given(table=triplet_tables(), hard_negatives=st.booleans())
def test_triplet_tables_are_the_rows_training_sees(fuzz_dir, one_line, table, hard_negatives):
    check_delimited_triplets(fuzz_dir, one_line, table, hard_negatives)


@pytest.mark.slow
@SOAK
@given(table=triplet_tables(), hard_negatives=st.booleans())
def test_triplet_tables_are_the_rows_training_sees_soak(fuzz_dir, one_line, table, hard_negatives):
    check_delimited_triplets(fuzz_dir, one_line, table, hard_negatives)


# ---- raw NLI pairs: labels by name or class id, every pair row accounted for --------------------------------------

GOOD_LABELS = ["entailment", "neutral", "contradiction", "-", "", "0", "1", "2", "-1", "Entailment", " NEUTRAL ",
               "contradiction\t"]
BAD_LABELS = ["maybe", "0.7", "3", "entail", "1.0", "true", "\u0661", "\u200b0", "entailment\x00"]
GOOD_JSON_LABELS = [0, 1, 2, -1, 0.0, 2.0, -1.0, None, float("nan"), "entailment", " contradiction", "-"]
BAD_JSON_LABELS = [True, False, 0.5, 3, [0], {"label": 0}, "maybe", 1e300, float("inf"), 10**400]


@st.composite
def pair_files(draw):
    as_json = draw(st.booleans())
    labels = (GOOD_JSON_LABELS, BAD_JSON_LABELS) if as_json else (GOOD_LABELS, BAD_LABELS)
    label = st.one_of(*[st.sampled_from(labels[0])] * 8, st.sampled_from(labels[1]))
    premise = st.one_of(st.sampled_from(["P1", "P2", "P3", " P1", "", " "]), text(max_size=2))
    hypothesis = st.one_of(st.sampled_from(["H1", "H2", "", " "]), text(max_size=2))
    rows = draw(st.lists(st.tuples(premise, hypothesis, label), max_size=10))
    if as_json:
        content = "".join(json.dumps(dict(zip(("premise", "hypothesis", "label"), r, strict=True))) + "\n"
                          for r in rows)
        return "pairs.jsonl", content, rows, list(range(1, len(rows) + 1)), labels[0]
    delimiter = draw(st.sampled_from(["\t", ","]))
    content, lines = record(["premise", "hypothesis", "label"], delimiter) + "\n", []
    for row in rows:
        lines.append(len(LINE_BREAK.findall(content)) + 1)  # a quoted line break makes a record span lines
        content += record(list(row), delimiter) + "\n"
    return ("pairs.tsv" if delimiter == "\t" else "pairs.csv"), content, rows, lines, labels[0]


def same_label(a, b) -> bool:
    return a is b or a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def check_pairs(fuzz_dir, one_line, case, hard_negatives):
    name, content, rows, lines, good = case
    path = write(fuzz_dir, name, content)
    report = CleaningReport()
    result, err = outcome(lambda: read_training_file(str(path), DataConfig(), hard_negatives, report))
    bad = next((i for i, r in enumerate(rows) if not any(same_label(r[2], g) and type(r[2]) is type(g) for g in good)),
               None)
    if not rows:
        assert err is not None
    elif bad is not None:
        assert err is not None, f"label {rows[bad][2]!r} accepted"
        assert (err.line, err.field) == (lines[bad], "label"), str(err)
    else:
        assert err is None, err
        used = len(result) * (2 if hard_negatives else 1)
        drops = sum(v for k, v in report.as_dict().items() if k.startswith("pairs_") and k != "pairs_read")
        assert report.pairs_read == len(rows) == used + drops  # no pair row unaccounted for
        assert all(len(t) == (3 if hard_negatives else 2) and all(s and s == s.strip() for s in t) for t in result)
    if err is not None:
        check_error(err, path, one_line)


@given(case=pair_files(), hard_negatives=st.booleans())
def test_nli_pairs_convert_with_every_row_counted(fuzz_dir, one_line, case, hard_negatives):
    check_pairs(fuzz_dir, one_line, case, hard_negatives)


@pytest.mark.slow
@SOAK
@given(case=pair_files(), hard_negatives=st.booleans())
def test_nli_pairs_convert_with_every_row_counted_soak(fuzz_dir, one_line, case, hard_negatives):
    check_pairs(fuzz_dir, one_line, case, hard_negatives)



# ---- pair-classification files: the first bad cell is the one named; both labels needed ---------------------------

LABELS = st.sampled_from(["0", "1", "1", "0", "1.0", "0.0", " 1 ", "1e0", "2", "-1", "0.5", "yes", "", " ", "nan",
                          "inf", "1_0", "\u0661", "0x1", "1\x00"])


def label_of(cell: str):
    """The label read_pairs_file must return for a cell, or None for a cell it must reject."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def first_bad_pair_cell(rows, lines):
    """(line, field) of the error read_pairs_file must raise: sentence1 of every row, sentence2, then label."""
    for column, name in ((0, "sentence1"), (1, "sentence2")):
        for row, line in zip(rows, lines, strict=True):
            if not row[column].strip():
                return line, name
    for row, line in zip(rows, lines, strict=True):
        if label_of(row[2]) is None:
            return line, "label"
    labels = [label_of(r[2]) for r in rows]
    return None if 0 in labels and 1 in labels else (None, None)


def check_pair_table(fuzz_dir, one_line, table):
    content, delimiter, header, rows, lines, blanks = table
    path = write(fuzz_dir, "pairs.tsv" if delimiter == "\t" else "pairs.csv", content)
    result, err = outcome(lambda: read_pairs_file(path, "x"))
    if not rows:
        assert err is not None and err.line == 1
        return
    expected = first_bad_pair_cell(rows, lines)
    event("accepted" if expected is None else f"error at {expected[1]}")
    if expected is None:
        assert err is None, err
        assert (result.sentences1, result.sentences2) == ([r[0] for r in rows], [r[1] for r in rows])
        assert result.labels == [label_of(r[2]) for r in rows] and result.blank_lines == blanks
    else:
        assert err is not None, f"accepted; expected an error at {expected}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == expected, str(err)
        if expected == (None, None):
            assert "no positive pairs" in str(err) or "no negative pairs" in str(err)


def mostly(good: list, other: st.SearchStrategy) -> st.SearchStrategy:
    """One of `good` four times in five, else a draw of `other` (one_of would pick each branch as often)."""
    return st.integers(0, 4).flatmap(lambda i: st.sampled_from(good) if i else other)


@st.composite
def pair_tables(draw):
    """Like delimited(), with a strategy per column: sentences and labels mostly good, so that whole files are
    often accepted, and anything else (huge, empty, control characters, bad labels) mixed in."""
    delimiter, end = draw(st.sampled_from(["\t", ","])), draw(st.sampled_from(["\n", "\r\n"]))
    sentence = mostly(["a", "b c", " d ", "0"], text(huge=True))
    label = mostly(["0", "1"], LABELS)
    rows = draw(st.lists(st.tuples(sentence, sentence, label), max_size=6))
    header = ["sentence1", "sentence2", "label"]
    content = ("\ufeff" if draw(st.booleans()) else "") + record(header, delimiter) + end
    lines, blanks = [], 0
    for row in rows:
        if draw(st.integers(0, 3)) == 0:
            content, blanks = content + draw(st.sampled_from(["", " "])) + end, blanks + 1
        lines.append(len(LINE_BREAK.findall(content)) + 1)
        content += record(list(row), delimiter) + end
    return content, delimiter, header, rows, lines, blanks


PAIR_TABLES = pair_tables()


@given(table=PAIR_TABLES)
def test_pair_files_name_the_first_bad_cell(fuzz_dir, one_line, table):
    check_pair_table(fuzz_dir, one_line, table)


@pytest.mark.slow
@SOAK
@given(table=PAIR_TABLES)
def test_pair_files_name_the_first_bad_cell_soak(fuzz_dir, one_line, table):
    check_pair_table(fuzz_dir, one_line, table)


# ---- BEIR corpus and queries (JSON lines): ids, titles and texts of any JSON type ---------------------------------

IDS = st.one_of(st.sampled_from(["d1", "d1", "d2", " ", "", 7, 7, "7", -3, True, None, 1.5, 10**20, [1], "\ud800"]),
                text(min_size=1))
CORPUS = ["_id", "title", "text"]


def good_id(value):
    """The id read_corpus / read_queries must return, or None for one they must reject."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**18 else None
    return value if is_good_text(value) else None


def has_surrogate(value) -> bool:
    return isinstance(value, str) and re.search("[\ud800-\udfff]", value) is not None


def expected_corpus_record(number: int, record: dict, seen: set, queries: bool):
    """('error', line, field) for the first bad cell of one record, or ('ok', id, text)."""
    ident = good_id(record.get("_id"))
    if ident is None:
        return "error", number, "_id"
    if ident in seen:
        return "error", number, "_id"
    seen.add(ident)
    text_value = record.get("text")
    if queries:
        return ("ok", ident, text_value) if is_good_text(text_value) else ("error", number, "text")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        return "error", number, "title"
    if not isinstance(text_value, str):
        return "error", number, "text"
    if has_surrogate(title):
        return "error", number, "title"
    if has_surrogate(text_value):
        return "error", number, "text"
    joined = (title + " " + text_value).strip() if title else text_value.strip()
    return ("ok", ident, joined) if joined else ("error", number, "text")


@st.composite
def beir_jsonl(draw, queries: bool):
    content, lines, bom = draw(jsonl_files(columns=("_id", "text") if queries else CORPUS))
    # Ids from a small pool, so that duplicates, integers and wrong types occur often.
    # Most objects are well-formed documents, so that whole files are often accepted.
    fixed = []
    for number, (raw, kind, record) in enumerate(lines):
        change = draw(st.sampled_from(["clean"] * 6 + ["id", "as drawn"])) if kind == "object" else "as drawn"
        if change == "clean":
            record = {"_id": f"d{number}", "text": draw(st.one_of(st.sampled_from(["a", " b ", "c d"]), text(1)))}
            record |= {} if queries or draw(st.booleans()) else {"title": draw(st.sampled_from(["", "T", None, " "]))}
        elif change == "id":
            record = {**record, "_id": draw(IDS)}
        raw = json.dumps(record) if change != "as drawn" else raw
        fixed.append((raw, kind, json.loads(raw) if kind == "object" else record))
    end = "\r\n" if "\r\n" in content else "\n"
    content = ("\ufeff" if bom else "") + end.join(t for t, _, _ in fixed) + (end if content.endswith(end) else "")
    return content, fixed, bom


def check_beir_jsonl(fuzz_dir, one_line, case, queries: bool):
    content, lines, bom = case
    path = write(fuzz_dir, "queries.jsonl" if queries else "corpus.jsonl", content)
    result, err = outcome(lambda: read_queries(path) if queries else read_corpus(path))
    want = expected_jsonl(lines, bom)
    if want[0] == "ok":
        records, blanks = want[1], want[2]
        missing = next((c for c in ("_id", "text") if c not in records[0][1]), None)
        if missing:
            want = ("error", records[0][0], missing)
        else:
            seen: set = set()
            out = [expected_corpus_record(n, r, seen, queries) for n, r in records]
            bad = next((o for o in out if o[0] == "error"), None)
            want = bad or ("ok", [o[1] for o in out], [o[2] for o in out], blanks)
    event("accepted" if want[0] == "ok" else f"error at {want[2]}")
    if want[0] == "ok":
        assert err is None, err
        if queries:
            assert list(result[0]) == want[1] and list(result[0].values()) == want[2] and result[1] == want[3]
        else:
            assert result == (want[1], want[2], want[3])
    else:
        assert err is not None, f"accepted; expected an error at {want[1:]}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == want[1:], str(err)


@given(case=beir_jsonl(queries=False))
def test_beir_corpus_is_documents_or_a_located_error(fuzz_dir, one_line, case):
    check_beir_jsonl(fuzz_dir, one_line, case, queries=False)


@given(case=beir_jsonl(queries=True))
def test_beir_queries_are_texts_or_a_located_error(fuzz_dir, one_line, case):
    check_beir_jsonl(fuzz_dir, one_line, case, queries=True)


@pytest.mark.slow
@SOAK
@given(case=beir_jsonl(queries=False))
def test_beir_corpus_is_documents_or_a_located_error_soak(fuzz_dir, one_line, case):
    check_beir_jsonl(fuzz_dir, one_line, case, queries=False)


@pytest.mark.slow
@SOAK
@given(case=beir_jsonl(queries=True))
def test_beir_queries_are_texts_or_a_located_error_soak(fuzz_dir, one_line, case):
    check_beir_jsonl(fuzz_dir, one_line, case, queries=True)


# ---- BEIR qrels (TSV): ids, integer grades, duplicates; rows matched against queries and corpus, all counted -------

QREL_CELLS = st.one_of(st.sampled_from(["q1", "q2", "d1", "d2", "", " ", "0", "1", "2", "-1", "1.5", "1e3", "3e10",
                                        " 2 ", "nan", "x", "1_0"]), text(huge=True))


def expected_qrels(rows, lines):
    """('error', line, field) of the first bad row, or ('ok', qrels)."""
    qrels: dict = {}
    for (query, doc, score), line in zip(rows, lines, strict=True):
        if not query.strip():
            return "error", line, "query-id"
        if not doc.strip():
            return "error", line, "corpus-id"
        if doc in qrels.get(query, {}):
            return "error", line, "corpus-id"
        try:
            value = float(score)
        except ValueError:
            return "error", line, "score"
        if not math.isfinite(value) or value != int(value) or abs(value) > 2**31 - 1:
            return "error", line, "score"
        qrels.setdefault(query, {})[doc] = int(value)
    return "ok", qrels


def check_qrels(fuzz_dir, one_line, table, known):
    content, delimiter, header, rows, lines, blanks = table
    path = write(fuzz_dir, "qrels.tsv", content)
    result, err = outcome(lambda: read_qrels(path))
    if not rows:
        assert err is not None and err.line == 1
        return
    want = expected_qrels(rows, lines)
    event("accepted" if want[0] == "ok" else f"error at {want[2]}")
    if want[0] == "error":
        assert err is not None, f"accepted; expected an error at {want[1:]}"
        check_error(err, path, one_line)
        assert (err.line, err.field) == want[1:], str(err)
        return
    assert err is None and result == (want[1], blanks), err
    queries, docs = known
    total = sum(len(d) for d in want[1].values())
    matched, err = outcome(lambda: match_qrels("x", docs, docs, dict.fromkeys(queries, "t"), want[1], False, str(path)))
    if err is not None:  # no query of the qrels is known: nothing to score, said in one line
        message = str(check_error(err, path, one_line))
        assert not set(want[1]) & set(queries) and "no qrels row names a query" in message
        return
    kept = sum(len(d) for d in matched.qrels.values())
    assert kept + matched.skipped.get("qrels_rows_unknown_query", 0) == total  # no row lost uncounted
    assert matched.skipped.get("qrels_rows_unknown_document", 0) == sum(
        1 for d in matched.qrels.values() for doc in d if doc not in docs)
    assert matched.query_ids == [q for q in queries if q in want[1]]


QRELS_TABLES = delimited(header=["query-id", "corpus-id", "score"], max_rows=8,
                         cells=mostly(["0", "1", "2", "3"], QREL_CELLS)).filter(
    lambda table: table[1] == "\t")  # qrels are TSV in BEIR's layout
KNOWN = st.tuples(st.lists(st.sampled_from(["q1", "q2", "q3", "0", "1"]), unique=True),
                  st.lists(st.sampled_from(["d1", "d2", "d3", "0", "2"]), unique=True))


@given(table=QRELS_TABLES, known=KNOWN)
def test_qrels_are_graded_rows_every_one_counted(fuzz_dir, one_line, table, known):
    check_qrels(fuzz_dir, one_line, table, known)


@pytest.mark.slow
@SOAK
@given(table=QRELS_TABLES, known=KNOWN)
def test_qrels_are_graded_rows_every_one_counted_soak(fuzz_dir, one_line, table, known):
    check_qrels(fuzz_dir, one_line, table, known)


# ---- regressions: one test per bug the fuzzing (or the fixing) turned up -------------------------------------------

def located(call, path: Path, line, field, match: str, one_line) -> str:
    with pytest.raises(DataError) as caught:
        call()
    err = caught.value
    message = str(check_error(err, path, one_line))
    assert (err.line, err.field) == (line, field) and re.search(match, message), message
    return message


def test_regression_csv_field_larger_than_the_128k_field_limit(tmp_path, one_line):
    # was: _csv.Error: field larger than field limit (131072), from deep inside the csv module
    long = "word " * 40_000
    for name, sep in (("t.tsv", "\t"), ("t.csv", ",")):
        path = write(tmp_path, name, f"sentence1{sep}sentence2{sep}score\n\"{long}\"{sep}b{sep}1\n")
        assert read_sts_file(path, "x").sentences1 == [long]
    path = write(tmp_path, "t.tsv", 'sentence1\tsentence2\tscore\n"' + "x\ty\n" * 50_000)  # unclosed: to the end
    located(lambda: read_table(path, []), path, 2, None, "expected 3 fields, found 1 .*runs to line 50001", one_line)
    import csv as stdlib_csv

    assert stdlib_csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def test_regression_utf8_bom_before_a_tsv_header(tmp_path, one_line):
    # was: "missing column (found: \ufeffsentence1, ...)" for a file saved by Excel or Notepad
    for name, sep in (("t.tsv", "\t"), ("t.csv", ",")):
        path = write(tmp_path, name, f"\ufeffsentence1{sep}sentence2{sep}score\r\na{sep}b{sep}1.5\r\n")
        assert read_sts_file(path, "x").scores == [1.5]
    path = write(tmp_path, "train.tsv", "\ufeffsent0\tsent1\thard_neg\na\tb\tc\n")
    assert read_training_file(str(path), DataConfig()) == [("a", "b", "c")]


def test_regression_utf8_bom_before_jsonl(tmp_path):
    # was: "in.jsonl:1: invalid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))"
    path = write(tmp_path, "in.jsonl", '\ufeff{"text": "first"}\r\n{"text": "second"}\r\n')
    assert read_texts(path) == ["first", "second"]


def test_regression_blank_lines_are_counted_not_lost(tmp_path, caplog):
    # was: blank lines of CSV/TSV/JSONL files skipped with no count anywhere
    import logging

    path = write(tmp_path, "train.tsv", "sent0\tsent1\thard_neg\n\na\tb\tc\n \nd\te\tf\n\n")
    with caplog.at_level(logging.INFO, logger="embedtune"):
        triplets, report = load_triplets(DataConfig(train_files=[str(path)], decontaminate=False), None, None)
    assert report.blank_lines == 3 and report.as_dict()["blank_lines"] == 3 and report.read == 2
    assert "(3 blank lines skipped)" in report.summary()
    assert any("train.tsv: skipped 3 blank line(s)" in r.getMessage() for r in caplog.records)
    assert "blank_lines" not in CleaningReport(read=1).as_dict()  # listed only when there are some
    sts = write(tmp_path, "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t1\n\n\nc\td\t2\n")
    assert read_sts_file(sts, "x").blank_lines == 2
    jsonl = write(tmp_path, "in.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n')
    assert read_table(jsonl, ["text"]).blank_lines == 2


def test_regression_a_multi_line_record_is_located_at_its_first_line(tmp_path, one_line):
    # was: the line where the record ended (a quoted field with line breaks), not where it starts
    path = write(tmp_path, "p.tsv", 'premise\thypothesis\tlabel\nP\t"two\r\nlines"\tmaybe\nQ\tH\tentailment\n')
    located(lambda: read_training_file(str(path), DataConfig()), path, 2, "label", "unknown NLI label 'maybe'",
            one_line)
    path = write(tmp_path, "s.tsv", 'sentence1\tsentence2\tscore\na\tb\t1\n"unclosed\tc\t2\nd\te\t3\n')
    message = located(lambda: read_sts_file(path, "x"), path, 3, None, "expected 3 fields, found 1", one_line)
    assert "runs to line 4: an unbalanced quote?" in message


def test_regression_column_names_with_line_breaks_keep_the_message_one_line(tmp_path, one_line):
    # was: "no data rows (header: \x0b)" and "missing column (found: \x85)", printed raw over two lines
    path = write(tmp_path, "h.csv", '"a\nb",\x0b,c\u2028d\n')
    message = located(lambda: read_table(path, []), path, 1, None, "no data rows", one_line)
    assert r"'a\nb', '\x0b', 'c\u2028d'" in message
    path = write(tmp_path, "m.jsonl", '{"\\u0085": "x"}\n')
    located(lambda: read_texts(path), path, 1, "text", r"missing column \(found: '\\x85'\)", one_line)


def test_regression_long_values_are_cut_short_in_messages(tmp_path, one_line):
    # was: a 200 000-character score cell copied whole into "not a number: ..."
    path = write(tmp_path, "s.tsv", "sentence1\tsentence2\tscore\na\tb\t" + "9x" * 100_000 + "\n")
    message = located(lambda: read_sts_file(path, "x"), path, 2, "score", r"not a number: '9x9x.*\.\.\.", one_line)
    assert len(message) < 200 + len(str(path))


def test_regression_jsonl_line_separators_inside_a_string(tmp_path):
    # was: str.splitlines cut the line at U+2028, U+2029, U+0085, \x1c-\x1e: "invalid JSON (Unterminated string...)"
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x1ch"]
    path = write(tmp_path, "in.jsonl", "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    assert read_texts(path) == texts


def test_regression_jsonl_integer_past_4300_digits(tmp_path, one_line):
    # was: ValueError: Exceeds the limit (4300 digits) for integer string conversion
    path = write(tmp_path, "in.jsonl", '{"text": "a"}\n{"text": "b", "n": ' + "7" * 5000 + "}\n")
    located(lambda: read_texts(path), path, 2, None, r"invalid JSON \(Exceeds the limit \(4300 digits\)", one_line)


def test_regression_jsonl_nested_too_deeply(tmp_path, one_line):
    # was: RecursionError: maximum recursion depth exceeded while decoding a JSON array
    path = write(tmp_path, "in.jsonl", '{"text": "a"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    located(lambda: read_texts(path), path, 2, None, r"invalid JSON \(nested too deeply\)", one_line)


def test_regression_lone_surrogate_escapes_in_jsonl(tmp_path, one_line):
    # was: accepted; the tokenizer then failed on the text long after reading (a UnicodeEncodeError mid-run)
    path = write(tmp_path, "in.jsonl", '{"text": "ok"}\n{"text": "bad \\ud83d here"}\n')
    located(lambda: read_texts(path), path, 2, "text", "lone surrogate U\\+D83D at character 5", one_line)
    path = write(tmp_path, "t.jsonl", '{"sent0": "a", "sent1": "b", "hard_neg": "c"}\n'
                                      '{"sent0": "a", "sent1": "b", "hard_neg": "\\udc00"}\n')
    located(lambda: read_training_file(str(path), DataConfig()), path, 2, "hard_neg", "lone surrogate", one_line)
    assert read_training_file(str(path), DataConfig(), hard_negatives=False) == [("a", "b"), ("a", "b")]
    path = write(tmp_path, "p.jsonl", '{"premise": "\\ud800", "hypothesis": "h", "label": 0}\n')
    located(lambda: read_training_file(str(path), DataConfig()), path, 1, "premise", "lone surrogate", one_line)


def test_regression_scores_that_overflow_float_or_are_booleans(tmp_path, one_line):
    # was: OverflowError from float() on a 400-digit JSON integer; `true` read as the score 1.0
    path = write(tmp_path, "s.jsonl", '{"sentence1": "a", "sentence2": "b", "score": ' + "9" * 400 + "}\n")
    located(lambda: read_sts_file(path, "x"), path, 1, "score", "not a number: 9999", one_line)
    path = write(tmp_path, "s.jsonl", '{"sentence1": "a", "sentence2": "b", "score": true}\n')
    located(lambda: read_sts_file(path, "x"), path, 1, "score", "not a number: True", one_line)


def test_regression_nli_label_integer_past_float_range(tmp_path, one_line):
    # was: OverflowError from float() on a 400-digit label
    path = write(tmp_path, "p.jsonl", '{"premise": "p", "hypothesis": "h", "label": ' + "1" * 400 + "}\n")
    located(lambda: read_training_file(str(path), DataConfig()), path, 1, "label", "unknown NLI label 1111", one_line)


def test_regression_parquet_without_rows(tmp_path, one_line):
    # was: IndexError in require_columns (rows[0] of no rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    located(lambda: read_texts(path), path, None, None, r"no data rows \(columns: text\)", one_line)
    path = write(tmp_path, "junk.parquet", b"PAR1 not really\nparquet PAR1")
    located(lambda: read_texts(path), path, None, None, r"cannot read parquet", one_line)


def test_regression_duplicate_column_names(tmp_path, one_line):
    # was: the two columns collapsed into one, the last one's cells silently winning
    path = write(tmp_path, "d.tsv", "sentence1\tsentence2\tsentence1\tscore\na\tb\tc\t1\n")
    located(lambda: read_sts_file(path, "x"), path, 1, "sentence1", "duplicate column name", one_line)
    path = write(tmp_path, "ok.tsv", "text\t\t\na\t\t\n")  # unnamed (blank) columns may repeat: nothing reads them
    assert read_texts(path) == ["a"]


def test_a_blank_first_line_and_a_wrong_delimiter_are_named(tmp_path, one_line):
    path = write(tmp_path, "b.tsv", "\nsentence1\tsentence2\tscore\na\tb\t1\n")
    located(lambda: read_sts_file(path, "x"), path, 1, None, r"blank first line \(the header row must be line 1\)",
            one_line)
    path = write(tmp_path, "c.tsv", "sentence1,sentence2,score\na,b,1\n")
    located(lambda: read_sts_file(path, "x"), path, 1, "sentence1",
            "the header has no tabs: is the file comma-separated", one_line)
    path = write(tmp_path, "u16.tsv", "text\na\n".encode("utf-16"))
    located(lambda: read_texts(path), path, 1, None, "looks like UTF-16: save it as UTF-8", one_line)
    path = write(tmp_path, "arr.json", '[{"text": "a"}]\n')
    located(lambda: read_texts(path), path, 1, None, r"got a list \(.json files are read as JSON lines\)", one_line)


def test_regression_max_train_samples_cut_is_counted(tmp_path):
    # was: rows beyond max_train_samples vanished from the report (read > every drop + kept)
    path = write(tmp_path, "t.tsv", "sent0\tsent1\thard_neg\n" + "".join(f"a{i}\tb{i}\tc{i}\n" for i in range(5)))
    triplets, report = load_triplets(DataConfig(train_files=[str(path)], max_train_samples=3), None, None)
    assert len(triplets) == report.kept == 3
    assert report.over_max_samples == 2 and report.as_dict()["over_max_samples"] == 2
    assert report.read == report.kept + report.over_max_samples and "2 beyond max_train_samples" in report.summary()
