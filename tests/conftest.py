"""Shared fixtures. Append new fixtures below; keep their names prefixed `tiny_`.

Nothing here downloads: models are random-initialised and tokenizers are built from the `tokenizers` library.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# ---- tiny decoder LM, tokenizer and LoRA adapter (export / encode / serve tests) -------------------------

TINY_WORDS = (
    "a an the man woman child dog cat is are was playing plays eating eats guitar piano food ball on in at "
    "park street house . , ! ? quick brown fox jumps over lazy hello world x y z one two three red blue green "
    "sits runs walks reads book table chair big small old new good bad test text sentence embedding model"
).split()
# Chat template on purpose: an export must strip it, or sentence-transformers would wrap texts in it.
TINY_CHAT_TEMPLATE = "{% for m in messages %}<bos>{{ m['content'] }}<eos>{% endfor %}"


def build_tiny_tokenizer():
    """WordLevel tokenizer that adds BOS (not EOS), like Gemma's and Llama's; pads on the left by default."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + TINY_WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return LlamaModel(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-initialised 2-layer Llama (AutoModel form, no LM head) and its tokenizer, in one HF folder."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter (r=8, attention projections) with non-zero lora_B, so that merging changes the vectors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    path = tmp_path_factory.mktemp("tiny_adapter")
    model = AutoModel.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return [
        "A man is playing a guitar.",
        "A woman is eating food",
        "the quick brown fox jumps over the lazy dog",
        "x",
        "hello world !",
        "A child reads a big old book at the table, in the house .",
        "dog",
        "The cat sits on the red chair and the dog runs in the park with a blue ball .",
        "a unknownword here",
    ]


# ---- tiny random models of the paper's architectures (Gemma, Phi, Llama/MiniCPM-shaped) -----------------

TINY_ARCHITECTURES = ("gemma3", "phi", "llama")


def build_tiny_decoder(kind: str, vocab_size: int, seed: int = 0):
    """A 2-layer random decoder LM without LM head, in the shape of the paper's models."""
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel, PhiConfig, PhiModel

    torch.manual_seed(seed)
    ids = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2, max_position_embeddings=256)
    if kind == "gemma3":
        config = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                  head_dim=16, intermediate_size=128, sliding_window=8, **ids)
        return Gemma3TextModel(config).eval()
    if kind == "phi":
        config = PhiConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, **ids)
        return PhiModel(config).eval()
    return build_tiny_llama(vocab_size, seed)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session", params=TINY_ARCHITECTURES)
def tiny_arch_dir(request, tmp_path_factory) -> Path:
    """An HF folder per architecture (Gemma3, Phi, Llama), random weights, the tiny tokenizer."""
    path = tmp_path_factory.mktemp(f"tiny_{request.param}")
    tokenizer = build_tiny_tokenizer()
    build_tiny_decoder(request.param, len(tokenizer)).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data dir in the shared layout (sts/<task>/test.tsv, stsbenchmark dev, nli/triplets) from tiny words."""
    import csv
    import random

    from embedtune.data.sts import ALL_TASKS

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("tiny_data")

    def sentence() -> str:
        return " ".join(rng.choice(TINY_WORDS[:60]) for _ in range(rng.randint(2, 9)))

    def write(path: Path, header: list[str], rows: list[list]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(rows)

    for task in ALL_TASKS:
        write(root / "sts" / task / "test.tsv", ["sentence1", "sentence2", "score"],
              [[sentence(), sentence(), round(rng.uniform(0, 5), 2)] for _ in range(12)])
    write(root / "sts" / "stsbenchmark" / "dev.tsv", ["sentence1", "sentence2", "score"],
          [[sentence(), sentence(), round(rng.uniform(0, 5), 2)] for _ in range(12)])
    write(root / "nli" / "triplets" / "tiny.tsv", ["sent0", "sent1", "hard_neg"],
          [[sentence(), sentence(), sentence()] for _ in range(64)])
    return root


# ---- backends: the backend-dependent paths run once per device this machine has --------------------------------

def available_devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=available_devices())
def tiny_device(request) -> str:
    """Each device a Backend can be built for here (CPU always; CUDA where a GPU is present)."""
    return request.param
