"""Progress bars that suit where they write: redrawn in place on a terminal, a line at a time in a log.

tqdm redraws its bar with a carriage return ten times a second wherever it writes. In a log file (a sweep, a
cluster job, `nohup`) that is one endless line of every redraw; off a terminal the bar here writes a plain line
(with rate and ETA) every `LOG_REFRESH_S` seconds and a last one at the end. tqdm's own `TQDM_MININTERVAL`
still wins where it is set. In a notebook, tqdm's widget stays as it is.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm.auto import tqdm

LOG_REFRESH_S = 30.0  # long enough that an hour's job logs a page, short enough to show it is alive


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments) that writes one line per refresh, every half minute, when not on a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream) and not draws_widgets(tqdm):
        kwargs["file"] = LineLog(stream)
        if "TQDM_MININTERVAL" not in os.environ:
            kwargs.setdefault("mininterval", LOG_REFRESH_S)
    return tqdm(**kwargs)


def draws_widgets(bar_class: type) -> bool:
    """Whether tqdm.auto chose its notebook bar (a widget: it redraws in place, and given a file it would fall
    back to text)."""
    return any(c.__name__ == "tqdm_notebook" for c in bar_class.__mro__)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineLog:
    """A file for tqdm that turns each in-place redraw into a line of its own, and drops blank redraws."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)  # tqdm draws Unicode blocks only where this allows

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()
