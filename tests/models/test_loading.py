"""Model loading: the bf16 copy of converted GGUF folders."""
from __future__ import annotations

import shutil

import torch

from embedtune.models.loading import CONVERTED_MARKER, ModelSource, load_base_model


def _converted_folder(tiny_model_dir, tmp_path):
    """A copy of the tiny model marked as one of our GGUF conversions."""
    folder = tmp_path / "hf" / "tiny-0123456789abcdef"
    shutil.copytree(tiny_model_dir, folder)
    (folder / CONVERTED_MARKER).write_text('{"gguf": "tiny.gguf"}')
    return folder


def test_bf16_loads_of_a_converted_folder_use_a_bf16_copy_with_the_same_values(tiny_model_dir, tmp_path):
    folder = _converted_folder(tiny_model_dir, tmp_path)
    source = ModelSource("tiny", str(folder), True)
    model = load_base_model(source, dtype=torch.bfloat16)
    copy = folder.with_name(folder.name + "-bf16")
    assert (copy / "config.json").is_file()
    fp32 = load_base_model(source, dtype=torch.float32)
    for (name, a), (_, b) in zip(model.state_dict().items(), fp32.state_dict().items(), strict=True):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16)), name
    # the second bf16 load reads the copy, without writing it again
    before = (copy / "model.safetensors").stat().st_mtime_ns
    load_base_model(source, dtype=torch.bfloat16)
    assert (copy / "model.safetensors").stat().st_mtime_ns == before


def test_user_folders_are_never_copied(tiny_model_dir, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(tiny_model_dir, folder)
    load_base_model(ModelSource("mine", str(folder), True), dtype=torch.bfloat16)
    assert not folder.with_name("mine-bf16").exists()
