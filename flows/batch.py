"""`batch_recommend`: top-k next items for many sessions with a registered model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from gru4rec.errors import DataFormatError, raise_if_transient
from tasks.common import RETRY_OPTIONS


def read_sessions(path: str | Path, session_col: str = "session_id", item_col: str = "item_id"):
    """Sessions from Parquet or CSV: one row per event (session, item[, time]) in order, or one row
    per session with a list column of items. Returns (session ids, list of item lists)."""
    import polars as pl

    p = Path(path)
    if not p.exists():
        raise DataFormatError("sessions file not found", file=str(p))
    try:
        df = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema_length=10_000)
    except Exception as e:  # polars raises several error types for unreadable files
        raise_if_transient(e)
        raise DataFormatError(f"cannot read sessions file: {e}", file=str(p)) from None
    for col in (session_col, item_col):
        if col not in df.columns:
            raise DataFormatError(
                f"sessions file lacks column {col!r} (columns: {', '.join(df.columns)})", file=str(p), column=col
            )
    if isinstance(df.schema[item_col], pl.List):
        return df[session_col].to_list(), [list(x or []) for x in df[item_col].to_list()]
    order = [c for c in ("timestamp", "time") if c in df.columns]
    df = df.with_row_index("_row").sort([session_col, *order, "_row"], maintain_order=True)
    grouped = df.group_by(session_col, maintain_order=True).agg(pl.col(item_col))
    return grouped[session_col].to_list(), grouped[item_col].to_list()


@task(name="recommend", **RETRY_OPTIONS)
def recommend_task(
    model_uri: str,
    sessions_path: str,
    out_path: str,
    k: int,
    tracking_uri: str | None,
    session_col: str,
    item_col: str,
    exclude_seen: bool | None,
) -> dict:
    import mlflow
    import pandas as pd
    import polars as pl

    from gru4rec.io import write_parquet_atomic

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    ids, sessions = read_sessions(sessions_path, session_col, item_col)
    model = mlflow.pyfunc.load_model(model_uri)
    params = {"k": k} | ({} if exclude_seen is None else {"exclude_seen": exclude_seen})  # absent: the model's
    pred = model.predict(pd.DataFrame({"items": sessions}), params=params)
    item_type = pl.List(pl.String) if any(isinstance(x, str) for r in pred["items"] for x in r) else pl.List(pl.Int64)
    out = pl.DataFrame(
        {
            "session_id": ids,
            "items": pl.Series(list(pred["items"]), dtype=item_type),
            "scores": pl.Series(list(pred["scores"]), dtype=pl.List(pl.Float64)),
            "unknown_items": [[str(x) for x in r] for r in pred["unknown_items"]],
            "fallback": list(pred["fallback"]),
        }
    )
    write_parquet_atomic(out, out_path)
    return {
        "sessions": len(ids),
        "with_unknown_items": int(sum(1 for r in pred["unknown_items"] if len(r))),
        "unknown_items": int(sum(len(r) for r in pred["unknown_items"])),
        "fallbacks": int(sum(bool(x) for x in pred["fallback"])),
        "output": str(out_path),
    }


@flow(name="batch_recommend", log_prints=True)
def batch_recommend(
    sessions_path: str,
    out_path: str,
    model_name: str = "gru4rec",
    alias: str = "champion",
    version: str | None = None,
    k: int = 20,
    tracking_uri: str | None = None,
    workdir: str = "runs",
    session_col: str = "session_id",
    item_col: str = "item_id",
    exclude_seen: bool | None = None,
) -> dict:
    """Load ``models:/<name>@<alias>`` (or a version), write top-k recommendations per session to Parquet.

    ``exclude_seen``: leave out (True) or keep (False) items already in the session; None = the
    model's own setting (decided when it was trained).
    """
    from tasks.registry import embedded_tracking_uri

    uri = tracking_uri or embedded_tracking_uri(Path(workdir) / "mlflow")[0]
    model_uri = f"models:/{model_name}/{version}" if version else f"models:/{model_name}@{alias}"
    summary = recommend_task(model_uri, sessions_path, out_path, k, uri, session_col, item_col, exclude_seen)
    get_run_logger().info(
        "%d sessions → %s; %d with unknown items (%d items skipped), %d popularity fallbacks",
        summary["sessions"],
        summary["output"],
        summary["with_unknown_items"],
        summary["unknown_items"],
        summary["fallbacks"],
    )
    create_table_artifact(key="batch-recommendations", table=[summary | {"model": model_uri}])
    return summary | {"model_uri": model_uri}
