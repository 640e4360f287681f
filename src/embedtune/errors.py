"""The program's own errors. The CLI prints any of them as one line, without a traceback."""
from __future__ import annotations


class EmbedtuneError(Exception):
    """Base class: an error the user can act on, shown as one line."""


class ConfigError(EmbedtuneError):
    """An invalid option, flag or config-file key."""


class ModelError(EmbedtuneError):
    """A model that cannot be found, loaded, or used as asked."""


class DataError(EmbedtuneError):
    """Bad input data, located as precisely as possible: file, line, field."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field = file, line, field
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [where] if where else []
        if field is not None:
            parts.append(f"field '{field}'")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class TrainingError(EmbedtuneError):
    """A training run that cannot go on (e.g. a non-finite loss)."""


class TrainingStopped(EmbedtuneError):
    """A run stopped on request (SIGINT/SIGTERM) after saving a checkpoint."""


class StorageError(EmbedtuneError, OSError):
    """A file that could not be written (full disk, read-only folder): one line with the path, the reason and the
    free space there. Also an OSError, so that code expecting one (a read-only cache) still catches it."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
