"""Typed configuration of the data half. One source of truth; logged whole with every run.

Fields left as None take the default of the source format (see `resolve_defaults`): MovieLens
presets follow the reference tutorial's protocol (user sessions, session-end split, 100 days),
click logs use their own session ids and a leakage-free global cut on the last day.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SourceFormat(str, Enum):
    ML_1M = "ml-1m"
    ML_100K = "ml-100k"
    ML_LATEST = "ml-latest"
    YOOCHOOSE = "yoochoose"
    GRU4REC_TSV = "gru4rec-tsv"
    DIGINETICA = "diginetica"
    CSV = "csv"
    PARQUET = "parquet"


MOVIELENS_FORMATS = {SourceFormat.ML_1M, SourceFormat.ML_100K, SourceFormat.ML_LATEST}
# Formats whose rows carry their own session id (as opposed to a user id).
SESSION_ID_FORMATS = {SourceFormat.YOOCHOOSE, SourceFormat.GRU4REC_TSV, SourceFormat.DIGINETICA}

# Rating domains (inclusive) of the sources that have ratings.
RATING_DOMAINS: dict[SourceFormat, tuple[float, float]] = {
    SourceFormat.ML_1M: (1.0, 5.0),
    SourceFormat.ML_100K: (1.0, 5.0),
    SourceFormat.ML_LATEST: (0.5, 5.0),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class ColumnMapping(_Strict):
    """How to read a generic CSV/Parquet log: which column is what, and how time is written."""

    session: str = Field(description="Column holding the session id (or user id).")
    item: str = Field(description="Column holding the item id.")
    time: str = Field(description="Column holding the event time.")
    rating: str | None = Field(default=None, description="Optional rating column.")
    time_unit: Literal["s", "ms", "us", "ns", "iso", "format"] = Field(
        default="s", description="Epoch unit of the time column, 'iso' for ISO-8601, or 'format' (see time_format)."
    )
    time_format: str | None = Field(default=None, description="strftime format when time_unit='format'.")
    separator: str = Field(default=",", description="CSV field separator (single byte).")

    @model_validator(mode="after")
    def _check(self) -> ColumnMapping:
        if self.time_unit == "format" and not self.time_format:
            raise ValueError("time_unit='format' needs time_format, e.g. '%Y-%m-%d %H:%M:%S'")
        if len(self.separator.encode()) != 1:
            raise ValueError(f"separator must be a single byte, got {self.separator!r}")
        return self


class IngestConfig(_Strict):
    source: str | None = Field(
        default=None,
        description="The log: a file (.gz or .zip too), a directory of files (e.g. daily dumps, searched "
        "recursively; hidden, _-prefixed and temporary files ignored) or a glob such as "
        "'events/date=*/part-*.parquet'. Each file is read once and cached by content. None: download "
        "MovieLens-1M from GroupLens (or use $GRU4REC_ML1M_PATH).",
    )
    format: SourceFormat | None = Field(default=None, description="Source format; None = detect from name and content.")
    test_source: str | None = Field(default=None, description="Test file for split='given'.")
    valid_source: str | None = Field(default=None, description="Optional validation file for split='given'.")
    columns: ColumnMapping | None = Field(default=None, description="Column mapping for format csv/parquet.")
    window_days: float | None = Field(
        default=None,
        gt=0,
        description="Rolling window: keep only the events of the last N days before the newest event "
        "(None = all), cut at ingest.",
    )
    data_dir: str | None = Field(
        default=None, description="Download cache directory; None = $GRU4REC_DATA_DIR or ~/.cache/gru4rec-pipeline."
    )


class SplitConfig(_Strict):
    session: Literal["user", "gap", "source"] | None = Field(
        default=None, description="Session definition; None = 'user' for MovieLens, 'source' for click logs."
    )
    gap_minutes: float = Field(default=30.0, gt=0, description="For session='gap': split where the gap exceeds this.")
    remove_repeats: bool = Field(default=False, description="Drop consecutive repeats of the same item in a session.")
    min_session_length: int = Field(default=2, ge=1, description="Sessions with fewer events are dropped.")
    min_item_support: int = Field(default=5, ge=1, description="Items with fewer events are dropped (repeatedly).")
    split: Literal["session-end", "global-cut", "given"] | None = Field(
        default=None,
        description="None = 'session-end' for MovieLens, 'global-cut' for click logs, 'given' with test_source.",
    )
    test_days: float | None = Field(default=None, gt=0, description="N: test window in days (MovieLens 100, clicks 1).")
    valid_days: float | None = Field(default=None, gt=0, description="Validation window; None = same as test_days.")
    min_test_sessions: int = Field(default=10, ge=1, description="Fewer test (or validation) sessions is an error.")


def resolve_split_defaults(split: SplitConfig, fmt: SourceFormat, has_test_source: bool) -> SplitConfig:
    """Fill the None fields of a SplitConfig with the defaults of the source format."""
    movielens = fmt in MOVIELENS_FORMATS
    values = split.model_dump()
    if values["split"] is None:
        values["split"] = "given" if has_test_source else ("session-end" if movielens else "global-cut")
    if values["session"] is None:
        if fmt in SESSION_ID_FORMATS:
            values["session"] = "source"
        elif movielens:
            values["session"] = "user"
        else:
            values["session"] = "gap"
    if values["test_days"] is None:
        values["test_days"] = 100.0 if movielens else 1.0
    if values["valid_days"] is None:
        values["valid_days"] = values["test_days"]
    return SplitConfig(**values)


def default_data_dir(cfg: IngestConfig) -> Path:
    import os

    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    env = os.environ.get("GRU4REC_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gru4rec-pipeline"
