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


def build_tiny_adapter(model_dir: Path, out: Path, seed: int = 1, r: int = 8, alpha: int = 32,
                       targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"), **extra) -> Path:
    """A LoRA adapter on the model in `model_dir` with random A and non-zero random B (seeded), saved in `out`:
    merging it changes the vectors. `extra`: more peft LoraConfig settings (use_rslora, use_dora...)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)  # peft's random A
    peft_model = get_peft_model(AutoModel.from_pretrained(model_dir),
                                LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **extra))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter (r=8, attention projections) with non-zero lora_B, so that merging changes the vectors."""
    return build_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_adapter"))


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


# ---- more architectures and real tokenizers' special-token behaviours (tests/models/test_architectures.py) -------

# style: (specials in id order, bos, eos, pad, template of a single text or None for nothing added)
TOKENIZER_STYLES = {
    # Phi-2 (CodeGen/GPT-2 BPE): one <|endoftext|> is BOS, EOS and UNK; no pad token; nothing added.
    "phi2": (["<|endoftext|>", "<unk>"], "<|endoftext|>", "<|endoftext|>", None, None),
    # The same vocabulary with the BOS (= EOS) prepended, as some Phi-2 derivatives' tokenizers do.
    "phi2_bos": (["<|endoftext|>", "<unk>"], "<|endoftext|>", "<|endoftext|>", None, "<|endoftext|> $A"),
    # Gemma: <bos> added, <eos> not; a <pad> of its own.
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>", "<eos>", "<pad>", "<bos> $A"),
    # Llama-3(.1) instruct: <|begin_of_text|> added; EOS <|eot_id|>; pad, where set, a reserved token.
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<unk>"],
               "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|> $A"),
    # Qwen2 instruct: no BOS at all; EOS <|im_end|>; pad <|endoftext|>.
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"], None, "<|im_end|>", "<|endoftext|>", None),
}


def build_tokenizer_like(style: str):
    """A WordLevel tokenizer over TINY_WORDS whose special tokens behave like `style`'s (TOKENIZER_STYLES)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad, template = TOKENIZER_STYLES[style]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_WORDS))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="<unk>", padding_side="left")


MORE_TINY_ARCHITECTURES = ("gemma", "gemma2", "qwen2", "mistral", "minicpm")


def build_tiny_minicpm(vocab_size: int, seed: int = 0, num_key_value_heads: int = 2):
    """A 2-layer random MiniCPM (models/minicpm.py) with both of its scalings away from 1."""
    import torch

    from embedtune.models.minicpm import MiniCPMConfig, MiniCPMModel

    torch.manual_seed(seed)
    config = MiniCPMConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=num_key_value_heads,
        intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, scale_emb=12, scale_depth=1.4, dim_model_base=16, initializer_range=0.1, rms_norm_eps=1e-5,
    )
    return MiniCPMModel(config).eval()


def build_tiny_architecture(kind: str, vocab_size: int, seed: int = 0, **overrides):
    """build_tiny_decoder's architectures plus Gemma-1, Gemma-2 (softcapping on, sliding window 3 tokens),
    Qwen2, Mistral and MiniCPM; `overrides` change Gemma-2's config."""
    import torch
    from transformers import Gemma2Config, Gemma2Model, GemmaConfig, GemmaModel, Qwen2Config, Qwen2Model

    if kind == "minicpm":
        return build_tiny_minicpm(vocab_size, seed)
    if kind not in MORE_TINY_ARCHITECTURES:
        return build_tiny_decoder(kind, vocab_size, seed)
    torch.manual_seed(seed)
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                 max_position_embeddings=256)
    if kind == "gemma":
        return GemmaModel(GemmaConfig(head_dim=16, **shape)).eval()
    if kind == "gemma2":
        # Softcap 1.0 and random weights at std 0.2: the logits reach the tanh's bend, so softcapping shows.
        settings = dict(head_dim=16, sliding_window=3, attn_logit_softcapping=1.0, query_pre_attn_scalar=16,
                        initializer_range=0.2) | overrides
        return Gemma2Model(Gemma2Config(**settings, **shape)).eval()
    if kind == "mistral":
        from transformers import MistralConfig, MistralModel

        return MistralModel(MistralConfig(sliding_window=None, **shape)).eval()
    return Qwen2Model(Qwen2Config(**shape)).eval()


@pytest.fixture(scope="session")
def tiny_architecture_dir(tmp_path_factory):
    """Factory: kind -> an HF folder of build_tiny_architecture(kind) with the tiny tokenizer (one per kind)."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            path = tmp_path_factory.mktemp(f"tiny_arch_{kind}")
            tokenizer = build_tiny_tokenizer()
            build_tiny_architecture(kind, len(tokenizer)).save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
            made[kind] = path
        return made[kind]

    return make


def lora_step(embedder, texts: list[str], lr: float = 1e-2) -> tuple[float, float]:
    """LoRA (r=4, no dropout) on the embedder's model, then one AdamW step of InfoNCE between each text and
    itself shifted by one; returns the loss before and after the step (same batch)."""
    import torch

    from embedtune.config import LoraConfig
    from embedtune.losses.infonce import compute_loss_from_embeddings
    from embedtune.models.lora import prepare_for_training, trainable_parameters

    prepare_for_training(embedder, LoraConfig(r=4, alpha=8, dropout=0.0))
    ids = embedder.tokenize(texts)
    params = trainable_parameters(embedder.model)
    optimizer = torch.optim.AdamW(params, lr=lr)

    def loss() -> torch.Tensor:
        vectors = embedder.embed_tokens(ids)
        return compute_loss_from_embeddings(vectors, vectors.roll(1, 0), None, 0.05)

    with embedder.backend.training_attention(embedder.model):
        before = loss()
        before.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            after = loss()
    return float(before.detach()), float(after)


@pytest.fixture(scope="session")
def tiny_builders():
    """The builders above, for tests (which take fixtures, not imports from conftest)."""
    import types

    return types.SimpleNamespace(
        tokenizer_like=build_tokenizer_like, tokenizer_styles=TOKENIZER_STYLES, architecture=build_tiny_architecture,
        llama=build_tiny_llama, lora_step=lora_step, adapter=build_tiny_adapter)


# ---- other task kinds (pair classification, BEIR retrieval) beside the STS sets --------------------------------

@pytest.fixture(scope="session")
def tiny_tasks_data_dir(tiny_data_dir, tmp_path_factory) -> Path:
    """tiny_data_dir's sts/ and nli/ (linked) plus pairs/tiny-pairs/test.tsv (16 pairs, both labels) and a BEIR
    folder retrieval/tiny-retrieval/ (12 documents, 5 judged queries of 6), all from tiny words."""
    import csv
    import json
    import random

    rng = random.Random(1)
    root = tmp_path_factory.mktemp("tiny_tasks_data")
    for part in ("sts", "nli"):
        (root / part).symlink_to(tiny_data_dir / part, target_is_directory=True)

    def sentence() -> str:
        return " ".join(rng.choice(TINY_WORDS[:60]) for _ in range(rng.randint(2, 9)))

    pairs = root / "pairs" / "tiny-pairs" / "test.tsv"
    pairs.parent.mkdir(parents=True)
    with pairs.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows([sentence(), sentence(), i % 2] for i in range(16))
    beir = root / "retrieval" / "tiny-retrieval"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": sentence() if i % 3 else "", "text": sentence()} for i in range(12)]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": f"q{i}", "text": sentence()} for i in range(6)]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    rows = [(f"q{q}", f"d{d}", rng.choice([0, 1, 2])) for q in range(5) for d in rng.sample(range(12), 3)]
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, d, s in rows), encoding="utf-8")
    return root


# ---- the user's cache of base-model evaluations ----------------------------------------------------------

@pytest.fixture(autouse=True)
def tiny_baseline_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test its own cache of base-model evaluations (`run` and `sweep` reuse one across runs, keyed by the
    model, settings and data), in this process and the ones it starts: a test never finds another test's scores,
    and none lands in the user's cache."""
    folder = tmp_path_factory.mktemp("baseline_cache")
    monkeypatch.setenv("EMBEDTUNE_BASELINE_CACHE", str(folder))
    return folder
