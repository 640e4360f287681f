"""The `embedtune` command's entry point: set up the process (embedtune.runtime), then run the CLI."""
from __future__ import annotations

import sys


def main() -> int:
    from embedtune.runtime import relaunch_with_runtime

    relaunch_with_runtime(sys.argv[1:])  # returns only when nothing needs changing (or already relaunched)
    from embedtune.cli import main as cli_main

    return cli_main()
