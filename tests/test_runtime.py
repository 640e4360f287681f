"""Process set-up: allocator preload and kernel-cache limits, with the user's settings winning."""
from __future__ import annotations

import json
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


# ---- importing changes nothing; the command sets its process up ----------------------------------------------

IMPORT_EVERYTHING = """
import importlib, importlib.util, json, os, pkgutil, sys
import torch, torch._inductor.config, transformers  # set variables of their own (TORCHINDUCTOR_CACHE_DIR)
before = dict(os.environ)
import embedtune, embedtune.api, embedtune.cli, embedtune.experiment, embedtune.files, embedtune.training.trainer
testing_after_product = sorted(m for m in sys.modules if m.startswith("embedtune.testing"))
skipped = []
for info in pkgutil.walk_packages(embedtune.__path__, "embedtune."):
    if info.name != "embedtune.__main__":  # that one runs the command
        try:
            importlib.import_module(info.name)
        except ImportError as err:  # an optional extra that is not installed (fastapi, matplotlib)
            if (err.name or "").startswith("embedtune"):
                raise
            skipped.append(info.name)
if importlib.util.find_spec("matplotlib"):
    embedtune.evaluation.report.pyplot()  # plotting sets no variable either (matplotlib's folder: the command's)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"changed": changed, "testing": testing_after_product, "skipped": skipped,
                  "imported": sorted(m for m in sys.modules if m.startswith("embedtune."))}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what embedtune's set-up or the fault tests would add."""
    drop = (*runtime.KERNEL_CACHE_LIMITS, runtime.MATPLOTLIB_ENV, "EMBEDTUNE_FAULT", runtime.RELAUNCHED_ENV)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def test_importing_embedtune_and_every_module_leaves_the_environment_as_it_was():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["changed"] == []
    assert found["testing"] == []  # the product imports only embedtune.hooks, never the fault injection
    assert {"embedtune.api", "embedtune.cli", "embedtune.training.trainer", "embedtune.models.export_format",
            "embedtune.evaluation.report"} <= set(found["imported"])


FAKE_CLI = """
import os, sys, types
def report():
    print(" ".join(os.environ.get(k, "-") for k in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                                                  "MPLCONFIGDIR")))
    return 0
sys.modules["embedtune.cli"] = types.SimpleNamespace(main=report)  # the command's set-up only, no CLI
from embedtune.launch import main
sys.exit(main())
"""


def test_the_command_sets_up_kernel_cache_limits_and_matplotlibs_folder_before_the_cli(tmp_path):
    base = clean_env(**{runtime.ALLOCATOR_ENV: "system", runtime.CACHE_ENV: str(tmp_path / "cache")})
    done = subprocess.run([sys.executable, "-c", FAKE_CLI], env=base, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["64", "256", str(tmp_path / "cache" / "matplotlib")]
    mine = {**base, "LRU_CACHE_CAPACITY": "8", runtime.MATPLOTLIB_ENV: str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-c", FAKE_CLI], env=mine, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["8", "256", str(tmp_path / "mpl")]  # the user's values win


def test_configure_process_adds_only_what_is_missing_and_says_what(tmp_path):
    environ = {runtime.CACHE_ENV: str(tmp_path), "LRU_CACHE_CAPACITY": "8"}
    added = runtime.configure_process(environ)
    assert added == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", runtime.MATPLOTLIB_ENV: str(tmp_path / "matplotlib")}
    assert environ == {runtime.CACHE_ENV: str(tmp_path), "LRU_CACHE_CAPACITY": "8", **added}
    assert runtime.configure_process(environ) == {}  # a second call changes nothing
