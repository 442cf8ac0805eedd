"""What the pipeline's tasks share: the retry policy (retry transient failures only; which failures
are transient is decided in one place, `gru4rec.errors.is_transient`) and how numbers are shown.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from gru4rec.errors import is_transient

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s
RETRY_JITTER = 0.5  # ±50% so parallel runs don't retry in lockstep


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


def readable(value: Any) -> str:
    """A number for people (logs, artifacts, messages): 4 significant digits, trailing zeros kept so
    a column lines up (7.000, 0.03068), thousands separators from 1,000 on (12,086); None → "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if abs(value) >= 1000 or isinstance(value, int):
        return f"{value:,.0f}"
    return f"{value:#.4g}"
