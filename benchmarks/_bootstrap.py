"""`python benchmarks/X.py` -> `python -m benchmarks.X`, for the scripts started as files.

A script run as a file has no package, so `from benchmarks import harness` would fail; its first statement
imports this module instead (found beside it, as a top-level module), which re-executes the same Python on
`-m benchmarks.X` with the same arguments and the repository root importable. It never returns.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_script = Path(sys.argv[0]).resolve()
_root = str(_script.parent.parent)
_paths = [_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
sys.stdout.flush()
os.execve(sys.executable, [sys.executable, "-m", f"{_script.parent.name}.{_script.stem}", *sys.argv[1:]],
          {**os.environ, "PYTHONPATH": os.pathsep.join(_paths)})
