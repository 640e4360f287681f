"""Which serving stacks take an exported folder as it is, from the files they read (docs/DEPLOY.md has the sources).

Text Embeddings Inference (TEI) picks its model code by config.json's `model_type` (backends/candle/src/lib.rs,
the `Config` enum) and its pooling from 1_Pooling/config.json (router/src/lib.rs); vLLM picks its model class by
config.json's `architectures` (vllm/model_executor/models/registry.py, _EMBEDDING_MODELS) and its pooling from
modules.json and 1_Pooling/config.json (vllm/transformers_utils/config.py, get_pooling_config). Neither runs
here; `server_support` reads the exported files as they do, and `embedtune export` logs its verdict.
"""
from __future__ import annotations

import json
from pathlib import Path

# TEI's decoder model types, and the devices/dtypes its candle backend starts them on (backends/candle/src/lib.rs).
TEI_DECODERS = {
    "gemma3_text": "CPU and CUDA, fp32 only (TEI picks fp32 for gemma3_text by itself); mean or last-token pooling",
    "qwen3": "CPU and CUDA",
    "llama": "CUDA only, fp16 with flash attention",
    "mistral": "CUDA only, fp16 with flash attention",
    "qwen2": "CUDA only, fp16 with flash attention",
}
# TEI's 1_Pooling/config.json reading (router/src/lib.rs, PoolConfig -> Pool): the first true flag wins.
TEI_POOLING_ORDER = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                     ("pooling_mode_lasttoken", "last_token"))
TEI_GEMMA3_POOLINGS = ("mean", "last_token")  # backends/candle/src/models/gemma3.rs: no CLS, no SPLADE
# vLLM's embedding architectures among the decoders embedtune trains (registry.py, _EMBEDDING_MODELS).
VLLM_DECODERS = ("Gemma2Model", "Gemma3TextModel", "LlamaModel", "MistralModel", "Qwen2Model", "Phi3ForCausalLM")


def tei_pooling(pooling_config: dict) -> str | None:
    """The pooling TEI runs for a 1_Pooling/config.json, or None where it refuses it ("not supported")."""
    return next((pool for flag, pool in TEI_POOLING_ORDER if pooling_config.get(flag) is True), None)


def vllm_pooling(pooling_config: dict) -> set[str]:
    """The sequence pooling types vLLM takes from a 1_Pooling/config.json: every key whose value is true, named
    as vLLM's parse_pooling_type names it (keys that name no pooling, like include_prompt, are skipped)."""
    found = set()
    for key, value in pooling_config.items():
        if value is True:
            name = key.replace("pooling_mode_", "").split("_", 1)[0]
            found.add("LAST" if "lasttoken" in name else name.upper())
    return found & {"CLS", "LAST", "MEAN"}


def server_support(folder: str | Path) -> dict[str, str]:
    """{"tei": verdict, "vllm": verdict} for an exported folder: "yes" plus conditions, or "no: why"."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    tei_pool = tei_pooling(pooling)
    if model_type not in TEI_DECODERS:
        tei = f"no: TEI has no model code for model_type {model_type!r} (embedtune serve serves it)"
    elif tei_pool is None or (model_type == "gemma3_text" and tei_pool not in TEI_GEMMA3_POOLINGS):
        tei = f"no: TEI does not run {tei_pool or 'this'} pooling for {model_type}"
    else:
        tei = f"yes ({TEI_DECODERS[model_type]})"
    if not set(architectures) & set(VLLM_DECODERS):
        vllm = f"no: {architectures} is not among vLLM's embedding architectures (embedtune serve serves it)"
    else:
        vllm = f"yes ({'/'.join(sorted(vllm_pooling(pooling))) or 'default'} pooling, normalized)"
    return {"tei": tei, "vllm": vllm}
