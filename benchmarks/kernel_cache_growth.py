"""RSS growth from oneDNN / ideep kernel caches when every matmul has a new shape (as contrastive batches do).

    .venv/bin/python -m benchmarks.kernel_cache_growth

Runs the same loop (bf16 [m x 640] @ [640 x 2048], forward + backward, m = 100, 104, ..., 1296: 300 shapes) in
three subprocesses: the libraries' default cache sizes, embedtune's limits (embedtune/runtime.py), and both at 16.
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import os
import subprocess
import sys

from embedtune.runtime import KERNEL_CACHE_DEFAULTS, KERNEL_CACHE_LIMITS

LOOP = """
import torch
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20
w = torch.randn(640, 2048, dtype=torch.bfloat16)
x = torch.randn(64, 640, dtype=torch.bfloat16, requires_grad=True)
(x @ w).sum().backward()
start = rss_mb()
for m in range(100, 1300, 4):
    x = torch.randn(m, 640, dtype=torch.bfloat16, requires_grad=True)
    (x @ w).sum().backward()
print(f"{rss_mb() - start:.0f}")
"""


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    settings = {"library defaults (1024 / 1024)": dict(KERNEL_CACHE_DEFAULTS),
                "embedtune's limits": dict(KERNEL_CACHE_LIMITS),
                "both 16": {name: "16" for name in KERNEL_CACHE_LIMITS}}
    for name, limits in settings.items():
        out = subprocess.run([sys.executable, "-c", LOOP], env={**os.environ, **limits}, check=True,
                             capture_output=True, text=True).stdout.strip()
        print(f"{name:<32} RSS growth over 300 matmul shapes: {out} MB")


if __name__ == "__main__":
    main()
