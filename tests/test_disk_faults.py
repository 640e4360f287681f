"""Full disks, read-only folders and interrupted writes (issue 16): a checkpoint, export or encode write that
fails leaves the previous files intact and stops with one line naming the path and the free space, after which
--resume works; the first-use GGUF conversion interrupted half-way is redone, never used half-made.

Faults come from the writer's hook (`EMBEDTUNE_FAULT` / `testing.faults.injected_faults`, which runs everywhere) and
from real small or read-only tmpfs mounts where this process may mount them (root; skipped elsewhere).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedtune.config import Config
from embedtune.errors import EmbedtuneError, StorageError
from embedtune.files import (
    TEMP_TAG,
    recover_folder,
    remove_temporaries,
    write_folder_atomically,
    write_text_atomically,
)
from embedtune.testing.faults import FAULT_ENV, injected_faults
from embedtune.training import checkpoint as ckpt
from embedtune.training.callbacks import Callback
from embedtune.training.trainer import METRICS, train


def tiny_config(model_dir, data_dir, out, **train) -> Config:
    return Config.from_dict({
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir)}, "lora": {"dropout": 0.1},
        "train": {"output_dir": str(out), "batch_size": 8, "lr": 1e-3, "max_steps": 6, "precision": "fp32",
                  "eval_steps": 0, "save_steps": 2, "warmup_ratio": 0.2, **train},
    }).validate()


def losses(out: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in map(json.loads, (out / METRICS).read_text().splitlines()) if "loss" in e]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tiny_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out))
    return out


def assert_one_line_naming(message: str, path: Path, reason: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"cannot write {path}: {reason} (")
    assert " free there)" in message


# ---- through the writer's fault hook: runs everywhere ------------------------------------------------------------

def test_a_checkpoint_write_that_fails_keeps_the_previous_one_and_resume_works(tiny_model_dir, tiny_data_dir,
                                                                               tmp_path, uninterrupted):
    out = tmp_path / "run"
    with injected_faults("enospc:checkpoint:2"), pytest.raises(StorageError) as failed:
        train(tiny_config(tiny_model_dir, tiny_data_dir, out))
    message = str(failed.value)
    assert_one_line_naming(message, out / ckpt.CHECKPOINTS / "step-0000004", "No space left on device")
    assert message.endswith(f"training stopped at step 4, last good checkpoint: {out / ckpt.CHECKPOINTS}/"
                            "step-0000002; make room and continue with --resume")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]
    assert ckpt.checkpoint_problem(out / ckpt.CHECKPOINTS / "step-0000002") is None
    assert hidden(out) == []  # the half-written checkpoint was removed
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))
    assert losses(out) == losses(uninterrupted)


@pytest.mark.parametrize("kind", ["metrics.jsonl", "final", "best.json", "config.json"])
def test_other_training_writes_fail_the_same_way(tiny_model_dir, tiny_data_dir, tmp_path, uninterrupted, kind):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)  # a finished run, continued again: its files must stay as they are
    kept = ("final/adapter_model.safetensors", "metrics.jsonl", "best.json") + ((kind,) if kind == "config.json"
                                                                              else ())
    before = {name: (out / name).read_bytes() for name in kept}
    # metrics.jsonl: the atomic rewrite at the start (appends fail through metrics.py: the real full disk below)
    with injected_faults(f"eacces:{kind}:1"), pytest.raises(StorageError) as failed:
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))
    target = out / kind
    assert_one_line_naming(str(failed.value).split("; training stopped")[0], target, "Permission denied")
    assert {name: (out / name).read_bytes() for name in kept} == before
    assert hidden(out) == []
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))
    assert losses(out) == losses(uninterrupted)


class StubEmbedder:
    """What encode_file needs of an Embedder."""

    def encode(self, texts, batch_size=128, show_progress=True, desc=None):
        return np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4)


def test_an_encode_write_that_fails_keeps_the_previous_output(tmp_path):
    from embedtune.encode_files import encode_file

    texts, output = tmp_path / "in.txt", tmp_path / "out" / "vectors.npy"
    texts.write_text("one\ntwo\n")
    with injected_faults("enospc:encode:1"), pytest.raises(StorageError) as failed:
        encode_file(StubEmbedder(), texts, output, show_progress=False)
    assert str(failed.value).endswith(f"; no {output} was written")
    assert not output.exists() and hidden(tmp_path) == []
    output.write_bytes(b"previous")
    with injected_faults("enospc:encode:1"), pytest.raises(StorageError) as failed:
        encode_file(StubEmbedder(), texts, output, show_progress=False)
    assert_one_line_naming(str(failed.value), output, "No space left on device")
    assert str(failed.value).endswith(f"; the previous {output} is unchanged")
    assert output.read_bytes() == b"previous" and hidden(tmp_path) == []
    assert encode_file(StubEmbedder(), texts, output, show_progress=False) == 2  # room again: it works
    assert np.load(output).shape == (2, 4)


def test_an_export_write_that_fails_leaves_no_folder(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from embedtune.config import ModelConfig
    from embedtune.export import export_model

    out = tmp_path / "export"
    model = ModelConfig(name=str(tiny_model_dir), adapter=str(tiny_adapter_dir))
    with injected_faults("enospc:export:1"), pytest.raises(StorageError) as failed:
        export_model(model, out, adapter_only=True)
    assert_one_line_naming(str(failed.value), out, "No space left on device")
    assert str(failed.value).endswith(f"; no export was made (nothing under {out})")
    assert not out.exists() and hidden(tmp_path) == []
    assert (export_model(model, out, adapter_only=True) / "adapter_config.json").is_file()


def test_the_cli_prints_a_write_failure_as_one_line(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from embedtune.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir", str(out),
            "--batch-size", "8", "--max-steps", "4", "--save-steps", "2", "--eval-steps", "0", "--precision", "fp32"]
    with injected_faults("enospc:checkpoint:1"):
        assert main(args) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("embedtune:")]
    assert line.startswith(f"embedtune: error: cannot write {out / ckpt.CHECKPOINTS / 'step-0000002'}: "
                           "No space left on device (")
    assert line.endswith("continue with --resume") and "Traceback" not in err
    assert main([*args, "--resume"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002", "step-0000004"]


# ---- atomic writers under SIGKILL ------------------------------------------------------------------------------

def python(code: str, fault: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environ.pop(FAULT_ENV, None)
    if fault:
        environ[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)


def test_a_kill_between_moving_a_folder_aside_and_renaming_the_new_one_in_is_recovered(tmp_path):
    target = tmp_path / "best"
    code = (f"from embedtune.files import write_folder_atomically as w\n"
            f"for v in '12': w({str(target)!r}, lambda d: (d / 'v').write_text(v))\n")
    done = python(code, "kill-swap:best:2")
    assert done.returncode == -signal.SIGKILL and "SIGKILL at best #2" in done.stderr
    assert not target.exists() and (tmp_path / ".best-old" / "v").read_text() == "1"
    assert recover_folder(target) and (target / "v").read_text() == "1"  # the old, complete folder is back
    assert not recover_folder(target)
    write_folder_atomically(target, lambda d: (d / "v").write_text("3"))
    assert (target / "v").read_text() == "3"
    (left,) = remove_temporaries(tmp_path)  # the killed write's new folder
    assert left.name.startswith(f".best{TEMP_TAG}") and hidden(tmp_path) == []


def test_a_kill_in_the_middle_of_a_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    done = python(f"from embedtune.files import write_text_atomically as w\nw({str(path)!r}, 'x' * 1000)",
                  "kill:report.json:1")
    assert done.returncode == -signal.SIGKILL
    assert path.read_text() == "old"
    (partial,) = tmp_path.glob(f".report.json{TEMP_TAG}*")
    assert partial.stat().st_size == 500  # half of its bytes were on disk when it died
    assert remove_temporaries(tmp_path) == [partial] and hidden(tmp_path) == []
    write_text_atomically(path, "new")
    assert path.read_text() == "new"


# ---- the first-use GGUF conversion -----------------------------------------------------------------------------

FAKE_CONVERSION = """
import sys
from pathlib import Path
from transformers import AutoModel, AutoTokenizer
from embedtune.models import loading
tiny = sys.argv[1]
loading.gguf_architecture = lambda path: "llama"
loading._read_gguf = lambda path: (AutoModel.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny))
print(loading.gguf_to_hf_folder(Path(sys.argv[2])))
"""


def convert(tiny_model_dir, gguf: Path, cache: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "EMBEDTUNE_CACHE": str(cache)}
    environ.pop(FAULT_ENV, None)
    if fault:
        environ[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", FAKE_CONVERSION, str(tiny_model_dir), str(gguf)], env=environ,
                          capture_output=True, text=True, timeout=120)


def test_a_conversion_killed_half_way_is_redone_and_never_used(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    from embedtune.models import loading

    gguf, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF")
    done = convert(tiny_model_dir, gguf, cache, "kill:gguf-convert:1")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    made = sorted((cache / "hf").iterdir())
    assert [p.name.startswith(".") for p in made] == [True, True]  # a lock file and the half-made temporary
    assert list(cache.rglob(loading.CONVERTED_MARKER)) == []  # the marker is never in an incomplete folder
    # The next first use (here in-process, with the same fake reader) converts again.
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(cache))
    monkeypatch.setattr(loading, "gguf_architecture", lambda path: "llama")
    monkeypatch.setattr(loading, "_read_gguf", lambda path: (AutoModel.from_pretrained(tiny_model_dir),
                                                             AutoTokenizer.from_pretrained(tiny_model_dir)))
    source = loading.resolve_model(str(gguf))
    folder = Path(source.location)
    assert (folder / loading.CONVERTED_MARKER).is_file() and folder.parent == cache / "hf"
    assert [p.name for p in (cache / "hf").iterdir() if TEMP_TAG in p.name] == []  # the half-made one was removed
    model = loading.load_base_model(source)
    reference = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_a_failed_conversion_writer_leaves_nothing_and_a_half_made_folder_is_converted_again(
        tiny_model_dir, tmp_path, monkeypatch, caplog):
    from transformers import AutoModel, AutoTokenizer

    from embedtune.models import loading

    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    model, tokenizer = AutoModel.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)

    class Dies(torch.nn.Module):  # writes part of the weights, then fails as a crashing converter would
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "config.json").write_text("{}")
            (Path(folder) / "model.safetensors").write_bytes(b"\0" * 100)
            raise RuntimeError("converter died")

    monkeypatch.setattr(loading, "gguf_architecture", lambda path: "llama")
    monkeypatch.setattr(loading, "_read_gguf", lambda path: (Dies(), tokenizer))
    with pytest.raises(RuntimeError, match="converter died"):
        loading.gguf_to_hf_folder(gguf)
    hf = tmp_path / "cache" / "hf"
    assert [p.name for p in hf.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(loading, "_read_gguf", lambda path: (model, tokenizer))
    target = loading.gguf_to_hf_folder(gguf)
    # A folder without its marker at the target (an older embedtune's copy, a user's half copy): converted again.
    (target / loading.CONVERTED_MARKER).unlink()
    (target / "model.safetensors").write_bytes(b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        assert loading.gguf_to_hf_folder(gguf) == target
    assert any("incomplete conversion" in r.getMessage() for r in caplog.records)
    assert (target / loading.CONVERTED_MARKER).is_file()
    assert load_file(target / "model.safetensors").keys() == load_file(tiny_model_dir / "model.safetensors").keys()
    assert [p.name for p in hf.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


def test_a_bf16_copy_that_cannot_be_written_falls_back_to_the_fp32_folder(tiny_model_dir, tmp_path, caplog):
    from embedtune.models.loading import BF16_MARKER, CONVERTED_MARKER, ModelSource, load_base_model

    folder = tmp_path / "hf" / "tiny-0123456789abcdef"
    shutil.copytree(tiny_model_dir, folder)
    (folder / CONVERTED_MARKER).write_text('{"gguf": "tiny.gguf"}')
    with injected_faults("enospc:bf16-copy:1"), caplog.at_level(logging.WARNING, logger="embedtune"):
        model = load_base_model(ModelSource("tiny", str(folder), True), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert any("could not write a bf16 copy" in r.getMessage() and "No space left" in r.getMessage()
               for r in caplog.records)
    copy = folder.with_name(folder.name + "-bf16")
    assert not copy.exists() and [p.name for p in folder.parent.iterdir() if TEMP_TAG in p.name] == []
    load_base_model(ModelSource("tiny", str(folder), True), dtype=torch.bfloat16)  # room again: written once
    assert (copy / BF16_MARKER).is_file()


# ---- real small and read-only file systems (tmpfs; needs root) -------------------------------------------------

class SmallDisk(type(Path())):
    def remount(self, mode: str) -> None:
        """Make the file system read-only ("ro") or writable again ("rw")."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for this test (a SmallDisk path: it can be made read-only)."""
    mount = SmallDisk(tmp_path / "disk")
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


class AtStep(Callback):
    """Runs `action` at the end of step `step` (before that step's checkpoint)."""

    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_step_end(self, state, event):
        if state.step == self.step:
            self.action()


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_real_full_or_read_only_disk_stops_training_in_one_line_and_resume_works(
        small_disk, tiny_model_dir, tiny_data_dir, uninterrupted, fault):
    out = small_disk / "run"
    break_disk = (lambda: fill(small_disk)) if fault == "full" else (lambda: small_disk.remount("ro"))
    with pytest.raises(StorageError) as failed:
        train(tiny_config(tiny_model_dir, tiny_data_dir, out), callbacks=[AtStep(3, break_disk)])
    message = str(failed.value)
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert "\n" not in message and isinstance(failed.value, EmbedtuneError)
    assert message.startswith(f"cannot write {out}/") and f": {reason} (" in message and " free there)" in message
    assert message.endswith(f"last good checkpoint: {out / ckpt.CHECKPOINTS}/step-0000002; make room and continue "
                            "with --resume")
    if fault == "full":
        assert re.search(r" \((\d+ B|\d+\.\d KiB) free there\)", message), message
        (small_disk / "filler").unlink()
    else:
        small_disk.remount("rw")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]
    assert ckpt.checkpoint_problem(out / ckpt.CHECKPOINTS / "step-0000002") is None
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, resume=True))
    assert losses(out) == losses(uninterrupted)
    assert hidden(out) == []


def test_encode_onto_a_read_only_disk_keeps_the_previous_output(small_disk, tmp_path):
    from embedtune.encode_files import encode_file

    texts, output = tmp_path / "in.txt", small_disk / "vectors.npy"
    texts.write_text("one\ntwo\n")
    output.write_bytes(b"previous")
    small_disk.remount("ro")
    with pytest.raises(StorageError) as failed:
        encode_file(StubEmbedder(), texts, output, show_progress=False)
    assert_one_line_naming(str(failed.value), output, "Read-only file system")
    assert output.read_bytes() == b"previous"
