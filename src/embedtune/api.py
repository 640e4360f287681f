"""The Python API: thin functions that turn arguments into a Config and call the library.

The CLI calls these same functions, so a flag and a keyword argument always mean the same thing.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedtune.config import Config, ModelConfig, evaluation_dims
from embedtune.errors import ConfigError


def evaluate(model: Any = None, *, config: Config | None = None, tasks: Sequence[str] | None = None,
             data_dir: str | None = None, output: str | Path | None = None, show_progress: bool = True,
             **model_options: Any) -> dict:
    """Nine-set (or chosen-task) STS scores of a model: the dict that `embedtune eval` writes as JSON, with
    "computed_with" (precision, and the probe's figure where `auto` chose it; device; library versions).

    `tasks` may mix kinds (STS, pair classification, retrieval; evaluation/suite.py): the STS keys stay as they
    are, the other kinds come in sections `pair_classification` and `retrieval`.

    `model` is a --model value or an Embedder; `model_options` are ModelConfig fields (adapter, pooling, prompt...).
    The caller's `config` is left as it was.
    """
    from embedtune.distributed import is_main
    from embedtune.evaluation.report import write_eval_outputs
    from embedtune.evaluation.suite import EvaluationSuite
    from embedtune.models.backend import Backend
    from embedtune.models.embedder import Embedder
    from embedtune.runs.capture import computed_with

    config = copy.deepcopy(config) if config is not None else Config()
    if isinstance(model, str):
        config.model.name = model
    config.update({"model": model_options} if model_options else {}, "evaluate()")
    if tasks is not None:
        config.eval.tasks = list(tasks)
    if data_dir is not None:
        config.data.data_dir = data_dir
    config.validate()
    # Data first: a bad file must fail before the model load.
    evaluator = EvaluationSuite.from_tasks(config.eval.tasks, config.data.data_dir, batch_size=config.eval.batch_size,
                                           show_progress=show_progress, query_prompt=config.eval.query_prompt,
                                           document_prompt=config.eval.document_prompt,
                                           dims=evaluation_dims(config))
    # Under torchrun each rank encodes a share of the sentences (evaluation/sts.py); rank 0 writes the files.
    embedder = model if isinstance(model, Embedder) else Embedder.from_config(
        config.model, backend=Backend.for_launch(config.model.device, config.eval.precision))
    result = evaluator(embedder)
    # How it was computed: a caller's own Embedder was built with a precision we were not told.
    asked = None if isinstance(model, Embedder) else config.eval.precision
    result["computed_with"] = computed_with(embedder.backend, asked).to_dict()
    if (output or config.eval.output) and is_main():
        write_eval_outputs(result, output or config.eval.output)
    return result


def encode(texts: Sequence[str], model: Any = None, **model_options: Any) -> np.ndarray:
    """L2-normalised embeddings of `texts` (rows in input order).

    The model stays loaded between calls with the same model and options (one model is kept: the last used);
    build an `Embedder` yourself to hold several.
    """
    config = Config()
    if model:
        config.model.name = model
    config.update({"model": model_options} if model_options else {}, "encode()")
    return _cached_embedder(config.validate().model).encode(texts)


_LAST_EMBEDDER: dict[str, Any] = {}


def _cached_embedder(model: ModelConfig):
    from embedtune.models.embedder import Embedder

    key = repr(model)
    if key not in _LAST_EMBEDDER:
        _LAST_EMBEDDER.clear()  # one model at a time: a second would double the memory
        _LAST_EMBEDDER[key] = Embedder.from_config(model)
    return _LAST_EMBEDDER[key]


def train(config: Config) -> Path:
    """Contrastive LoRA training; returns the folder of the final adapter."""
    from embedtune.training.trainer import train as run_training

    return run_training(config.validate())


def run(config: Config) -> dict:
    """Baseline evaluation, training, evaluation of the result, and a report: the one-command experiment."""
    from embedtune.experiment import run_experiment

    return run_experiment(config.validate())


def sweep(config: Config, grid: Sequence[str], *, zipped: Sequence[str] = (), average_adapters: bool = False,
          average_scale: float = 1.0) -> dict:
    """`run` once per combination of the grid's values (`["train.lr=5e-4,5e-5", "model.prompt=,'{} is:'"]`) in
    OUTPUT/runs/NAME, the base model scored once, and one report; re-running continues where it stopped.

    `zipped`: fields whose values move together (`["train.seed=1,2", "train.cosent=0,0.3"]`: two points), crossed
    with the grid. `average_adapters`: the runs' adapters averaged into OUTPUT/averaged/adapter (the mean update
    times `average_scale`) and scored."""
    from embedtune.sweep import run_sweep

    return run_sweep(config.validate(), grid, zipped, average_adapters, average_scale)


def report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """One self-contained HTML page for run and sweep folders; returns its path."""
    from embedtune.evaluation.html_report import write_html_report

    return write_html_report(dirs, out)


def export(model: Any, adapter: str | None, out: str | Path, *, adapter_only: bool = False,
           card_info: dict | None = None, **options: Any) -> Path:
    """A merged sentence-transformers folder (or adapter-only) that appends EOS by itself (embedtune.export.export).
    """
    from embedtune.export import export as export_folder

    return export_folder(model, adapter, out, adapter_only=adapter_only, card_info=card_info, **options)


def mine(model: Any, input: str | Path, output: str | Path, corpus: str | Path | None = None, *,
         num_negatives: int = 1, range_min: int = 0, range_max: int | None = None,
         absolute_margin: float | None = None, relative_margin: float | None = None, max_score: float | None = None,
         min_score: float | None = None, sampling: str = "top", seed: int = 42, search: str = "auto",
         corpus_column: str = "text", anchor_column: str = "sent0", positive_column: str = "sent1",
         all_entailed: bool = False, batch_size: int = 64, show_progress: bool = True,
         **model_options: Any) -> dict:
    """Hard negatives for the (anchor, positive) pairs of `input`, retrieved from `corpus` (else from the
    positives) with `model`, written to `output` as sent0/sent1/hard_neg rows that `train` reads, one row per
    negative; the counts go beside it (`output` + .json) and are returned. The guards and their order are
    sentence-transformers' `mine_hard_negatives` (embedtune/data/mining.py says exactly how each applies).

    `model` is a --model value or an Embedder; `model_options` are ModelConfig fields (adapter, pooling,
    prompt...). Every value and file is checked before the model loads."""
    from embedtune.data.mining import MiningSettings
    from embedtune.mine_files import mine_negatives, prepare_mining
    from embedtune.models.embedder import Embedder

    settings = MiningSettings(num_negatives, range_min, range_max, absolute_margin, relative_margin, max_score,
                              min_score, sampling, seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    model_config = None
    if not isinstance(model, Embedder):
        config = Config()
        config.model.name = model
        config.update({"model": model_options} if model_options else {}, "mine()")
        model_config = config.validate().model
    plan = prepare_mining(input, output, corpus, settings, search=search, corpus_column=corpus_column,
                          anchor_column=anchor_column, positive_column=positive_column, all_entailed=all_entailed)
    embedder = model if model_config is None else Embedder.from_config(model_config)
    return mine_negatives(embedder, plan, batch_size=batch_size, show_progress=show_progress)
