"""The ONNX export: the merged model with its pooling and normalisation in one graph, for ONNX Runtime.

`embedtune export --format onnx` writes the merged sentence-transformers folder and, inside it, onnx/model.onnx:
where sentence-transformers' ONNX backend (through Optimum's ORTModelForFeatureExtraction) looks for it.

The graph takes `input_ids` and `attention_mask` (int64, [batch, tokens], both axes dynamic) as the folder's
tokenizer.json produces them (EOS and prompt included) and gives two outputs:

* `sentence_embedding` [batch, dimensions]: the pooled, L2-normalised vector embedtune computes. This is what an
  ONNX Runtime user reads; nothing is left to do outside the graph but tokenizing.
* `last_hidden_state` [batch, tokens, hidden]: what Optimum's feature-extraction model returns, so that
  `SentenceTransformer(folder, backend="onnx")` runs its own Pooling and Normalize modules on it.

Position ids are computed inside the graph from the mask (as embedtune's padding does), so a batch's padding
changes no vector. The graph is traced with the TorchScript exporter (`torch.onnx.export(dynamo=False)`): it
needs only the `onnx` package, where the dynamo exporter also needs onnxscript. The trace runs on a padded batch,
so the masking path is the one recorded. Before the folder is published the graph is run under ONNX Runtime on
texts of mixed lengths in one batch and must match the PyTorch vectors (cosine >= ONNX_MIN_COSINE per text).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from embedtune.errors import ModelError
from embedtune.models.embedder import pool

if TYPE_CHECKING:
    import numpy as np

    from embedtune.models.embedder import Embedder

log = logging.getLogger(__name__)
FORMATS = ("st", "onnx")  # --format: the sentence-transformers folder alone, or with onnx/model.onnx in it
ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx_data"  # the weights beside the graph when they pass protobuf's 2 GB (Optimum's name)
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")
OPSET = 17  # LayerNormalization and scaled-dot-product attention map to plain ONNX ops from here on
ONNX_MIN_COSINE = 1 - 1e-3
EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GiB message limit, with room for the graph itself
# Mixed lengths in one batch (padding on most rows), and the empty text (BOS and EOS only).
CHECK_TEXTS = ("A man is playing a guitar.", "x", "", "Two dogs run through the snow in the park near the old house.",
               "The quick brown fox jumps over the lazy dog. " * 8)


def onnx_path(folder: str | Path) -> Path:
    return Path(folder) / ONNX_DIR / ONNX_FILE


def write_onnx(folder: Path, embedder: Embedder, *, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> Path:
    """Export `embedder` (merged, fp32, CPU) to FOLDER/onnx/model.onnx and check it against PyTorch under ONNX
    Runtime. `folder` already holds the tokenizer files (the check tokenizes through them, as a user would)."""
    from embedtune.progress import progress_bar

    if any(p.dtype != torch.float32 for p in embedder.model.parameters()):
        # The safetensors are written by now; the graph is fp32, the precision ONNX Runtime's CPU kernels run.
        embedder.model.float()
    with progress_bar(total=2, desc="ONNX export", unit="step") as bar:
        bar.set_postfix_str("tracing and writing the graph")
        path = export_graph(folder, embedder, external_data_bytes)
        bar.update()
        bar.set_postfix_str("checking against PyTorch under ONNX Runtime")
        lowest = check_onnx(folder, embedder)
        bar.update()
    log.info("ONNX Runtime matches PyTorch: lowest cosine %.6f over %d texts of mixed lengths", lowest,
             len(CHECK_TEXTS))
    return path


class SentenceEmbeddingGraph(torch.nn.Module):
    """The module that is traced: the transformer, then embedtune's pooling and normalisation."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.model = embedder.model
        self.pooling = embedder.pooling
        self.positions_from_mask = embedder.eos_id is not None  # as Embedder.pad: decoders get mask positions
        self.no_cache = hasattr(self.model.config, "use_cache")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra: dict[str, Any] = {"use_cache": False} if self.no_cache else {}
        if self.positions_from_mask:
            extra["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return hidden, F.normalize(pool(hidden.float(), attention_mask, self.pooling), dim=-1)


def export_graph(folder: Path, embedder: Embedder, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> Path:
    """Trace and write the graph; its weights go to model.onnx_data when they would not fit in one protobuf."""
    import warnings

    import onnx

    target = onnx_path(folder)
    trace_dir = target.parent / ".trace"  # the exporter may write one file per tensor for big models
    trace_dir.mkdir(parents=True)
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
               "last_hidden_state": {0: "batch", 1: "tokens"}, "sentence_embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches and the exporter's deprecation
        torch.onnx.export(SentenceEmbeddingGraph(embedder).eval(), _trace_inputs(embedder),
                          str(trace_dir / ONNX_FILE), dynamo=False, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=OPSET)
    graph = onnx.load(str(trace_dir / ONNX_FILE))
    # The tracer leaves the vector's width symbolic (it comes out of the normalisation); it is the model's width.
    width = next(o for o in graph.graph.output if o.name == "sentence_embedding").type.tensor_type.shape.dim[1]
    width.dim_value = embedder.hidden_size
    external = graph.ByteSize() > external_data_bytes
    onnx.save_model(graph, str(target), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=ONNX_DATA_FILE)
    shutil.rmtree(trace_dir)
    onnx.checker.check_model(str(target))
    return target


def _trace_inputs(embedder: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of different lengths, right-padded: the trace records the masking that padding needs."""
    batch = embedder.pad(embedder.tokenize(["A man is playing a guitar in the park.", "x"]))
    return batch["input_ids"], batch["attention_mask"]


def check_onnx(folder: Path, embedder: Embedder, texts: tuple[str, ...] = CHECK_TEXTS) -> float:
    """The lowest cosine between ONNX Runtime's and PyTorch's vectors of `texts` (one padded batch, tokenized by
    the folder's tokenizer); ModelError below ONNX_MIN_COSINE."""
    import numpy as np

    onnx_vectors = onnx_embeddings(folder, texts)
    torch_vectors = embedder.encode(list(texts)).astype(np.float32)
    if onnx_vectors.shape != torch_vectors.shape:
        raise ModelError(f"the ONNX graph gives vectors of shape {onnx_vectors.shape}, PyTorch {torch_vectors.shape}")
    lowest = float(_cosines(onnx_vectors, torch_vectors).min())
    if not lowest >= ONNX_MIN_COSINE:  # also catches NaN
        raise ModelError(f"the ONNX graph's vectors differ from PyTorch's (lowest cosine {lowest:.6f}, "
                         f"needed {ONNX_MIN_COSINE}); no export was written")
    return lowest


def onnx_embeddings(folder: str | Path, texts: list[str] | tuple[str, ...]) -> np.ndarray:
    """`sentence_embedding` of the folder's graph under ONNX Runtime on the CPU, for texts tokenized by the
    folder's own tokenizer, all in one padded batch: what a user of the export does."""
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(onnx_path(folder)), providers=["CPUExecutionProvider"])
    feed = {name: batch[name].astype("int64") for name in INPUT_NAMES}
    return session.run(["sentence_embedding"], feed)[0]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)
