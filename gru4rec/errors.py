"""User-facing errors. Each names what is wrong (file, line, column, value) and, where it can, the fix."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base class: an error whose message is meant for the person running the pipeline.

    ``transient`` says whether trying again may succeed (a network timeout); most of ours are
    permanent (bad data, bad settings), and `is_transient` is the one place that decides.
    """

    transient: bool = False


# OSErrors that trying again will not fix: a missing file, bad permissions, a bad path.
PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException | None) -> bool:
    """True for failures worth retrying (I/O and network hiccups), False for bad data or settings."""
    if exc is None:
        return False
    if isinstance(exc, PipelineError):
        return bool(exc.transient)
    if isinstance(exc, PERMANENT_OS_ERRORS):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def raise_if_transient(exc: BaseException) -> None:
    """Call first in an ``except`` that turns errors into permanent ones: transient errors pass unchanged."""
    if is_transient(exc):
        raise exc


class ConfigError(PipelineError):
    """A setting is invalid or settings contradict each other."""


class DataFormatError(PipelineError):
    """The input cannot be read as the expected format (before any validation)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        value: Any = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.line, self.column, self.value, self.hint = file, line, column, value, hint
        where = []
        if file is not None:
            where.append(f"file {file}")
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        if value is not None:
            shown = repr(value)
            where.append(f"value {shown[:80] + '…' if len(shown) > 80 else shown}")
        text = message + (f" ({', '.join(where)})" if where else "")
        if hint:
            text += f". {hint}"
        super().__init__(text)


class SourceUnavailableError(PipelineError):
    """A source could not be fetched (offline, bad checksum) and no local copy was named."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        self.transient = transient
        super().__init__(message)


class DataValidationError(PipelineError):
    """The events failed one or more data-quality expectations. Not retried."""

    def __init__(self, message: str, failures: list[dict] | None = None, report_path: str | None = None):
        self.failures = failures or []
        self.report_path = report_path
        super().__init__(message)


class SplitError(PipelineError):
    """Sessionizing/splitting produced an unusable split (e.g. empty test set)."""


class ModelFileError(PipelineError):
    """A saved model or checkpoint is missing, corrupt or does not match the code/config."""


class TrainingError(PipelineError):
    """Training diverged (NaN/inf) or cannot proceed."""


def validation_errors_text(error) -> str:
    """A pydantic ValidationError as one readable line: ``setting: problem (got value); ...``."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # our validators' messages name the setting
        shown = err.get("input")
        got = f" (got {shown!r})" if "input" in err and not isinstance(shown, dict) else ""
        parts.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return "; ".join(parts)
