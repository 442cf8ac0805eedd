"""Prefect tasks of the data half: thin wrappers that pass file references, never DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from gru4rec.data.config import IngestConfig, SourceFormat, SplitConfig
from tasks.common import RETRY_OPTIONS
from tasks.validation import ValidationConfig


def _cache_token(context, parameters) -> str:
    # Key on content hashes and settings (computed by the flow), never on a path string.
    return parameters["cache_token"] or f"nocache-{context.task_run.id}"


@task(name="ingest", **RETRY_OPTIONS, cache_key_fn=_cache_token, persist_result=True)
def ingest_task(cfg: IngestConfig, out_dir: str, cache_token: str = "") -> str:
    """Read the source log into canonical events Parquet; return the ingest manifest's path."""
    from gru4rec.data.ingest import ingest

    ingest(cfg, Path(out_dir))
    return str(Path(out_dir) / "ingest_manifest.json")


@task(name="validate", **RETRY_OPTIONS, cache_key_fn=_cache_token, persist_result=True)
def validate_task(ingest_manifest_path: str, cfg: ValidationConfig, out_dir: str, cache_token: str = "") -> str:
    """Run the Great Expectations suite; a failure raises DataValidationError (never retried)."""
    from tasks.validation import validate_events

    manifest_path = Path(ingest_manifest_path)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    fmt = SourceFormat(manifest["format"])
    validate_events(manifest, manifest_path.parent, cfg, fmt, Path(out_dir))
    return str(Path(out_dir) / "validation_manifest.json")


@task(name="split", **RETRY_OPTIONS, cache_key_fn=_cache_token, persist_result=True)
def split_task(
    ingest_manifest_path: str, validation_manifest_path: str, cfg: SplitConfig, out_dir: str, cache_token: str = ""
) -> str:
    """Sessionize, filter and split into the split directory; return its manifest's path."""
    from gru4rec.data.splitter import make_split

    ingest_manifest = json.loads(Path(ingest_manifest_path).read_text(encoding="utf-8"))
    vpath = Path(validation_manifest_path)
    validation = json.loads(vpath.read_text(encoding="utf-8"))
    tables = {role: _resolve(vpath.parent, t["file"]) for role, t in validation["tables"].items()}
    lineage = {
        "sources": ingest_manifest["sources"],
        "format": ingest_manifest["format"],
        "content_key": ingest_manifest.get("content_key"),
        "validation": {"success": validation["success"], "duplicates": validation.get("duplicates")},
    }
    make_split(tables, SourceFormat(ingest_manifest["format"]), cfg, Path(out_dir), lineage=lineage)
    return str(Path(out_dir) / "manifest.json")


def _resolve(base: Path, file: str) -> Path:
    p = Path(file)
    return p if p.is_absolute() else base / p
