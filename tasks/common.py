"""Retry policy shared by the pipeline's tasks: retry transient I/O failures only."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from gru4rec.errors import PipelineError

# Errors that will not go away by trying again: a missing file, bad permissions, a bad path.
_PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s, ... (capped by retries)
RETRY_JITTER = 0.5  # ±50% so parallel runs don't retry in lockstep


def is_transient(exc: BaseException | None) -> bool:
    """True for failures worth retrying: I/O hiccups, not bad data or bad configuration."""
    if exc is None:
        return False
    if getattr(exc, "transient", False):
        return True
    if isinstance(exc, PipelineError):
        return False
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only when the failure was transient."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # the state could not give its exception back: judge by that error
        exc = e
    return is_transient(exc if isinstance(exc, BaseException) else None)


RETRY_OPTIONS = dict(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_transient_only,
)
