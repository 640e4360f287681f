"""The benchmarks as a package: every script imports against the current library and parses its flags.

Fast (no model is run), so `make test` fails as soon as a library change breaks a benchmark's imports.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {  # each script and flags its --help must list (the ones the docs quote)
    "anisotropy": ["--model", "--data-dir", "--n"],
    "compare_peer": ["--data-dir", "--model", "--quick", "--steps", "--batches", "--skip-eval-speed",
                     "--peer-runtime", "--device", "--precision", "--cold"],
    "eval_speed": ["--data-dir", "--model", "--quick", "--peer-batch-size", "--precision", "--cold", "--tasks",
                   "--repeat"],
    "gpu_check": ["--arch", "--device", "--tiny", "--steps", "--batch", "--data-dir", "--tasks", "--tokenizer",
                  "--wheels", "--json", "--prepare"],
    "int8_sensitivity": ["--data-dir", "--model", "--tasks", "--schemes", "--layers", "--matmuls"],
    "levers": ["--data-dir", "--model", "--steps", "--batch", "--paired-only"],
    "distributed_cost": ["--data-dir", "--model", "--per-rank-batch", "--gpus", "--mfu"],
    "paired_versions": ["--before", "--after", "--data-dir", "--rounds", "--steps", "--batch"],
    "scaling": ["--data-dir", "--model", "--ranks", "--threads", "--batch", "--steps", "--device"],
    "memory_anatomy": ["--data-dir", "--model", "--batch", "--steps"],
    "serve_load": ["--model", "--adapter", "--clients", "--seconds", "--quick", "--only", "--json"],
}


FOUND = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_") and
               p.stem != "harness")


def test_the_documented_scripts_are_there():
    assert set(SCRIPTS) <= set(FOUND)


@pytest.mark.parametrize("name", FOUND)
def test_script_imports_and_parses_help(name, capsys, monkeypatch):
    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        if hasattr(module, "build_parser"):
            module.build_parser().parse_args(["--help"])
        else:  # a script without the package's build_parser convention: its main() parses sys.argv
            module.main()
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage:")
    missing = [flag for flag in SCRIPTS.get(name, []) if flag not in usage]
    assert not missing, f"{name} --help lacks {missing}"
    assert callable(module.main)


@pytest.mark.parametrize("name", FOUND + ["harness"])
def test_no_import_path_edits(name):
    """Scripts import embedtune as installed and each other through the package, never by editing sys.path."""
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    for edit in ("sys.path.insert", "sys.path.append", "sys.path[", "sys.path +=", "site.addsitedir"):
        assert edit not in source, f"{name}.py edits the import path ({edit})"


def test_a_script_started_as_a_file_runs_as_the_module(tmp_path):
    """`python benchmarks/X.py` from any folder re-runs itself as `python -m benchmarks.X`."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "anisotropy.py"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "Why a model does or does not train" in done.stdout


def test_worker_flags_round_trip():
    from benchmarks import harness

    flags = harness.option_flags({"out_dir": Path("/x"), "tasks": ["sts17", "biosses"], "batch": 8, "skip": None})
    assert flags == ["--out-dir", "/x", "--tasks", "sts17", "biosses", "--batch", "8"]
    assert harness.module_command("compare_peer")[1:3] == ["-m", "benchmarks.compare_peer"]
    env = harness.child_env({"PYTHONPATH": "/elsewhere"}, threads=1)
    assert env["PYTHONPATH"].split(":")[:2] == [str(ROOT), "/elsewhere"] and env["OMP_NUM_THREADS"] == "1"


def test_triplets_survive_tabs_and_quotes(tmp_path):
    """Result and triplet files go through the csv module: a quote or tab in a sentence must not shift columns."""
    from benchmarks import harness
    from embedtune.data.nli import Triplet

    triplets = [Triplet('He said "hi".', "a\ttab", "plain"), Triplet("x", "y", "z")]
    harness.write_triplets(tmp_path / "t.tsv", triplets)
    assert harness.read_triplet_rows(tmp_path / "t.tsv") == [(t.anchor, t.positive, t.negative) for t in triplets]


AVX2_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2
"""


def test_cpu_description_names_the_cpu_and_the_flags_that_matter(tmp_path, monkeypatch):
    from benchmarks import harness

    (tmp_path / "cpuinfo").write_text(AVX2_CPUINFO)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = harness.cpu_info(tmp_path / "cpuinfo")
    assert info["name"] == "AMD EPYC"
    assert info["flags"] == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
    line = harness.describe_cpu(info)
    assert line.startswith("cpu AMD EPYC, ")
    assert "avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line
    missing = harness.cpu_info(tmp_path / "absent")
    assert missing["name"] and missing["flags"] == {} and "ISA flags unknown" in harness.describe_cpu(missing)
    assert harness.describe_cpu().startswith("cpu ")  # this machine's


def test_precision_and_warmup_sample():
    from benchmarks import harness

    assert harness.resolve_precision("fp32") == ("fp32", "asked for")
    chosen, why = harness.resolve_precision("auto", "cpu")
    assert chosen in ("fp32", "bf16") and why.startswith("auto: bf16 matmul")
    texts = [str(i) * i for i in range(1, 201)]
    sample = harness.warmup_sample(texts, 10)
    assert len(sample) == 10 and sample[0] == texts[0] and sample[-1] == texts[-1]
    assert harness.warmup_sample(texts[:3], 10) == texts[:3]
    assert harness.matmul_peak_gflops(0.01, "cpu", "fp32") > 0
