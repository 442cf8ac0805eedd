"""Prefect tasks of the data half: thin wrappers that pass file references, never DataFrames.

A source that is a directory or glob of files is ingested by `ingest_sources`: the files are listed
and hashed (``list-source-files``), each file is read by its own ``ingest-file`` task, cached on the
file's sha256 + the reading settings + the reader's code (its result, a canonical Parquet part, lives
under the workdir's cache), and ``combine-files`` concatenates the parts (and cuts the rolling window).
A nightly run over a directory of daily dumps therefore reads only the new day's files.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from gru4rec.data.config import ColumnMapping, IngestConfig, SourceFormat, SplitConfig
from gru4rec.errors import DataFormatError
from gru4rec.io import sha256_file, sha256_json, write_json_atomic, write_parquet_atomic
from tasks.caching import ContentKey, cached_or_recomputed, listed_files_intact, module_source_hash
from tasks.common import RETRY_OPTIONS
from tasks.validation import ValidationConfig

DATA_CODE = ("gru4rec.data", "gru4rec.io", "gru4rec.errors")
# Files read at once by the ingest-file tasks of one source (bounded: a directory may hold thousands).
INGEST_FILE_CONCURRENCY = 4


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


@task(
    name="ingest",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_ingest_content, modules=DATA_CODE),
)
def ingest_task(
    cfg: IngestConfig, out_dir: str, source_key: str = "", use_cache: bool = False, cache_scope: str = ""
) -> str:
    """Read the source log into canonical events Parquet; return the ingest manifest's path."""
    from gru4rec.data.ingest import ingest

    ingest(cfg, Path(out_dir))
    return str(Path(out_dir) / "ingest_manifest.json")


def _file_content(inputs: dict) -> dict:
    columns = inputs["columns"]
    return {
        "sha256": inputs["sha256"],
        "format": inputs["fmt"],
        "columns": columns.model_dump(mode="json") if columns is not None else None,
    }


@task(
    name="ingest-file",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_file_content, modules=DATA_CODE),
)
def ingest_file_task(
    path: str,
    sha256: str,
    fmt: str,
    columns: ColumnMapping | None,
    cache_dir: str,
    use_cache: bool = False,
    cache_scope: str = "",
) -> str:
    """Read one file of a source into a canonical Parquet part under ``cache_dir``; return its manifest's path.

    The part is named by what it holds (file content + reading settings + reader code), so two
    workdirs or two runs never write different bytes under one name.
    """
    from gru4rec.data.ingest import INTERMEDIATE_COMPRESSION, read_part

    df, meta = read_part(Path(path), SourceFormat(fmt), columns)
    if sha256_file(path) != sha256:  # the cache key names the bytes hashed when the files were listed
        raise DataFormatError("the file changed while it was being ingested; run again", file=path)
    name = sha256_json(
        {
            "content": _file_content({"sha256": sha256, "fmt": fmt, "columns": columns}),
            "code": module_source_hash(DATA_CODE),
        }
    )[:40]
    dest = Path(cache_dir) / f"{name}.parquet"
    write_parquet_atomic(df, dest, compression=INTERMEDIATE_COMPRESSION)
    manifest = {
        "tables": {"part": {"file": dest.name, "rows": df.height, "sha256": sha256_file(dest)}},
        "source": {"sha256": sha256, "format": fmt, "first_path": path},
        "part": meta,
    }
    return str(write_json_atomic(dest.with_suffix(".json"), manifest))


@task(name="list-source-files", **RETRY_OPTIONS)
def list_sources_task(cfg: IngestConfig) -> dict:
    """Every file the sources name (directories and globs expanded), hashed; the format and content key."""
    from gru4rec.data.ingest import list_sources

    return list_sources(cfg).to_json()


def _combine_content(inputs: dict) -> dict:
    parts = {
        role: [_read_json(p["manifest"])["tables"]["part"]["sha256"] for p in role_parts]
        for role, role_parts in inputs["parts"].items()
    }
    return {"source": inputs["listing"]["content_key"], "parts": parts}


@task(
    name="combine-files",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_combine_content, modules=DATA_CODE),
)
def combine_task(
    cfg: IngestConfig,
    listing: dict,
    parts: dict[str, list[dict]],
    out_dir: str,
    use_cache: bool = False,
    cache_scope: str = "",
) -> str:
    """Concatenate each role's file parts (cutting the rolling window), write the events tables + manifest.

    Cached on the listing's content key (every file's sha256, the reading settings, the window) and
    the parts' hashes: a rerun with no new file reuses the table. Each file's ``cache`` entry in the
    lineage says whether the run that wrote the table read the file or took its part from the cache.
    """
    import polars as pl

    from gru4rec.data.ingest import MANIFEST_NAME, SourceListing, combine_role, read_single_role, write_ingest

    sources = SourceListing.from_json(listing)
    role_tables = {}
    for role, source in sources.roles.items():
        if not source.multi:
            role_tables[role] = read_single_role(source, sources.format, cfg, role)
            continue
        metas, tables = [], []
        for part in parts[role]:
            manifest = _read_json(part["manifest"])
            metas.append(manifest["part"] | {"cache": part["cache"]})
            tables.append(pl.scan_parquet(Path(part["manifest"]).parent / manifest["tables"]["part"]["file"]))
        window = cfg.window_days if role == "events" else None
        role_tables[role] = combine_role(source, sources.format, metas, tables, window)
    write_ingest(cfg, sources, role_tables, Path(out_dir))
    return str(Path(out_dir) / MANIFEST_NAME)


def _multi_file(cfg: IngestConfig) -> bool:
    from gru4rec.data.sources import is_multi

    return any(is_multi(spec) for spec in (cfg.source, cfg.test_source, cfg.valid_source) if spec)


def _ingest_files(files, fmt: str, cfg: IngestConfig, cache_dir: str, cache: dict) -> list[dict]:
    """One ingest-file task per file (a few at a time); a cached part that is not intact is read again."""
    out: list[dict] = []
    for start in range(0, len(files), INGEST_FILE_CONCURRENCY):
        futures = [
            (
                f,
                ingest_file_task.with_options(task_run_name=f"ingest-file {f.path.parent.name}/{f.path.name}").submit(
                    str(f.path), f.sha256, fmt, cfg.columns, cache_dir, **cache
                ),
            )
            for f in files[start : start + INGEST_FILE_CONCURRENCY]
        ]
        for f, future in futures:
            state = future.wait() or future.state
            manifest = state.result()
            status = "cached" if state.name == "Cached" else "read"
            if status == "cached" and not listed_files_intact(manifest):
                manifest = ingest_file_task.with_options(refresh_cache=True)(
                    str(f.path), f.sha256, fmt, cfg.columns, cache_dir, **cache
                )
                status = "read"
            out.append({"manifest": manifest, "cache": status})
    return out


def ingest_sources(
    cfg: IngestConfig,
    out_dir: str,
    cache_dir: str,
    use_cache: bool = False,
    cache_scope: str = "",
    source_key: str = "",
) -> str:
    """Ingest in a flow: a single-file source by the one cached ``ingest`` task, a directory or glob
    file by file (`ingest_file_task`, cached on content) and then ``combine-files``. Returns the
    ingest manifest's path."""
    cache = dict(use_cache=use_cache, cache_scope=cache_scope)
    if not _multi_file(cfg):  # the whole-source cache is keyed on source_key; without one, read afresh
        whole = dict(use_cache=use_cache and bool(source_key), cache_scope=cache_scope)
        return cached_or_recomputed(ingest_task, listed_files_intact, cfg, out_dir, source_key=source_key, **whole)
    from gru4rec.data.ingest import SourceListing

    listing = list_sources_task(cfg)
    sources = SourceListing.from_json(listing)
    parts = {
        role: _ingest_files(source.files, sources.format.value, cfg, cache_dir, cache)
        for role, source in sources.roles.items()
        if source.multi
    }
    manifest = cached_or_recomputed(combine_task, listed_files_intact, cfg, listing, parts, out_dir, **cache)
    n = [p["cache"] for role_parts in parts.values() for p in role_parts]
    get_run_logger().info(
        "ingest: %d file(s), %d read, %d from the cache%s",
        len(n),
        n.count("read"),
        n.count("cached"),
        f" (rolling window: last {cfg.window_days:g} days)" if cfg.window_days else "",
    )
    return manifest


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


@task(
    name="split",
    **RETRY_OPTIONS,
    persist_result=True,
    cache_policy=ContentKey(describe=_split_content, modules=DATA_CODE),
)
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
