"""`training_pipeline`: ingest → validate → split → train → evaluate → register.

Every run writes under its own run directory (``<workdir>/runs/<utc time>-<flow run id>``);
tasks hand each other paths and small summaries. Ingest/validate/split are cached on the source
content and the settings (not on paths); training only when ``cache_training`` is set. What
happened is published as Prefect artifacts: split statistics, the validation summary, the
training history, the evaluation table and the registration decision.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from flows.config import PipelineConfig
from gru4rec.errors import DataValidationError
from gru4rec.io import sha256_file, sha256_json, write_json_atomic
from tasks.common import RETRY_OPTIONS
from tasks.data import ingest_task, split_task, validate_task
from tasks.training import evaluate_task, register_task, train_task

CACHE_VERSION = "1"  # bump when the meaning of cached outputs changes


@task(name="fingerprint-source", **RETRY_OPTIONS)
def fingerprint_task(ingest_cfg) -> str:
    """Content hash of the source file(s) + how they are read (downloads the default source once)."""
    from gru4rec.data.ingest import source_fingerprint

    return source_fingerprint(ingest_cfg)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cached(task_fn, *args, token: str, expect: str | None = None, **kwargs):
    """Run a cached task; if the cached result points at files that no longer exist, recompute."""
    result = task_fn(*args, cache_token=token, **kwargs)
    path = Path(expect or result)
    if not path.exists():
        result = task_fn.with_options(refresh_cache=True)(*args, cache_token=token, **kwargs)
    return result


def _sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(7, int((v - lo) / span * 7.999))] for v in values)


def _validation_artifact(validation_manifest: Path) -> None:
    if not validation_manifest.exists():
        return
    v = json.loads(validation_manifest.read_text(encoding="utf-8"))
    rows = [
        {
            "table": c.get("table"),
            "check": c.get("expectation") or c.get("description"),
            "column": c.get("column") or "",
            "result": "pass" if c.get("success") else "FAIL",
            "unexpected": c.get("unexpected_count"),
            "engine": c.get("engine", "gx"),
        }
        for c in v.get("checks", [])
    ]
    create_table_artifact(key="validation-summary", table=rows, description="Great Expectations validation")


def _history_artifact(history: list[dict]) -> None:
    cols = ["epoch", "loss", "events_per_s", "seconds"] + sorted(k for k in history[0] if k.startswith("valid_"))
    rows = [{c: (round(h[c], 5) if isinstance(h.get(c), float) else h.get(c)) for c in cols} for h in history]
    create_table_artifact(key="training-history", table=rows, description="Loss, speed and validation per epoch")
    lines = [
        "## Training history",
        "",
        f"loss per epoch: `{_sparkline([h['loss'] for h in history])}` "
        f"({history[0]['loss']:.4f} → {history[-1]['loss']:.4f})",
    ]
    if "valid_mrr@20" in history[0]:
        vals = [h["valid_mrr@20"] for h in history]
        lines.append(f"valid MRR@20 per epoch: `{_sparkline(vals)}` ({vals[0]:.4f} → {vals[-1]:.4f})")
    lines += ["", "| epoch | loss | events/s |", "|---:|---:|---:|"]
    lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['events_per_s']:,.0f} |" for h in history]
    create_markdown_artifact(key="training-chart", markdown="\n".join(lines), description="Training history chart")


def _evaluation_artifact(report: dict) -> list[dict]:
    from gru4rec.jobs import metrics_table

    rows = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in metrics_table(report)]
    create_table_artifact(
        key="evaluation",
        table=rows,
        description=f"Test set, {report['n_targets']:,} targets, ties={report['ties']}: GRU4Rec vs baselines",
    )
    return rows


def _registration_artifact(reg: dict, tracking_uri: str) -> None:
    link = reg.get("run_url")
    browse = link or f"`mlflow ui --backend-store-uri {tracking_uri}` → experiment {reg['experiment_id']}"
    md = "\n".join(
        [
            "## Model registration",
            "",
            f"- registered model: **{reg['registry_name']}** version **{reg['version']}** → alias **{reg['alias']}**",
            f"- decision: {reg['decision']}",
            f"- this version's {reg.get('primary_metric', 'primary metric')}: {reg['candidate_metric']:.5f}; "
            f"champion before: {reg['champion_metric'] if reg['champion_metric'] is not None else '—'}",
            f"- MLflow run: `{reg['run_id']}` ({browse})",
            f'- load it: `mlflow.pyfunc.load_model("models:/{reg["registry_name"]}@{reg["alias"]}")`',
        ]
    )
    create_markdown_artifact(key="registration", markdown=md, description="MLflow registry decision")


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(config: PipelineConfig | None = None) -> dict:
    """Raw interaction log → validated split → trained GRU4Rec → evaluated → registered in MLflow."""
    config = config or PipelineConfig()
    logger = get_run_logger()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    flow_run_id = str(get_run_context().flow_run.id)
    workdir = Path(config.workdir).expanduser().resolve()
    run_dir = workdir / "runs" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{flow_run_id[:8]}"
    data_dir = run_dir / "data"
    logger.info("run directory: %s", run_dir)

    # ---- data: cached on content + settings
    t = time.perf_counter()
    if config.cache_data:
        source_key = fingerprint_task(config.ingest)
        ingest_token = sha256_json(["ingest", CACHE_VERSION, source_key])
        validate_token = sha256_json([ingest_token, config.validation.model_dump(mode="json")])
        split_token = sha256_json([validate_token, config.split.model_dump(mode="json")])
    else:
        ingest_token = validate_token = split_token = ""
    ingest_manifest = _cached(ingest_task, config.ingest, str(data_dir / "ingest"), token=ingest_token)
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        validation_manifest = _cached(
            validate_task, ingest_manifest, config.validation, str(data_dir / "validation"), token=validate_token
        )
    except DataValidationError:
        _validation_artifact(data_dir / "validation" / "validation_manifest.json")
        raise
    _validation_artifact(Path(validation_manifest))
    timings["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    split_manifest = _cached(
        split_task, ingest_manifest, validation_manifest, config.split, str(data_dir / "split"), token=split_token
    )
    split_dir = str(Path(split_manifest).parent)
    stats = json.loads((Path(split_dir) / "stats.json").read_text(encoding="utf-8"))
    from gru4rec.data.splitter import split_stats_table

    create_table_artifact(key="split-statistics", table=split_stats_table(stats), description=f"Split {split_dir}")
    split_fingerprint = json.loads(Path(split_manifest).read_text(encoding="utf-8"))["fingerprint"]
    timings["split"] = time.perf_counter() - t

    # ---- model
    from gru4rec.device import select_device
    from gru4rec.jobs import build_config

    m = config.model
    cfg = build_config(
        m.preset, m.overrides, epochs=m.epochs, seed=m.seed, device=m.device, threads=m.threads, progress=False
    )
    device = str(select_device(m.device))
    if device == "cpu":
        logger.warning("no GPU found (or device=cpu requested): training on the CPU")
    else:
        logger.info("training on %s", device)
    train_token = sha256_json([split_token, cfg.model_dump(mode="json"), m.full]) if config.cache_training else ""
    model_dir = run_dir / "model"
    t = time.perf_counter()
    summary = train_task(split_dir, cfg.model_dump_json(), str(model_dir), m.full, m.preset, cache_token=train_token)
    model_dir = Path(summary["model_dir"])
    if not model_dir.exists():  # a cached result whose files were deleted
        summary = train_task.with_options(refresh_cache=True)(
            split_dir, cfg.model_dump_json(), str(run_dir / "model"), m.full, m.preset, cache_token=train_token
        )
        model_dir = Path(summary["model_dir"])
    timings["train"] = time.perf_counter() - t
    history = summary["history"]
    _history_artifact(history)
    train_compute = sum(h["seconds"] + h.get("valid_seconds", 0.0) for h in history)

    t = time.perf_counter()
    e = config.evaluation
    report = evaluate_task(split_dir, str(model_dir), e.ks, e.ties, list(e.baselines), str(run_dir / "metrics.json"))
    timings["evaluate"] = time.perf_counter() - t
    eval_rows = _evaluation_artifact(report)

    # ---- registry
    from tasks.registry import embedded_tracking_uri

    if config.registry.tracking_uri:
        tracking_uri, artifact_location = config.registry.tracking_uri, None
    else:
        tracking_uri, artifact_location = embedded_tracking_uri(workdir / "mlflow")
    t = time.perf_counter()
    reg = register_task(
        str(model_dir),
        report["metrics"]["gru4rec"]
        | {f"popularity_{k}": v for k, v in report["metrics"].get("popularity", {}).items()},
        {"pipeline": config.model_dump(mode="json"), "model": cfg.model_dump(mode="json")},
        split_fingerprint,
        sha256_file(split_manifest),
        config.registry.model_dump(),
        tracking_uri,
        artifact_location,
        {"git_commit": _git_commit(), "prefect_flow_run_id": flow_run_id, "preset": m.preset, "device": device},
        [
            str(Path(validation_manifest)),
            str(Path(split_dir) / "stats.json"),
            str(run_dir / "metrics.json"),
            str(model_dir / "history.json"),
        ],
        f"{m.preset}-{flow_run_id[:8]}",
    )
    reg["primary_metric"] = config.registry.primary_metric
    timings["register"] = time.perf_counter() - t
    _registration_artifact(reg, tracking_uri)

    total = time.perf_counter() - t_start
    compute = train_compute + timings["evaluate"]
    result = {
        "run_dir": str(run_dir),
        "split_dir": split_dir,
        "model_dir": str(model_dir),
        "device": device,
        "split_fingerprint": split_fingerprint,
        "evaluation": eval_rows,
        "metrics": report["metrics"],
        "registration": reg,
        "tracking_uri": tracking_uri,
        "timings": timings | {"total": total, "compute": compute, "overhead": total - compute},
        "flow_run_id": flow_run_id,
    }
    write_json_atomic(run_dir / "summary.json", result)
    return result
