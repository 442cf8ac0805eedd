"""The split directory: the contract between the data half and training/evaluation.

A split directory (written by `gru4rec.data.splitter.make_split`, read by everything after it) holds:

- ``train.parquet``, ``valid.parquet``, ``test.parquet`` — one row per event, columns
  ``session_id`` (Int64: dense id, numbered in order of the session's first event time, ties by
  session key, so sorting by it orders sessions by start time), ``session_key`` (Utf8: the log's
  user/session id as given, plus ``#n`` for gap sessions), ``item_idx`` (Int32: index into
  items.parquet), ``item_id`` (the original id; Int64 or Utf8 as the source had it),
  ``timestamp`` (Int64, UTC epoch milliseconds). Rows are sorted by (session_id, timestamp,
  original row order). Valid items are a subset of train items; test items a subset of
  train ∪ valid items (the tutorial protocol restricts test against "the remainder").
- ``items.parquet`` — ``item_idx`` (Int32, 0..n_items-1, by first appearance in train, then
  valid), ``item_id`` (original), ``count`` (Int64, events in train; 0 for items seen only in
  valid) and ``count_valid`` (events in valid). Training on train+valid ("full") uses both.
- ``stats.json`` — events/sessions/items/first/last timestamp per split and what each filter removed.
- ``manifest.json`` — the full config, source lineage and the sha256 of every file above. It is
  written last: a directory without it is incomplete and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from gru4rec.errors import DataFormatError, raise_if_transient
from gru4rec.io import sha256_file

SPLIT_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet", "stats.json")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SessionArrays:
    """Events of one split as flat arrays, sessions contiguous and ordered by start time.

    ``offsets`` has n_sessions + 1 entries: session s spans items[offsets[s]:offsets[s+1]].
    """

    items: np.ndarray  # int64 item indices
    offsets: np.ndarray  # int64
    timestamps: np.ndarray  # int64 ms

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)


def session_arrays(events: pl.DataFrame) -> SessionArrays:
    """Turn a split table (sorted as the contract says) into offsets + item arrays."""
    if events.height == 0:
        return SessionArrays(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    sid = events["session_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    offsets = np.r_[starts, len(sid)].astype(np.int64)
    return SessionArrays(
        items=events["item_idx"].to_numpy().astype(np.int64),
        offsets=offsets,
        timestamps=events["timestamp"].to_numpy().astype(np.int64),
    )


def training_sessions(split: Split, full: bool) -> SessionArrays:
    """Train (or, with ``full``, train + valid) events as session arrays ordered by start time."""
    frame = split.train
    if full and split.valid.height:
        cols = ["session_id", "item_idx", "timestamp"]
        frame = pl.concat([split.train.select(cols), split.valid.select(cols)]).sort("session_id", maintain_order=True)
    return session_arrays(frame)


@dataclass
class Split:
    directory: Path
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    items: pl.DataFrame
    manifest: dict

    @property
    def n_items(self) -> int:
        return self.items.height

    def fingerprint(self) -> str:
        """Identifies the dataset + split (content hashes of the split files): models compare on it."""
        return self.manifest["fingerprint"]


def load_split(directory: str | Path, verify: bool = True) -> Split:
    """Read a split directory, refusing incomplete or tampered ones with a clear message."""
    d = Path(directory)
    mpath = d / MANIFEST
    if not mpath.exists():
        raise DataFormatError(
            "not a complete split directory: manifest.json is missing (the split was never finished, or "
            "this is the wrong directory); run `gru4rec-pipeline prepare --out DIR` first",
            file=str(d),
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"manifest is not valid JSON: {e.msg}", file=str(mpath), line=e.lineno) from None
    if verify:
        for name, expected in manifest.get("files", {}).items():
            p = d / name
            if not p.exists():
                raise DataFormatError("split file listed in the manifest is missing", file=str(p))
            got = sha256_file(p)
            if got != expected["sha256"]:
                raise DataFormatError(
                    "split file does not match its manifest hash (changed or half-written); re-run prepare",
                    file=str(p),
                    value=got[:12],
                )
    tables = {}
    for name in ("train", "valid", "test", "items"):
        p = d / f"{name}.parquet"
        try:
            tables[name] = pl.read_parquet(p)
        except Exception as e:  # polars raises several types for unreadable files
            raise_if_transient(e)
            raise DataFormatError(f"cannot read split table: {e}", file=str(p)) from None
    return Split(directory=d, manifest=manifest, **tables)
