"""`embedtune encode`: texts from a file -> embeddings in a file, row i for text i.

Inputs: .txt (one text a line), .jsonl (one JSON object a line, text in `column`), .csv/.tsv (text in the
`column` column), .parquet. Outputs: .npy (float32 matrix, n x dimensions) or .jsonl
({"index": i, "embedding": [...]} a line). Batches are length-bucketed by `Embedder.encode`, which also draws
the progress bar. Bad input is a DataError naming the file, line and field, raised before any model work.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embedtune.data.tables import read_table, read_text_strict, text_field
from embedtune.errors import ConfigError, DataError, ModelError, StorageError
from embedtune.files import write_file_atomically
from embedtune.models.embedder import check_dims, truncate_vectors

INPUT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".jsonl")


def check_paths(input: str | Path, output: str | Path) -> None:
    """Cheap checks worth doing before a model load: the input exists and both file types are known."""
    input, output = Path(input), Path(output)
    if input.suffix.lower() not in INPUT_SUFFIXES:
        raise DataError(f"unsupported input type '{input.suffix}' (use {', '.join(INPUT_SUFFIXES)})", file=str(input))
    if not input.is_file():
        raise DataError("file not found", file=str(input))
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"unsupported output type '{output.suffix}' (use {', '.join(OUTPUT_SUFFIXES)})",
                        file=str(output))
    if output.resolve() == input.resolve():
        raise DataError("output would overwrite the input", file=str(output))


def read_texts(input: str | Path, column: str = "text") -> list[str]:
    """The texts of an input file, in file order. Blank lines of .jsonl/.csv/.tsv inputs are skipped and counted
    (logged by read_table); in a .txt input every line is a text, so an empty one is an error."""
    path = Path(input)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError("file not found", file=str(path))
        return _read_lines(path)
    rows = read_table(path, [column])
    return [text_field(path, row, column) for row in rows]


def _read_lines(path: Path) -> list[str]:
    text = read_text_strict(path)  # without its BOM
    # Only \n, \r\n and \r end a line; str.splitlines would also split on form feeds and Unicode separators.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError("empty line (a .txt input holds one non-empty text a line)", file=str(path), line=number)
    if not lines:
        raise DataError("no texts", file=str(path))
    return lines


def encode_file(embedder, input: str | Path, output: str | Path, column: str = "text", batch_size: int = 128,
                show_progress: bool = True, dims: int | None = None) -> int:
    """Embed every text of `input` into `output`; returns the number of embeddings written. `dims`: keep the
    first `dims` dimensions of each vector, L2-normalised again (a Matryoshka size)."""
    check_paths(input, output)
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    check_size(dims)
    if dims is not None:
        check_dims([dims], embedder.hidden_size, "--dims")  # before reading and encoding
    texts = read_texts(input, column)
    vectors = embedder.encode(texts, batch_size=batch_size, show_progress=show_progress, desc=Path(input).name)
    if dims is not None:
        vectors = truncate_vectors(vectors, dims)
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ModelError(f"the model gave a non-finite embedding (first at text {bad}); nothing written")
    write_embeddings(vectors, output)
    return len(texts)


def check_size(dims: int | None) -> None:
    """A truncation size must be a whole number >= 1 (the model's width is checked once it is loaded)."""
    if dims is not None and dims < 1:
        raise ConfigError(f"--dims must be >= 1, got {dims}")


def write_embeddings(vectors: np.ndarray, output: str | Path) -> None:
    """Write atomically: a crash or error never leaves a half-written output file."""
    output = Path(output)

    def write(f) -> None:
        if output.suffix.lower() == ".npy":
            np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))
            return
        for index, row in enumerate(vectors):
            # 9 significant digits round-trip a float32 exactly.
            values = ",".join(format(float(x), ".9g") for x in row)
            f.write(f'{{"index":{index},"embedding":[{values}]}}\n'.encode())

    try:
        write_file_atomically(output, write, "encode")
    except StorageError as err:
        kept = f"the previous {output} is unchanged" if output.exists() else f"no {output} was written"
        raise StorageError(f"{err}; {kept}", err.errno, err.filename) from None
