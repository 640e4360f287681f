"""Read small tables (TSV, CSV, JSONL, parquet) into rows, with errors that name file, line and field."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import DataError

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Row:
    """One record and the line it came from (1-based, header is line 1 for delimited files)."""

    line: int
    values: dict[str, object]


def read_text_strict(path: Path) -> str:
    """UTF-8 decode, reporting the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[err.start]:02x})", file=str(path), line=line) from None


def read_table(path: str | Path, required: list[str]) -> list[Row]:
    """Rows of a table file; each required column must exist in the header."""
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


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    reader = csv.reader(io.StringIO(read_text_strict(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise DataError("empty file (no header row)", file=str(path), line=1)
    rows = []
    for record in reader:
        if not record:
            continue
        if len(record) != len(header):
            raise DataError(f"expected {len(header)} fields, found {len(record)}", file=str(path), line=reader.line_num)
        rows.append(Row(reader.line_num, dict(zip(header, record, strict=True))))
    if not rows:
        raise DataError(f"no data rows (header: {', '.join(header)})", file=str(path), line=1)
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, text in enumerate(read_text_strict(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON ({err.msg})", file=str(path), line=number) from None
        if not isinstance(record, dict):
            raise DataError("each line must be a JSON object", file=str(path), line=number)
        rows.append(Row(number, record))
    if not rows:
        raise DataError("no data rows", file=str(path))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read parquet ({err})", file=str(path)) from None
    # Parquet has no text lines: number the records from 1 as a stand-in.
    return [Row(i + 1, record) for i, record in enumerate(table.to_pylist())]


def require_columns(path: Path, rows: list[Row], required: list[str]) -> None:
    present = rows[0].values.keys()
    header_line = 1 if path.suffix.lower() in (".tsv", ".csv") else rows[0].line
    for name in required:
        if name not in present:
            raise DataError(
                f"missing column (found: {', '.join(map(str, present))})", file=str(path), line=header_line, field=name
            )


def text_field(path: Path | str, row: Row, column: str) -> str:
    """A non-empty string cell, or a DataError naming where it is."""
    value = row.values.get(column)
    if not isinstance(value, str) or not value.strip():
        raise DataError("empty sentence", file=str(path), line=row.line, field=column)
    return value


def number_field(path: Path | str, row: Row, column: str) -> float:
    """A finite number cell, or a DataError naming where it is."""
    value = row.values.get(column)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"not a number: {value!r}", file=str(path), line=row.line, field=column) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise DataError(f"not a finite number: {value!r}", file=str(path), line=row.line, field=column)
    return number
