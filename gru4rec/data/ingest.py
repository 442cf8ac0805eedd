"""Ingest: resolve the source, read it into the canonical events table, write Parquet + a manifest.

``out_dir`` receives ``events.parquet`` (and ``test_events.parquet`` / ``valid_events.parquet`` for the
'given' split) and, last, ``ingest_manifest.json``. All writes are atomic.

``content_key`` identifies *what was read and how*: the sha256 of the source files' bytes, the format,
the column mapping and the rolling window. The same content read the same way gives the same key wherever
the file lives, so it can key caches; `source_fingerprint` computes it without parsing.

A source may be a directory or glob of files (`gru4rec.data.sources`): each file is read on its own
(`read_part`) and the parts concatenated in path order; the lineage then lists every file (path,
sha256, bytes, rows read, rows used). The Prefect flows run `read_part` as one cached task per file
(keyed on the file's sha256), so a nightly run over a growing directory reads only the new files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from gru4rec.data.config import IngestConfig, SourceFormat, default_data_dir
from gru4rec.data.download import resolve_ml1m
from gru4rec.data.readers import detect_format, read_events
from gru4rec.data.sources import SourceFile, apply_window, combine, common_format, expand_source, is_multi, part_meta
from gru4rec.io import sha256_file, sha256_json, write_json_atomic, write_parquet_atomic

MANIFEST_NAME = "ingest_manifest.json"
INTERMEDIATE_COMPRESSION = "lz4"
TABLE_FILES = {"events": "events.parquet", "test": "test_events.parquet", "valid": "valid_events.parquet"}


SETTINGS = {"events": "source", "test": "test_source", "valid": "valid_source"}


@dataclass
class RoleSource:
    """One role's source: what was named (``spec``), whether it is a set of files, and its files."""

    spec: str
    multi: bool
    files: list[SourceFile] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"spec": self.spec, "multi": self.multi, "files": [f.lineage() for f in self.files]}

    @classmethod
    def from_json(cls, d: dict) -> RoleSource:
        files = [SourceFile(Path(f["path"]), f["sha256"], f["bytes"]) for f in d["files"]]
        return cls(d["spec"], d["multi"], files)


@dataclass
class SourceListing:
    """Every file a configuration reads, hashed, with the format and the resulting content key."""

    format: SourceFormat
    roles: dict[str, RoleSource]
    content_key: str

    def to_json(self) -> dict:
        return {
            "format": self.format.value,
            "content_key": self.content_key,
            "roles": {r: s.to_json() for r, s in self.roles.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> SourceListing:
        roles = {r: RoleSource.from_json(s) for r, s in d["roles"].items()}
        return cls(SourceFormat(d["format"]), roles, d["content_key"])


def source_specs(cfg: IngestConfig) -> dict[str, str]:
    """Role -> the source as named. The events source None means the default (env var / GroupLens download)."""
    specs = {"events": cfg.source if cfg.source else str(resolve_ml1m(default_data_dir(cfg)))}
    if cfg.test_source:
        specs["test"] = cfg.test_source
    if cfg.valid_source:
        specs["valid"] = cfg.valid_source
    return specs


def resolve_sources(cfg: IngestConfig) -> dict[str, list[Path]]:
    """Role -> its files, sorted (one for a file source; a directory's or glob's data files)."""
    return {role: expand_source(spec, SETTINGS[role]) for role, spec in source_specs(cfg).items()}


def _format_of(cfg: IngestConfig, events_files: list[Path]) -> SourceFormat:
    return common_format(events_files, cfg.format, detect_format)


def _content_key(source_hashes: dict[str, str | list[str]], fmt: SourceFormat, cfg: IngestConfig) -> str:
    described = {
        "sources": dict(sorted(source_hashes.items())),
        "format": fmt.value,
        "columns": cfg.columns.model_dump(mode="json") if cfg.columns else None,
    }
    if cfg.window_days is not None:  # absent otherwise: keys of sources without a window stay as they were
        described["window_days"] = cfg.window_days
    return sha256_json(described)


def list_sources(cfg: IngestConfig) -> SourceListing:
    """Expand and hash every source file (no parsing): what `ingest` will read and its content key."""
    roles = {}
    for role, spec in source_specs(cfg).items():
        files = expand_source(spec, SETTINGS[role])
        roles[role] = RoleSource(spec, is_multi(spec), [SourceFile.of(f) for f in files])
    fmt = _format_of(cfg, [f.path for f in roles["events"].files])
    hashes = {r: [f.sha256 for f in s.files] if s.multi else s.files[0].sha256 for r, s in roles.items()}
    return SourceListing(fmt, roles, _content_key(hashes, fmt, cfg))


def source_fingerprint(cfg: IngestConfig) -> str:
    """The content_key `ingest` would record, computed by hashing the source files only (no parsing)."""
    return list_sources(cfg).content_key


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_part(path: Path, fmt: SourceFormat, columns) -> tuple[pl.DataFrame, dict]:
    """One file of a source as a canonical events table, with what `combine` and the lineage need."""
    df, info = read_events(path, fmt, columns)
    meta = part_meta(df) | {k: info.get(k) for k in ("reader", "member", "latin1")}
    return df, meta


def combine_role(
    source: RoleSource, fmt: SourceFormat, parts: list[dict], tables: list[pl.LazyFrame], window_days: float | None
) -> tuple[pl.DataFrame, dict]:
    """A multi-file role's events table and lineage from its files' parts (see `sources.combine`)."""
    events, files, window = combine(source.files, parts, tables, window_days)
    for entry, part in zip(files, parts, strict=True):
        if part.get("cache"):
            entry["cache"] = part["cache"]
    spec = source.spec if "*" in source.spec or "?" in source.spec or "[" in source.spec else None
    lineage = {
        "path": spec or str(Path(source.spec).expanduser().resolve()),
        "sha256": sha256_json([f.sha256 for f in source.files]),
        "bytes": sum(f.bytes for f in source.files),
        "rows": events.height,
        "rows_read": sum(p["rows"] for p in parts),
        "reader": fmt.value,
        "n_files": len(files),
        "files": files,
        "window": window,
        "ingested_at": _now(),
    }
    return events, lineage


def read_single_role(source: RoleSource, fmt: SourceFormat, cfg: IngestConfig, role: str) -> tuple[pl.DataFrame, dict]:
    (src,) = source.files
    df, info = read_events(src.path, fmt, cfg.columns)
    rows_read = df.height
    window = None
    if role == "events":
        df, window = apply_window(df, cfg.window_days)
    lineage = src.lineage() | {
        "rows": df.height,
        "reader": info["reader"],
        "member": info.get("member"),
        "latin1": info.get("latin1", False),
        "ingested_at": _now(),
    }
    if window is not None:
        lineage |= {"rows_read": rows_read, "window": window}
    return df, lineage


def write_ingest(
    cfg: IngestConfig, listing: SourceListing, role_tables: dict[str, tuple[pl.DataFrame, dict]], out_dir: Path
) -> dict:
    """Write each role's events table and, last, the manifest (content key of the listing)."""
    tables: dict[str, dict] = {}
    lineage: dict[str, dict] = {}
    for role, (df, role_lineage) in role_tables.items():
        # an intermediate read back by validate and split: lz4 decodes ~3x faster than zstd
        dest = write_parquet_atomic(df, out_dir / TABLE_FILES[role], compression=INTERMEDIATE_COMPRESSION)
        tables[role] = {"file": dest.name, "rows": df.height, "sha256": sha256_file(dest)}
        lineage[role] = role_lineage
    manifest = {
        "format": listing.format.value,
        "config": cfg.model_dump(mode="json"),
        "tables": tables,
        "sources": lineage,
        "content_key": listing.content_key,
    }
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return manifest


def ingest(cfg: IngestConfig, out_dir: str | os.PathLike, listing: SourceListing | None = None) -> dict:
    """Read the configured source(s), write the events table(s) and the manifest; return the manifest.

    A directory or glob source is read file by file in memory here; the flows cache each file instead.
    """
    listing = listing or list_sources(cfg)
    fmt = listing.format
    role_tables = {}
    for role, source in listing.roles.items():
        if not source.multi:
            role_tables[role] = read_single_role(source, fmt, cfg, role)
            continue
        read = [read_part(f.path, fmt, cfg.columns) for f in source.files]
        window = cfg.window_days if role == "events" else None
        role_tables[role] = combine_role(source, fmt, [m for _, m in read], [df.lazy() for df, _ in read], window)
    return write_ingest(cfg, listing, role_tables, Path(out_dir))
