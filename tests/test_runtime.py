"""Process set-up: allocator preload and kernel-cache limits, with the user's settings winning."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from embedtune import runtime


def test_limits_and_preload_are_added_only_where_the_user_set_nothing(monkeypatch, tmp_path):
    library = tmp_path / "libmimalloc.so.3"
    monkeypatch.setattr(runtime, "mimalloc_library", lambda: library)
    extra = runtime.runtime_environment({})
    assert extra["LD_PRELOAD"] == str(library)
    assert extra["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256" and extra["LRU_CACHE_CAPACITY"] == "64"
    mine = runtime.runtime_environment({"LD_PRELOAD": "/x/libfoo.so", "LRU_CACHE_CAPACITY": "8"})
    assert mine["LD_PRELOAD"] == f"{library}:/x/libfoo.so" and "LRU_CACHE_CAPACITY" not in mine
    system = runtime.runtime_environment({runtime.ALLOCATOR_ENV: "system"})
    assert "LD_PRELOAD" not in system


def test_no_relaunch_when_already_relaunched(monkeypatch):
    monkeypatch.setenv(runtime.RELAUNCHED_ENV, "1")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not re-execute"))
    runtime.relaunch_with_runtime(["--help"])


@pytest.mark.skipif(runtime.mimalloc_library() is None, reason="cmeel-mimalloc not installed (Linux only)")
def test_the_command_runs_under_mimalloc_with_bounded_caches():
    code = ("import os; from embedtune.runtime import relaunch_with_runtime; relaunch_with_runtime([]); "
            "print(open('/proc/self/maps').read().count('mimalloc') > 0, os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LRU_CACHE_CAPACITY", runtime.RELAUNCHED_ENV)}
    # relaunch re-executes `python -m embedtune`; here we only check the environment it builds takes effect.
    extra = runtime.runtime_environment(env)
    out = subprocess.run([sys.executable, "-c", code], env={**env, **extra, runtime.RELAUNCHED_ENV: "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "64"]


def test_no_relaunch_without_an_allocator_to_preload(monkeypatch):
    monkeypatch.delenv(runtime.RELAUNCHED_ENV, raising=False)
    monkeypatch.setattr(runtime, "mimalloc_library", lambda: None)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not re-execute"))
    runtime.relaunch_with_runtime(["--help"])


def test_relaunch_re_executes_the_module_with_the_allocator(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.RELAUNCHED_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(runtime, "mimalloc_library", lambda: tmp_path / "libmimalloc.so.3")
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)))
    runtime.relaunch_with_runtime(["train", "--max-steps", "3"])
    (path, args, env), = calls
    assert path == sys.executable and args[-5:] == ["-m", "embedtune", "train", "--max-steps", "3"]
    assert env["LD_PRELOAD"] == str(tmp_path / "libmimalloc.so.3") and env[runtime.RELAUNCHED_ENV] == "1"
