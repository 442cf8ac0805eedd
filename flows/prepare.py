"""`prepare_data`: ingest → validate → sessionize and split, each a retryable Prefect task."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.config import PrepareConfig
from tasks.data import ingest_task, split_task, validate_task


@flow(name="prepare_data", log_prints=True)
def prepare_data(config: PrepareConfig) -> dict:
    """Turn a raw interaction log into train/valid/test Parquet. Returns the split's paths and stats."""
    out = Path(config.out_dir).resolve()
    ingest_manifest = ingest_task(config.ingest, str(out / "ingest"))
    validation_manifest = validate_task(ingest_manifest, config.validation, str(out / "validation"))
    split_manifest = split_task(ingest_manifest, validation_manifest, config.split, str(out))

    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    from gru4rec.data.splitter import split_stats_table

    rows = split_stats_table(stats)
    create_table_artifact(
        key="split-statistics", table=rows, description=f"Split statistics for {out}"
    )
    return {
        "split_dir": str(out),
        "manifest": split_manifest,
        "ingest_manifest": ingest_manifest,
        "validation_manifest": validation_manifest,
        "stats": stats,
        "table": rows,
    }
