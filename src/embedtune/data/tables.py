"""Read small tables (TSV, CSV, JSONL, parquet) into rows, with errors that name file, line and field."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import DataError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line here; not \x85, \u2028 and the other Unicode ones
SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON \\uXXXX escape can put one in a string
DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlong, _short.maxlevel = 40, 40, 30, 2
_short.maxlist = _short.maxtuple = _short.maxdict = 4


@dataclass(frozen=True)
class Row:
    """One record and the line it came from (1-based, header is line 1 for delimited files)."""

    line: int
    values: dict[str, object]


class Table(list):
    """The rows of a table file (a list of Row), and how many blank lines between them were skipped."""

    def __init__(self, rows=(), blank_lines: int = 0):
        super().__init__(rows)
        self.blank_lines = blank_lines


def shown(value: object) -> str:
    """A value for an error message: repr, cut short, one line whatever it holds."""
    try:
        return _short.repr(value)
    except ValueError:  # an integer past Python's 4300-digit limit for str()
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"


def shown_name(name: object) -> str:
    """A column name for an error message: as is when plain, else repr (spaces at the ends, line breaks...)."""
    text = str(name)
    return text if text and text.isprintable() and text == text.strip() and len(text) <= 40 else shown(name)


def read_text_strict(path: Path) -> str:
    """UTF-8 decode without a leading BOM, reporting the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = len(LINE_BREAK.findall(data[: err.start].decode("utf-8"))) + 1
        hint = "; it looks like UTF-16: save it as UTF-8" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DataError(f"not valid UTF-8 (byte 0x{data[err.start]:02x}){hint}", file=str(path), line=line) from None


def read_table(path: str | Path, required: list[str]) -> Table:
    """Rows of a table file; each required column must exist in the header. Blank lines are skipped, counted in
    the Table's `blank_lines` and logged."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(f"unsupported file type '{suffix}' (use one of {', '.join(TABLE_SUFFIXES)})", file=str(path))
    require_columns(path, rows, required)
    return rows


def _read_delimited(path: Path, delimiter: str) -> Table:
    text = read_text_strict(path)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # no field is longer than the file; the default is 128 KiB
    try:
        return _parse_delimited(path, text, delimiter)
    finally:
        csv.field_size_limit(limit)


def _parse_delimited(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows, start = Table(), 1  # start: the first line of the record being read (a quoted field may span lines)
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if header is None:
                if not record:
                    raise DataError("empty file (no header row)" if not text.strip() else
                                    "blank first line (the header row must be line 1)", file=str(path), line=1)
                header = _check_header(path, record)
            elif not record or (len(record) == 1 < len(header) and not record[0].strip()):
                rows.blank_lines += 1
            elif len(record) != len(header):
                spans = f" (the record runs to line {start - 1}: an unbalanced quote?)" if start - 1 > line else ""
                raise DataError(f"expected {len(header)} fields, found {len(record)}{spans}", file=str(path),
                                line=line)
            else:
                rows.append(Row(line, dict(zip(header, record, strict=True))))
    except csv.Error as err:
        raise DataError(f"unreadable {DELIMITER_NAMES[delimiter]}-separated record ({err})", file=str(path),
                        line=start) from None
    if header is None:
        raise DataError("empty file (no header row)", file=str(path), line=1)
    if not rows:
        raise DataError(f"no data rows (header: {shown_names(header)})", file=str(path), line=1)
    _note_blank_lines(path, rows)
    return rows


def _check_header(path: Path, header: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in header:
        if name in seen and name.strip():
            raise DataError("duplicate column name", file=str(path), line=1, field=shown_name(name))
        seen.add(name)
    return header


def shown_names(names, budget: int = 160) -> str:
    """Column names for a message, as many as fit in about `budget` characters."""
    names = list(names)
    out: list[str] = []
    for name in names:
        if out and sum(len(n) + 2 for n in out) + len(shown_name(name)) > budget:
            return ", ".join(out) + f", ... ({len(names)} columns)"
        out.append(shown_name(name))
    return ", ".join(out)


def _note_blank_lines(path: Path, rows: Table) -> None:
    if rows.blank_lines:
        log.info("%s: skipped %d blank line(s)", path, rows.blank_lines)


def _read_jsonl(path: Path) -> Table:
    rows = Table()
    lines = LINE_BREAK.split(read_text_strict(path))  # not str.splitlines: U+2028 may sit inside a JSON string
    if lines[-1] == "":
        lines.pop()  # the line end of the last line
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            rows.blank_lines += 1
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON ({err.msg})", file=str(path), line=number) from None
        except RecursionError:
            raise DataError("invalid JSON (nested too deeply)", file=str(path), line=number) from None
        except ValueError as err:  # e.g. an integer past Python's 4300-digit limit
            raise DataError(f"invalid JSON ({str(err).split(':')[0]})", file=str(path), line=number) from None
        if not isinstance(record, dict):
            hint = " (.json files are read as JSON lines)" if path.suffix.lower() == ".json" else ""
            raise DataError(f"each line must be a JSON object, got {_json_kind(record)}{hint}", file=str(path),
                            line=number)
        rows.append(Row(number, record))
    if not rows:
        raise DataError("no data rows", file=str(path))
    _note_blank_lines(path, rows)
    return rows


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read parquet ({first})", file=str(path)) from None
    if table.num_rows == 0:
        raise DataError(f"no data rows (columns: {shown_names(table.column_names)})", file=str(path))
    # Parquet has no text lines: number the records from 1 as a stand-in.
    return Table(Row(i + 1, record) for i, record in enumerate(table.to_pylist()))


def require_columns(path: Path, rows: list[Row], required: list[str]) -> None:
    present = rows[0].values.keys()
    header_line = 1 if path.suffix.lower() in (".tsv", ".csv") else rows[0].line
    for name in required:
        if name not in present:
            raise DataError(f"missing column (found: {shown_names(present)}){_delimiter_hint(path, present)}",
                            file=str(path), line=header_line, field=name)


def _delimiter_hint(path: Path, present) -> str:
    """For a one-column header that another delimiter would split: which delimiter it seems to use."""
    names = list(present)
    if path.suffix.lower() not in (".tsv", ".csv") or len(names) != 1:
        return ""
    expected = "\t" if path.suffix.lower() == ".tsv" else ","
    for delimiter, what in DELIMITER_NAMES.items():
        if delimiter != expected and delimiter in str(names[0]):
            return f"; the header has no {DELIMITER_NAMES[expected]}s: is the file {what}-separated?"
    return ""


def check_unicode(path: Path | str, row: Row, column: str) -> None:
    """A DataError for a string cell holding a lone surrogate (from a JSON escape such as \\ud800): no UTF-8 text
    can hold one, so the tokenizer would fail on it long after reading."""
    value = row.values.get(column)
    if isinstance(value, str) and not value.isascii():
        found = SURROGATE.search(value)
        if found:
            raise DataError(f"not valid Unicode (a lone surrogate U+{ord(found.group()):04X} at character "
                            f"{found.start() + 1})", file=str(path), line=row.line, field=column)


def text_field(path: Path | str, row: Row, column: str) -> str:
    """A non-empty string cell, or a DataError naming where it is."""
    value = row.values.get(column)
    if not isinstance(value, str):
        what = "missing on this line" if column not in row.values else f"got {_json_kind(value)}, not a string"
        raise DataError(f"empty sentence ({what})", file=str(path), line=row.line, field=column)
    if not value.strip():
        raise DataError("empty sentence", file=str(path), line=row.line, field=column)
    check_unicode(path, row, column)
    return value


def number_field(path: Path | str, row: Row, column: str) -> float:
    """A finite number cell, or a DataError naming where it is."""
    value = row.values.get(column)
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        raise DataError(f"not a number: {shown(value)}", file=str(path), line=row.line, field=column) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise DataError(f"not a finite number: {shown(value)}", file=str(path), line=row.line, field=column)
    return number
