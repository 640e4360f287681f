"""`export --push-to-hub`: one commit to the hub through huggingface_hub, against a fake hub on loopback.

The fake answers the routes HfApi.create_repo and HfApi.upload_folder call (create repo, README metadata
validation, preupload, the NDJSON commit) and can refuse any of them with a status, as the hub does.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.errors import ConfigError
from embedtune.export.card import CITATION, model_card
from embedtune.export.hub import HubError, check_repo_id, push_folder, resolve_token

TOKEN = "hf_test_token"


class FakeHub:
    """The hub's state as the fake server holds it: repositories, commits, the requests seen, refusals to make."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool}
        self.commits: list[dict] = []  # {"repo": id, "summary": str, "files": {path: bytes}}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.refuse: dict[str, int] = {}  # route name (create, preupload, commit) -> status to answer
        self.url = ""  # its address, set once the server listens (URLs it returns must point at it)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        parts = path.split("?")[0].strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            return self._answer("create", lambda: self._create(json.loads(body)))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {}
        if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self._answer("preupload", lambda: {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            return self._answer("commit", lambda: self._commit(f"{parts[2]}/{parts[3]}", body))
        return 404, {"error": f"no route {method} {path}"}

    def _answer(self, route: str, ok) -> tuple[int, dict]:
        if route in self.refuse:
            return self.refuse[route], {"error": f"refused by the fake hub ({route})"}
        return 200, ok()

    def _create(self, payload: dict) -> dict:
        repo = f"{payload['organization']}/{payload['name']}"
        self.repos.setdefault(repo, {"private": payload.get("visibility") == "private"})
        return {"url": f"{self.url}/{repo}", "name": repo}

    def _commit(self, repo: str, body: bytes) -> dict:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                 for line in lines if line["key"] == "file"}
        self.commits.append({"repo": repo, "summary": header["summary"], "files": files})
        return {"commitUrl": f"{self.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake hub on 127.0.0.1 (HF_ENDPOINT points at it); no token anywhere unless a test gives one."""
    hub = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
            self._reply(*hub.handle("POST", self.path, body))

        def do_GET(self) -> None:  # noqa: N802
            hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
            self._reply(*hub.handle("GET", self.path, b""))

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import huggingface_hub.constants as hf_constants

    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))  # no saved login
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def export_folder(tmp_path) -> Path:
    """A small folder shaped like an export (files in subfolders too)."""
    folder = tmp_path / "export"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "onnx").mkdir()
    (folder / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n# card\n")
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_lasttoken": true}')
    (folder / "onnx" / "model.onnx").write_bytes(bytes(range(256)) * 8)
    return folder


def test_push_is_one_commit_with_every_file(fake_hub, export_folder):
    url = push_folder(export_folder, "my-org/tiny-embedder", token=TOKEN, private=True)
    assert url == f"{fake_hub.url}/my-org/tiny-embedder/commit/{'a' * 40}"
    assert fake_hub.repos == {"my-org/tiny-embedder": {"private": True}}
    assert len(fake_hub.commits) == 1
    files = fake_hub.commits[0]["files"]
    local = {p.relative_to(export_folder).as_posix(): p.read_bytes() for p in export_folder.rglob("*") if p.is_file()}
    assert files == local
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in fake_hub.requests)


@pytest.mark.parametrize("route,status", [("commit", 401), ("commit", 403), ("commit", 409), ("commit", 500),
                                          ("preupload", 403), ("create", 401)])
def test_a_refused_upload_publishes_nothing_and_says_so(fake_hub, export_folder, route, status, monkeypatch):
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda seconds: None)  # huggingface_hub retries a 500 with back-off
    fake_hub.refuse[route] = status
    with pytest.raises(HubError) as err:
        push_folder(export_folder, "my-org/tiny-embedder", token=TOKEN)
    message = str(err.value)
    assert "\n" not in message and f"HTTP {status}" in message and "nothing was published" in message
    assert str(export_folder) in message  # where the export still is
    assert fake_hub.commits == []


def test_an_unreachable_hub_is_one_line(fake_hub, export_folder, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match=r"^creating the repository of my-org/x failed: .*nothing was published"):
        push_folder(export_folder, "my-org/x", token=TOKEN)


@pytest.mark.parametrize("name", ["tiny", "a/b/c", "/tiny", "org/", "org/na me", "org/-x", "org/x-", "org/x--y",
                                  "org/x..y", "org/x.git", "org/" + "n" * 97, "org/ünï", "org/x?y", ""])
def test_bad_hub_names_are_one_line_naming_the_value(name):
    with pytest.raises(ConfigError) as err:
        check_repo_id(name)
    assert "\n" not in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["my-org/tiny-embedder", "user_1/Model.v2", "a/b", "org/" + "n" * 96])
def test_good_hub_names_pass(name):
    assert check_repo_id(name) == name


def test_token_from_flag_environment_or_saved_login(fake_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    with pytest.raises(ConfigError, match=r"^--push-to-hub needs a Hugging Face token .*HF_TOKEN.*hf auth login"):
        resolve_token(None)
    with pytest.raises(ConfigError, match="--token is empty"):
        resolve_token("  ")
    saved = tmp_path / "login" / "token"
    saved.parent.mkdir()
    saved.write_text("hf_saved")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(saved))
    assert resolve_token(None) == "hf_saved"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token(None) == "hf_env"
    assert resolve_token("hf_flag") == "hf_flag"


def cli_export(model_dir, out, *extra) -> list[str]:
    return ["export", "--model", str(model_dir), "--out", str(out), "--max-length", "32", *extra]


def test_cli_exports_and_publishes(fake_hub, tiny_model_dir, tiny_adapter_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "exported"
    assert main(cli_export(tiny_model_dir, out, "--adapter", str(tiny_adapter_dir),
                           "--push-to-hub", "my-org/tiny-embedder", "--private")) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"exported to {out}", f"published {out} to {fake_hub.url}/my-org/tiny-embedder/commit/{'a' * 40}"]
    (commit,) = fake_hub.commits
    assert fake_hub.repos["my-org/tiny-embedder"]["private"] is True
    assert set(commit["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json", "README.md",
            "embedtune_export.json"} <= set(commit["files"])
    card = commit["files"]["README.md"].decode()
    assert "arXiv:2408.00690" in card and "Ukarapol" in card


def test_cli_without_a_token_stops_before_the_export(fake_hub, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(cli_export(tiny_model_dir, out, "--push-to-hub", "my-org/x")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedtune: error: --push-to-hub needs a Hugging Face token")
    assert not out.exists() and fake_hub.requests == []


@pytest.mark.parametrize("extra,message", [
    (["--push-to-hub", "no-slash"], "--push-to-hub takes ORG/NAME"),
    (["--push-to-hub", "org/x--y", "--token", TOKEN], "is not a hub name"),
    (["--private"], "--private goes with --push-to-hub ORG/NAME"),
    (["--token", TOKEN], "--token goes with --push-to-hub ORG/NAME"),
])
def test_cli_bad_hub_requests_fail_before_the_export(fake_hub, tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(cli_export(tiny_model_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() and fake_hub.requests == []


def test_cli_refused_upload_is_not_reported_as_published(fake_hub, tiny_model_dir, tmp_path, capsys):
    fake_hub.refuse["commit"] = 403
    out = tmp_path / "exported"
    assert main(cli_export(tiny_model_dir, out, "--push-to-hub", "my-org/x", "--token", TOKEN)) == 2
    captured = capsys.readouterr()
    assert "published" not in captured.out and fake_hub.commits == []
    (line,) = captured.err.strip().splitlines()[-1:]
    assert line == (f"embedtune: error: the upload of my-org/x failed: HTTP 403, the token may not write there "
                    f"(refused by the fake hub (commit)); nothing was published (the export stays in {out})")
    assert (out / "model.safetensors").is_file()  # the local export is kept


def test_card_has_data_counts_matryoshka_dims_scores_and_citation(tiny_model_dir):
    meta = {"format": "sentence-transformers", "base_model": str(tiny_model_dir), "adapter": "runs/x/final",
            "pooling": "eos", "prompt": "", "max_length": 32, "eos_appended": True, "dimensions": 64,
            "matryoshka_dims": [64, 32, 16], "versions": {"embedtune": "0"}}
    scores = {"model": "x", "tasks": {"sts12": {"spearman": 70.5, "n": 10}}, "average": 70.5, "std": 0.0}
    info = {"scores": scores, "config": {"train": {"lr": 0.0005}}, "data": {"read": 1000, "duplicate": 3, "kept": 990}}
    card = model_card(meta, info)
    assert "## Matryoshka dimensions" in card and "64, 32, 16" in card
    assert "| read | 1000 |" in card and "| kept | 990 |" in card
    assert "STS12" in card and "70.50" in card and "lr: 0.0005" in card
    assert CITATION in card and "arXiv:2408.00690" in CITATION
    # Without the export's record, the training config's dims are shown; without either, no section.
    assert "16, 8" in model_card({**meta, "matryoshka_dims": None},
                                 {"config": {"train": {"matryoshka_dims": [16, 8]}}})
    assert "Matryoshka" not in model_card({**meta, "matryoshka_dims": None}, {})


def test_card_reads_the_data_counts_of_the_run(tmp_path):
    from embedtune.export.card import discover_card_info

    adapter = tmp_path / "run" / "final"
    adapter.mkdir(parents=True)
    (tmp_path / "run" / "data_report.json").write_text(json.dumps({"read": 12, "kept": 10, "duplicate": 2}))
    assert discover_card_info(adapter)["data"] == {"read": 12, "kept": 10, "duplicate": 2}
