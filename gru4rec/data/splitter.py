"""Sessionize the canonical events table and split it into train / valid / test (the split directory).

Entry point: `make_split(tables, fmt, cfg, out_dir, lineage)`. It writes the directory described in
`gru4rec.data.split_dir` (read back with `load_split`). Everything is vectorised Polars (plus one numpy
gather); no Python loop runs over rows or sessions.

Steps, in order:

1. **Read + order.** Each input row gets its original row index (`with_row_index`) first; rows are then
   sorted by (session key, timestamp, row index). That order is used everywhere, so equal timestamps
   (common in MovieLens) always resolve the same way.
2. **Sessions.** ``user`` / ``source``: one session per session_key. ``gap``: a key's events are cut
   where the time between two consecutive events is strictly greater than ``gap_minutes``; the n-th
   (0-based, counted before any filtering) session of key ``k`` is named ``"k#n"``.
3. **remove_repeats** (optional): drops an event whose item equals the previous event's item in the
   same session. Done once, before filtering (as in the tutorial): a later filter that removes the
   event between two equal items can leave them adjacent.
4. **Filters**, repeated until a whole round changes nothing: sessions shorter than
   ``min_session_length``, then items with fewer than ``min_item_support`` events.
5. **Split.**
   ``session-end`` (reference tutorial): final = last timestamp; sessions whose last event is at or
   after final - test_days are test; the same rule on the rest (with its own final) gives valid.
   ``global-cut`` (no look-ahead): T = final - test_days; sessions starting at/after T are test;
   events at/after T of sessions that started earlier are dropped (``cut_at_boundary``); valid is
   cut the same way inside the remainder with T' = final(remainder) - valid_days.
   ``given``: the tables come already split; no filtering or cutting (only remove_repeats, if set).
6. **Item restriction.** Train sessions left with < 2 events (after a cut) are dropped. Valid events
   whose item is not in train are dropped; **test events whose item is in neither train nor valid
   are dropped** (the tutorial restricts test against "the remainder" = train + valid). Sessions
   left with < 2 events are dropped after each restriction.
7. **Item index.** Because a test item may occur only in valid, ``items.parquet`` indexes the union
   of train and valid items: ``item_idx`` in order of first appearance in the written train table,
   then in the written valid table (items only in valid come last). ``count`` = events in train
   (0 for valid-only items), ``count_valid`` = events in valid. So: valid items ⊆ train items;
   test items ⊆ train ∪ valid items ⊆ items.parquet.
8. **Session ids.** Dense over all three splits, ordered by (session start time, original session
   key — numeric for integer keys —, gap number, split), so sorting by session_id orders sessions by
   start time. Rows are sorted by (session_id, timestamp, original row index).
9. **Write.** manifest.json is deleted first, every file is written atomically (temp + rename),
   manifest.json last. Data files and stats.json hold nothing time-of-run dependent, so the same
   input and config give byte-identical files; the manifest's ``created_at`` is excluded from its
   ``fingerprint`` (sha256 over the sorted file hashes + the resolved config).

Any split with no sessions (or fewer than ``min_test_sessions`` for valid/test) is a `SplitError`
naming the split, the count, the reason and a fix.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gru4rec.data.config import SourceFormat, SplitConfig, resolve_split_defaults
from gru4rec.data.split_dir import MANIFEST, SPLIT_FILES
from gru4rec.errors import DataFormatError, SplitError, raise_if_transient
from gru4rec.io import sha256_file, sha256_json, write_json_atomic, write_parquet_atomic

MS_PER_DAY = 86_400_000
SPLITS = ("train", "valid", "test")
REQUIRED = ("session_key", "item_id", "timestamp")

# Internal column names (never written).
_SID, _N = "_sid", "_n"

_FIRST_E = pl.col(_SID).ne_missing(pl.col(_SID).shift(1))
_LAST_E = pl.col(_SID).ne_missing(pl.col(_SID).shift(-1))


# --------------------------------------------------------------------------------------------------
# reading and sessionizing


def _read_events(path: Path, name: str) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{name} events table not found", file=str(path))
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as e:  # polars raises several types for unreadable files
        raise_if_transient(e)
        raise DataFormatError(f"cannot read {name} events table: {e}", file=str(path)) from None
    missing = [c for c in REQUIRED if c not in schema]
    if missing:
        raise DataFormatError(
            f"{name} events table lacks column(s) {missing}; expected the canonical events schema "
            "(session_key, item_id, timestamp[, rating]) written by ingest",
            file=str(path),
        )
    return pl.read_parquet(path, columns=list(REQUIRED)).with_columns(pl.col("timestamp").cast(pl.Int64)).rechunk()


def _sessionize(df: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Order events by (key, time, original row) and number sessions densely in that order.

    Returns (events[_sid, item_id, timestamp], sessions[_sid, session_key, _n]); _sid order equals
    (session_key, _n) order and ``sessions`` row i has _sid i. Logs are usually already grouped by
    key and time-ordered inside (YooChoose, most exports): one linear check detects that and skips
    the sort; otherwise one stable two-column sort gives exactly the (key, time, row) order.
    """
    if not _is_key_time_ordered(df):
        df = df.sort(["session_key", "timestamp"], maintain_order=True)
    new_key = pl.col("session_key").ne_missing(pl.col("session_key").shift(1))
    if cfg.session == "gap":
        gap_ms = cfg.gap_minutes * 60_000.0
        new_sess = new_key | (pl.col("timestamp").diff().fill_null(0) > gap_ms)
        df = df.with_columns((new_sess.cum_sum() - 1).cast(pl.UInt32).alias(_SID), new_key.alias("_nk"))
        df = df.with_columns((pl.col(_SID) - pl.when(pl.col("_nk")).then(pl.col(_SID)).forward_fill()).alias(_N))
    else:
        df = df.with_columns((new_key.cum_sum() - 1).cast(pl.UInt32).alias(_SID), pl.lit(0, pl.UInt32).alias(_N))
    sessions = df.filter(_FIRST_E).select(_SID, "session_key", _N)
    return df.select(_SID, "item_id", "timestamp"), sessions


def _is_key_time_ordered(df: pl.DataFrame) -> bool:
    """True when rows are already sorted by (session_key, timestamp) with no nulls (a stable sort is a no-op)."""
    if df.height < 2:
        return True
    k, t = pl.col("session_key"), pl.col("timestamp")
    kp, tp = k.shift(1), t.shift(1)
    # a null makes the comparison null -> False -> sort (which puts nulls first, as before)
    return bool(df.select(((k > kp) | ((k == kp) & (t >= tp))).fill_null(False).slice(1).all()).item())


def _n_sessions(df: pl.DataFrame) -> int:
    if df.height == 0:
        return 0
    return int(df.select(_FIRST_E.sum()).item())


def _session_len() -> pl.Expr:
    """Per-event length of its session (rows of a session are contiguous)."""
    i = pl.int_range(pl.len(), dtype=pl.Int64)
    start = pl.when(_FIRST_E).then(i).forward_fill()
    end = pl.when(_LAST_E).then(i).backward_fill()
    return end - start + 1


class _Counter:
    """Events and sessions removed by each named filter."""

    def __init__(self) -> None:
        self.removed: dict[str, dict[str, int]] = {}

    def add(self, name: str, events: int, sessions: int, **extra: int) -> None:
        d = self.removed.setdefault(name, {"events": 0, "sessions": 0})
        d["events"] += int(events)
        d["sessions"] += int(sessions)
        for k, v in extra.items():
            d[k] = d.get(k, 0) + int(v)

    def apply(self, name: str, df: pl.DataFrame, keep: pl.Expr, **extra: int) -> pl.DataFrame:
        before_e, before_s = df.height, _n_sessions(df)
        out = df.filter(keep)
        self.add(name, before_e - out.height, before_s - _n_sessions(out), **extra)
        return out


def _remove_repeats(df: pl.DataFrame, cfg: SplitConfig, counter: _Counter) -> pl.DataFrame:
    counter.add("remove_repeats", 0, 0)
    if not cfg.remove_repeats or df.height == 0:
        return df
    repeat = (~_FIRST_E) & pl.col("item_id").eq_missing(pl.col("item_id").shift(1))
    return counter.apply("remove_repeats", df, ~repeat)


def _filter_until_stable(df: pl.DataFrame, cfg: SplitConfig, counter: _Counter) -> tuple[pl.DataFrame, int]:
    counter.add("min_session_length", 0, 0)
    counter.add("min_item_support", 0, 0, items=0)
    rounds = 0
    while True:
        rounds += 1
        changed = False
        if cfg.min_session_length > 1 and df.height:
            n0 = df.height
            df = counter.apply("min_session_length", df, _session_len() >= cfg.min_session_length)
            changed |= df.height != n0
        if cfg.min_item_support > 1 and df.height:
            support = df.group_by("item_id").len()
            rare = support.filter(pl.col("len") < cfg.min_item_support)["item_id"]
            if rare.len():
                df = counter.apply("min_item_support", df, ~pl.col("item_id").is_in(rare.implode()), items=rare.len())
                changed = True
        if not changed:
            return df, rounds


# --------------------------------------------------------------------------------------------------
# splitting


def _partition(df: pl.DataFrame, part: pl.Expr) -> dict[str, pl.DataFrame]:
    df = df.with_columns(part.alias("_part"))
    return {name: df.filter(pl.col("_part") == k).drop("_part") for k, name in enumerate(SPLITS)}


def _split_session_end(df: pl.DataFrame, cfg: SplitConfig, info: dict) -> dict[str, pl.DataFrame]:
    df = df.with_columns(pl.when(_LAST_E).then(pl.col("timestamp")).backward_fill().alias("_end"))
    final = df["timestamp"].max()
    t_test = final - round(cfg.test_days * MS_PER_DAY)
    info.update(final=final, test_start=t_test)
    final2 = df.select(pl.col("timestamp").filter(pl.col("_end") < t_test).max()).item()
    t_valid = t_test if final2 is None else final2 - round(cfg.valid_days * MS_PER_DAY)
    if final2 is not None:
        info.update(final_remainder=final2, valid_start=t_valid)
    end = pl.col("_end")
    part = pl.when(end >= t_test).then(2).when(end >= t_valid).then(1).otherwise(0)
    return {k: v.drop("_end") for k, v in _partition(df, part).items()}


def _split_global_cut(df: pl.DataFrame, cfg: SplitConfig, info: dict, counter: _Counter) -> dict[str, pl.DataFrame]:
    df = df.with_columns(pl.when(_FIRST_E).then(pl.col("timestamp")).forward_fill().alias("_start"))
    start, ts = pl.col("_start"), pl.col("timestamp")
    final = df["timestamp"].max()
    t_test = final - round(cfg.test_days * MS_PER_DAY)
    info.update(final=final, test_start=t_test)
    final2 = df.select(ts.filter((start < t_test) & (ts < t_test)).max()).item()
    t_valid = t_test if final2 is None else final2 - round(cfg.valid_days * MS_PER_DAY)
    if final2 is not None:
        info.update(final_remainder=final2, valid_start=t_valid)
    part = (
        pl.when(start >= t_test)
        .then(2)
        .when(ts >= t_test)
        .then(None)
        .when(start >= t_valid)
        .then(1)
        .when(ts >= t_valid)
        .then(None)
        .otherwise(0)
    )
    parts = {k: v.drop("_start") for k, v in _partition(df, part).items()}
    counter.add("cut_at_boundary", df.height - sum(v.height for v in parts.values()), 0)
    return parts


def _suggest(name: str, cfg: SplitConfig, counter: _Counter, before: int) -> tuple[str, str]:
    why, fixes = [], []
    if before:
        why.append(
            f"{before} session(s) fell in the {name} window but lost events to the item restriction "
            "(items unseen in earlier splits) or were left with < 2 events"
        )
        fixes.append("lower min_item_support (--min-item-support) or widen the window")
    if name == "train" and cfg.split == "given":
        why.append("the train table has no session with at least 2 events")
        fixes.append("check the train file (--source) and the session definition (--session)")
    elif name == "train":
        why.append("every session fell in the valid/test windows")
        fixes.append("use smaller windows (lower --days / test_days, valid_days)")
    else:
        days = cfg.test_days if name == "test" else cfg.valid_days
        if cfg.split == "global-cut" and cfg.session == "user":
            why.append(
                "with user sessions almost no user STARTS inside the final window, and global-cut only "
                "puts sessions that start there into the split"
            )
            fixes.insert(0, "sessionize by inactivity gaps (--session gap) or use --split session-end")
        elif cfg.split != "given":
            why.append(f"few sessions {'end' if cfg.split == 'session-end' else 'start'} in the last {days:g} days")
        if cfg.split != "given":
            fixes.append(f"increase the window (--days / {name}_days, now {days:g})")
        fixes.append(f"or lower min_test_sessions (now {cfg.min_test_sessions})")
    return "; ".join(why), "; ".join(fixes)


def _check(parts: dict[str, pl.DataFrame], pre: dict[str, int], cfg: SplitConfig, counter, has_valid: bool):
    for name in SPLITS:
        n = _n_sessions(parts[name])
        if name == "valid" and not has_valid:
            continue
        need = 1 if name == "train" else cfg.min_test_sessions
        if n < need:
            why, fix = _suggest(name, cfg, counter, pre.get(name, 0))
            raise SplitError(
                f"the {name} split has {n} session(s) (need at least {need}; split={cfg.split}, "
                f"session={cfg.session}): {why or 'nothing fell in it'}. Fix: {fix}"
            )


def _restrict_and_clean(parts: dict[str, pl.DataFrame], counter: _Counter) -> dict[str, int]:
    """Drop short train sessions, restrict valid/test items, drop sessions left with < 2 events."""
    pre = {}
    short = _session_len() >= 2
    parts["train"] = counter.apply("short_after_split", parts["train"], short)
    train_items = parts["train"]["item_id"].unique()
    pre["valid"] = _n_sessions(parts["valid"])
    parts["valid"] = counter.apply(
        "unknown_items_valid", parts["valid"], pl.col("item_id").is_in(train_items.implode())
    )
    parts["valid"] = counter.apply("short_after_split", parts["valid"], short)
    known = pl.concat([train_items, parts["valid"]["item_id"]]).unique()
    pre["test"] = _n_sessions(parts["test"])
    parts["test"] = counter.apply("unknown_items_test", parts["test"], pl.col("item_id").is_in(known.implode()))
    parts["test"] = counter.apply("short_after_split", parts["test"], short)
    return pre


# --------------------------------------------------------------------------------------------------
# numbering, item index, output


def _order_and_number(
    parts: dict[str, pl.DataFrame], sessions: dict[str, pl.DataFrame], cfg: SplitConfig
) -> dict[str, pl.DataFrame]:
    """Number sessions densely over all splits by (start, key, gap number, split) and reorder rows.

    Sessions are contiguous blocks already ordered by (time, row) inside, so the final row order is a
    permutation of whole blocks: a stable sort on the per-row session rank (skipped when the blocks
    are already in order).
    """
    heads = []
    for k, name in enumerate(SPLITS):
        df = parts[name]
        first = np.flatnonzero(df.select(_FIRST_E).to_series().to_numpy()) if df.height else np.zeros(0, np.int64)
        first = first.astype(np.int64)
        h = df[first].select(_SID, pl.col("timestamp").alias("_t0"))
        # row i of a sessions table has _sid i (see _sessionize): a gather, not a join
        h = pl.concat([h, sessions[name].select("session_key", _N).gather(h[_SID])], how="horizontal")
        heads.append(h.with_columns(pl.lit(k, pl.UInt8).alias("_split"), pl.int_range(pl.len()).alias("_blk")))
    # Stable single-column sorts from least to most significant key == sort by (t0, key, n, split).
    allh = pl.concat(heads)
    if cfg.split == "given":
        allh = allh.sort(_N, maintain_order=True).sort("session_key", maintain_order=True)
    else:  # one sessionization: _sid order is (key, n) order and _sid is unique across splits
        allh = allh.sort(_SID)
    allh = allh.sort("_t0", maintain_order=True).with_row_index("session_id")
    out = {}
    for k, name in enumerate(SPLITS):
        df = parts[name]
        h = allh.filter(pl.col("_split") == k).rechunk()
        blk = h["_blk"].to_numpy()
        # per row: rank (in session_id order) of its session inside this split
        local = df.select((_FIRST_E.cum_sum() - 1).cast(pl.UInt32)).to_series()
        if np.array_equal(blk, np.arange(len(blk))):  # sessions already in session_id order
            pos, item, ts = local, df["item_id"], df["timestamp"]
        else:  # reorder whole session blocks: one stable sort on the rank (rows keep their order inside)
            rank = np.empty(len(blk), np.uint32)
            rank[blk] = np.arange(len(blk), dtype=np.uint32)
            frame = pl.DataFrame([pl.Series("_pos", rank).gather(local), df["item_id"], df["timestamp"]])
            frame = frame.sort("_pos", maintain_order=True)
            pos, item, ts = frame["_pos"], frame["item_id"], frame["timestamp"]
        keys = h.select(_session_key_expr(cfg))["session_key"].rechunk()
        out[name] = pl.DataFrame([h["session_id"].cast(pl.Int64).gather(pos), keys.gather(pos), item, ts])
    return out


def _session_key_expr(cfg: SplitConfig) -> pl.Expr:
    key = pl.col("session_key").cast(pl.String)
    if cfg.session == "gap":
        key = pl.concat_str([key, pl.lit("#"), pl.col(_N).cast(pl.String)])
    return key.alias("session_key")


def _item_index(parts: dict[str, pl.DataFrame]) -> pl.DataFrame:
    order = pl.concat([parts["train"]["item_id"], parts["valid"]["item_id"]]).unique(maintain_order=True)
    items = order.to_frame("item_id").with_row_index("item_idx").with_columns(pl.col("item_idx").cast(pl.Int32))
    cnt = parts["train"].group_by("item_id").len().rename({"len": "count"})
    cnt_v = parts["valid"].group_by("item_id").len().rename({"len": "count_valid"})
    items = (
        items.join(cnt, on="item_id", how="left", maintain_order="left")
        .join(cnt_v, on="item_id", how="left", maintain_order="left")
        .with_columns(pl.col("count", "count_valid").fill_null(0).cast(pl.Int64))
    )
    return items.select("item_idx", "item_id", "count", "count_valid")


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    d = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=int(ms))
    return f"{d:%Y-%m-%dT%H:%M:%S}.{int(ms) % 1000:03d}Z"


def _split_stats(df: pl.DataFrame) -> dict:
    if df.height == 0:
        return {"events": 0, "sessions": 0, "items": 0, "first_ms": None, "last_ms": None,
                "first": None, "last": None}  # fmt: skip
    row = df.select(
        pl.len().alias("events"),
        pl.col("session_id").n_unique().alias("sessions"),
        pl.col("item_idx").n_unique().alias("items"),
        pl.col("timestamp").min().alias("first_ms"),
        pl.col("timestamp").max().alias("last_ms"),
    ).row(0, named=True)
    row = {k: int(v) for k, v in row.items()}
    row["first"], row["last"] = _iso(row["first_ms"]), _iso(row["last_ms"])
    return row


def split_stats_table(stats: dict) -> list[dict]:
    """One row per split (name, events, sessions, items, first, last) for printing."""
    return [
        {
            "name": name,
            "events": s["events"],
            "sessions": s["sessions"],
            "items": s["items"],
            "first": s["first"],
            "last": s["last"],
        }
        for name, s in stats["splits"].items()
    ]


def make_split(
    tables: dict[str, Path],
    fmt: SourceFormat,
    cfg: SplitConfig,
    out_dir: Path,
    lineage: dict | None = None,
) -> dict:
    """Sessionize, filter and split the events; write the split directory. Returns the manifest."""
    if "events" not in tables:
        raise DataFormatError("make_split needs tables['events'] (the canonical events parquet)")
    cfg = resolve_split_defaults(cfg, fmt, has_test_source="test" in tables)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # No manifest = not a split: a reader never takes a half-rewritten directory for a finished one.
    (out_dir / MANIFEST).unlink(missing_ok=True)

    counter = _Counter()
    info: dict[str, Any] = {}  # split boundaries (ms), filled by the split rule
    if cfg.split == "given":
        parts, sessions, inputs, has_valid = _read_given(tables, cfg, counter)
        rounds = 0
    else:
        parts, sessions, inputs, rounds = _filter_and_split(tables["events"], cfg, counter, info)
        has_valid = True
    counter.add("short_after_split", 0, 0)
    pre = _restrict_and_clean(parts, counter)
    _check(parts, pre, cfg, counter, has_valid)

    parts = _order_and_number(parts, sessions, cfg)
    del sessions  # free the session tables before the item join
    items = _item_index(parts)
    _add_item_idx(parts, items)
    cfg_json = cfg.model_dump(mode="json")
    stats = {
        "input": inputs,
        "splits": {name: _split_stats(parts[name]) for name in SPLITS},
        "n_items": items.height,
        "filters": counter.removed,
        "filter_rounds": rounds,
        "boundaries": {k: {"ms": int(v), "iso": _iso(v)} for k, v in info.items()},
        "config": cfg_json,
    }
    _write_data(out_dir, parts, items, stats)
    return _write_manifest(out_dir, fmt, cfg_json, lineage, stats)


# The table each split of split='given' is read from.
_GIVEN_TABLES = {"train": "events", "valid": "valid", "test": "test"}


def _read_given(
    tables: dict[str, Path], cfg: SplitConfig, counter: _Counter
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame], dict[str, int], bool]:
    """split='given': sessionize each table on its own; no filtering or cutting (only remove_repeats).

    Returns (parts, sessions, input counts, has_valid).
    """
    if "test" not in tables:
        raise SplitError("split='given' needs a test table (--test-source); or choose session-end/global-cut")
    has_valid = "valid" in tables
    parts, sessions, n_in, s_in = {}, {}, 0, 0
    dtypes = None
    for name in SPLITS:
        if name == "valid" and not has_valid:
            # An empty valid split with train's schema lets every later step treat the three alike.
            parts[name], sessions[name] = parts["train"].clear(), sessions["train"].clear()
            continue
        table = _GIVEN_TABLES[name]
        df, sessions[name] = _sessionize(_read_events(tables[table], table), cfg)
        d = (sessions[name].schema["session_key"], df.schema["item_id"])
        # Ids of different types would never match across splits (and cannot be concatenated).
        if dtypes is not None and d != dtypes:
            raise DataFormatError(
                f"{name} table has (session_key, item_id) types {d}, the train table {dtypes}; "
                "all tables of split='given' must come from the same format",
                file=str(tables[table]),
            )
        dtypes = d
        n_in, s_in = n_in + df.height, s_in + sessions[name].height
        parts[name] = _remove_repeats(df, cfg, counter)
    return parts, sessions, {"events": n_in, "sessions": s_in}, has_valid


def _filter_and_split(
    path: Path, cfg: SplitConfig, counter: _Counter, info: dict
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame], dict[str, int], int]:
    """session-end / global-cut: sessionize one table, filter it, cut it in three by time.

    Returns (parts, sessions, input counts, filter rounds).
    """
    df, sess = _sessionize(_read_events(path, "events"), cfg)
    # One sessionization serves all three splits: its _sid is unique across them.
    sessions = dict.fromkeys(SPLITS, sess)
    inputs = {"events": df.height, "sessions": sess.height, "items": df["item_id"].n_unique()}
    df = _remove_repeats(df, cfg, counter)
    df, rounds = _filter_until_stable(df, cfg, counter)
    if df.height == 0:
        raise SplitError(
            f"no events left after filtering (min_session_length={cfg.min_session_length}, "
            f"min_item_support={cfg.min_item_support}): {counter.removed}. Fix: lower the thresholds"
        )
    if cfg.split == "session-end":
        parts = _split_session_end(df, cfg, info)
    else:
        counter.add("cut_at_boundary", 0, 0)  # listed in the stats even when nothing is cut
        parts = _split_global_cut(df, cfg, info, counter)
    return parts, sessions, inputs, rounds


def _add_item_idx(parts: dict[str, pl.DataFrame], items: pl.DataFrame) -> None:
    """Give every event its item_idx and put the columns in the written order (in place)."""
    idx = items.select("item_id", "item_idx")
    for name in SPLITS:
        parts[name] = (
            parts[name]
            .join(idx, on="item_id", how="left", maintain_order="left")
            .select("session_id", "session_key", "item_idx", "item_id", "timestamp")
            .rechunk()
        )


def _write_data(out_dir: Path, parts: dict[str, pl.DataFrame], items: pl.DataFrame, stats: dict) -> None:
    for name in SPLITS:
        write_parquet_atomic(parts[name], out_dir / f"{name}.parquet")
    write_parquet_atomic(items.rechunk(), out_dir / "items.parquet")
    write_json_atomic(out_dir / "stats.json", stats)


def _write_manifest(out_dir: Path, fmt: SourceFormat, cfg_json: dict, lineage: dict | None, stats: dict) -> dict:
    """Hash the written files and write manifest.json last: its presence marks the split complete."""
    files = {name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
             for name in SPLIT_FILES}  # fmt: skip
    # created_at stays out of the fingerprint: same input + config = same fingerprint.
    fingerprint = sha256_json({"files": sorted((n, f["sha256"]) for n, f in files.items()), "config": cfg_json})
    manifest = {
        "kind": "gru4rec-split",
        "format": fmt.value if isinstance(fmt, SourceFormat) else str(fmt),
        "config": cfg_json,
        "lineage": lineage,
        "files": files,
        "fingerprint": fingerprint,
        "stats": split_stats_table(stats),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
