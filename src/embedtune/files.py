"""Atomic writes, the one implementation: a file or folder appears complete, or the old one stays.

Every writer fills a temporary sibling (same folder, so the final rename stays on one file system) and renames
it into place; a crash, a full disk or an exception leaves at most a hidden temporary entry behind, never a
half-written result under the real name.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_file_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """write(f) fills a temporary binary file, which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_file_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_folder_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """write(folder) fills a temporary folder beside `target`, which then replaces it (an existing target
    is moved aside first and removed after the swap)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(tmp)
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_dir(source: Path, target: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, then drop it.
    if target.exists():
        aside = target.with_name(f".{target.name}-old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)
