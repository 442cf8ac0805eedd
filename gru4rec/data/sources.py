"""Sources that grow: a source may be one file, a directory of files or a glob.

A directory (searched recursively) or a glob such as ``events/date=*/part-*.parquet`` stands for the
files it matches, in sorted path order. Hidden files and folders (``.x``), Hive/Spark markers
(``_SUCCESS``, ``_temporary/``) and temporary files (``*.tmp``, ``*.crc``, ``*.part``, ``*~`` …) are
ignored, so a dump that is still being written is not read half-way. All matched files must have one
format.

Each file is read on its own into the canonical events table (`read_part`); the parts are then
concatenated (`combine`) in path order, optionally keeping only a rolling window: the events of the
last N days before the newest event. The window is cut here, at ingest, so that validation and
splitting cost what the window holds and not what the directory has accumulated; a file's part that
lies wholly before the window is not read by `combine` (the file itself is parsed once, when first
seen, which is how its time range is known). A session that crosses the window's start keeps only its
events inside the window (the splitter's minimum session length then applies as usual).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gru4rec.data.config import SourceFormat
from gru4rec.errors import DataFormatError
from gru4rec.io import sha256_file

DAY_MS = 86_400_000
GLOB_CHARS = frozenset("*?[")
IGNORED_PREFIXES = (".", "_")
TEMP_SUFFIXES = (".tmp", ".temp", ".crc", ".part", ".partial", ".inprogress", ".swp", ".lock", "~")
ID_COLUMNS = ("session_key", "item_id")


def is_glob(spec: str) -> bool:
    return any(c in GLOB_CHARS for c in spec)


def is_multi(spec: str) -> bool:
    """True when the source names a set of files (a directory or a glob), not one file."""
    path = Path(spec).expanduser()
    return not path.is_file() and (is_glob(spec) or path.is_dir())


def _ignored(name: str) -> bool:
    return name.startswith(IGNORED_PREFIXES) or name.lower().endswith(TEMP_SUFFIXES)


def _walk(directory: Path) -> list[Path]:
    """Data files under ``directory``: recursive, skipping ignored files and everything in ignored folders."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not _ignored(d)]
        found += [Path(root) / f for f in files if not _ignored(f)]
    return found


def _static_root(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard (names there are never ignored)."""
    parts = Path(pattern).parts
    n = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
    return Path(*parts[:n]) if n else Path()


def expand_source(spec: str, setting: str = "source") -> list[Path]:
    """The files a source names, sorted by path: itself, a directory's files, or a glob's matches.

    Raises DataFormatError (one line, naming the source) when nothing is there to read.
    """
    path = Path(spec).expanduser()
    if path.is_file():  # a file is itself, even with a '[' or '*' in its name
        return [path]
    if not is_glob(spec):
        if not path.exists():
            raise DataFormatError(f"{setting} {spec} not found", hint="Check the path given as the source")
        files = _walk(path)
        where = f"directory {path}"
    else:
        pattern = os.path.expanduser(spec)
        static = len(_static_root(pattern).parts)
        files = []
        for match in glob.glob(pattern, recursive=True):  # glob itself skips names starting with '.'
            p = Path(match)
            if any(_ignored(part) for part in p.parts[static:]):
                continue
            if p.is_dir():
                files += _walk(p)
            elif p.is_file():
                files.append(p)
        where = f"pattern {spec}"
    files = sorted(set(files), key=str)
    if not files:
        raise DataFormatError(
            f"{setting}: no data files in {where} (hidden files, _-markers and temporary files are ignored)",
            hint="Point the source at the files of the log (a file, a directory of files or a glob)",
        )
    return files


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> SourceFile:
        return cls(path, sha256_file(path), path.stat().st_size)

    def lineage(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "bytes": self.bytes}


def _is_parquet(path: Path) -> bool:
    from gru4rec.data.readers import PARQUET_MAGIC

    with open(path, "rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def _mixed(a: tuple[str, Path], b: tuple[str, Path]) -> DataFormatError:
    return DataFormatError(
        f"mixed formats in one source: {a[1]} is {a[0]}, {b[1]} is {b[0]}",
        hint="Keep one format per source directory or narrow the source with a glob",
    )


def common_format(files: list[Path], fmt: SourceFormat | None, detect) -> SourceFormat:
    """The one format of ``files``: the given one, or each file's detected one (all must agree).

    Parquet and text files (by magic bytes) never mix; given a format, that is all that is checked
    per file, the readers find anything else. ``detect(path)`` is the single-file detection.
    """
    kinds: dict[str, Path] = {}
    for f in files:
        kinds.setdefault("parquet" if _is_parquet(f) else "a text file", f)
        if len(kinds) > 1:
            raise _mixed(*list(kinds.items())[:2])
    if fmt is not None:
        fmt = SourceFormat(fmt)
        ((kind, example),) = kinds.items()
        if (kind == "parquet") != (fmt == SourceFormat.PARQUET):
            raise DataFormatError(
                f"the source's format is {fmt.value} but its files are {'parquet' if kind == 'parquet' else 'text'}",
                file=str(example),
                hint="Pass the format of the files (--format) or point the source at other files",
            )
        return fmt
    found: dict[SourceFormat, Path] = {}
    for f in files:
        found.setdefault(detect(f), f)
        if len(found) > 1:
            (a, pa), (b, pb) = list(found.items())[:2]
            raise _mixed((a.value, pa), (b.value, pb))
    return next(iter(found))


def part_meta(df: pl.DataFrame) -> dict:
    """Rows, time range and column types of one file's canonical table (what `combine` needs)."""
    ts = df["timestamp"]
    return {
        "rows": df.height,
        "min_ts": ts.min() if df.height else None,
        "max_ts": ts.max() if df.height else None,
        "schema": {c: str(t) for c, t in df.schema.items()},
    }


def window_cutoff(max_ts: int | None, window_days: float | None) -> int | None:
    """First timestamp (ms) inside a window of ``window_days`` ending at the newest event; None = all."""
    if window_days is None or max_ts is None:
        return None
    return int(max_ts) - round(window_days * DAY_MS)


def apply_window(df: pl.DataFrame, window_days: float | None) -> tuple[pl.DataFrame, dict | None]:
    """Keep the events with timestamp ≥ newest − window_days (a single-file source's window)."""
    if window_days is None or df.height == 0:
        return df, None
    newest = int(df["timestamp"].max())
    cutoff = window_cutoff(newest, window_days)
    kept = df.filter(pl.col("timestamp") >= cutoff)
    return kept, _window_info(window_days, cutoff, newest, df.height - kept.height)


def _window_info(days: float, cutoff: int, newest: int, dropped: int) -> dict:
    return {"days": days, "start_ms": cutoff, "end_ms": newest, "rows_dropped": dropped}


def combine(
    files: list[SourceFile], parts: list[dict], tables: list[pl.LazyFrame], window_days: float | None = None
) -> tuple[pl.DataFrame, list[dict], dict | None]:
    """Concatenate the files' canonical tables in order, keeping the window if one is set.

    ``parts[i]`` is `part_meta` of ``tables[i]``, the table read from ``files[i]``. Returns the events,
    the lineage of every file (path, sha256, bytes, rows, rows_used) and the window's description.
    A table that lies wholly before the window is not read. Ids that are integers in one file and
    strings in another become strings everywhere.
    """
    newest = max((p["max_ts"] for p in parts if p["max_ts"] is not None), default=None)
    cutoff = window_cutoff(newest, window_days)
    columns = {tuple(p["schema"]) for p in parts}
    if len(columns) > 1:
        a, b = sorted(columns)[:2]
        raise DataFormatError(
            f"the files of one source give different columns ({', '.join(a)} vs {', '.join(b)})",
            hint="Keep one format and column mapping per source",
        )
    as_string = {c for c in ID_COLUMNS if len({p["schema"][c] for p in parts}) > 1}
    frames, lineage, dropped = [], [], 0
    for f, part, lf in zip(files, parts, tables, strict=True):
        entry = f.lineage() | {"rows": part["rows"], "rows_used": part["rows"]}
        if cutoff is not None and part["rows"]:
            if part["max_ts"] < cutoff:
                entry["rows_used"] = 0
            elif part["min_ts"] < cutoff:
                lf = lf.filter(pl.col("timestamp") >= cutoff)
                entry["rows_used"] = None  # known after reading
        lineage.append(entry)
        if entry["rows_used"] != 0:
            frames.append(lf.with_columns(pl.col(c).cast(pl.String) for c in as_string) if as_string else lf)
    collected = pl.collect_all(frames) if frames else []
    it = iter(collected)
    for entry in lineage:
        if entry["rows_used"] != 0:
            df = next(it)
            entry["rows_used"] = df.height
        dropped += entry["rows"] - entry["rows_used"]
    events = pl.concat(collected, how="vertical")  # never empty: the newest file is in any window
    window = _window_info(window_days, cutoff, newest, dropped) if cutoff is not None else None
    return events, lineage, window
