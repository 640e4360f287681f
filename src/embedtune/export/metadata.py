"""The export's JSON side files: `write_json`, and the export format (embedtune_export.json), which
models/export_format.py owns with its reader and writer: the names here are that module's, for the export
package's writers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedtune.models.export_format import ADAPTER_FORMAT, export_info, versions, write_export_info

__all__ = ["ADAPTER_FORMAT", "export_info", "versions", "write_export_info", "write_json"]


def write_json(path: Path, value: Any) -> None:
    """Readable JSON (non-ASCII kept as is: prompts and tokens may hold any text)."""
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
