"""LoRA adapters through peft, with target modules found per architecture."""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from embedtune.config import LoraConfig
from embedtune.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# The files of a saved peft adapter (the weights in safetensors; older adapters may hold adapter_model.bin).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

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
    """attention: every attention projection (q, k, v, o); qv: the paper repo's q_proj, v_proj; all-linear;
    or a comma-separated list."""
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


def attach_lora(model: nn.Module, config: LoraConfig, adapter: str | None = None) -> nn.Module:
    """Wrap the base model with trainable LoRA adapters; every other weight is frozen. With `adapter`, training
    continues from that saved adapter (its own rank and targets; `config` then only gives the dropout)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if adapter:
        log.info("training continues from the adapter in %s (its rank and targets)", adapter)
        return load_adapter(model, adapter, trainable=True)

    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=lora_targets(model, config.targets), bias="none")
    try:
        with peft_probes_unwarned():
            return get_peft_model(model, peft_config)
    except ValueError as err:
        raise ConfigError(f"LoRA targets do not match the model: {err}") from None


def require_adapter(adapter: str) -> None:
    """A saved adapter is a folder with adapter_config.json; anything else fails in one line, before loading."""
    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise ModelError(f"adapter not found (no {ADAPTER_CONFIG}): {adapter}")


def load_adapter(model: nn.Module, adapter: str, *, trainable: bool) -> nn.Module:
    """The saved adapter in `adapter` on `model` (peft's PeftModel), its weights trainable or frozen."""
    from peft import PeftModel

    require_adapter(adapter)
    with peft_probes_unwarned():
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)


@contextmanager
def peft_probes_unwarned() -> Iterator[None]:
    """peft reads `model.is_gradient_checkpointing` when it wraps a model, and transformers 5 deprecates that
    property with a FutureWarning: peft's call, not the user's, so it is not printed at every run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def trainable_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class KeepMask(torch.autograd.Function):
    """x * keep * scale that saves the boolean mask for backward (1 byte an element, not a bf16 copy of it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class SharedMaskDropout(nn.Module):
    """Dropout that draws its mask 4x cheaper and shares it between LoRA branches fed the same tensor.

    On CPU, torch's dropout (bernoulli_) was ~16% of a training step: it draws one random number per element,
    three times over for q, k and v, which all read the same normed hidden state. Here one 64-bit draw gives
    four 16-bit uniforms (keep probability resolved to 1/65536), and q/k/v reuse one dropped copy of their
    common input. Each branch still sees inputs dropped with probability p; the branches' masks are correlated.
    """

    def __init__(self, p: float, shared: dict):
        super().__init__()
        self.p = p
        self.shared = shared
        self.threshold = -32768 + round(p * 65536)  # int16 values below this are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.shared.get("input") is not x:
            n = x.numel()
            bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
            keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
            # The dropped input itself is shared too: one multiply and one saved tensor instead of three.
            self.shared["input"], self.shared["output"] = x, KeepMask.apply(x, keep, 1 / (1 - self.p))
        return self.shared["output"]


def speed_up_lora(model: nn.Module, under_autocast: bool, shared_dropout: bool = True) -> None:
    """Cheaper LoRA dropout where the backend asks for it (`shared_dropout`); under autocast, keep bf16 inputs
    bf16 (peft would upcast them to the adapters' fp32, and autocast would cast them straight back)."""
    shared: dict = {}
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, layer in dropouts.items():
                if shared_dropout and isinstance(layer, nn.Dropout):
                    dropouts[name] = SharedMaskDropout(layer.p, shared)
            if under_autocast:
                module.cast_input_dtype_enabled = False


def prepare_for_training(embedder, config: LoraConfig, adapter: str | None = None,
                         gradient_checkpointing: bool = False) -> None:
    """LoRA on the base model, the backend's dropout, train mode: the model every step sees (the Embedder has
    already made its backend's load-time choices, such as fused Gemma ops)."""
    embedder.model = attach_lora(embedder.model, config, adapter)
    speed_up_lora(embedder.model, under_autocast=embedder.dtype != torch.float32,
                  shared_dropout=embedder.backend.shared_dropout)
    if gradient_checkpointing:
        # With frozen inputs, checkpointed blocks would see no tensor that needs grad and LoRA would get none.
        embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        embedder.model.enable_input_require_grads()
    embedder.model.train()
