"""LoRA adapters through peft, with target modules found per architecture."""
from __future__ import annotations

import re

import torch
from torch import nn

from embedtune.config import LoraConfig
from embedtune.errors import ConfigError

_LAYER_PREFIX = re.compile(r"^.*?\.\d+\.")
_QV_LEAVES = {"q_proj", "v_proj", "query", "value", "q", "v", "wq", "wv"}


def attention_linears(model: nn.Module) -> list[str]:
    """Per-layer names (e.g. 'self_attn.q_proj', 'attention.self.query') of the Linear layers in attention blocks."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.search(r"attn|attention", name):
            names.add(_LAYER_PREFIX.sub("", name))
    return sorted(names)


def lora_targets(model: nn.Module, targets: str) -> list[str] | str:
    """attention: every attention projection (q, k, v, o); qv: the paper repo's q_proj, v_proj; all-linear; or a list."""
    if targets == "all-linear":
        return "all-linear"
    if targets in ("attention", "qv"):
        found = attention_linears(model)
        if targets == "qv":
            found = [n for n in found if n.rsplit(".", 1)[-1] in _QV_LEAVES]
        if not found:
            raise ConfigError(f"found no attention projections for LoRA in {type(model).__name__}; "
                              "name them with --lora-targets a,b,c")
        return found
    return [t.strip() for t in targets.split(",") if t.strip()]


def attach_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap the base model with trainable LoRA adapters; every other weight is frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=lora_targets(model, config.targets), bias="none")
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise ConfigError(f"LoRA targets do not match the model: {err}") from None


def trainable_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
