"""Run by tests/training/test_distributed.py under torchrun: each rank trains the listed configs in turn.

Not a test module (pytest collects test_*.py only). Usage: torchrun ... distributed_worker.py CASES.json
"""
from __future__ import annotations

import json
import sys

from embedtune.config import Config
from embedtune.training.trainer import train

if __name__ == "__main__":
    for case in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        train(Config.from_dict(case).validate())
