"""`prepare_data`: ingest → validate → sessionize and split, each a retryable Prefect task.

Every attempt writes into its own directory ``<out>/.attempts/<UTC time>-<flow run id>/``; only
when all three steps have passed are its ``ingest/``, ``validation/`` and split files moved into
``<out>`` (the manifest last). A failed attempt therefore leaves the last good run in ``<out>``
byte for byte as it was, and keeps its own files and reports where the error says.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context

from flows.config import PrepareConfig
from gru4rec.data.split_dir import MANIFEST, SPLIT_FILES
from gru4rec.data.splitter import split_stats_table
from gru4rec.errors import ConfigError, PipelineError
from tasks.data import ingest_sources, split_task, validate_task
from tasks.notify import notify_failure

STEP_DIRS = {"ingest": "ingest_manifest.json", "validation": "validation_manifest.json"}


def _attempt_dir(out: Path) -> Path:
    run_id = str(get_run_context().flow_run.id)[:8]
    return out / ".attempts" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{run_id}"


def _replace_step_dir(attempt: Path, out: Path, name: str) -> None:
    """Swap ``out/name`` for the attempt's; the old one (ours: it holds our manifest) goes to the attempt."""
    old = out / name
    if old.exists():
        if not (old / STEP_DIRS[name]).is_file():
            raise ConfigError(f"{old} exists and was not written by prepare; choose another --out")
        os.replace(old, attempt / f"previous-{name}")
    os.replace(attempt / name, old)


def publish(attempt: Path, out: Path) -> None:
    """Move a successful attempt's files into ``out``: step directories, split files, manifest last."""
    os.replace(attempt / "split" / MANIFEST, attempt / MANIFEST)  # keep the old manifest valid until the end
    for name in STEP_DIRS:
        _replace_step_dir(attempt, out, name)
    for name in SPLIT_FILES:
        os.replace(attempt / "split" / name, out / name)
    os.replace(attempt / MANIFEST, out / MANIFEST)
    shutil.rmtree(attempt)  # created by this run and now holding only what it replaced


@flow(name="prepare_data", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def prepare_data(config: PrepareConfig) -> dict:
    """Turn a raw interaction log into train/valid/test Parquet. Returns the split's paths and stats."""
    out = Path(config.out_dir).expanduser().resolve()
    attempt = _attempt_dir(out)
    try:
        # A directory/glob source is read file by file, each file cached by content under <out>/.cache.
        cache_dir = str(out / ".cache" / "ingest-files")
        ingest = ingest_sources(config.ingest, str(attempt / "ingest"), cache_dir, use_cache=True, cache_scope=str(out))
        validation = validate_task(ingest, config.validation, str(attempt / "validation"))
        split_task(ingest, validation, config.split, str(attempt / "split"))
    except PipelineError as e:
        if attempt.exists():
            e.args = (f"{e}. Nothing in {out} was changed; this attempt's files are in {attempt}",)
        raise
    publish(attempt, out)
    get_run_logger().info("split published to %s", out)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rows = split_stats_table(stats)
    create_table_artifact(key="split-statistics", table=rows, description=f"Split statistics for {out}")
    return {
        "split_dir": str(out),
        "manifest": str(out / MANIFEST),
        "ingest_manifest": str(out / "ingest" / STEP_DIRS["ingest"]),
        "validation_manifest": str(out / "validation" / STEP_DIRS["validation"]),
        "stats": stats,
        "table": rows,
    }
