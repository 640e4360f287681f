"""The `embedtune` command: subcommands whose flags are built from the config's option declarations (each option
is declared once, on its field in config.py), turned into a Config, then one library call each."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from embedtune.cli_flags import COMMAND_FLAGS, LAUNCH_FLAGS
from embedtune.config import OPTIONS, Config
from embedtune.errors import ConfigError, EmbedtuneError, TrainingStopped
from embedtune.options import EVAL, GROUPS, MODEL, RUN, TRAIN, Declared

DESCRIPTION = """\
embedtune turns a small language model into a text-embedding model (LoRA fine-tuning with a contrastive loss on
NLI triplets), scores embedding models on nine STS benchmarks, and exports, encodes with or serves the result."""

EXAMPLES = """\
examples:
  # score a model on the nine STS sets; a JSON file and a Markdown table
  embedtune eval --model all-minilm-l6-v2 --pooling mean --output runs/minilm.json
  # score the base model, train, score the tuned one, write a report: within 20 minutes
  embedtune run --config configs/cpu-quick.yaml --output-dir runs/exp --time-budget 20m
  # merge the trained adapter into a sentence-transformers folder and serve it over HTTP
  embedtune export --model gemma3-270m --adapter runs/exp/final --out runs/exported
  embedtune serve --model runs/exported --port 8000

Every command has its own --help. Flags override the values of a --config YAML file."""

# Which declared options each subcommand takes (the kinds of options.py); the other commands take none.
COMMAND_KINDS = {"eval": (MODEL, EVAL), "train": (MODEL, TRAIN), "run": (MODEL, TRAIN, RUN),
                 "sweep": (MODEL, TRAIN, RUN), "export": (MODEL,), "encode": (MODEL,), "serve": (MODEL,),
                 "mine": (MODEL,)}
# --help groups: the config's, with the other commands' own groups before distributed and output.
HELP_GROUPS = (*GROUPS[:-2], "sweep", "averaging", "encoding", "server", "request limits", "mining inputs",
               "negatives", *GROUPS[-2:])


def _keys(wanted: Callable[[Declared], bool]) -> dict[str, tuple[str, str]]:
    return {o.key: (o.section, o.name) for o in OPTIONS if wanted(o)}


# dest -> (section, field) of the declared options, all and by kind; config_from_args reads the ones it is given.
OPTION_KEYS = _keys(lambda o: True)
MODEL_FLAGS = _keys(lambda o: MODEL in o.option.on)
DATA_FLAGS = _keys(lambda o: o.section == "data")
EVAL_FLAGS = _keys(lambda o: EVAL in o.option.on)
TRAIN_FLAGS = _keys(lambda o: TRAIN in o.option.on)
RUN_FLAGS = _keys(lambda o: RUN in o.option.on)


class HelpFormatter(argparse.HelpFormatter):
    """Every flag says its default, or that it is required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        default = action.default
        shown = {False: "off", True: "on"}.get(default, default) if isinstance(default, bool) else default
        return f"{text} (default: {shown if shown != [] else 'none'})"


class TopHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help: the description and the examples keep their line breaks."""


def _flag_value(item: Declared, text: str) -> Any:
    """A flag's text taken as its field's type by the same coercion as a YAML value."""
    try:
        return item.take(text, item.key)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _option_argument(item: Declared, kind: str) -> tuple[str, dict[str, Any]]:
    """The flag and add_argument's keywords for a declared option; every flag defaults to 'not given' so that a
    --config file supplies what the command line does not."""
    option, flag = item.option, item.flag(kind)
    shown = "" if option.required else f" (default: {item.default_shown()})"
    kwargs: dict[str, Any] = {"dest": item.key, "default": argparse.SUPPRESS,
                              "help": (option.help + shown).replace("%", "%%")}
    if item.is_switch:
        return flag, kwargs | {"action": argparse.BooleanOptionalAction}
    kwargs |= {"required": option.required, "choices": option.choices}
    if item.is_list:
        kwargs |= {"nargs": "+", "metavar": item.metavar(kind)}
    else:
        kwargs |= {"type": partial(_flag_value, item)}
        if option.choices is None:  # argparse shows the choices themselves
            kwargs["metavar"] = item.metavar(kind)
    return flag, kwargs


def _groups(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every help group, in order (argparse leaves an empty one out of --help)."""
    return {title: parser.add_argument_group(title) for title in HELP_GROUPS}


def _command(sub: Any, name: str, summary: str) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """A subcommand's parser with its help groups, and its declared options (COMMAND_KINDS) in them."""
    parser = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                            formatter_class=HelpFormatter)
    groups = _groups(parser)
    kinds = COMMAND_KINDS.get(name, ())
    if EVAL in kinds or TRAIN in kinds:
        parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                            help="YAML file with model/data/lora/train/eval sections (configs/ has examples); a flag "
                                 "given here overrides its value (default: none)")
    for item in OPTIONS:
        kind = next((k for k in kinds if k in item.option.on), None)
        if kind is not None:
            flag, kwargs = _option_argument(item, kind)
            groups[item.option.group].add_argument(flag, **kwargs)
    return parser, groups


def _short_usage(parser: argparse.ArgumentParser) -> str:
    """'embedtune train --output-dir DIR [options]': what must be given; --help lists the rest."""
    actions = parser._actions
    needed = [f"{a.option_strings[0]} {a.metavar or a.dest.upper()}" for a in actions
              if a.required and a.option_strings]
    positional = [f"{a.metavar} [{a.metavar} ...]" if a.nargs == "+" else str(a.metavar)
                  for a in actions if not a.option_strings]
    return " ".join(["%(prog)s", *needed, "[options]", *positional])


SUMMARIES = {
    "eval": "score a model on the nine STS sets (or pair-classification and retrieval sets): a table, and a JSON "
            "file with --output",
    "train": "fine-tune a model's LoRA adapters on NLI triplets with a contrastive loss; checkpoints, metrics and "
             "the final adapter go to --output-dir",
    "run": "the whole experiment: score the base model, train, score the tuned model, and write a report "
           "(report.md, report.json, plots) to --output-dir",
    "sweep": "`run` over a grid of settings, the base model scored once; one report compares the runs",
    "report": "one self-contained HTML page for run and sweep folders",
    "export": "write a model, its adapter merged, as a sentence-transformers folder (or the adapter alone)",
    "average-adapters": "one LoRA adapter whose update is the (weighted) mean of several adapters' updates on the "
                        "same base model (a \"model soup\")",
    "encode": "embed the texts of a file into a .npy or .jsonl file",
    "serve": "serve embeddings over HTTP: an OpenAI-compatible /v1/embeddings endpoint",
    "mine": "hard negatives for (anchor, positive) pairs, retrieved from a corpus with a model: rows that train "
            "reads, and the counts of what each guard dropped",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedtune", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=TopHelpFormatter)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages, and the libraries' info")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        command, groups = _command(sub, name, summary)
        COMMAND_FLAGS[name](command, groups)
        command.usage = _short_usage(command)
    return parser


def config_from_args(args: argparse.Namespace, flags: Mapping[str, tuple[str, str]] | None = None) -> Config:
    """The --config file's values (if any), then every declared option given as a flag (all of them, or those in
    `flags`: dest -> (section, field)), checked by Config.validate."""
    config = Config.from_yaml(args.config) if getattr(args, "config", None) else Config()
    keys = OPTION_KEYS if flags is None else flags
    given: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest in keys:
            section, name = keys[dest]
            given.setdefault(section, {})[name] = value
    config.update(given, "command line")
    return config.validate()


def cmd_eval(args: argparse.Namespace) -> int:
    from embedtune.api import evaluate
    from embedtune.distributed import is_main
    from embedtune.evaluation.report import eval_markdown

    config = config_from_args(args)
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

    final = train(config_from_args(args))
    if is_main():
        print(f"final adapter: {final}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from embedtune.api import run
    from embedtune.distributed import is_main

    report = run(config_from_args(args))
    if is_main():
        print(f"report: {report['paths']['report_md']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from embedtune.api import sweep

    summary = sweep(config_from_args(args), args.grid,
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
    from embedtune.export.hub import HubTarget

    # A bad name, no token, or --private/--token alone fails before the (slow) export.
    hub = HubTarget.from_flags(args.push_to_hub, token=args.token, private=args.private)
    config = config_from_args(args)
    out = export_model(config.model, args.out, adapter_only=args.adapter_only, dtype=args.dtype,
                       prompts={"query": args.query_prompt, "document": args.document_prompt}, format=args.format)
    print(f"exported to {out}")
    if hub is not None:
        print(f"published {out} to {hub.push(out)}")
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
    from embedtune.encode_files import check_paths, check_size, encode_file
    from embedtune.models.embedder import Embedder

    check_paths(args.input, args.output)  # a wrong path or size must fail before the model load
    check_size(args.dims)
    embedder = Embedder.from_config(config_from_args(args).model, precision=args.precision)
    n = encode_file(embedder, args.input, args.output, column=args.column, batch_size=args.batch_size,
                    dims=args.dims)
    print(f"wrote {n} embeddings to {args.output}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from embedtune.models.embedder import Embedder
    from embedtune.serve import API_KEY_ENV, ServeLimits, require_serve_extra, serve

    require_serve_extra()  # before the (slow) model load
    limits = ServeLimits(max_batch_size=args.max_batch_size, max_items=args.max_items, max_tokens=args.max_tokens,
                         max_request_bytes=args.max_request_bytes, max_queue=args.max_queue,
                         body_timeout_s=args.body_timeout, max_batch_tokens=args.max_batch_tokens,
                         batch_wait_ms=args.batch_wait_ms, dynamic_batching=not args.no_batching,
                         ).validate()  # a wrong limit fails before the model load
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    embedder = Embedder.from_config(config_from_args(args).model, precision=args.precision)
    serve(embedder, host=args.host, port=args.port, limits=limits, api_key=api_key)
    return 0


MINE_ARGS = ("num_negatives", "range_min", "range_max", "absolute_margin", "relative_margin", "max_score",
             "min_score", "sampling", "seed", "search", "corpus_column", "anchor_column", "positive_column",
             "all_entailed", "batch_size")  # mine's own flags, passed to api.mine by name


def cmd_mine(args: argparse.Namespace) -> int:
    from embedtune.api import mine
    from embedtune.config import ModelConfig

    model = config_from_args(args).model
    options = {f.name: getattr(model, f.name) for f in fields(ModelConfig) if f.name != "name"}
    report = mine(model.name, args.input, args.output, args.corpus, **{k: getattr(args, k) for k in MINE_ARGS},
                  **options)
    print(f"{report['summary']}\nwrote {report['rows']} rows to {args.output} (counts in {args.output}.json)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": cmd_eval, "train": cmd_train, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report,
    "export": cmd_export, "average-adapters": cmd_average_adapters, "encode": cmd_encode,
    "serve": cmd_serve, "mine": cmd_mine,
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
