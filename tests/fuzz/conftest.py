"""Property-based (hypothesis) tests of every input path a user controls: data files, config files, request bodies.

Default runs are quick and reproducible: 100 cases a test, derandomized (each test's cases follow from its
source, so CI sees the same ones every run), no example database written. Each file's `_soak` tests run the same
properties on many more cases; they are marked slow (`pytest -m slow tests/fuzz`).
See the case counts with `pytest tests/fuzz --hypothesis-show-statistics`.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "embedtune-fuzz", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "embedtune-fuzz"))

# One error line: no line break of any kind (str.splitlines knows them all) and short enough to read.
MAX_MESSAGE = 400


def check_one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    assert message, "empty error message"
    assert len(message.splitlines()) == 1 and message.strip() == message, f"not one line: {message!r}"
    assert len(message) <= limit, f"message of {len(message)} characters: {message[:200]!r}..."
    assert "Traceback" not in message
    return message


@pytest.fixture(scope="session")
def one_line():
    """check_one_line(message, limit=400): asserts an error message is one short line, returns it."""
    return check_one_line


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    """One folder per module; each example overwrites its file (function-scoped tmp_path would be shared anyway)."""
    return tmp_path_factory.mktemp("fuzz")
