"""Items already seen in the session: how often the data repeats them, and whether to exclude them.

Some logs have no repeat consumption — a MovieLens user rates a film once, so the next item is
never one already in the session — while in click logs people go back to items they viewed
(YooChoose, DIGINETICA: 15–24 % of (session, item) pairs occur more than once). Excluding the
session's items from the recommendations helps on the first kind and costs every repeated target
on the second. :func:`repeat_stats` measures the share of repeated (session, item) pairs in the
training data (vectorised, Polars) and :func:`resolve_exclude_seen` turns the setting
``"auto" | "true" | "false"`` into a decision: ``auto`` excludes seen items when fewer than
:data:`REPEAT_SHARE_THRESHOLD` (1 %) of the pairs repeat.

Why 1 %: the datasets at hand fall into two groups far apart (``benchmarks/seen_items.py``, figures
in the README): MovieLens (ML-100K, the ML-1M subset) has no repeated pair at all, the click logs
(YooChoose, DIGINETICA samples) 15–24 %, where about a third of the test targets are items already
in their session. Excluding seen items raised every model's Recall@20 and MRR@20 on ML-100K by
28–69 % and halved GRU4Rec's on YooChoose. Under 1 % of pairs repeated, repeats are too rare for
the targets they cost to outweigh that gain; the line lies far from both groups, so small changes
of a log or its session definition do not flip the default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import polars as pl

from gru4rec.errors import ConfigError

REPEAT_SHARE_THRESHOLD = 0.01  # auto: exclude seen items when under 1 % of (session, item) pairs repeat

ExcludeSeen = Literal["auto", "true", "false"]
EXCLUDE_SEEN_CHOICES: tuple[str, ...] = ("auto", "true", "false")
_WORDS = {"true": "true", "yes": "true", "1": "true", "on": "true", "false": "false", "no": "false", "0": "false"}
_WORDS |= {"off": "false", "auto": "auto"}


@dataclass(frozen=True)
class RepeatStats:
    """How often items recur within a session."""

    events: int
    pairs: int  # distinct (session, item) pairs
    repeated_pairs: int  # pairs that occur two or more times in their session
    repeat_share: float  # repeated_pairs / pairs (0 for no data)
    repeat_event_share: float  # (events - pairs) / events: events that return to an item seen before

    def to_dict(self) -> dict:
        return asdict(self)


def repeat_stats(
    events: pl.DataFrame | pl.LazyFrame, session: str = "session_id", item: str = "item_idx"
) -> RepeatStats:
    """Count (session, item) pairs and how many of them occur more than once (one group-by)."""
    counts = events.lazy().group_by(session, item).agg(pl.len().alias("n"))
    row = counts.select(
        pl.col("n").sum().alias("events"),
        pl.len().alias("pairs"),
        (pl.col("n") > 1).sum().alias("repeated"),
    ).collect()
    n_events = int(row["events"][0] or 0)
    pairs = int(row["pairs"][0] or 0)
    repeated = int(row["repeated"][0] or 0)
    return RepeatStats(
        events=n_events,
        pairs=pairs,
        repeated_pairs=repeated,
        repeat_share=repeated / pairs if pairs else 0.0,
        repeat_event_share=(n_events - pairs) / n_events if n_events else 0.0,
    )


def default_exclude_seen(repeat_share: float, threshold: float = REPEAT_SHARE_THRESHOLD) -> bool:
    """The ``auto`` rule: exclude the session's items when repeats are rare (share < threshold)."""
    return repeat_share < threshold


def normalise_setting(value: object) -> ExcludeSeen:
    """``True``/``False``/``"auto"`` and their spellings (``yes``, ``0``, ``False`` …) as ``auto|true|false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]  # type: ignore[return-value]
    raise ConfigError(f"exclude_seen must be one of auto, true, false; got {value!r}")


def resolve_exclude_seen(setting: object, repeat_share: float | None) -> bool:
    """The decision for a setting: ``true``/``false`` as given, ``auto`` from the measured share."""
    setting = normalise_setting(setting)
    if setting != "auto":
        return setting == "true"
    if repeat_share is None:
        raise ConfigError("exclude_seen='auto' needs the training data's repeat share")
    return default_exclude_seen(repeat_share)


def seen_items_record(setting: object, stats: RepeatStats, measured_on: str) -> dict:
    """What a model directory, an evaluation report and an MLflow run record about the decision."""
    setting = normalise_setting(setting)
    return {
        "setting": setting,
        "exclude_seen": resolve_exclude_seen(setting, stats.repeat_share),
        "threshold": REPEAT_SHARE_THRESHOLD,
        "measured_on": measured_on,
        **stats.to_dict(),
    }
