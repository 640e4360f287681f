"""Publishing an export on the Hugging Face Hub: `embedtune export --push-to-hub ORG/NAME [--private] [--token T]`.

Everything that can be checked locally is checked before the (slow) export: the repository name and a token
(--token, else HF_TOKEN, else the login `hf auth login` saved). The upload itself is one commit (create_repo,
then upload_folder): the hub applies a commit whole or not at all, so a refused or broken upload leaves the
repository as it was, and the command says that nothing was published. HF_ENDPOINT is read when the upload
starts (huggingface_hub reads it once, at import), so a private hub or a test server can stand in.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import ConfigError, EmbedtuneError

REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")  # the hub's rule for a user/org and a name
MAX_NAME_LENGTH = 96
TOKEN_HELP = "pass --token, set HF_TOKEN, or log in once with `hf auth login`"
REFUSALS = {401: "the token was not accepted", 402: "the hub asks for payment", 403: "the token may not write there",
            404: "the repository was not found", 409: "the hub reported a conflict",
            413: "the upload is too large", 429: "too many requests"}


class HubError(EmbedtuneError):
    """An upload the hub refused or that did not complete: nothing was published."""


@dataclass(frozen=True)
class HubTarget:
    """Where an export goes: a checked ORG/NAME, the token, and whether the repository is private."""

    repo_id: str
    token: str
    private: bool = False

    @classmethod
    def from_flags(cls, repo_id: str | None, *, token: str | None = None, private: bool = False) -> HubTarget | None:
        """export's --push-to-hub, --token and --private: the target, None without --push-to-hub (and then the
        other two are a mistake), or a one-line ConfigError."""
        if repo_id is None:
            for flag, given in (("--private", private), ("--token", token is not None)):
                if given:
                    raise ConfigError(f"{flag} goes with --push-to-hub ORG/NAME")
            return None
        return cls.resolve(repo_id, token=token, private=private)

    @classmethod
    def resolve(cls, repo_id: str, *, token: str | None = None, private: bool = False) -> HubTarget:
        """The target, or a one-line ConfigError for a bad name or no token (before anything is written)."""
        return cls(check_repo_id(repo_id), resolve_token(token), private)

    def push(self, folder: str | Path, message: str | None = None) -> str:
        """Upload `folder` as one commit (creating the repository if needed); the commit's URL."""
        return push_folder(folder, self.repo_id, token=self.token, private=self.private, message=message)


def check_repo_id(repo_id: str) -> str:
    """ORG/NAME as the hub accepts it (letters, digits, '-', '_', '.'; no '--' or '..'; up to 96 characters)."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--push-to-hub takes ORG/NAME (a user or organisation and a model name), not {repo_id!r}")
    for part in parts:
        if not REPO_PART.fullmatch(part) or "--" in part or ".." in part or len(part) > MAX_NAME_LENGTH:
            raise ConfigError(f"--push-to-hub: {part!r} in {repo_id!r} is not a hub name (letters, digits, '-', "
                              f"'_' and '.', starting and ending with a letter or digit, no '--' or '..', at most "
                              f"{MAX_NAME_LENGTH} characters)")
    if parts[1].endswith(".git"):
        raise ConfigError(f"--push-to-hub: a model name may not end with '.git', got {repo_id!r}")
    return repo_id


def resolve_token(token: str | None) -> str:
    """--token, else the one huggingface_hub finds (HF_TOKEN, then the saved login); ConfigError without one."""
    if token is not None and not token.strip():
        raise ConfigError(f"--token is empty; {TOKEN_HELP}")
    if token:
        return token.strip()
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise ConfigError(f"--push-to-hub needs a Hugging Face token with write access: {TOKEN_HELP}")
    return found


def push_folder(folder: str | Path, repo_id: str, *, token: str, private: bool = False,
                message: str | None = None) -> str:
    """Create `repo_id` (kept if it exists) and upload every file of `folder` in one commit; the commit's URL.
    HubError (one line, saying nothing was published) when the hub refuses or the connection fails."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    stage = "creating the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        stage = "the upload"
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=message or "Upload embedding model exported by embedtune")
    except Exception as err:  # refused, unreachable, bad card metadata...: one line, and nothing was published
        raise HubError(f"{stage} of {repo_id} failed: {describe(err)}; nothing was published "
                       f"(the export stays in {folder})") from None
    return str(commit.commit_url or commit)


def describe(err: Exception) -> str:
    """One line for a failed hub call: the HTTP status and what it means, else the error's own first line."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        server = (getattr(err, "server_message", None) or "").strip().splitlines()
        detail = f" ({server[0][:200]})" if server else ""
        return f"HTTP {status}, {REFUSALS.get(status, 'the hub refused it')}{detail}"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first[:300]}"
