"""GPU check: embedtune vs sentence-transformers on a paper-size random model, on one CUDA device, in one command.

Per architecture (`--arch`: gemma2b, the Gemma-2B shape, by default; minicpm2b, MiniCPM-2B's shape as a Llama;
tiny, a few-MB Gemma for the CPU smoke test) the model is random-initialised from a config alone (bf16, seeded,
built on the device; vocabulary = the carried tokenizer's), saved with the tokenizer to a temporary folder and
loaded by path by both sides, each stage in its own subprocess:

- build: the model, then embedtune's correctness checks on the device: `Embedder.packable`, and packed
  (`embed_tokens(ids, packing=True)`) vs padded (`packing=False`: `embed_batch` over padding-aware chunks)
  embeddings of the STS sentences, cosine per text in bf16 and fp32 (pass: packable and bf16 min > 0.99);
  the bf16 matmul peak;
- training, N steps at batch 60 on the same triplets (the first 2 not timed): ours through embedtune's trainer,
  the peer through sentence-transformers' Trainer + MultipleNegativesRankingLoss(scale 20) + peft LoRA on
  q, k, v, o (compare_peer's workers). Per side: s/step, real tokens/s (embedtune's tokens incl. the EOS, the
  same count for both), peak GPU memory (torch.cuda.max_memory_allocated of its own process; "GB" = GiB as in
  compare_peer), last and mean loss; ratios ours/peer for speed and memory;
- evaluation speed: the unique sentences of the STS sets through embedtune's STSEvaluator vs the peer's
  `encode` (batch 32, each set's sentences1 then sentences2, as MTEB drives it), after a short warm-up each;
  both STS averages (same random model: they should agree) and the ratio.

Prints the GPU and library versions and a summary; writes every result to `$OUT/gpu_check.json` (or --json)
after each stage, so that a run cut short keeps what it measured. Nothing needs the network: `--wheels DIR`
installs the wheels in DIR whose distributions are missing (e.g. datasets) into a temporary site folder.

    # here, once: fill the git-ignored .gpu/ (tokenizer, triplets, STS test sets, wheels)
    .venv/bin/python -m benchmarks.gpu_check --prepare .gpu --data-dir ../shared/data
    # on the GPU machine (carry .gpu; embedtune is not installed there, so src/ goes on the path): about
    # 3-4 minutes on an H200 for gemma2b
    PYTHONPATH=src python3 -m benchmarks.gpu_check --wheels .gpu/whl --data-dir .gpu/data --tokenizer .gpu/tokenizer
    # the same code path on CPU, tiny (a random 2-layer Gemma, a word-level tokenizer built from the data, three
    # steps at batch 8, STS17 only): well under a minute, nothing carried
    .venv/bin/python -m benchmarks.gpu_check --tiny --data-dir ../shared/data
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

ROOT = harness.ROOT
HERE, TRAINERS = "gpu_check", "compare_peer"  # the benchmarks whose workers run the stages (compare_peer: training)
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {  # transformers config family, shape
    "gemma2b": ("gemma", {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                          "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                          "hidden_act": "gelu_pytorch_tanh"}),
    "minicpm2b": ("llama", {"hidden_size": 2304, "intermediate_size": 5760, "num_hidden_layers": 40,
                            "num_attention_heads": 36, "num_key_value_heads": 36}),
    "tiny": ("gemma", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "head_dim": 16, "hidden_act": "gelu_pytorch_tanh"}),
}
TINY_TOKENIZER = "tiny"  # --tokenizer tiny: a word-level tokenizer built from the run's own texts (no files)
TINY_VOCAB = 4096
# --tiny: the whole path on a CPU in well under a minute (options given explicitly still win)
TINY_DEFAULTS = {"arch": ["tiny"], "device": "cpu", "tokenizer": TINY_TOKENIZER, "steps": 3, "batch": 8,
                 "warmup": 1, "peak_seconds": 0.2, "tasks": ["sts17"]}
DEFAULTS = {"arch": ["gemma2b"], "device": "cuda", "tokenizer": ".gpu/tokenizer", "steps": 12, "batch": 60,
            "warmup": 2, "peak_seconds": 2.0, "tasks": None}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Missing on the GPU machine: datasets (sentence-transformers' Trainer needs it) and what it imports. One version
# each, pinned for Python 3.12 with huggingface_hub 1.x (transformers 5.17 requires hub < 2).
WHEELS = ("datasets==5.0.1", "dill==0.4.1", "multiprocess==0.70.19", "xxhash==4.1.0", "requests==2.34.2",
          "urllib3==2.8.0", "idna==3.20", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3")
WHEEL_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                  "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
TRIPLETS_FILE = "nli/triplets/gpu-check.tsv"  # under the prepared data dir, where embedtune looks for triplets
WARMUP_TEXTS = 64  # encoded before each timed evaluation: CUDA context, cuBLAS handles, first kernels
CHECK_TEXTS = 512  # STS sentences in the packed-vs-padded check
COSINE_FLOOR = 0.99
PEER_EVAL_BATCH = 32  # as compare_peer / eval_speed


# ---- preparing the carried folder (here, with the network and ../shared/data) -----------------------------

def prepare(target: Path, data_dir: str, tokenizer_from: str | None, rows: int, tasks: list[str] | None) -> None:
    """Fill `target` with what the GPU machine lacks: tokenizer, triplets, STS test sets, wheels."""
    from embedtune.data.sts import resolve_data_dir, resolve_tasks
    from embedtune.models.loading import resolve_model

    source = Path(tokenizer_from or resolve_model("gemma3-270m").location)
    (target / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, target / "tokenizer" / name)
    data = target / "data"
    (data / TRIPLETS_FILE).parent.mkdir(parents=True, exist_ok=True)
    harness.write_triplets(data / TRIPLETS_FILE, harness.shared_triplets(data_dir, rows))
    root = resolve_data_dir(data_dir)
    for task in resolve_tasks(tasks):
        path = task.local_path(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(task.local_path(root), path)
    download_wheels(target / "whl")
    exclude_from_git(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target}: {size / 1e6:.1f} MB")


def download_wheels(folder: Path) -> None:
    for requirement in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        *WHEEL_PLATFORM, "-d", str(folder), requirement], check=True)


def exclude_from_git(target: Path) -> None:
    """List `target` in .git/info/exclude (this clone only, not .gitignore) when it lies inside the repository."""
    try:
        relative = target.resolve().relative_to(ROOT)
    except ValueError:
        return
    if not (ROOT / ".git").is_dir():
        return
    exclude = ROOT / ".git" / "info" / "exclude"
    entry = f"/{relative.as_posix()}/"
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if entry not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("".join(line + "\n" for line in lines + [entry]))


# ---- process set-up on the GPU machine ---------------------------------------------------------------------

def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def install_missing_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack the wheels whose distribution is not installed into `site` (a wheel is a zip laid out for
    site-packages; of their .data folders only dill's scripts, which nothing needs); returns their names.
    Installed distributions are left alone, whatever their version."""
    missing = [w for w in sorted(wheels.glob("*.whl")) if not is_installed(w.name.split("-")[0])]
    for wheel in missing:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return [w.name.split("-")[0] for w in missing]


def set_up_process(args: argparse.Namespace) -> list[str]:
    """Wheels and offline mode for every worker; one visible GPU. The wheels' folder reaches the workers
    through PYTHONPATH (this process imports none of them)."""
    installed = install_missing_wheels(Path(args.wheels), Path(args.site)) if args.wheels else []
    if installed:
        os.environ["PYTHONPATH"] = os.pathsep.join([args.site] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    if args.device.startswith("cuda") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        # The HF Trainer would wrap the peer in DataParallel over every visible GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device.partition(":")[2] or "0"
        args.device = "cuda"
    return installed


def versions(extra_paths: Sequence[str] = ()) -> dict[str, str | None]:
    """Versions as the workers see them: `extra_paths` (the unpacked wheels) first, then this process's path."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    search = [*extra_paths, *sys.path]
    for name in ("torch", "transformers", "peft", "sentence-transformers", "accelerate", "datasets",
                 "huggingface-hub", "pyarrow"):
        found[name] = next((d.version for d in importlib.metadata.distributions(name=name, path=search)), None)
    return found


# ---- workers (one subprocess each) -------------------------------------------------------------------------

def model_config(arch: str, tokenizer):
    from transformers import GemmaConfig, LlamaConfig

    family, shape = ARCHS[arch]
    config_class = {"gemma": GemmaConfig, "llama": LlamaConfig}[family]
    return config_class(**shape, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch_cuda": torch.version.cuda}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 1024 ** 3,
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    return info


def sts_sets(data_dir: str, tasks: list[str] | None) -> list:
    return harness.sts_sets(data_dir, tasks)


def unique_sentences(datasets: list) -> list[str]:
    from embedtune.evaluation.sts import STSEvaluator

    return STSEvaluator(datasets, show_progress=False).unique_sentences


def agreement(embedder, ids: list[list[int]]) -> dict[str, float]:
    """Cosine per text between packed and padded embeddings (the training entry point, both ways)."""
    import torch

    with torch.no_grad():
        cosine = (embedder.embed_tokens(ids, packing=False) * embedder.embed_tokens(ids, packing=True)).sum(-1)
    return {"min": float(cosine.min()), "mean": float(cosine.mean())}


def packing_check(embedder, texts: list[str]) -> dict[str, Any]:
    """Packing must be on for the device and give the padded vectors (bf16: rounding only; fp32: ~exact)."""
    import torch

    ids = embedder.tokenize(texts)
    result: dict[str, Any] = {"packable": embedder.packable, "texts": len(ids)}
    if result["packable"]:
        result["bf16"] = agreement(embedder, ids)
        # The same weights in fp32, without autocast: the Embedder has no call for a new working dtype, so its
        # backend is replaced (every forward reads embedder.backend).
        embedder.model.float()
        embedder.backend = dataclasses.replace(embedder.backend, dtype=torch.float32)
        embedder.dtype = torch.float32
        result["fp32"] = agreement(embedder, ids)
    result["passed"] = result["packable"] and result["bf16"]["min"] > COSINE_FLOOR
    return result


def tiny_tokenizer(texts: Sequence[str], size: int = TINY_VOCAB):
    """A lower-cased word-level tokenizer over the commonest words of `texts`, adding BOS (not EOS) like
    Gemma's: for the tiny CPU run, where no tokenizer files need to be carried."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    counts = Counter(word for text in texts for word, _ in split.pre_tokenize_str(text.lower()))
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [w for w, _ in counts.most_common(size - len(specials))])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = split
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    if args.tokenizer != TINY_TOKENIZER:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    texts = [t for row in harness.read_triplet_rows(args.triplets) for t in row]
    for data in sts_sets(args.data_dir, args.tasks):
        texts += data.sentences1 + data.sentences2
    return tiny_tokenizer(texts)


def worker_build(args: argparse.Namespace) -> dict[str, Any]:
    """Random model on the device, saved by path; the checks that need it loaded by embedtune."""
    import torch
    from transformers import AutoModel

    from embedtune.models.embedder import Embedder
    from embedtune.training.metrics import non_embedding_parameters

    tokenizer = load_tokenizer(args)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.device(args.device):  # initialised where it runs: seconds for 2.5B parameters, not minutes
        model = AutoModel.from_config(model_config(args.arch[0], tokenizer), dtype=torch.bfloat16)
    built = time.perf_counter()
    model.save_pretrained(args.model)
    tokenizer.save_pretrained(args.model)
    info: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                            "init_s": built - start, "save_s": time.perf_counter() - built, **device_info(args.device)}
    del model
    embedder = Embedder(args.model, precision="bf16", device=args.device)
    info["non_embedding_parameters"] = non_embedding_parameters(embedder.model)
    rows = harness.read_triplet_rows(args.triplets)
    info["tokens_per_triplet"] = sum(map(len, embedder.tokenize([t for row in rows for t in row]))) / len(rows)
    info["packing"] = packing_check(embedder, unique_sentences(sts_sets(args.data_dir, args.tasks))[:CHECK_TEXTS])
    del embedder
    info["matmul_peak_gflops"] = harness.matmul_peak_gflops(args.peak_seconds, args.device)
    return info


def worker_eval_ours(args: argparse.Namespace) -> dict[str, Any]:
    from embedtune.evaluation.sts import STSEvaluator
    from embedtune.models.embedder import Embedder

    evaluator = STSEvaluator(sts_sets(args.data_dir, args.tasks), show_progress=False)
    embedder = Embedder(args.model, precision="bf16", device=args.device)
    embedder.encode(evaluator.unique_sentences[:WARMUP_TEXTS])
    result = harness.timed_evaluation(evaluator, embedder)
    tokens = sum(map(len, embedder.tokenize(evaluator.unique_sentences)))
    return {"seconds": result["seconds"], "average": result["average"], "sentences": result["sentences"],
            "unique_sentences": result["unique_sentences"], "tokens": tokens, **harness.peak_gpu_memory()}


def worker_eval_peer(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.eval_speed import encode_peer, peer_model

    datasets = sts_sets(args.data_dir, args.tasks)
    model = peer_model(args.model, args.device)
    model.encode([s + model.tokenizer.eos_token for s in unique_sentences(datasets)[:WARMUP_TEXTS]],
                 batch_size=PEER_EVAL_BATCH)
    scores, seconds = encode_peer(model, datasets, PEER_EVAL_BATCH)
    return {"seconds": seconds, "average": sum(scores.values()) / len(scores), **harness.peak_gpu_memory()}


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "build": worker_build, "eval_ours": worker_eval_ours, "eval_peer": worker_eval_peer}


# ---- the run -----------------------------------------------------------------------------------------------

def stage(kind: str, module: str, **options) -> dict[str, Any]:
    """One worker of benchmark `module` in its own process; a failure is recorded (its traceback is in the log)
    and the run goes on."""
    start = time.perf_counter()
    try:
        result = harness.spawn(module, kind, **options)
    except subprocess.CalledProcessError as err:
        result = {"error": f"{kind} worker exited with status {err.returncode} (traceback above)"}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def check_arch(arch: str, args: argparse.Namespace, work: Path, triplets: Path,
               save: Callable[[], None]) -> dict[str, Any]:
    """Build, train both sides, evaluate both sides; `save` is called after every stage."""
    folder = work / arch
    common = {"model": folder, "device": args.device}
    data = {"data_dir": args.data_dir, "tasks": args.tasks}
    train = {"batch": args.batch, "steps": args.steps, "triplets": triplets, "warmup": args.warmup}
    stages = [
        ("build", HERE, {"arch": arch, "tokenizer": args.tokenizer, "triplets": triplets, "seed": args.seed,
                         "peak_seconds": args.peak_seconds, **data}),
        ("ours", TRAINERS, {**train, "out_dir": work / f"{arch}-ours"}),
        ("peer", TRAINERS, {**train, "out_dir": work / f"{arch}-peer"}),
        ("eval_ours", HERE, data),
        ("eval_peer", HERE, data),
    ]
    result: dict[str, Any] = {}
    for kind, module, options in stages:
        result[kind] = stage(kind, module, **common, **options)
        save()
        if "error" in result["build"]:
            break
    shutil.rmtree(folder, ignore_errors=True)
    return result


def summarise(arch: str, result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Derived figures (tokens/s, GFLOP/s, ratios) and the printed report for one architecture."""
    build = result["build"]
    if "error" in build:
        print(f"\n{arch}: build failed: {build['error']}")
        return {}
    peak = build["matmul_peak_gflops"]
    gpu = f" ({build['gpu']}, {build['gpu_memory_gb']:.0f} GB, CUDA {build['torch_cuda']})" if "gpu" in build else ""
    print(f"\n{arch}: {build['parameters'] / 1e9:.2f}B parameters ({build['non_embedding_parameters'] / 1e9:.2f}B "
          f"non-embedding), {build['tokens_per_triplet']:.1f} real tokens per triplet; device {build['device']}{gpu}; "
          f"bf16 matmul peak {peak / 1e3:.1f} TFLOP/s; init {build['init_s']:.1f} s, save {build['save_s']:.1f} s")
    packing = build["packing"]
    print(f"packing: packable {packing['packable']}; packed vs padded cosine over {packing['texts']} texts: "
          + ", ".join(f"{p} min {packing[p]['min']:.5f} mean {packing[p]['mean']:.5f}"
                      for p in ("bf16", "fp32") if p in packing)
          + f" -> {'PASS' if packing['passed'] else 'FAIL'} (bf16 min > {COSINE_FLOOR})")
    summary: dict[str, Any] = {"packing_passed": packing["passed"]}
    summary.update(training_table(result, build, args))
    summary.update(evaluation_lines(result))
    print("stage wall times: " + ", ".join(f"{name} {r['wall_s']:.0f} s" for name, r in result.items()
                                           if isinstance(r, dict) and "wall_s" in r))
    return summary


def training_table(result: dict[str, Any], build: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    print(f"training: batch {args.batch}, {args.steps} steps ({args.steps - args.warmup} timed)")
    print(f"{'side':<6}{'s/step':>9}{'real tok/s':>12}{'peak GPU GB':>13}{'peak RSS GB':>13}{'last loss':>11}"
          f"{'mean loss':>11}{'% of peak':>11}")
    for side in ("ours", "peer"):
        run = result.get(side, {})
        if "error" in run or not run:
            print(f"{side:<6}{run.get('error', 'not run')}")
            continue
        run["tokens_per_s"] = build["tokens_per_triplet"] * args.batch / run["seconds_per_step"]
        run["gflops"] = 4 * build["non_embedding_parameters"] * run["tokens_per_s"] / 1e9
        losses = run["losses"]
        print(f"{side:<6}{run['seconds_per_step']:>9.3f}{run['tokens_per_s']:>12.0f}"
              f"{run.get('peak_gpu_gb', float('nan')):>13.2f}{run['peak_rss_gb']:>13.2f}{losses[-1]:>11.4f}"
              f"{sum(losses) / len(losses):>11.4f}{100 * run['gflops'] / build['matmul_peak_gflops']:>10.1f}%")
    ours, peer = result.get("ours", {}), result.get("peer", {})
    if "tokens_per_s" not in ours or "tokens_per_s" not in peer:
        return {}
    memory = "peak_gpu_gb" if "peak_gpu_gb" in ours and "peak_gpu_gb" in peer else "peak_rss_gb"
    ratios = {"train_speed_ratio": ours["tokens_per_s"] / peer["tokens_per_s"],
              "train_memory_ratio": ours[memory] / peer[memory], "train_memory_measure": memory}
    print(f"ratio train_tokens_per_s (ours/peer) {ratios['train_speed_ratio']:.2f}")
    print(f"ratio train_{memory} (ours/peer) {ratios['train_memory_ratio']:.2f}")
    return ratios


def evaluation_lines(result: dict[str, Any]) -> dict[str, Any]:
    ours, peer = result.get("eval_ours", {}), result.get("eval_peer", {})
    for side, run in (("ours", ours), ("peer", peer)):
        if "error" in run or not run:
            print(f"evaluation {side}: {run.get('error', 'not run')}")
    if "seconds" not in ours or "seconds" not in peer:
        return {}
    ratio = peer["seconds"] / ours["seconds"]
    print(f"evaluation: {ours['unique_sentences']} unique of {ours['sentences']} sentences, {ours['tokens']} tokens; "
          f"ours {ours['seconds']:.2f} s, peer {peer['seconds']:.2f} s; STS average ours {ours['average']:.2f}, "
          f"peer {peer['average']:.2f}")
    print(f"ratio eval_speed (peer s / ours s) {ratio:.2f}")
    return {"eval_speed_ratio": ratio, "eval_average_gap": abs(ours["average"] - peer["average"])}


def json_path(args: argparse.Namespace) -> Path | None:
    if args.json:
        return Path(args.json)
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    installed = set_up_process(args)
    report: dict[str, Any] = {"versions": versions([args.site] if installed else []), "installed_wheels": installed,
                              "options": {k: v for k, v in vars(args).items()
                                          if k not in ("worker", "result", "prepare")}, "archs": {}}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    if installed:
        print(f"installed from {args.wheels}: {', '.join(installed)}")
    out = json_path(args)

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - started, 1)
        if out is not None:
            harness.write_json(out, report)

    work = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=args.work_dir))
    try:
        triplets = work / "triplets.tsv"
        harness.write_triplets(triplets, harness.shared_triplets(args.data_dir, args.batch * args.steps))
        for arch in args.arch:
            report["archs"][arch] = check_arch(arch, args, work, triplets, save)
        for arch, result in report["archs"].items():
            result["summary"] = summarise(arch, result, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        save()
    print(f"\nwall time {report['wall_s']:.0f} s" + (f"; results in {out}" if out else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=ARCHS, help="model shapes (default: gemma2b)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--tiny", action="store_true",
                        help="the whole path small, on CPU: " + " ".join(
                            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                            for k, v in TINY_DEFAULTS.items()) + " (options given win)")
    parser.add_argument("--steps", type=int, help="training steps per side (default: 12)")
    parser.add_argument("--warmup", type=int, help="first steps not timed (default: 2)")
    parser.add_argument("--batch", type=int, help="triplets per step (default: 60)")
    parser.add_argument("--data-dir", help="sts/<task>/test.tsv and nli/triplets/ (default: .gpu/data; with "
                        "--prepare, the source: ../shared/data)")
    parser.add_argument("--tasks", nargs="+", help="STS sets to evaluate (default: all nine)")
    parser.add_argument("--tokenizer", help=f"tokenizer folder (default: .gpu/tokenizer), or '{TINY_TOKENIZER}': "
                        "a word-level one built from the run's texts")
    parser.add_argument("--wheels", help="install the wheels here whose distributions are missing")
    parser.add_argument("--site", default=os.path.join(tempfile.gettempdir(), "gpu_check_site"),
                        help="where --wheels unpacks them")
    parser.add_argument("--work-dir", help="parent of the temporary model folders (default: the system's)")
    parser.add_argument("--json", help="results file (default: $OUT/gpu_check.json when OUT is set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-seconds", type=float, help="time spent measuring the matmul peak (default: 2)")
    parser.add_argument("--prepare", metavar="DIR", help="fill DIR for the GPU machine (here, not there)")
    parser.add_argument("--rows", type=int, default=1200, help="--prepare: triplets to carry")
    # worker-only options
    harness.add_worker_options(parser, WORKERS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--triplets", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for key, value in (TINY_DEFAULTS if args.tiny else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.data_dir = args.data_dir or ("../shared/data" if args.prepare else ".gpu/data")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if harness.run_worker(args, WORKERS):
        return
    if args.prepare:
        prepare(Path(args.prepare), args.data_dir, None, args.rows, args.tasks)
    else:
        run(args)


if __name__ == "__main__":
    main()
