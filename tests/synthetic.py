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
    return split_events(events, directory / "split")


def split_events(events: Path, out: Path) -> Path:
    """Split an hourly synthetic events table: the last 10% of its days are test, the 10% before valid."""
    days = pl.read_parquet(events, columns=["session_key"])["session_key"].n_unique() / 24
    cfg = SplitConfig(
        session="source",
        split="global-cut",
        test_days=days * 0.1,
        valid_days=days * 0.1,
        min_item_support=1,
        min_test_sessions=2,
    )
    make_split({"events": events}, SourceFormat.CSV, cfg, out)
    return out


def synthetic_movielens(path: Path, n_users: int = 240, n_items: int = 120, seed: int = 0, days: int = 720) -> Path:
    """A MovieLens-100K-style ``u.data`` (user, item, rating, unix seconds; tab-separated).

    Each user rates a walk through the catalogue (item i is mostly followed by i+1), spread over a
    few weeks that start at a random day of a two-year window, so the reference protocol (user
    sessions, the last 100 days are test) gives non-empty train, validation and test splits.
    """
    rng = np.random.default_rng(seed)
    t0 = 883_000_000  # 1997-12-25
    rows = []
    for user in range(1, n_users + 1):
        start_day = int(rng.integers(0, days - 20))
        item = int(rng.integers(0, n_items))
        for j in range(int(rng.integers(8, 25))):
            item = (item + 1) % n_items if rng.random() < 0.8 else int(rng.integers(0, n_items))
            when = t0 + (start_day + j) * 86_400 + int(rng.integers(0, 3_600))
            rows.append(f"{user}\t{item + 1}\t{int(rng.integers(1, 6))}\t{when}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_model_dir(directory: Path, n_items: int = 12, layers: int = 8) -> Path:
    """A saved (untrained, seeded) model directory over item ids ``100 + i``, without a split."""
    import torch

    from gru4rec.model import GRU4Rec, ModelConfig
    from gru4rec.persist import save_model

    torch.manual_seed(0)
    model = GRU4Rec(ModelConfig(layers=[layers]), n_items)
    items = pl.DataFrame(
        {
            "item_idx": pl.Series(range(n_items), dtype=pl.Int32),
            "item_id": pl.Series([100 + i for i in range(n_items)], dtype=pl.Int64),
            "count": pl.Series([n_items - i for i in range(n_items)], dtype=pl.Int64),
        }
    )
    save_model(directory, model, {"model": model.cfg.model_dump(), "train": {"lr": 0.05}}, items)
    return directory
