"""embedtune_export.json (models/export_format.py): what the writer writes is what the format declares, and the
reader takes back the valid settings only."""
from __future__ import annotations

import json
from types import SimpleNamespace

from embedtune.config import ModelConfig
from embedtune.models.export_format import (
    ADAPTER_FORMAT,
    EXPORT_INFO_FILE,
    FIELDS,
    FORMAT_VERSION,
    LOADED_FIELDS,
    MERGED_FORMAT,
    export_info,
    read_export_info,
    saved_export_settings,
    write_export_info,
)

EMBEDDER = SimpleNamespace(pooling="mean", prompt="query: {}", max_length=128, num_layers=2, eos_id=1,
                           hidden_size=64)


def test_the_writer_writes_every_declared_field_and_only_those():
    for merged in (True, False):
        info = export_info(EMBEDDER, ModelConfig(name="base", adapter="run/final"), merged=merged)
        assert list(info) == list(FIELDS)
        assert info["format"] == (MERGED_FORMAT if merged else ADAPTER_FORMAT)
        assert info["format_version"] == FORMAT_VERSION == 1
        assert (info["eos_appended"], info["prompt_in_tokenizer"]) == ((True, True) if merged else (None, False))
        assert (info["adapter"], info["dimensions"], info["num_layers"]) == ("run/final", 64, 2)
    assert set(LOADED_FIELDS) <= set(FIELDS)


def test_an_adapters_settings_come_back_as_written(tmp_path):
    info = export_info(EMBEDDER, ModelConfig(name="base"), merged=False)
    path = write_export_info(tmp_path, info)
    assert path == tmp_path / EXPORT_INFO_FILE and json.loads(path.read_text(encoding="utf-8")) == info
    assert read_export_info(tmp_path) == info
    assert saved_export_settings(tmp_path) == {"pooling": "mean", "prompt": "query: {}", "max_length": 128,
                                               "num_layers": 2}


def test_a_merged_exports_prompt_is_in_its_tokenizer_so_it_comes_back_empty(tmp_path):
    write_export_info(tmp_path, export_info(EMBEDDER, ModelConfig(name="base"), merged=True))
    assert saved_export_settings(tmp_path)["prompt"] == ""


def test_bad_or_missing_values_are_ignored_and_old_files_still_read(tmp_path):
    assert read_export_info(tmp_path) == {} and saved_export_settings(tmp_path) == {}  # no file: nothing recorded
    (tmp_path / EXPORT_INFO_FILE).write_text("{not json")
    assert saved_export_settings(tmp_path) == {}  # a broken file must not stop a load
    write_export_info(tmp_path, {"pooling": "max", "prompt": 3, "max_length": True, "num_layers": 0})
    assert saved_export_settings(tmp_path) == {}
    write_export_info(tmp_path, {"format": ADAPTER_FORMAT, "pooling": "cls", "max_length": 1.5, "num_layers": 1})
    assert saved_export_settings(tmp_path) == {"pooling": "cls", "num_layers": 1}  # written before format_version
