"""User-facing errors. Each names what is wrong (file, line, column, value) and, where it can, the fix."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base class: an error whose message is meant for the person running the pipeline."""


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
