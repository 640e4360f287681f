"""GGUF conversion shows embedtune's progress bar, not transformers' raw tqdm bars."""
from __future__ import annotations

import io

import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from embedtune.models import loading


def test_conversion_draws_our_bar_and_silences_theirs(monkeypatch):
    log = io.StringIO()  # not a terminal: our bar writes plain lines
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    theirs = gguf_utils.tqdm
    assert hf_logging.is_progress_bar_enabled()
    with loading._gguf_progress("tiny.gguf"):
        assert gguf_utils.tqdm is not theirs
        assert not hf_logging.is_progress_bar_enabled()  # the loader's own weight bar is off
        # transformers' reader calls it like this for each pass over the tensors
        passes = gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...", file=log)
        assert list(passes) == [0, 1, 2]
    assert gguf_utils.tqdm is theirs and hf_logging.is_progress_bar_enabled()  # restored
    lines = log.getvalue().splitlines()
    assert lines and all("\r" not in line for line in lines)
    assert "tiny.gguf: Converting and de-quantizing GGUF tensors" in lines[-1] and "3/3" in lines[-1]


def test_conversion_restores_their_bars_after_a_failure():
    theirs = gguf_utils.tqdm
    try:
        with loading._gguf_progress("broken.gguf"):
            raise ValueError("unreadable")
    except ValueError:
        pass
    assert gguf_utils.tqdm is theirs and hf_logging.is_progress_bar_enabled()
