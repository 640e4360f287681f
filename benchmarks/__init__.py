"""Benchmarks of embedtune against its peers and of its own speed levers: run each from the repository root,

    python -m benchmarks.<name> --help

with the environment that has embedtune installed (`.venv/bin/python -m benchmarks.levers ...`). What the
scripts share (worker processes, the matmul probe, peak memory, result files, common options) is in
`benchmarks/harness.py`. `python benchmarks/<name>.py` works too: it re-runs itself as the module.
"""
from __future__ import annotations

import importlib.util

if importlib.util.find_spec("embedtune") is None:
    raise ModuleNotFoundError("the benchmarks import embedtune: run them with the environment that has it installed "
                              "(.venv/bin/python -m benchmarks.X) or, where it is not installed (the GPU machine), "
                              "as PYTHONPATH=src python3 -m benchmarks.X from the repository root", name="embedtune")
