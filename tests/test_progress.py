"""Progress bars: in place on a terminal, one line per refresh in a log."""
from __future__ import annotations

import io

import pytest

from embedtune import progress
from embedtune.progress import LOG_REFRESH_S, draws_widgets, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_bar(stream: io.StringIO, steps: int = 500, **kwargs: object) -> str:
    with progress_bar(total=steps, desc="training", unit="step", file=stream, **kwargs) as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def mininterval(**kwargs: object) -> float:
    with progress_bar(total=1, **kwargs) as bar:
        return bar.mininterval


def test_a_log_gets_whole_lines_and_the_final_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    lines = run_bar(io.StringIO()).split("\n")
    assert lines[-1] == ""  # ends with a newline
    body = lines[:-1]
    assert "\r" not in "".join(body)
    # 500 fast updates within one refresh interval: the first draw and the closing one, nothing between.
    assert len(body) == 2
    assert body[0].startswith("training:   0%") and "0/500" in body[0]
    assert body[-1].startswith("training: 100%") and "500/500" in body[-1]


def test_a_log_refreshes_every_half_minute_unless_tqdm_is_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert mininterval(file=io.StringIO()) == LOG_REFRESH_S == 30.0
    # tqdm reads TQDM_* when it is imported; where the variable is set, tqdm's value stands, not ours.
    monkeypatch.setenv("TQDM_MININTERVAL", "2.5")
    assert mininterval(file=io.StringIO()) == mininterval(file=Terminal())


def test_a_terminal_keeps_the_in_place_redraw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    text = run_bar(Terminal(), steps=5, mininterval=0)
    assert text.count("\r") >= 5 and text.count("\n") == 1
    assert mininterval(file=Terminal()) == 0.1  # tqdm's own default


def test_a_disabled_bar_writes_nothing() -> None:
    assert run_bar(io.StringIO(), disable=True) == ""


def test_a_notebook_bar_is_left_to_draw_its_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import notebook
    from tqdm.auto import tqdm as auto_bar
    from tqdm.std import tqdm as text_bar

    assert draws_widgets(notebook.tqdm_notebook) and not draws_widgets(auto_bar)  # no notebook in a test run
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)

    class tqdm_notebook(text_bar):  # what tqdm.auto gives in Jupyter, without needing a kernel
        pass

    monkeypatch.setattr(progress, "tqdm", tqdm_notebook)
    assert mininterval(file=io.StringIO()) == 0.1  # neither the log interval nor the line file
