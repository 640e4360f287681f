"""Command line: subcommands; flags -> Config -> library calls, nothing else.

Every flag defaults to 'not given', so that a YAML file passed with --config supplies what flags do not.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedtune.config import (
    BAD_LOSS_POLICIES,
    HARDNESS_MODES,
    LOSSES,
    POOLINGS,
    PRECISIONS,
    QUANTIZATIONS,
    SCHEDULES,
    SELECTIONS,
    Config,
)
from embedtune.errors import EmbedtuneError, TrainingStopped

# flag -> (section, field); the flag's value is coerced and checked by Config like a YAML value.
MODEL_FLAGS = {"model": ("model", "name")} | {name: ("model", name) for name in (
    "adapter", "pooling", "prompt", "max_length", "num_layers", "trust_remote_code", "device", "quantize",
    "allow_pickle")}
DATA_FLAGS = {"data_dir": ("data", "data_dir"), "train_file": ("data", "train_files"),
              "anchor_column": ("data", "anchor_column"), "positive_column": ("data", "positive_column"),
              "negative_column": ("data", "negative_column"), "decontaminate": ("data", "decontaminate"),
              "max_train_samples": ("data", "max_train_samples"), "all_entailed": ("data", "all_entailed")}
EVAL_FLAGS = {"tasks": ("eval", "tasks"), "batch_size": ("eval", "batch_size"), "precision": ("eval", "precision"),
              "output": ("eval", "output"), "query_prompt": ("eval", "query_prompt"),
              "document_prompt": ("eval", "document_prompt")}
TRAIN_FLAGS = {name: ("train", name) for name in (
    "output_dir", "batch_size", "lr", "epochs", "max_steps", "warmup_ratio", "schedule", "weight_decay",
    "max_grad_norm", "temperature", "learnable_temperature", "hard_negatives", "symmetric", "all_directions",
    "hardness", "hardness_mode", "cosent", "gradient_checkpointing", "precision", "seed", "eval_steps", "save_steps",
    "save_total_limit", "resume", "chunk_tokens", "packing", "loss", "mini_batch_tokens", "on_bad_loss",
    "max_bad_steps", "spike_factor", "gather_with_grad")}
TRAIN_FLAGS |= {"lora_r": ("lora", "r"), "lora_alpha": ("lora", "alpha"), "lora_dropout": ("lora", "dropout"),
                "lora_targets": ("lora", "targets"), "eval_batch_size": ("eval", "batch_size"),
                "tasks": ("eval", "tasks")}
RUN_FLAGS = {"time_budget": ("train", "time_budget"), "select": ("train", "select"),
             "cache": ("eval", "cache")}  # `run` only


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, **kwargs)


def _switch(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                        default=argparse.SUPPRESS, help=help)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "model", help="packaged alias (gemma3-270m, smollm2-135m, all-minilm-l6-v2), hub id, HF folder or .gguf")
    _flag(p, "adapter", help="LoRA adapter folder to apply (merged at load)")
    _flag(p, "pooling", choices=POOLINGS,
          help="default: the saved folder's, else eos for decoder LMs and mean for encoders")
    _flag(p, "prompt", help="prompt template, '{}' marks the text (e.g. '{} is:'); default: the saved folder's")
    _flag(p, "max_length", type=int, help="tokens per text (default: the saved folder's, else 512)")
    _flag(p, "num_layers", type=int,
          help="keep the first N decoder layers and pool after them, skipping the compute of the rest "
               "(default: the saved folder's, else all)")
    _flag(p, "device", help="auto (a CUDA GPU when there is one; default) | cpu | cuda | cuda:N")
    _flag(p, "quantize", choices=QUANTIZATIONS, help="int8: dynamic int8 linear layers for CPU inference (fp32)")
    _switch(p, "trust_remote_code", "allow the model's own Python code (MiniCPM-2B loads natively without it)")
    _switch(p, "allow_pickle", "load pickled weights (pytorch_model.bin, .pt) where a folder has no safetensors: "
                               "a pickle can run code, so only for files you trust (default off)")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    _flag(p, "data_dir", help="folder with sts/ and nli/ (default: $EMBEDTUNE_DATA_DIR, else the hub)")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    _add_model_flags(p)
    _add_data_dir(p)
    _flag(p, "config", help="YAML file with model/data/lora/train/eval sections")
    _flag(p, "train_file", nargs="+", help="training files (triplets or NLI pairs); default: DATA_DIR/nli/triplets/*")
    for column in ("anchor_column", "positive_column", "negative_column"):
        _flag(p, column)
    _switch(p, "packing", "pack each batch's texts into rows without padding (causal decoders; default on)")
    _switch(p, "decontaminate", "drop training rows whose sentences occur in the STS sets (default on)")
    _flag(p, "max_train_samples", type=int)
    _switch(p, "all_entailed", "raw NLI pairs: one triplet per entailed hypothesis, not only the first of each "
                               "premise; without --train-file, reads DATA_DIR/nli/pairs/ (default off)")
    _flag(p, "output_dir", required=True)
    for name, kind in (("batch_size", int), ("lr", float), ("epochs", int), ("max_steps", int),
                       ("warmup_ratio", float), ("weight_decay", float), ("max_grad_norm", float),
                       ("temperature", float), ("seed", int), ("eval_steps", int), ("save_steps", int),
                       ("save_total_limit", int), ("chunk_tokens", int), ("mini_batch_tokens", int),
                       ("lora_r", int), ("lora_alpha", int), ("lora_dropout", float), ("eval_batch_size", int)):
        _flag(p, name, type=kind)
    _flag(p, "schedule", choices=SCHEDULES,
          help="learning rate after the linear warm-up: cosine (default) or linear decay to zero, or constant")
    _flag(p, "on_bad_loss", choices=BAD_LOSS_POLICIES,
          help="a NaN/inf loss or gradient (or a spike): stop (default; the last good checkpoint stays) or skip "
               "that step's update")
    _flag(p, "max_bad_steps", type=int, help="--on-bad-loss skip: stop anyway after this many bad steps in a row "
                                             "(default 5)")
    _flag(p, "spike_factor", type=float,
          help="treat a loss above this x the running median of recent losses as bad (default off)")
    _flag(p, "precision", choices=PRECISIONS, help="auto: bf16 where this machine runs it faster (measured)")
    _flag(p, "hardness", type=float,
          help="weight negatives by how hard they are: add this x their cosine (no gradient through it) to their "
               "logits; EmbeddingGemma used 5 on hard negatives (default 0: off)")
    _flag(p, "hardness_mode", choices=HARDNESS_MODES,
          help="negatives --hardness reaches: each anchor's own hard negative (default), the other triplets' "
               "texts (in_batch), or both (all)")
    _flag(p, "cosent", type=float,
          help="add this x CoSENT's ranking loss: every (anchor, positive) cosine of the batch above every (anchor, "
               "hard negative) one, across triplets, as STS ranks pairs (default 0: off)")
    _flag(p, "loss", choices=LOSSES,
          help="cached = GradCache: same loss and gradients, one mini-batch's activations in memory at a time")
    _flag(p, "lora_targets", help="attention (q,k,v,o; default) | qv | all-linear | comma-separated module names")
    _flag(p, "tasks", nargs="+", help="STS tasks for `run` (default: all nine)")
    _switch(p, "learnable_temperature", "learn the InfoNCE temperature")
    _switch(p, "hard_negatives", "use the hard-negative column (default on; off = paper Table 5 ablation)")
    _switch(p, "symmetric", "also train each positive to find its anchor among all anchors, averaging both "
                            "directions (default off)")
    _switch(p, "all_directions", "GTE's loss: one softmax per triplet that also holds the other anchors and, for "
                                 "the positive, every anchor and the other triplets' texts (default off; "
                                 "replaces --symmetric)")
    _switch(p, "gradient_checkpointing", "trade compute for activation memory")
    _switch(p, "resume", "continue from the newest checkpoint in --output-dir")
    _switch(p, "gather_with_grad", "under torchrun: gather other ranks' positives and negatives with gradient, so "
                                   "the gradient equals one process's (default on; off is cheaper, approximate)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "time_budget", help="wall-clock budget, e.g. 20m or 1h30m: steps and dev evaluation are sized to fit")
    _flag(p, "select", choices=SELECTIONS,
          help="adapter to evaluate and report: best by STSBenchmark dev score (default; the final one when no dev "
               "evaluation ran) or final")
    _switch(p, "cache", "reuse the base model's evaluation from the cache, keyed by the model, the evaluation "
                        "settings and the data files' content (default on; --no-cache scores it again)")


LAUNCH_FLAGS = ("--accelerate-config", "--num-processes")  # consumed here, never passed on to the ranks


def _add_launch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerate-config", default=None, metavar="FILE",
                   help="run this command under `accelerate launch --config_file FILE` (configs/accelerate/: ddp, "
                        "fsdp, deepspeed-zero2, deepspeed-zero3); the file is checked first")
    p.add_argument("--num-processes", type=int, default=None, metavar="K",
                   help="with --accelerate-config: ranks to start (default: the file's num_processes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedtune", description=__doc__.splitlines()[0])
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages, and the libraries' info")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score a model on the STS sets")
    _add_model_flags(p)
    _add_data_dir(p)
    _flag(p, "tasks", nargs="+", help="STS sets (default: sts12 sts13 sts14 sts15 sts16 sts17 stsbenchmark biosses "
                                      "sickr), pair-classification and retrieval sets: packaged names or folders under "
                                      "DATA_DIR/pairs/ and DATA_DIR/retrieval/")
    _flag(p, "query_prompt", help="retrieval: prompt template for queries (default: --prompt)")
    _flag(p, "document_prompt", help="retrieval: prompt template for documents (default: --prompt)")
    _flag(p, "batch_size", type=int)
    _flag(p, "precision", choices=PRECISIONS, help="auto: bf16 where this machine runs it faster (measured)")
    _flag(p, "output", help="results JSON (a Markdown table is written beside it)")
    _flag(p, "config", help="YAML config file")

    _add_launch_flags(p)

    p = sub.add_parser("train", help="contrastive LoRA training")
    _add_train_flags(p)
    _add_launch_flags(p)
    p = sub.add_parser("run", help="baseline eval + training + eval + report, in one command")
    _add_train_flags(p)
    _add_launch_flags(p)
    _add_run_flags(p)

    p = sub.add_parser("sweep", help="`run` over a grid of config values, the base model scored once; one report")
    _add_train_flags(p)
    _add_run_flags(p)
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="values of one config field to sweep, e.g. train.lr=5e-3,5e-4 or model.prompt=,'{} is:' "
                        "(repeat for more fields: every combination runs; quote a value that holds a comma)")
    p.add_argument("--zip", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="fields whose values move together: the i-th values of every --zip make one point (e.g. "
                        "--zip train.seed=1,2,42 --zip train.cosent=0,0.3,0.3: three runs), crossed with the --grid")
    p.add_argument("--average-adapters", action="store_true",
                   help="when every run has finished, average their adapters into OUTPUT/averaged/adapter (one "
                        "embedder: the runs must share the model settings and LoRA targets) and score it beside them")
    p.add_argument("--average-scale", type=float, default=1.0, metavar="S",
                   help="multiply the averaged update by S (below 1: toward the base model, WiSE-FT; default 1)")

    p = sub.add_parser("report", help="one self-contained HTML page for run and sweep folders")
    p.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="folders written by `run` or `sweep`")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html for one folder, else ./report.html)")

    p = sub.add_parser("export", help="merge an adapter and write a sentence-transformers folder")
    _add_model_flags(p)
    p.add_argument("--out", required=True)
    p.add_argument("--adapter-only", action="store_true", help="copy the adapter only, no merge")

    p = sub.add_parser("average-adapters", help="one LoRA adapter whose update is the (weighted) mean of several "
                                                "adapters' updates on the same base model (a \"model soup\")")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders (e.g. runs of several seeds)")
    p.add_argument("--out", required=True, help="the averaged adapter's folder (its rank: the sum of theirs)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per adapter (default: equal)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="multiply the averaged update by S: below 1, toward the base model (WiSE-FT); with a scale, "
                        "one adapter is enough (default: 1)")

    p = sub.add_parser("encode", help="embed texts from a file")
    _add_model_flags(p)
    p.add_argument("--input", required=True, help=".txt (one text a line), .jsonl or .csv")
    p.add_argument("--output", required=True, help=".npy or .jsonl")
    p.add_argument("--column", default="text", help="column/field holding the text in .csv/.jsonl")
    p.add_argument("--batch-size", type=int, default=128)

    p = sub.add_parser("serve", help="OpenAI-compatible /v1/embeddings server")
    _add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=64, help="texts per model call (dynamic batching)")
    p.add_argument("--max-items", type=int, default=256, help="most texts in one request")
    p.add_argument("--max-tokens", type=int, default=8192, help="most tokens in one request")
    p.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024, help="largest request body (413 above)")
    p.add_argument("--max-queue", type=int, default=4096, help="most texts waiting for the model (429 above)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a client has to send its request body (408 after)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $EMBEDTUNE_API_KEY; the variable "
                        "keeps the key out of the process list)")
    return parser


def config_from_args(args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> Config:
    config = Config.from_yaml(args.config) if getattr(args, "config", None) else Config()
    given: dict[str, dict[str, Any]] = {}
    for flag, (section, name) in flags.items():
        if flag in vars(args):
            given.setdefault(section, {})[name] = getattr(args, flag)
    config.update(given, "command line")
    return config.validate()


def cmd_eval(args: argparse.Namespace) -> int:
    from embedtune.api import evaluate
    from embedtune.distributed import is_main
    from embedtune.evaluation.report import eval_markdown

    config = config_from_args(args, MODEL_FLAGS | DATA_FLAGS | EVAL_FLAGS)
    result = evaluate(config=config)
    if not is_main():  # under torchrun every rank scored a share; rank 0 reports
        return 0
    print(eval_markdown(result))
    if config.eval.output:
        print(f"wrote {config.eval.output} and {Path(config.eval.output).with_suffix('.md')}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from embedtune.api import train
    from embedtune.distributed import is_main

    final = train(config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS))
    if is_main():
        print(f"final adapter: {final}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from embedtune.api import run
    from embedtune.distributed import is_main

    report = run(config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS | RUN_FLAGS))
    if is_main():
        print(f"report: {report['paths']['report_md']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from embedtune.api import sweep

    summary = sweep(config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS | RUN_FLAGS), args.grid,
                    zipped=args.zip, average_adapters=args.average_adapters, average_scale=args.average_scale)
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items() if n)
    averaged = summary["averaged"]
    if averaged and averaged["status"] == "done":
        counts += f"; averaged adapters: {averaged['average']:.2f}"
    elif averaged:
        counts += f"; averaged adapters: {averaged['status']}"
    print(f"sweep: {counts}; best: {summary['best']}; report: {summary['paths']['report.html']}")
    return 1 if summary["counts"]["failed"] or (averaged and averaged["status"] == "failed") else 0


def cmd_report(args: argparse.Namespace) -> int:
    from embedtune.api import report

    print(f"report: {report(args.dirs, args.out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from embedtune.export import export_model

    config = config_from_args(args, MODEL_FLAGS)
    out = export_model(config.model, args.out, adapter_only=args.adapter_only)
    print(f"exported to {out}")
    return 0


def cmd_average_adapters(args: argparse.Namespace) -> int:
    from embedtune.models.adapter_average import average_adapters

    out = average_adapters(args.adapters, args.out, args.weights, args.scale)
    if len(args.adapters) == 1:
        print(f"scaled the update of {args.adapters[0]} by {args.scale:g} into {out}")
    else:
        scaled = f", the mean update times {args.scale:g}," if args.scale != 1 else ""
        print(f"averaged {len(args.adapters)} adapters{scaled} into {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from embedtune.encode_files import check_paths, encode_file
    from embedtune.models.embedder import Embedder

    check_paths(args.input, args.output)  # a wrong path must fail before the model load
    embedder = Embedder.from_config(config_from_args(args, MODEL_FLAGS).model)
    n = encode_file(embedder, args.input, args.output, column=args.column, batch_size=args.batch_size)
    print(f"wrote {n} embeddings to {args.output}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from embedtune.models.embedder import Embedder
    from embedtune.serve import API_KEY_ENV, ServeLimits, serve

    limits = ServeLimits(max_batch_size=args.max_batch_size, max_items=args.max_items, max_tokens=args.max_tokens,
                         max_request_bytes=args.max_request_bytes, max_queue=args.max_queue,
                         body_timeout_s=args.body_timeout).validate()  # a wrong limit fails before the model load
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    embedder = Embedder.from_config(config_from_args(args, MODEL_FLAGS).model)
    serve(embedder, host=args.host, port=args.port, limits=limits, api_key=api_key)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": cmd_eval, "train": cmd_train, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report,
    "export": cmd_export, "average-adapters": cmd_average_adapters, "encode": cmd_encode,
    "serve": cmd_serve,
}


def relaunch_under_accelerate(args: argparse.Namespace, argv: list[str]) -> int:
    """This command again, under `accelerate launch`, once its config file has been checked."""
    import os

    from embedtune.distributed import accelerate_command, check_accelerate_config

    try:
        check_accelerate_config(args.accelerate_config)
        if args.num_processes is not None and args.num_processes < 1:
            raise EmbedtuneError(f"--num-processes must be at least 1, not {args.num_processes}")
    except EmbedtuneError as err:
        print(f"embedtune: error: {err}", file=sys.stderr)
        return 2
    command = accelerate_command(args.accelerate_config, args.num_processes, _without_launch_flags(argv))
    sys.stdout.flush()
    os.execv(command[0], command)  # the launcher takes this process's place: signals reach it directly
    return 0  # not reached


def _without_launch_flags(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in LAUNCH_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(token)
    return kept


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Stages and progress are info, things to act on are warnings: by default both show; -q keeps warnings
    only; -v adds our debug messages and the libraries' own info (uvicorn's access log among them)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", force=True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("embedtune").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from embedtune.distributed import launched_ranks, leave

    if getattr(args, "accelerate_config", None) and not launched_ranks().distributed:
        return relaunch_under_accelerate(args, sys.argv[1:] if argv is None else argv)

    # Under torchrun, ranks other than 0 say only what goes wrong: one copy of progress and stage messages.
    configure_logging(verbose=args.verbose, quiet=args.quiet or not launched_ranks().is_main)
    try:
        return COMMANDS[args.command](args)
    except TrainingStopped as err:
        print(f"embedtune: {err}", file=sys.stderr)
        return 130
    except EmbedtuneError as err:
        print(f"embedtune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embedtune: interrupted", file=sys.stderr)
        return 130
    finally:
        leave()


if __name__ == "__main__":
    raise SystemExit(main())
