"""`training_pipeline`: ingest → validate → split → train → evaluate → register.

Every run writes under its own run directory (``<workdir>/runs/<utc time>-<flow run id>``, see
`flows.run_state`: a rerun after a kill resumes the unfinished one); tasks hand each other paths
and small summaries. Ingest/validate/split are cached on content + settings + code (not on paths,
`tasks.caching`); training only when ``cache_training`` is set. What happened is published as
Prefect artifacts: split statistics, the validation summary, the training history, the evaluation
table and the registration decision.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from flows.config import PipelineConfig
from flows.run_state import RunDirectory, mark_flow_run_crashed, open_run_directory, run_key, write_state
from gru4rec.config import Gru4RecConfig
from gru4rec.data.splitter import split_stats_table
from gru4rec.device import select_device
from gru4rec.errors import DataValidationError
from gru4rec.io import sha256_file, write_json_atomic
from gru4rec.jobs import metrics_table, training_key
from tasks.caching import cached_or_recomputed, listed_files_intact, model_dir_intact
from tasks.common import RETRY_OPTIONS, readable
from tasks.data import ingest_sources, split_task, validate_task
from tasks.notify import notify_failure, notify_new_champion
from tasks.plots import comparison_plot, markdown_image, training_plot
from tasks.registry import store_locations
from tasks.training import (
    data_health_task,
    data_profile_task,
    evaluate_champion_task,
    evaluate_task,
    find_trained_task,
    register_task,
    train_task,
)


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


def _rounded(row: dict) -> dict:
    return {k: (readable(v) if isinstance(v, float) else v) for k, v in row.items()}


def _history_artifact(run: RunContext, history: list[dict]) -> Path:
    """The per-epoch table and the PNG training plot (also logged to MLflow with the run)."""
    cols = ["epoch", "loss", "events_per_s", "seconds"] + sorted(k for k in history[0] if k.startswith("valid_"))
    rows = [_rounded({c: h.get(c) for c in cols}) for h in history]
    create_table_artifact(key="training-history", table=rows, description="Loss, speed and validation per epoch")
    png = training_plot(history, run.run_dir / "plots" / "training.png", title=run.config.training.label)
    last = history[-1]
    lines = [
        "## Training",
        "",
        markdown_image(png, "loss and validation per epoch"),
        "",
        f"{len(history)} epochs; last: loss {readable(last['loss'])}, {readable(last['events_per_s'])} events/s. "
        f"The PNG is logged to MLflow with the run (`training.png`).",
    ]
    create_markdown_artifact(key="training-chart", markdown="\n".join(lines), description="Training curves (PNG)")
    return png


def _evaluation_artifact(run: RunContext, report: dict, head_to_head: dict | None) -> tuple[list[dict], Path]:
    metrics = dict(report["metrics"])
    if head_to_head:
        metrics[f"champion v{head_to_head['champion_version']}"] = head_to_head["metrics"]
    table = metrics_table({"metrics": metrics, "ks": report["ks"]})
    seen, other = report["seen_items"], report.get("metrics_other_seen")
    if other:  # the same models with the other seen-items setting, for comparison (the gate uses the first)
        label = "seen excluded" if other["exclude_seen"] else "seen kept"
        renamed = {f"{name} [{label}]": m for name, m in other["metrics"].items()}
        table += metrics_table({"metrics": renamed, "ks": report["ks"]})
    create_table_artifact(
        key="evaluation",
        table=[_rounded(r) for r in table],
        description=f"Test set, {report['n_targets']:,} targets, ties={report['ties']}: GRU4Rec vs baselines"
        + (" and the champion (head-to-head)" if head_to_head else "")
        + f"; items seen in the session {'excluded' if seen['exclude_seen'] else 'kept'} (exclude_seen="
        f"{seen['setting']}: {seen['repeat_share']:.2%} of the training data's (session, item) pairs repeat)",
    )
    k = max(report["ks"])
    png = comparison_plot(metrics, [f"recall@{k}", f"mrr@{k}"], run.run_dir / "plots" / "comparison.png")
    create_markdown_artifact(
        key="evaluation-chart",
        markdown=f"## Test set: GRU4Rec against the baselines\n\n{markdown_image(png, 'metric comparison')}",
        description="Recall and MRR against the baselines (PNG)",
    )
    return metrics_table(report), png


def _registration_artifact(reg: dict, tracking_uri: str) -> None:
    link = reg.get("run_url")
    browse = link or f"`mlflow ui --backend-store-uri {tracking_uri}` → experiment {reg['experiment_id']}"
    metric = reg.get("primary_metric", "primary metric")
    champion = reg["champion_metric"]
    lines = ["## Model registration", ""]
    lines += [f"**{w}**" for w in reg.get("warnings", [])]
    lines += [
        f"- registered model: **{reg['registry_name']}** version **{reg['version']}** → alias **{reg['alias']}**",
        f"- decision: {reg['decision']}",
        f"- this version's {metric}: {readable(reg['candidate_metric'])}; champion before"
        + (f" (v{reg['champion_version']})" if reg.get("champion_version") else "")
        + f": {readable(champion) if champion is not None else '—'}",
    ]
    h2h = reg.get("head_to_head")
    if h2h:
        lines.append(
            f"- head-to-head on this run's test split (fingerprint `{h2h['test_fingerprint'][:12]}`): champion "
            f"v{h2h['champion_version']} {metric} {readable(h2h['value'])}, {h2h['unknown_targets']:,} of "
            f"{h2h['n_targets']:,} targets are items it never saw (counted as misses)"
        )
    lines += [
        f"- MLflow run: `{reg['run_id']}` ({browse})",
        f'- load it: `mlflow.pyfunc.load_model("models:/{reg["registry_name"]}@{reg["alias"]}")`',
    ]
    create_markdown_artifact(key="registration", markdown="\n".join(lines), description="MLflow registry decision")


@dataclass
class RunContext:
    config: PipelineConfig
    workdir: Path
    run_dir: Path
    flow_run_id: str
    run_key: str
    source_key: str
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)


def _start_run(config: PipelineConfig) -> tuple[RunContext, RunDirectory]:
    """A run directory: the interrupted run with the same settings and data (resumed), or a new one."""
    logger = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    workdir = Path(config.workdir).expanduser().resolve()
    source_key = fingerprint_task(config.ingest)
    key = run_key(config.model_dump(mode="json"), source_key)
    directory = open_run_directory(workdir, key, flow_run_id)
    if directory.previous is not None:
        old = directory.previous.get("flow_run_id")
        logger.warning("resuming the interrupted run in %s (flow run %s)", directory.path, old)
        if old and old != flow_run_id and mark_flow_run_crashed(old, f"interrupted; resumed by flow run {flow_run_id}"):
            logger.info("flow run %s marked Crashed", old)
    logger.info("run directory: %s", directory.path)
    return RunContext(config, workdir, directory.path, flow_run_id, key, source_key), directory


def _prepare_split(run: RunContext) -> dict:
    """ingest → validate → split, each cached on content + settings + code (when cache_data)."""
    config, data_dir = run.config, run.run_dir / "data"
    cache = dict(use_cache=config.cache_data, cache_scope=str(run.workdir))
    t = time.perf_counter()
    source_key = run.source_key if config.cache_data else ""
    files_cache = str(run.workdir / "cache" / "ingest-files")  # per-file parts of a directory/glob source
    ingest = ingest_sources(config.ingest, str(data_dir / "ingest"), files_cache, source_key=source_key, **cache)
    run.timings["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        validation = cached_or_recomputed(
            validate_task, listed_files_intact, ingest, config.validation, str(data_dir / "validation"), **cache
        )
    except DataValidationError:
        _validation_artifact(data_dir / "validation" / "validation_manifest.json")
        raise
    _validation_artifact(Path(validation))
    run.timings["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    split = cached_or_recomputed(
        split_task, listed_files_intact, ingest, validation, config.split, str(data_dir / "split"), **cache
    )
    split_dir = Path(split).parent
    stats = json.loads((split_dir / "stats.json").read_text(encoding="utf-8"))
    create_table_artifact(key="split-statistics", table=split_stats_table(stats), description=f"Split {split_dir}")
    run.timings["split"] = time.perf_counter() - t
    fingerprint = json.loads(Path(split).read_text(encoding="utf-8"))["fingerprint"]
    return {"split_dir": str(split_dir), "manifest": split, "validation": validation, "fingerprint": fingerprint}


def _training_config(run: RunContext) -> tuple[Gru4RecConfig, str]:
    logger = get_run_logger()
    cfg = run.config.training.gru4rec_config()
    cfg.train.progress = False  # the flow logs epochs; no terminal progress bar in a worker
    device = str(select_device(cfg.train.device))
    if device == "cpu":
        logger.warning("no GPU found (or device=cpu requested): training on the CPU")
    else:
        logger.info("training on %s", device)
    return cfg, device


def _train(run: RunContext, data: dict, cfg: Gru4RecConfig) -> dict:
    """Train (or, with cache_training, reuse a model trained on the same split content + config + code)."""
    training = run.config.training
    t = time.perf_counter()
    summary = cached_or_recomputed(
        train_task,
        lambda s: model_dir_intact(s["model_dir"]),
        data["split_dir"],
        cfg.model_dump_json(),
        str(run.run_dir / "model"),
        training.full,
        training.label,
        use_cache=run.config.cache_training,
        cache_scope=str(run.workdir),
        exclude_seen=run.config.evaluation.exclude_seen,  # the model records it as its default
        wait_for=[data["manifest"]],  # the run graph shows split → train
    )
    run.timings["train"] = time.perf_counter() - t
    summary["plots"] = [str(_history_artifact(run, summary["history"]))]
    return summary


def _evaluate(run: RunContext, data: dict, model_dir: str) -> dict:
    t = time.perf_counter()
    e = run.config.evaluation
    out = str(run.run_dir / "metrics.json")
    report = evaluate_task(
        data["split_dir"],
        model_dir,
        e.ks,
        e.ties,
        list(e.baselines),
        out,
        e.exclude_seen,
        True,
        wait_for=[data["manifest"]],
    )
    run.timings["evaluate"] = time.perf_counter() - t
    seen = report["seen_items"]
    get_run_logger().info(
        "seen items %s (exclude_seen=%s; %.2f%% of the training data's (session, item) pairs repeat)",
        "excluded" if seen["exclude_seen"] else "kept",
        seen["setting"],
        100 * seen["repeat_share"],
    )
    return report


def _challenge_champion(run: RunContext, data: dict, tracking_uri: str, exclude_seen: bool) -> dict | None:
    """On new data (or another seen-items setting): the champion evaluated on this run's test targets
    with this run's setting (None when not needed)."""
    t = time.perf_counter()
    e = run.config.evaluation
    result = evaluate_champion_task(
        data["split_dir"],
        data["fingerprint"],
        run.config.registry.model_dump(),
        tracking_uri,
        str(run.run_dir / "champion"),
        e.ks,
        e.ties,
        exclude_seen,
        wait_for=[data["manifest"]],
    )
    run.timings["evaluate_champion"] = time.perf_counter() - t
    return result


def _data_health(run: RunContext, data: dict, tracking_uri: str, head_to_head: dict | None) -> tuple[str, dict | None]:
    """Profile this run's training data; on new data, compare it with the champion's (artifact)."""
    profile = data_profile_task(
        data["split_dir"], run.config.training.full, str(run.run_dir / "data_profile.json"), wait_for=[data["manifest"]]
    )
    if head_to_head is None:
        return profile, None
    health = data_health_task(
        profile,
        tracking_uri,
        run.config.registry.name,
        head_to_head["champion_version"],
        run.config.health.model_dump(),
    )
    _health_artifact(health)
    return profile, health


def _health_artifact(health: dict) -> None:
    v = health["champion_version"]
    if not health["compared"]:
        md = f"## Data health\n\nChampion v{v} has no data profile (registered before profiles existed): not compared."
        create_markdown_artifact(key="data-health", markdown=md, description="Data compared with the champion's")
        return
    rows = [
        {
            "measure": name,
            f"champion v{v}": readable(before),
            "this run": readable(now),
            "change": f"{_change(now, before)}",
        }
        for name, (before, now) in health["sizes"].items()
    ]
    rows += [
        {
            "measure": "items new to the champion",
            "this run": f"{health['new_items']:,} ({health['new_item_share']:.1%})",
        },
        {"measure": "events on new items", "this run": f"{health['new_item_event_share']:.1%}"},
        {"measure": "item popularity shift (JS divergence)", "this run": readable(health["popularity_shift"])},
        {"measure": "session-length shift (JS divergence)", "this run": readable(health.get("session_length_shift"))},
    ]
    mean_before, mean_now = health["session_length_mean"]
    rows.append(
        {"measure": "mean session length", f"champion v{v}": readable(mean_before), "this run": readable(mean_now)}
    )
    warned = "; ".join(health["warnings"]) or "none"
    create_table_artifact(
        key="data-health", table=rows, description=f"Data compared with champion v{v}'s. Warnings: {warned}"
    )


def _change(now, before) -> str:
    if not before:
        return "—"
    return f"{(now - before) / before:+.1%}"


def _evidence(run: RunContext, report: dict, head_to_head: dict | None, data_warnings: list[str] = ()) -> dict:
    primary = run.config.registry.primary_metric
    baselines = {name: m[primary] for name, m in report["metrics"].items() if name != "gru4rec"}
    return {
        "head_to_head": head_to_head,
        "popularity": baselines.get("popularity"),
        "baselines": baselines,
        "min_gain": run.config.registry.min_gain,
        "data_warnings": list(data_warnings),
        "exclude_seen": report["seen_items"]["exclude_seen"],
    }


def _other_seen_metrics(report: dict) -> dict:
    """GRU4Rec's metrics with the other seen-items setting, as MLflow metrics excl_seen_* / incl_seen_*."""
    other = report.get("metrics_other_seen")
    if not other:
        return {}
    prefix = "excl_seen" if other["exclude_seen"] else "incl_seen"
    return {f"{prefix}_{k}": v for k, v in other["metrics"]["gru4rec"].items() if "@" in k}


def _register(
    run: RunContext, data: dict, summary: dict, cfg: Gru4RecConfig, report: dict, device: str, extra: dict
) -> dict:
    config, model_dir = run.config, Path(summary["model_dir"])
    tracking_uri, artifact_location = store_locations(config.registry.tracking_uri, run.workdir)
    head_to_head = extra["head_to_head"]
    t = time.perf_counter()
    metrics = report["metrics"]
    reg = register_task(
        str(model_dir),
        metrics["gru4rec"]
        | {f"{name}_{k}": v for name in metrics if name != "gru4rec" for k, v in metrics[name].items()}
        | _other_seen_metrics(report),
        {
            "pipeline": config.model_dump(mode="json"),
            "model": cfg.model_dump(mode="json"),
            "seen_items": report["seen_items"],  # the resolved exclude_seen and the measured repeat share
        },
        data["fingerprint"],
        sha256_file(data["manifest"]),
        config.registry.model_dump(),
        tracking_uri,
        artifact_location,
        {
            "git_commit": _git_commit(),
            "run_key": run.run_key,
            "prefect_flow_run_id": run.flow_run_id,
            "preset": config.training.label,
            "device": device,
        },
        [
            data["validation"],
            str(Path(data["split_dir"]) / "stats.json"),
            str(run.run_dir / "metrics.json"),
            str(model_dir / "history.json"),
            *extra["plots"],
        ],
        f"{config.training.label}-{run.flow_run_id[:8]}",
        # one run registers one model: a retried or resumed registration reuses its version
        f"{run.run_key[:32]}-{json.loads((model_dir / 'config.json').read_text())['weights_sha256'][:16]}",
        _evidence(run, report, head_to_head, extra["data_warnings"]),
        extra["training_key"],
        wait_for=[summary, report] + ([head_to_head] if head_to_head else []),
    )
    reg["primary_metric"] = config.registry.primary_metric
    reg["head_to_head"] = head_to_head
    run.timings["register"] = time.perf_counter() - t
    _registration_artifact(reg, tracking_uri)
    if reg["warnings"]:
        get_run_logger().warning("; ".join(reg["warnings"]))
    get_run_logger().info(
        "registered %s v%s as %s: %s", reg["registry_name"], reg["version"], reg["alias"], reg["decision"]
    )
    if reg["alias"] == "champion":
        _tell_new_champion(run, reg)
    return reg | {"tracking_uri": tracking_uri}


def _tell_new_champion(run: RunContext, reg: dict) -> None:
    """A notification through the configured Prefect block (never fails the run)."""
    metric = run.config.registry.primary_metric
    previous = None
    if reg.get("champion_version"):
        previous = {"version": reg["champion_version"], metric: reg["champion_metric"]}
    notify_new_champion(
        reg["registry_name"],
        reg["version"],
        {metric: reg["candidate_metric"]},
        previous,
        reg["decision"],
        settings=run.config.notifications,
    )


def _already_trained(run: RunContext, data: dict, cfg: Gru4RecConfig, device: str) -> tuple[str, dict | None]:
    """The training key of this run and the version already trained with it (or None)."""
    registry = run.config.registry
    # the seen-items setting is part of the registered model (its default), so of what makes it the same
    settings = cfg.model_dump(mode="json") | {"exclude_seen": run.config.evaluation.exclude_seen}
    key = training_key(data["fingerprint"], settings, run.config.training.full, device)
    tracking_uri, _ = store_locations(registry.tracking_uri, run.workdir)
    return key, find_trained_task(tracking_uri, registry.name, key)


def _unchanged(run: RunContext, data: dict, device: str, existing: dict) -> dict:
    """Nothing to train: a registered version was made from the same data, settings and code."""
    registry = run.config.registry
    tracking_uri, _ = store_locations(registry.tracking_uri, run.workdir)
    aliases = ", ".join(existing["aliases"]) or "no alias"
    decision = (
        f"no new version: v{existing['version']} ({aliases}) was trained on the same data (split "
        f"{data['fingerprint'][:12]}), with the same settings and code; nothing trained or registered"
    )
    get_run_logger().info(decision)
    create_markdown_artifact(
        key="registration",
        markdown=f"## Model registration\n\n- model **{registry.name}**: {decision}\n"
        f"- MLflow run of v{existing['version']}: `{existing['run_id']}`",
        description="MLflow registry decision",
    )
    reg = {
        "registry_name": registry.name,
        "version": existing["version"],
        "alias": existing["aliases"][0] if existing["aliases"] else "none",
        "decision": decision,
        "registered": False,
        "tracking_uri": tracking_uri,
    }
    return _finish(run, data, device, None, None, [], reg)


@flow(name="training_pipeline", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def training_pipeline(config: PipelineConfig | None = None) -> dict:
    """Raw interaction log → validated split → trained GRU4Rec → evaluated → registered in MLflow."""
    run, directory = _start_run(config or PipelineConfig())
    try:
        result = _run_steps(run)
    except BaseException:
        write_state(run.run_dir, run.run_key, run.flow_run_id, "failed")
        raise
    finally:
        directory.lock.release()
    return result


def _run_steps(run: RunContext) -> dict:
    data = _prepare_split(run)
    cfg, device = _training_config(run)
    key, existing = _already_trained(run, data, cfg, device)
    if existing is not None:
        return _unchanged(run, data, device, existing)
    summary = _train(run, data, cfg)
    report = _evaluate(run, data, summary["model_dir"])
    tracking_uri, _ = store_locations(run.config.registry.tracking_uri, run.workdir)
    head_to_head = _challenge_champion(run, data, tracking_uri, report["seen_items"]["exclude_seen"])
    eval_rows, comparison = _evaluation_artifact(run, report, head_to_head)
    profile, health = _data_health(run, data, tracking_uri, head_to_head)
    extra = {
        "training_key": key,
        "head_to_head": head_to_head,
        "plots": [*summary["plots"], str(comparison), profile],
        "data_warnings": health["warnings"] if health else [],
    }
    reg = _register(run, data, summary, cfg, report, device, extra) | {"registered": True}
    return _finish(run, data, device, summary, report, eval_rows, reg)


def _finish(run: RunContext, data: dict, device: str, summary, report, eval_rows: list, reg: dict) -> dict:
    total = time.perf_counter() - run.started
    train_compute = sum(h["seconds"] + h.get("valid_seconds", 0.0) for h in summary["history"]) if summary else 0.0
    compute = train_compute + run.timings.get("evaluate", 0.0) + run.timings.get("evaluate_champion", 0.0)
    result = {
        "run_dir": str(run.run_dir),
        "split_dir": data["split_dir"],
        "model_dir": summary["model_dir"] if summary else None,
        "device": device,
        "split_fingerprint": data["fingerprint"],
        "evaluation": eval_rows,
        "metrics": report["metrics"] if report else None,
        "seen_items": report["seen_items"] if report else None,
        "metrics_other_seen": report.get("metrics_other_seen") if report else None,
        "registration": reg,
        "tracking_uri": reg["tracking_uri"],
        "timings": run.timings | {"total": total, "compute": compute, "overhead": total - compute},
        "flow_run_id": run.flow_run_id,
    }
    write_json_atomic(run.run_dir / "summary.json", result)
    write_state(run.run_dir, run.run_key, run.flow_run_id, "completed")
    return result
