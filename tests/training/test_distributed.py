"""Two CPU ranks (gloo, started here by torchrun) against one process on the same global batches.

The proof the distributed issue asks for: per-step losses, gradient norms and final LoRA weights equal within
1e-5, for the plain and the cached loss, with and without hard negatives, on Llama- and Gemma-shaped models, with
one rank's slices holding duplicate premises (so the ranks embed different numbers of unique texts); and the rank
duties, resume, signals and failures of a launched run.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedtune.config import Config
from embedtune.data.sampling import batch_rows
from embedtune.errors import ConfigError
from embedtune.training.trainer import train
from tests.conftest import TINY_WORDS, build_tiny_architecture, build_tiny_tokenizer

WORKER = Path(__file__).with_name("distributed_worker.py")
BATCH, STEPS, ROWS, SEED = 8, 3, 48, 42
TOLERANCE = 1e-5


def launch(args: list[str], tmp_path: Path, nproc: int = 2, timeout: float = 300, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EMBEDTUNE_COMPILE_KERNELS": "0",
               # This checkout's src first: the ranks run the code under test, not another installed copy.
               "PYTHONPATH": os.pathsep.join(str(Path(__file__).parents[2] / p) for p in ("src", ".")), **env}
    environ.pop("EMBEDTUNE_FAULT", None)
    environ.update(env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    log = open(tmp_path / f"launch-{time.monotonic_ns()}.log", "w+")
    process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    code = process.wait(timeout=timeout)
    process.log.seek(0)
    return code, process.log.read()


@pytest.fixture(scope="module")
def uneven_data_dir(tmp_path_factory) -> Path:
    """Triplets whose rows in rank 0's half of each of the first batches share one premise per batch."""
    root = tmp_path_factory.mktemp("uneven")
    words = TINY_WORDS[:60]

    def text(i: int, kind: int) -> str:
        return " ".join(words[(i * 7 + kind * 13 + j * 3) % len(words)] for j in range(2 + (i + kind) % 7))

    rows = [[text(i, 0), text(i, 1), text(i, 2)] for i in range(ROWS)]
    for step in range(STEPS):
        chosen = batch_rows(step, ROWS, BATCH, SEED)
        for r in chosen[:BATCH // 2]:  # rank 0's slice: one premise; rank 1's: all different
            rows[r][0] = f"the man plays guitar in the park {words[step]}"
    (root / "nli" / "triplets").mkdir(parents=True)
    with (root / "nli" / "triplets" / "uneven.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sent0", "sent1", "hard_neg"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    tokenizer = build_tiny_tokenizer()
    found = {}
    for kind in ("llama", "gemma3"):
        path = tmp_path_factory.mktemp(kind)
        build_tiny_architecture(kind, len(tokenizer)).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        found[kind] = path
    return found


def case(model: Path, data: Path, out: Path, **train_fields) -> dict:
    return {"model": {"name": str(model)}, "data": {"data_dir": str(data), "decontaminate": False},
            "lora": {"dropout": 0.0},
            "train": {"output_dir": str(out), "batch_size": BATCH, "lr": 1e-2, "max_steps": STEPS, "precision": "fp32",
                      "eval_steps": 0, "save_steps": 100, "warmup_ratio": 0.0, "seed": SEED, "chunk_tokens": 48,
                      "mini_batch_tokens": 32, **train_fields}}


def steps_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def assert_same_training(one: Path, two: Path) -> None:
    a, b = steps_of(one), steps_of(two)
    assert [e["step"] for e in a] == [e["step"] for e in b] == list(range(1, len(a) + 1))
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= TOLERANCE, (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) <= TOLERANCE * max(1.0, x["grad_norm"]), (x, y)
    wa = load_file(one / "final" / "adapter_model.safetensors")
    wb = load_file(two / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= TOLERANCE, worst
    moved = max((wa[k]).abs().max().item() for k in wa if "lora_B" in k)
    assert moved > 1e-3  # training changed the weights, so equal weights mean equal updates


VARIANTS = {  # name -> (model kind, train fields)
    "llama-infonce": ("llama", {"loss": "infonce"}),
    "llama-infonce-no-hn": ("llama", {"loss": "infonce", "hard_negatives": False}),
    "llama-cached": ("llama", {"loss": "cached"}),
    "llama-cached-no-hn": ("llama", {"loss": "cached", "hard_negatives": False}),
    "llama-learnable-temperature": ("llama", {"loss": "infonce", "learnable_temperature": True}),
    # The reverse direction gathers the anchors with gradient too, and CoSENT every rank's pair cosines; through
    # GradCache's replay.
    "llama-cached-symmetric-cosent": ("llama", {"loss": "cached", "symmetric": True, "cosent": 1.0}),
    # GTE's extra directions mask each triplet's own texts, and the hardness weighting finds each anchor's own
    # positive and hard negative, among all ranks' candidates.
    "llama-infonce-all-directions-hardness": ("llama", {"loss": "infonce", "all_directions": True, "hardness": 5.0,
                                                        "hardness_mode": "in_batch"}),
    # Matryoshka: each truncated size gathers its slices of every rank's candidates, through GradCache's replay.
    "llama-cached-matryoshka": ("llama", {"loss": "cached", "matryoshka_dims": [16, 64],
                                          "matryoshka_weights": [0.5, 1.0]}),
    "gemma-infonce": ("gemma3", {"loss": "infonce"}),
    "gemma-infonce-no-hn": ("gemma3", {"loss": "infonce", "hard_negatives": False}),
    "gemma-cached": ("gemma3", {"loss": "cached"}),
    "gemma-cached-no-hn": ("gemma3", {"loss": "cached", "hard_negatives": False}),
}
# The control: without the gradient through the gather, each rank's candidates miss the other rank's anchors'
# gradient, so the comparison above must see a difference (it is not blind).
APPROXIMATE = ("llama-gather-without-grad", ("llama", {"loss": "infonce", "gather_with_grad": False}))
# The uninterrupted 2-rank run the resume test compares with (its CLI flags give the same config).
UNINTERRUPTED = ("llama-4-steps", ("llama", {"loss": "infonce", "max_steps": 4, "save_steps": 2}))


@pytest.fixture(scope="module")
def two_rank_runs(model_dirs, uneven_data_dir, tmp_path_factory) -> Path:
    """Every variant trained by one 2-rank launch (one start-up for all)."""
    root = tmp_path_factory.mktemp("two_ranks")
    cases = [case(model_dirs[kind], uneven_data_dir, root / name, **fields)
             for name, (kind, fields) in [*VARIANTS.items(), APPROXIMATE, UNINTERRUPTED]]
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases))
    code, output = finish(launch([str(WORKER), str(spec)], root), timeout=900)
    assert code == 0, output[-4000:]
    return root


# The default run covers both models, both losses, with and without hard negatives, the symmetric loss with
# CoSENT, the GTE loss with the hardness weighting and Matryoshka through the cached loss; the rest run with -m slow.
DEFAULT_VARIANTS = ("llama-infonce", "llama-cached", "gemma-cached-no-hn", "llama-cached-symmetric-cosent",
                    "llama-infonce-all-directions-hardness", "llama-cached-matryoshka")


@pytest.mark.parametrize("name", [name if name in DEFAULT_VARIANTS else pytest.param(name, marks=pytest.mark.slow)
                                  for name in VARIANTS])
def test_two_ranks_train_exactly_as_one_process(name, two_rank_runs, model_dirs, uneven_data_dir, tmp_path,
                                                monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_COMPILE_KERNELS", "0")
    kind, fields = VARIANTS[name]
    one = tmp_path / "one"
    train(Config.from_dict(case(model_dirs[kind], uneven_data_dir, one, **fields)).validate())
    assert_same_training(one, two_rank_runs / name)


def test_without_the_gradient_through_the_gather_two_ranks_differ(two_rank_runs, model_dirs, uneven_data_dir,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_COMPILE_KERNELS", "0")
    name, (kind, fields) = APPROXIMATE
    one = tmp_path / "one"
    train(Config.from_dict(case(model_dirs[kind], uneven_data_dir, one, **fields)).validate())
    a, b = steps_of(one), steps_of(two_rank_runs / name)
    assert abs(a[0]["loss"] - b[0]["loss"]) <= TOLERANCE  # the same first forward...
    assert abs(a[0]["grad_norm"] - b[0]["grad_norm"]) > 100 * TOLERANCE  # ...but not the same gradient


def test_the_uneven_data_gives_the_ranks_different_numbers_of_texts(uneven_data_dir):
    from embedtune.config import DataConfig
    from embedtune.data.nli import load_triplets

    triplets, _ = load_triplets(DataConfig(decontaminate=False), uneven_data_dir, None, True)
    rows = batch_rows(0, len(triplets), BATCH, SEED)
    premises = [{triplets[r].anchor for r in half} for half in (rows[:BATCH // 2], rows[BATCH // 2:])]
    assert [len(p) for p in premises] == [1, BATCH // 2]


def test_rank_zero_alone_writes_one_metrics_line_per_step(two_rank_runs):
    out = two_rank_runs / "llama-infonce"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{STEPS:07d}"]
    state = torch.load(out / "checkpoints" / f"step-{STEPS:07d}" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2


def cli(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "embedtune", "train", "--model", str(model), "--data-dir", str(data), "--no-decontaminate",
            "--output-dir", str(out), "--batch-size", "8", "--lr", "1e-2", "--precision", "fp32", "--eval-steps",
            "0", "--lora-dropout", "0", "--warmup-ratio", "0", "--chunk-tokens", "48", *extra]


def test_resume_under_two_ranks_continues_exactly(two_rank_runs, model_dirs, uneven_data_dir, tmp_path):
    model = model_dirs["llama"]
    whole, broken = two_rank_runs / UNINTERRUPTED[0], tmp_path / "broken"
    code, output = finish(launch(cli(model, uneven_data_dir, broken, "--max-steps", "4", "--save-steps", "2"),
                                 tmp_path, EMBEDTUNE_FAULT="kill:step:2"))
    assert code != 0 and len(steps_of(broken)) == 2, output[-3000:]
    code, output = finish(launch(cli(model, uneven_data_dir, broken, "--max-steps", "4", "--save-steps", "2",
                                     "--resume"), tmp_path))
    assert code == 0, output[-3000:]
    assert "resuming from" in output
    assert_same_training(whole, broken)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint(model_dirs, uneven_data_dir, tmp_path):
    out = tmp_path / "run"
    process = launch(cli(model_dirs["llama"], uneven_data_dir, out, "--epochs", "1000", "--save-steps", "100000"),
                     tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").is_file() and steps_of(out)):
        time.sleep(0.5)
    assert steps_of(out), "training never started"
    process.send_signal(signal.SIGTERM)
    code, output = finish(process, timeout=120)
    assert code != 0
    assert "continue with --resume" in output
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) == len(steps_of(out))


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_others_in_bounded_time(model_dirs, uneven_data_dir, tmp_path):
    import psutil

    out = tmp_path / "run"
    process = launch(cli(model_dirs["llama"], uneven_data_dir, out, "--epochs", "1000", "--save-steps", "100000"),
                     tmp_path, EMBEDTUNE_DIST_TIMEOUT="60")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").is_file() and steps_of(out)):
        time.sleep(0.5)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert workers, "no rank 1 process found"
    killed = time.monotonic()
    workers[0].kill()
    code, output = finish(process, timeout=180)
    assert code != 0
    assert time.monotonic() - killed < 90, output[-2000:]


def test_a_command_tears_down_its_process_group_even_when_it_fails(tmp_path, capsys):
    """Left to the interpreter's exit, a rank's gloo threads sometimes aborted it after its work was done."""
    from embedtune.cli import main

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                         world_size=1)
    missing = tmp_path / "no-such-adapter"
    assert main(["average-adapters", str(missing), "--scale", "0.5", "--out", str(tmp_path / "out")]) == 2
    assert "no-such-adapter" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()


def test_distributed_eval_scores_equal_one_process(tiny_model_dir, tiny_data_dir, tmp_path):
    from embedtune.api import evaluate

    out = tmp_path / "eval.json"
    code, output = finish(launch(["-m", "embedtune", "eval", "--model", str(tiny_model_dir), "--data-dir",
                                  str(tiny_data_dir), "--precision", "fp32", "--output", str(out)], tmp_path))
    assert code == 0, output[-3000:]
    assert output.count("| average") <= 1  # one report, from rank 0
    two = json.loads(out.read_text())
    one = evaluate(str(tiny_model_dir), data_dir=str(tiny_data_dir), config=Config.from_dict(
        {"eval": {"precision": "fp32"}}), show_progress=False)
    assert two["tasks"].keys() == one["tasks"].keys()
    for name, scores in one["tasks"].items():
        assert abs(scores["spearman"] - two["tasks"][name]["spearman"]) < 1e-4, name


def test_a_batch_the_world_size_does_not_divide_fails_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = Config.from_dict({"model": {"name": str(tmp_path / "no-such-model")},
                               "train": {"output_dir": str(tmp_path / "out"), "batch_size": 7}}).validate()
    with pytest.raises(ConfigError, match="--batch-size 7 is the global batch and must be divisible by the world "
                                          "size 2"):
        train(config)
    assert not (tmp_path / "out").exists()


def test_deepspeed_asked_for_but_absent_names_the_package(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    config = Config.from_dict({"model": {"name": str(tmp_path / "no-such-model")},
                               "train": {"output_dir": str(tmp_path / "out"), "batch_size": 8}}).validate()
    with pytest.raises(ConfigError, match="pip install deepspeed"):
        train(config)


ACCELERATE_CONFIGS = Path(__file__).parents[2] / "configs" / "accelerate"


def test_accelerate_launch_through_the_ddp_config_trains_exactly_as_one_process(model_dirs, uneven_data_dir,
                                                                               tmp_path, monkeypatch):
    from embedtune.cli import main

    monkeypatch.setenv("EMBEDTUNE_COMPILE_KERNELS", "0")
    args = cli(model_dirs["llama"], uneven_data_dir, tmp_path / "two", "--max-steps", "3")[2:]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "EMBEDTUNE_COMPILE_KERNELS": "0"}
    environ.pop("EMBEDTUNE_FAULT", None)
    done = subprocess.run([sys.executable, "-m", "embedtune", *args, "--accelerate-config",
                           str(ACCELERATE_CONFIGS / "ddp.yaml"), "--num-processes", "2"], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "two" / "checkpoints" / f"step-{3:07d}" / "state.pt", weights_only=True)
    assert state["world_size"] == 2
    one_args = cli(model_dirs["llama"], uneven_data_dir, tmp_path / "one", "--max-steps", "3")[2:]
    assert main(one_args) == 0
    assert_same_training(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("write, message", [
    (None, "accelerate config file not found"),
    ("distributed_type: [MULTI_GPU\n", "is not a readable YAML file"),
    ("- a list\n", "must be a mapping"),
    ("distributed_type: MEGATRON_LM\n", "distributed_type 'MEGATRON_LM' is not one embedtune runs"),
])
def test_a_bad_accelerate_config_is_one_line_before_anything_starts(write, message, tmp_path, capsys):
    from embedtune.cli import main

    config = tmp_path / "accelerate.yaml"
    if write is not None:
        config.write_text(write)
    code = main(["train", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "out"),
                 "--accelerate-config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
@pytest.mark.parametrize("name, message", [("fsdp.yaml", "fsdp needs CUDA GPUs"),
                                           ("deepspeed-zero2.yaml", "deepspeed"),
                                           ("deepspeed-zero3.yaml", "deepspeed")])
def test_the_shipped_sharding_configs_parse_and_name_what_this_machine_lacks(name, message, tmp_path, capsys):
    from embedtune.cli import main

    code = main(["train", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "out"),
                 "--accelerate-config", str(ACCELERATE_CONFIGS / name)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_run_under_two_ranks_reports_once_with_the_dev_evaluation_on_rank_zero(tiny_model_dir, tiny_data_dir,
                                                                              tmp_path):
    out = tmp_path / "run"
    code, output = finish(launch(["-m", "embedtune", "run", "--model", str(tiny_model_dir), "--data-dir",
                                  str(tiny_data_dir), "--output-dir", str(out), "--batch-size", "8", "--max-steps",
                                  "4", "--eval-steps", "2", "--precision", "fp32", "--lora-dropout", "0"], tmp_path))
    assert code == 0, output[-3000:]
    assert output.count("1/3 baseline evaluation") == 1 and output.count("report: ") == 1
    report = json.loads((out / "report.json").read_text())
    assert report["selected"]["by"] == "best" and len(report["tuned"]["tasks"]) == 9
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "eval" in e] == [2, 4]  # rank 0's dev evaluations, once each
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4]


CONVERT_AND_COUNT = """
import sys
from pathlib import Path
from transformers import AutoModel, AutoTokenizer
from embedtune.models import loading
tiny, gguf, count = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
loading.gguf_architecture = lambda path: "llama"
def read(path):
    with count.open("a") as f:
        f.write("converted\\n")
    return AutoModel.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
loading._read_gguf = read
print(loading.gguf_to_hf_folder(gguf))
"""


@pytest.mark.slow
def test_ranks_starting_together_convert_a_gguf_once(tiny_model_dir, tmp_path):
    """The first use of a .gguf on K ranks at once: one converts, the others wait for it and reuse its folder."""
    gguf, count = tmp_path / "tiny.gguf", tmp_path / "conversions.txt"
    gguf.write_bytes(b"GGUF")
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "EMBEDTUNE_CACHE": str(tmp_path / "cache")}
    environ.pop("EMBEDTUNE_FAULT", None)
    ranks = [subprocess.Popen([sys.executable, "-c", CONVERT_AND_COUNT, str(tiny_model_dir), str(gguf), str(count)],
                              env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=180) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), [err[-1500:] for _, err in results]
    assert count.read_text().splitlines() == ["converted"]
    assert len({out.strip().splitlines()[-1] for out, _ in results}) == 1  # all load the same folder


def test_a_sweep_under_a_launcher_is_refused_before_any_run(tmp_path, monkeypatch):
    from embedtune.sweep import run_sweep

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = Config.from_dict({"train": {"output_dir": str(tmp_path / "sweep")}})
    with pytest.raises(ConfigError, match="run `embedtune sweep` as one process"):
        run_sweep(config, ["train.lr=1e-4,2e-4"])
    assert not (tmp_path / "sweep").exists()
