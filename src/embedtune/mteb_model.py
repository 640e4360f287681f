"""An embedtune model as an mteb 2.x encoder, so that `mteb.evaluate(model, tasks)` runs any MTEB task on it.

Texts go through the same `Embedder.encode` as `embedtune eval`: EOS appended once, the same pooling, the same
prompt, L2-normalised float32 vectors. mteb is imported only when an adapter is built (it is a dev extra).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from embedtune.config import Config
from embedtune.errors import ConfigError
from embedtune.models.embedder import Embedder

__all__ = ["EmbedtuneMTEBModel", "as_mteb_model"]


class EmbedtuneMTEBModel:
    """Implements mteb's EncoderProtocol (encode, similarity, similarity_pairwise, mteb_model_meta).

    `query_prompt` / `document_prompt`, when given, replace the embedder's prompt for the texts mteb marks as
    queries / documents (retrieval); every other text gets the embedder's own prompt, as in `embedtune eval`.
    """

    def __init__(self, embedder: Embedder, *, query_prompt: str | None = None, document_prompt: str | None = None,
                 name: str | None = None, revision: str | None = None) -> None:
        self.embedder = embedder
        self.prompts = {"query": query_prompt, "document": document_prompt}
        self._meta = _model_meta(embedder, name, revision)

    @property
    def mteb_model_meta(self):
        return self._meta

    def encode(self, inputs, *, task_metadata=None, hf_split: str | None = None, hf_subset: str | None = None,
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        prompt = self.prompts.get(str(getattr(prompt_type, "value", prompt_type)))
        saved = self.embedder.prompt
        self.embedder.prompt = saved if prompt is None else prompt
        try:
            return self.embedder.encode(texts, batch_size=int(kwargs.get("batch_size") or 64),
                                        show_progress=bool(kwargs.get("show_progress_bar", False)))
        finally:
            self.embedder.prompt = saved

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def _model_meta(embedder: Embedder, name: str | None, revision: str | None):
    """A real ModelMeta (mteb replaces a missing or foreign one with an empty one and names results after it)."""
    try:
        from mteb.models import ModelMeta
        from mteb.models.model_meta import ScoringFunction
    except ImportError:
        raise ConfigError("as_mteb_model needs mteb 2.x: pip install 'mteb>=2'") from None
    from importlib.metadata import version

    model = embedder.model
    return ModelMeta.create_empty(overwrites={
        "name": name or meta_name(str(embedder.name)),
        "revision": revision or f"embedtune-{version('embedtune')}",
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "embed_dim": embedder.hidden_size,
        "max_tokens": getattr(embedder, "max_length", None),
        "framework": ["PyTorch"],
        "similarity_fn_name": ScoringFunction.COSINE,  # model_copy does not validate: the enum, not its name
        "use_instructions": bool(embedder.prompt),
        "open_weights": True,
    })


def meta_name(model_name: str) -> str:
    """'organization/model' as mteb requires: a hub id stays, a path or alias becomes 'embedtune/<its name>'."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model_name) and not Path(model_name).exists():
        return model_name
    return "embedtune/" + (re.sub(r"[^\w.-]+", "-", Path(model_name).name).strip("-") or "model")


def as_mteb_model(model: Any = None, *, adapter: str | None = None, prompt: str | None = None,
                  query_prompt: str | None = None, document_prompt: str | None = None,
                  name: str | None = None, revision: str | None = None, **model_options: Any) -> EmbedtuneMTEBModel:
    """An mteb encoder for a --model value (or an Embedder): `mteb.evaluate(as_mteb_model(...), tasks)`.

    `adapter`, `prompt` and `model_options` (ModelConfig fields: pooling, max_length, device, precision...) mean
    what they mean for `embedtune.evaluate`; `name`/`revision` go into the ModelMeta that mteb files results under.
    """
    if isinstance(model, Embedder):
        if adapter is not None or prompt is not None or model_options:
            raise ConfigError("as_mteb_model: adapter, prompt and model options apply to a model name, not to an "
                              "Embedder (build the Embedder with them)")
        embedder = model
    else:
        precision = model_options.pop("precision", "auto")
        config = Config()
        if model is not None:
            config.model.name = model
        given = {**model_options, **{k: v for k, v in (("adapter", adapter), ("prompt", prompt)) if v is not None}}
        config.update({"model": given} if given else {}, "as_mteb_model()")
        embedder = Embedder.from_config(config.validate().model, precision=precision)
    return EmbedtuneMTEBModel(embedder, query_prompt=query_prompt, document_prompt=document_prompt, name=name,
                              revision=revision)
