"""Atomic writes, the one implementation: a file or folder appears complete, or the old one stays.

Every writer fills a temporary sibling (same folder, so the final rename stays on one file system), flushes it
to disk and renames it into place; a crash, a full disk or an exception leaves at most a hidden temporary entry
behind (`.NAME.tmp-*`, removed by `remove_temporaries`), never a half-written result under the real name. A
folder's optional marker file is written last, so a folder that holds its marker is complete.

A write that fails for lack of room or permission raises StorageError: one line naming the path, the reason and
the free space there. Libraries that write files themselves (safetensors, torch) report such failures in their
own exception types; the writers recognise those too.

The reliability tests reach inside a write at two points, half-way (content flushed, nothing renamed) and, for a
folder that replaces another, between the swap's two renames: `embedtune.hooks.hook`, a no-op unless a test arms
it (embedtune.testing.faults, `EMBEDTUNE_FAULT` in docs/RELIABILITY.md).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from embedtune.errors import StorageError
from embedtune.hooks import hook

TEMP_TAG = ".tmp-"  # in every temporary name: `.NAME.tmp-XXXXXXXX`
# Failures that mean "this place cannot take the write", as opposed to a bug in what is being written.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors, tokenizers) report errno


def write_file_atomically(path: str | Path, write: Callable[[IO[bytes]], None], kind: str | None = None) -> Path:
    """write(f) fills a temporary binary file, which then replaces `path`."""
    path = Path(path)
    kind = kind or path.name
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_TAG}")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            hook("mid-write", kind=kind, path=path, tmp=tmp)  # where the fault tests cut or kill a write
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _raise_storage_error(path, err)
        raise
    return path


def write_text_atomically(path: str | Path, text: str, kind: str | None = None) -> Path:
    return write_file_atomically(path, lambda f: f.write(text.encode("utf-8")), kind)


def write_folder_atomically(target: str | Path, write: Callable[[Path], None], kind: str | None = None,
                            marker: tuple[str, Callable[[Path], str]] | None = None) -> Path:
    """write(folder) fills a temporary folder beside `target`, which then replaces it (an existing target
    is moved aside first and removed after the swap). `marker` (file name, text of the filled folder) is
    written after everything else, so that its presence means the folder is complete."""
    target = Path(target)
    kind = kind or target.name
    tmp: Path | None = None
    try:
        recover_folder(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TEMP_TAG}"))
        write(tmp)
        hook("mid-write", kind=kind, path=target, tmp=tmp)
        if marker is not None:
            name, text = marker
            (tmp / name).write_text(text(tmp), encoding="utf-8")
        _fsync_tree(tmp)
        _replace_dir(tmp, target, kind)
    except BaseException as err:
        _raise_storage_error(target, err)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}-old")


def _replace_dir(source: Path, target: Path, kind: str) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, then drop it.
    if target.exists():
        aside = _aside(target)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        hook("folder-swap", kind=kind, path=target)  # the fault tests' kill-swap
        os.replace(source, target)
        _fsync_dir(target.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)
        _fsync_dir(target.parent)


def recover_folder(target: str | Path) -> bool:
    """Put back a folder that a killed write had moved aside and not yet replaced; True when it did."""
    target = Path(target)
    aside = _aside(target)
    if not target.exists() and aside.is_dir():
        os.replace(aside, target)
        return True
    return False


def remove_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove what killed writes left in `folder` (temporary files and folders, set-aside old folders whose
    target exists again), only those of the entry `name` if given; returns what was removed. Call it only where
    no write (of `name`) is in progress."""
    folder = Path(folder)
    removed = []
    for entry in folder.glob(f".{name or ''}*") if folder.is_dir() else []:
        if name is not None and entry.name not in (f".{name}-old",) and not entry.name.startswith(
                f".{name}{TEMP_TAG}"):
            continue
        stale = TEMP_TAG in entry.name or (entry.name.endswith("-old") and
                                           (folder / entry.name[1:-len("-old")]).exists())
        if not stale:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the duration: one process at a time
    writes what it guards. The system releases it when the process dies, however it dies."""
    lock_file = Path(lock_file)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still guards the result
        yield
        return
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_file, "a")  # closed by the with below
    except OSError as err:
        _raise_storage_error(lock_file, err)
        raise
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


# ---- write failures -------------------------------------------------------------------------------------------

def storage_error(path: str | Path, err: BaseException, code: int | None = None) -> StorageError:
    """The one-line error for a write to `path` that failed with `err`: reason and free space there."""
    code = code if code is not None else getattr(err, "errno", None)
    reason = os.strerror(code) if code else str(err)
    return StorageError(f"cannot write {path}: {reason} ({free_space(path)} free there)", code, str(path))


def _raise_storage_error(path: Path, err: BaseException) -> None:
    """Raise StorageError from `err` if it is a failure of the place being written (any library's way of
    saying so); return when it is some other error, for the caller to re-raise."""
    if isinstance(err, StorageError) or not isinstance(err, Exception):
        return
    code = _write_errno(err, path.parent)
    if code is not None:
        raise storage_error(path, err, code) from err


def _write_errno(err: Exception, folder: Path) -> int | None:
    if isinstance(err, OSError):
        return err.errno if err.errno in WRITE_ERRNOS else None
    text = str(err)
    match = _OS_ERROR_CODE.search(text)
    if match and int(match.group(1)) in WRITE_ERRNOS:
        return int(match.group(1))
    for code in WRITE_ERRNOS:
        if os.strerror(code) in text:
            return code
    # torch's own writer says only "unexpected pos ..." or "file write failed": ask the file system itself.
    return _probe(folder) if isinstance(err, RuntimeError) else None


def _probe(folder: Path) -> int | None:
    """The errno of a small test write in `folder` (or its nearest existing parent), None when it succeeds."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err.errno if err.errno in WRITE_ERRNOS else None
    return None


def free_space(path: str | Path) -> str:
    """Free space on the file system that holds `path` (or its nearest existing parent), e.g. '1.5 GiB'."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free} B" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"  # unreachable


def read_json_or(path: str | Path, default=None):
    """A small side file's JSON, or `default` ({} unless given) when it is absent, unreadable or of another type:
    a broken side file (an export's settings, a run's report) must not stop a load or an export."""
    default = {} if default is None else default
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default
