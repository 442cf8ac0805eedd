"""Prefect tasks of the data half: thin wrappers that pass file references, never DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from gru4rec.data.config import IngestConfig, SourceFormat, SplitConfig
from tasks.caching import ContentKey
from tasks.common import RETRY_OPTIONS
from tasks.validation import ValidationConfig

DATA_CODE = ("gru4rec.data", "gru4rec.io", "gru4rec.errors")


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _table_hashes(manifest_path: str) -> dict[str, str]:
    return {role: t["sha256"] for role, t in _read_json(manifest_path)["tables"].items()}


def _ingest_content(inputs: dict) -> dict:
    if not inputs["source_key"]:
        raise ValueError("ingest_task: use_cache needs the source_key (content hash of the source)")
    return {"source": inputs["source_key"]}


def _validate_content(inputs: dict) -> dict:
    return {"events": _table_hashes(inputs["ingest_manifest_path"]), "settings": inputs["cfg"].model_dump(mode="json")}


def _split_content(inputs: dict) -> dict:
    ingest = _read_json(inputs["ingest_manifest_path"])
    return {
        "tables": _table_hashes(inputs["validation_manifest_path"]),
        "source": ingest.get("content_key"),
        "format": ingest["format"],
        "settings": inputs["cfg"].model_dump(mode="json"),
    }


@task(name="ingest", **RETRY_OPTIONS, persist_result=True, cache_policy=ContentKey(describe=_ingest_content, modules=DATA_CODE))
def ingest_task(
    cfg: IngestConfig, out_dir: str, source_key: str = "", use_cache: bool = False, cache_scope: str = ""
) -> str:
    """Read the source log into canonical events Parquet; return the ingest manifest's path."""
    from gru4rec.data.ingest import ingest

    ingest(cfg, Path(out_dir))
    return str(Path(out_dir) / "ingest_manifest.json")


@task(
    name="validate",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_validate_content, modules=("tasks.validation", "gru4rec.io", "gru4rec.errors")),
)
def validate_task(
    ingest_manifest_path: str, cfg: ValidationConfig, out_dir: str, use_cache: bool = False, cache_scope: str = ""
) -> str:
    """Run the Great Expectations suite; a failure raises DataValidationError (never retried)."""
    from tasks.validation import validate_events

    manifest_path = Path(ingest_manifest_path)
    manifest = _read_json(ingest_manifest_path)
    fmt = SourceFormat(manifest["format"])
    validate_events(manifest, manifest_path.parent, cfg, fmt, Path(out_dir))
    return str(Path(out_dir) / "validation_manifest.json")


@task(name="split", **RETRY_OPTIONS, persist_result=True, cache_policy=ContentKey(describe=_split_content, modules=DATA_CODE))
def split_task(
    ingest_manifest_path: str,
    validation_manifest_path: str,
    cfg: SplitConfig,
    out_dir: str,
    use_cache: bool = False,
    cache_scope: str = "",
) -> str:
    """Sessionize, filter and split into the split directory; return its manifest's path."""
    from gru4rec.data.splitter import make_split

    ingest_manifest = _read_json(ingest_manifest_path)
    vpath = Path(validation_manifest_path)
    validation = _read_json(validation_manifest_path)
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
