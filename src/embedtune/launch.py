"""The `embedtune` command's entry point: set up the process (embedtune.runtime), then run the CLI.

The set-up happens here, not on `import embedtune`, so that a Python user's process is left as it was."""
from __future__ import annotations

import sys


def main() -> int:
    from embedtune.runtime import configure_process, relaunch_with_runtime

    relaunch_with_runtime(sys.argv[1:])  # returns only when nothing needs changing (or already relaunched)
    configure_process()  # before torch runs a matmul and matplotlib loads: kernel-cache limits, matplotlib's folder
    from embedtune.cli import main as cli_main

    return cli_main()
