"""Tiny synthetic interaction logs and split directories for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from gru4rec.data.config import SourceFormat, SplitConfig
from gru4rec.data.splitter import make_split

DAY = 86_400_000


def synthetic_split(directory: Path, n_sessions: int = 120, n_items: int = 30, seed: int = 0) -> Path:
    """A split directory of short click sessions with a learnable pattern (item i → i+1).

    Sessions start one per hour over n_sessions hours; the last 10% of days are test, the 10% before
    them validation (global cut), so all three splits are non-empty.
    """
    rng = np.random.default_rng(seed)
    keys, items, times = [], [], []
    for s in range(n_sessions):
        start = int(rng.integers(0, n_items))
        length = int(rng.integers(3, 8))
        for j in range(length):
            keys.append(s)
            items.append((start + j) % n_items)
            times.append(s * 3_600_000 + j * 60_000)
    events = directory / "events.parquet"
    directory.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"session_key": keys, "item_id": items, "timestamp": times},
        schema={"session_key": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64},
    ).write_parquet(events)
    days = n_sessions / 24
    cfg = SplitConfig(
        session="source",
        split="global-cut",
        test_days=days * 0.1,
        valid_days=days * 0.1,
        min_item_support=1,
        min_test_sessions=2,
    )
    out = directory / "split"
    make_split({"events": events}, SourceFormat.CSV, cfg, out)
    return out
