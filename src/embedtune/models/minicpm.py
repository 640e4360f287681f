"""MiniCPM-1B/2B (openbmb) natively: transformers' Llama plus MiniCPM's two scalings, no remote code.

transformers has no MiniCPM-1/2B class, and the hub's `modeling_minicpm.py` imports modules transformers 5
removed (`modeling_attn_mask_utils`, `is_torch_fx_available`, the legacy cache API), so `--trust-remote-code`
cannot load it any more. The architecture is Llama with:

- token embeddings multiplied by `scale_emb` (12 for MiniCPM-2B);
- each residual branch (attention output, MLP output) multiplied by `scale_depth / sqrt(num_hidden_layers)`
  before it is added to the residual stream (1.4 / sqrt(40) for MiniCPM-2B);
- `dim_model_base` only divides the hidden state before the LM head, which embedtune never loads.

Everything else is transformers' Llama code, attention included: the attention-interface swaps of
models/attention.py and models/packing.py, the `packing=` pass-through and LoRA targeting work as for Llama.
`register()` (called by models/loading.py before any Auto* load) makes `model_type: minicpm` load these
classes; a class registered from outside transformers wins over a config's `auto_map` even with
`trust_remote_code=True` (transformers 5's "explicit local code" rule), so the hub's code never runs.
Checkpoints saved from `MiniCPMForCausalLM` (keys `model.layers...`, plus `lm_head.weight`) load into
`MiniCPMModel` through `base_model_prefix = "model"`, the LM head left out.

Not covered: MiniCPM-MoE (`num_experts`) and MiniCPM4's sparse attention (`sparse_config`): both refused.
"""
from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

MODEL_TYPE = "minicpm"


@strict
class MiniCPMConfig(LlamaConfig):
    """LlamaConfig plus MiniCPM's scalings (defaults: no scaling; MiniCPM-2B says 12, 1.4, 256)."""

    model_type = MODEL_TYPE
    scale_emb: int | float = 1
    scale_depth: int | float = 1
    dim_model_base: int | float = 256


class MiniCPMScaledEmbedding(nn.Embedding):
    """nn.Embedding whose output is multiplied by `scale` (still an nn.Embedding for resizing and peft)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, scale: float):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale


class MiniCPMDecoderLayer(LlamaDecoderLayer):
    """A Llama layer whose attention and MLP outputs are scaled by scale_depth / sqrt(layers) before each add."""

    def __init__(self, config: MiniCPMConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states * self.residual_scale
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states * self.residual_scale


class MiniCPMPreTrainedModel(LlamaPreTrainedModel):
    config: MiniCPMConfig
    config_class = MiniCPMConfig
    _no_split_modules = ["MiniCPMDecoderLayer"]
    _can_record_outputs = {"hidden_states": MiniCPMDecoderLayer, "attentions": LlamaAttention}
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]  # a MiniCPMForCausalLM checkpoint's head, never used


class MiniCPMModel(MiniCPMPreTrainedModel, LlamaModel):
    """LlamaModel (its forward unchanged) built from MiniCPM's scaled embedding and decoder layers."""

    def __init__(self, config: MiniCPMConfig):
        _refuse_unsupported(config)
        LlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = MiniCPMScaledEmbedding(config.vocab_size, config.hidden_size, self.padding_idx,
                                                   config.scale_emb)
        self.layers = nn.ModuleList(
            [MiniCPMDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


def _refuse_unsupported(config: MiniCPMConfig) -> None:
    """model_type "minicpm" also names MiniCPM-MoE and MiniCPM4; their extra parts would load as random weights."""
    for key, what in (("num_experts", "mixture-of-experts MLPs (MiniCPM-MoE)"),
                      ("sparse_config", "sparse attention (MiniCPM4)")):
        if getattr(config, key, None):
            raise ValueError(f"MiniCPM with {what} is not supported by embedtune's native MiniCPM class")


def register() -> None:
    """Make AutoConfig/AutoModel load `model_type: minicpm` with these classes (idempotent)."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(MODEL_TYPE, MiniCPMConfig, exist_ok=True)
    AutoModel.register(MiniCPMConfig, MiniCPMModel, exist_ok=True)
