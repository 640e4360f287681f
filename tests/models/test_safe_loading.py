"""Safe loading (issue 16): weights only from safetensors or GGUF unless --allow-pickle, every state file through
torch.load(weights_only=True), remote code only with --trust-remote-code, and nothing written outside the output
folder (and the cache) by train and run."""
from __future__ import annotations

import ast
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import embedtune
from embedtune.errors import ModelError
from embedtune.models.embedder import Embedder

SRC = Path(embedtune.__file__).parent


def pickled_copy(folder: Path, target: Path, name: str = "pytorch_model.bin") -> Path:
    """`folder` with its safetensors weights replaced by the same tensors in a pickle (torch.save)."""
    shutil.copytree(folder, target)
    for weights in target.glob("*.safetensors"):
        torch.save(load_file(weights), target / (name if weights.name == "model.safetensors" else
                                                 weights.with_suffix(".bin").name))
        weights.unlink()
    return target


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_a_folder_with_only_pickled_weights_is_refused_naming_the_file(tiny_model_dir, tmp_path, name):
    folder = pickled_copy(tiny_model_dir, tmp_path / "pickled", name)
    with pytest.raises(ModelError) as refused:
        Embedder(str(folder), precision="fp32", device="cpu")
    assert str(refused.value) == (
        f"{folder / name}: pickled model weights can run code when loaded, and embedtune loads only safetensors or "
        "GGUF; convert the file to safetensors, or pass --allow-pickle (model.allow_pickle: true) if you trust it")


def test_allow_pickle_loads_them_with_a_warning(tiny_model_dir, tiny_texts, tmp_path, caplog):
    folder = pickled_copy(tiny_model_dir, tmp_path / "pickled")
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        pickled = Embedder(str(folder), precision="fp32", device="cpu", allow_pickle=True)
    assert [r.getMessage() for r in caplog.records if "pickled" in r.getMessage()] == [
        f"{folder / 'pytorch_model.bin'}: loading pickled model weights (--allow-pickle); do this only with files "
        "you trust"]
    safe = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    assert np.array_equal(pickled.encode(tiny_texts, show_progress=False), safe.encode(tiny_texts,
                                                                                       show_progress=False))


def test_safetensors_beside_a_pickle_are_what_loads(tiny_model_dir, tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_args.bin").write_bytes(b"not loaded")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle would be here; never read")
    Embedder(str(folder), precision="fp32", device="cpu")  # no error: the safetensors file is read


def test_a_pickled_adapter_is_refused_for_inference_and_training(tiny_model_dir, tiny_adapter_dir, tiny_data_dir,
                                                                 tmp_path):
    from embedtune.config import Config
    from embedtune.training.trainer import train

    adapter = pickled_copy(tiny_adapter_dir, tmp_path / "adapter")
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    message = f"{adapter / 'adapter_model.bin'}: pickled adapter weights can run code when loaded"
    with pytest.raises(ModelError, match=message):
        Embedder(str(tiny_model_dir), adapter=str(adapter), precision="fp32", device="cpu")
    config = Config.from_dict({"model": {"name": str(tiny_model_dir), "adapter": str(adapter)},
                               "data": {"data_dir": str(tiny_data_dir)},
                               "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 8,
                                         "precision": "fp32", "eval_steps": 0}}).validate()
    with pytest.raises(ModelError, match=message):
        train(config)
    config.model.allow_pickle = True
    final = train(config)
    assert load_file(final / "adapter_model.safetensors").keys()  # saved as safetensors again


def test_the_cli_refuses_in_one_line_and_parses_allow_pickle(tiny_model_dir, tmp_path, capsys):
    from embedtune.cli import MODEL_FLAGS, build_parser, config_from_args, main

    folder = pickled_copy(tiny_model_dir, tmp_path / "pickled")
    texts = tmp_path / "in.txt"
    texts.write_text("hello world\n")
    out = tmp_path / "v.npy"
    assert main(["encode", "--model", str(folder), "--input", str(texts), "--output", str(out)]) == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("embedtune:")] == [
        f"embedtune: error: {folder / 'pytorch_model.bin'}: pickled model weights can run code when loaded, and "
        "embedtune loads only safetensors or GGUF; convert the file to safetensors, or pass --allow-pickle "
        "(model.allow_pickle: true) if you trust it"]
    assert not out.exists()
    assert main(["encode", "--model", str(folder), "--input", str(texts), "--output", str(out), "--allow-pickle",
                 "--device", "cpu"]) == 0
    assert np.load(out).shape[0] == 1
    for args, expected in (([], False), (["--allow-pickle"], True), (["--no-allow-pickle"], False)):
        parsed = build_parser().parse_args(["eval", *args])
        assert config_from_args(parsed, MODEL_FLAGS).model.allow_pickle is expected


# ---- what the source may call ---------------------------------------------------------------------------------

@functools.cache
def sources() -> dict[str, list[ast.AST]]:
    """Every node of every module in src, by the module's path."""
    return {str(path.relative_to(SRC)): list(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
            for path in SRC.rglob("*.py")}


def calls(name: str, attribute: str) -> list[tuple[str, ast.Call]]:
    found = []
    for path, nodes in sources().items():
        for node in nodes:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == name:
                found.append((f"{path}:{node.lineno}", node))
    return found


def keyword(call: ast.Call, name: str):
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


def test_every_torch_load_in_src_is_weights_only_and_nothing_unpickles():
    loads = calls("torch", "load")
    assert [where.split(":")[0] for where, _ in loads] == ["training/checkpoint.py"] * 2  # validate, resume
    assert [where for where, call in loads if keyword(call, "weights_only") is not True] == []
    assert [where for where, call in calls("np", "load") if keyword(call, "allow_pickle") is True] == []
    for module in ("pickle", "dill", "joblib", "cloudpickle"):
        assert [where for where, _ in calls(module, "load") + calls(module, "loads")] == []


def test_remote_code_is_passed_only_from_the_option():
    """Every from_pretrained that takes trust_remote_code gets the user's flag, never a literal True."""
    literal = []
    for path, nodes in sources().items():
        for node in nodes:
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and isinstance(node.value,
                                                                                                ast.Constant):
                literal.append(f"{path}:{node.value.lineno}: {node.value.value}")
    assert [line for line in literal if not line.endswith(": False")] == []


def test_a_model_with_custom_code_is_refused_without_trust_remote_code(tiny_model_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    sentinel = tmp_path / "the custom code ran"
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaModel\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
        "class CustomModel(LlamaModel):\n    config_class = CustomConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "custom.CustomConfig",
                                                       "AutoModel": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="this model needs custom code; pass --trust-remote-code if you trust it"):
        Embedder(str(folder), precision="fp32", device="cpu")
    assert not sentinel.exists()


# ---- nothing written outside the output folder ----------------------------------------------------------------

def listing(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, names, files in os.walk(root):
        names[:] = [n for n in names if Path(folder) / n not in skip]
        for name in files + names:
            path = Path(folder) / name
            stat = path.lstat()
            # A folder's own time changes when a file is made and removed inside it (a temporary): not counted.
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return found


def test_a_run_writes_nothing_outside_the_output_folder_and_the_cache(tiny_model_dir, tiny_data_dir,
                                                                             tmp_path):
    model, data = tmp_path / "inputs" / "model", tmp_path / "inputs" / "data"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(tiny_data_dir, data)
    home, cache, tmp, cwd = (tmp_path / name for name in ("home", "cache", "tmp", "cwd"))
    for folder in (home, tmp, cwd):
        folder.mkdir()
    outputs = {tmp_path / "run-out", cache}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "XDG_", "MPL",
                                                                                  "TRANSFORMERS_", "EMBEDTUNE_"))}
    env |= {"HOME": str(home), "EMBEDTUNE_CACHE": str(cache), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    before = listing(tmp_path, outputs)
    # `run` trains as `train` does (the same function), evaluates before and after, and reports.
    done = subprocess.run([sys.executable, "-m", "embedtune", "run", "--model", str(model), "--data-dir", str(data),
                           "--batch-size", "8", "--max-steps", "2", "--save-steps", "1", "--eval-steps", "1",
                           "--precision", "fp32", "--tasks", "sts12", "--output-dir", str(tmp_path / "run-out")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run-out" / "report.json").is_file() and (tmp_path / "run-out" / "best").is_dir()
    after = listing(tmp_path, outputs)
    assert sorted(k for k, v in after.items() if before.get(k) != v) == []  # nothing new or changed elsewhere
