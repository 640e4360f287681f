"""The flags of each `embedtune` command beyond its declared config options (cli.py builds those from config.py):
paths, server limits, grid specs... each with its default in --help, in a help group."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from embedtune.config import PRECISIONS


def add_launch_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    g["distributed"].add_argument(
        "--accelerate-config", default=None, metavar="FILE",
        help="run this command under `accelerate launch --config_file FILE` (configs/accelerate/: ddp, fsdp, "
             "deepspeed-zero2, deepspeed-zero3); the file is checked first (default: none, this process alone)")
    g["distributed"].add_argument("--num-processes", type=int, default=None, metavar="K",
                                  help="with --accelerate-config: ranks to start (default: the file's num_processes)")


LAUNCH_FLAGS = ("--accelerate-config", "--num-processes")  # consumed here, never passed on to the ranks


def add_report_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    parser.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="folders written by `run` or `sweep`")
    g["output"].add_argument("--out", metavar="FILE",
                             help="the HTML file (default: RUN_DIR/report.html for one folder, else ./report.html)")


def add_export_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    g["output"].add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    g["output"].add_argument("--adapter-only", action="store_true", help="copy the adapter only, no merge")
    g["output"].add_argument("--dtype", default=None, metavar="{fp32,bf16,fp16}",
                             help="the saved weights' dtype (default: the run's training precision where the adapter "
                                  "came from a run, else fp32)")
    g["output"].add_argument("--query-prompt", default=None, metavar="TEXT",
                             help="a prefix recorded as the prompt named 'query' (sentence-transformers, TEI and "
                                  "embedtune serve apply it by prompt_name; default: none)")
    g["output"].add_argument("--document-prompt", default=None, metavar="TEXT",
                             help="a prefix recorded as the prompt named 'document' (default: none)")
    add_publish_flags(parser)


def add_publish_flags(parser: argparse.ArgumentParser) -> None:
    """export's ONNX and hub flags (export/onnx.py, export/hub.py), in a group of their own."""
    group = parser.add_argument_group("ONNX and the hub")
    group.add_argument("--format", default="st", metavar="st|onnx",
                       help="st: the sentence-transformers folder; onnx: plus onnx/model.onnx, checked against PyTorch "
                            "under ONNX Runtime (the 'onnx' extra)")
    group.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="then upload the folder to this "
                       "Hugging Face Hub repository in one commit (created if missing; default: no upload)")
    group.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    group.add_argument("--token", default=None, metavar="TOKEN",
                       help="with --push-to-hub: a token with write access (default: $HF_TOKEN, else the saved "
                            "`hf auth login`; the variable keeps the token out of the process list)")


def add_sweep_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    g["sweep"].add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                            help="values of one config field to sweep, e.g. train.lr=5e-3,5e-4 or model.prompt=,'{} "
                                 "is:' (repeat for more fields: every combination runs; quote a value that holds a "
                                 "comma)")
    g["sweep"].add_argument("--zip", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                            help="fields whose values move together: the i-th values of every --zip make one point "
                                 "(e.g. --zip train.seed=1,2,42 --zip train.cosent=0,0.3,0.3: three runs), crossed "
                                 "with the --grid")
    g["sweep"].add_argument("--average-adapters", action="store_true",
                            help="when every run has finished, average their adapters into OUTPUT/averaged/adapter "
                                 "(one embedder: the runs must share the model settings and LoRA targets) and score "
                                 "it beside them")
    g["sweep"].add_argument("--average-scale", type=float, default=1.0, metavar="S",
                            help="multiply the averaged update by S (below 1: toward the base model, WiSE-FT)")


def add_average_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders (e.g. runs of several seeds)")
    g["output"].add_argument("--out", required=True, metavar="DIR",
                             help="the averaged adapter's folder (its rank: the sum of theirs)")
    g["averaging"].add_argument("--weights", nargs="+", type=float, metavar="W",
                                help="one weight per adapter (default: equal)")
    g["averaging"].add_argument("--scale", type=float, default=1.0, metavar="S",
                                help="multiply the averaged update by S: below 1, toward the base model (WiSE-FT); "
                                     "with a scale, one adapter is enough")


def add_encode_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    g["encoding"].add_argument("--input", required=True, metavar="FILE", help=".txt (one text a line), .jsonl or .csv")
    g["encoding"].add_argument("--column", default="text", metavar="NAME",
                               help="column/field holding the text in .csv/.jsonl")
    g["encoding"].add_argument("--batch-size", type=int, default=128, metavar="N", help="texts per model call")
    g["encoding"].add_argument("--dims", type=int, default=None, metavar="N",
                               help="keep each vector's first N dimensions, L2-normalised again (a Matryoshka size; "
                                    "default: all)")
    add_precision_flag(g["encoding"])
    g["output"].add_argument("--output", required=True, metavar="FILE", help=".npy or .jsonl")


def add_mine_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    inputs, negatives = g["mining inputs"], g["negatives"]
    inputs.add_argument("--input", required=True, metavar="FILE",
                        help="(anchor, positive) pairs: a table train reads (.tsv/.csv/.jsonl/.parquet; its hard_neg "
                             "column, if any, is ignored) or raw NLI pairs (premise, hypothesis, label: the "
                             "entailed hypotheses are the positives)")
    inputs.add_argument("--corpus", default=None, metavar="FILE",
                        help="where negatives come from, besides the positives: .jsonl (BEIR corpus.jsonl: title and "
                             "text), .txt (one text a line), .tsv/.csv/.parquet (default: the inputs' positives)")
    inputs.add_argument("--corpus-column", default="text", metavar="NAME",
                        help="the corpus column/field holding the text")
    inputs.add_argument("--anchor-column", default="sent0", metavar="NAME", help="the input's anchor column")
    inputs.add_argument("--positive-column", default="sent1", metavar="NAME", help="the input's positive column")
    inputs.add_argument("--all-entailed", action="store_true",
                        help="raw NLI pairs: every entailed hypothesis of a premise is a positive, not the first only")
    negatives.add_argument("--num-negatives", type=int, default=1, metavar="N",
                           help="negatives per anchor; each makes one (anchor, positive, negative) row")
    negatives.add_argument("--range-min", type=int, default=0, metavar="N",
                           help="skip the N most similar candidates that pass the guards (likely false negatives)")
    negatives.add_argument("--range-max", type=int, default=None, metavar="N",
                           help="take negatives among the first N candidates that pass the guards (default: "
                                "range-min + num-negatives (x10 with a margin or --max-score) + the most positives "
                                "an anchor has, as sentence-transformers)")
    negatives.add_argument("--absolute-margin", type=float, default=None, metavar="X",
                           help="drop a candidate unless its similarity to the anchor is at least X below the "
                                "positive's, in [0, 2] (default: none)")
    negatives.add_argument("--relative-margin", type=float, default=None, metavar="X",
                           help="drop a candidate above positive - |positive| * X, in [0, 1]; 0.05 is NV-Retriever's "
                                "TopK-PercPos (default: none)")
    negatives.add_argument("--max-score", type=float, default=None, metavar="X",
                           help="drop a candidate whose similarity to the anchor is above X: near-duplicates "
                                "(default: none)")
    negatives.add_argument("--min-score", type=float, default=None, metavar="X",
                           help="drop a candidate whose similarity to the anchor is below X (default: none)")
    negatives.add_argument("--sampling", choices=("top", "random"), default="top",
                           help="top: the most similar candidates in the range; random: a seeded random choice of them")
    negatives.add_argument("--seed", type=int, default=42, metavar="N", help="the seed of --sampling random")
    negatives.add_argument("--search", choices=("auto", "exact", "faiss"), default="auto",
                           help="exact: chunked matrix products; faiss: a flat inner-product index (the 'mining' "
                                "extra); auto: faiss when installed")
    negatives.add_argument("--batch-size", type=int, default=64, metavar="N", help="texts per model call")
    g["output"].add_argument("--output", required=True, metavar="FILE",
                             help="the rows (sent0, sent1, hard_neg) as .tsv, .csv or .jsonl; the counts go to "
                                  "FILE.json")


def add_precision_flag(group) -> None:
    group.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 where this machine runs it faster than fp32 (measured at start), else fp32 "
                            "(default: auto)")


def add_serve_flags(parser: argparse.ArgumentParser, g: dict[str, Any]) -> None:
    g["server"].add_argument("--host", default="127.0.0.1", metavar="ADDRESS", help="address to listen on")
    g["server"].add_argument("--port", type=int, default=8000, metavar="N", help="port to listen on")
    g["server"].add_argument("--api-key", default=None, metavar="KEY",
                             help="require 'Authorization: Bearer KEY' on /v1/* (default: $EMBEDTUNE_API_KEY, else "
                                  "none; the variable keeps the key out of the process list)")
    add_precision_flag(g["server"])
    limits = g["request limits"]
    limits.add_argument("--max-batch-size", type=int, default=64, metavar="N",
                        help="texts per model call (dynamic batching)")
    limits.add_argument("--max-batch-tokens", type=int, default=16384, metavar="N",
                        help="padded tokens per model call (texts x the longest): requests are merged within it, "
                             "and a longer request is split into several forward passes (default: 16384)")
    limits.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                        help="how long the first request of a model call waits for others to join it (default: 0, "
                             "only requests already queued join)")
    limits.add_argument("--no-batching", action="store_true",
                        help="one request per model call: no merging of requests (default: off, requests are merged)")
    limits.add_argument("--max-items", type=int, default=256, metavar="N", help="most texts in one request")
    limits.add_argument("--max-tokens", type=int, default=8192, metavar="N", help="most tokens in one request")
    limits.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                        help="largest request body (413 above; default: 4194304, 4 MiB)")
    limits.add_argument("--max-queue", type=int, default=4096, metavar="N",
                        help="most texts waiting for the model (429 above)")
    limits.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds a client has to send its request body (408 after)")


# What each command does: its line in `embedtune --help` and the first line of its own help.


# Each command's own flags, beside the declared options it takes (cli.COMMAND_KINDS).
COMMAND_FLAGS: dict[str, Callable[[argparse.ArgumentParser, dict[str, Any]], None]] = {
    "eval": add_launch_flags, "train": add_launch_flags, "run": add_launch_flags, "sweep": add_sweep_flags,
    "report": add_report_flags, "export": add_export_flags, "average-adapters": add_average_flags,
    "encode": add_encode_flags, "serve": add_serve_flags, "mine": add_mine_flags,
}
