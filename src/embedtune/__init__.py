"""embedtune: contrastive LoRA fine-tuning that turns small LMs into text-embedding models, and STS scoring.

Public API (names only; the logic lives in the modules named beside each).
"""
from embedtune.api import encode, evaluate, export, run, train  # noqa: F401
from embedtune.config import Config  # noqa: F401
from embedtune.models.embedder import Embedder  # noqa: F401

__all__ = ["Config", "Embedder", "encode", "evaluate", "export", "run", "train"]
__version__ = "0.1.0"
