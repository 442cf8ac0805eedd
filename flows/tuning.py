"""`hyperparameter_search`: Optuna over GRU4Rec's hyperparameters, trials in parallel on Dask.

The flow opens (or resumes) a persistent Optuna study, asks it for trials — TPE with a fixed seed,
over the search space of the base preset's loss (`gru4rec.tuning`) — and runs each as the Prefect
task `tuning-trial` on a Dask cluster through prefect-dask's `DaskTaskRunner`: a local cluster of
``dask.n_workers`` single-threaded worker processes by default, or the cluster at ``dask.address``.
At most ``n_workers`` trials run at once. Each trial trains on the split's train part for
``search.epochs`` epochs and reports the validation metric after every epoch; the median pruner stops
the unpromising ones. The test split is never read.

Trial 0 of a new study is the base configuration itself (``search.start_from_base``, when the
space holds its values), so the best preset is never worse on validation than the starting point.

``search.n_trials`` counts the whole study: started again after a kill, the search keeps every trial
the killed one finished, fails the ones that were running when it died (their heartbeat stopped),
queues them again with the same parameters and runs only what is missing.

At the end: the best trial's configuration becomes a preset file (``best_preset``, default
``<out>/best_preset.json``) for ``train --preset-file`` / ``run --preset-file`` or
``training.preset_file`` of `training_pipeline`; artifacts are the trials table, the optimisation
history and the parameter importances (also PNG/JSON files in the output directory).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from flows.config import TuningConfig
from gru4rec.config import Gru4RecConfig
from gru4rec.data.split_dir import load_split
from gru4rec.errors import ConfigError
from gru4rec.io import write_json_atomic
from gru4rec.presets import apply_overrides, write_preset_file
from gru4rec.tuning import base_params, kept_as_given, overrides_from_params, suggest_overrides
from tasks import tuning as t
from tasks.plots import markdown_image

POLL_SECONDS = 0.5


def _study_spec(config: TuningConfig, out: Path, split_fingerprint: str) -> dict:
    s = config.search
    base = Path(config.preset_file).stem if config.preset_file else config.preset
    return {
        "storage": s.storage or t.default_storage(out),
        "study_name": s.study_name or f"{base}-{split_fingerprint[:12]}",
        "direction": s.direction,
        "metric": s.metric,
        "seed": s.seed,
        "startup_trials": s.startup_trials,
        "pruner": s.pruner,
        "prune_after_trials": s.prune_after_trials,
        "prune_warmup_epochs": s.prune_warmup_epochs,
        "heartbeat_seconds": s.heartbeat_seconds,
    }


def _trial_config(config: TuningConfig, base: Gru4RecConfig, tuned: dict) -> Gru4RecConfig:
    """The base with the trial's sampled settings and the search's own (epochs, threads, no progress bar)."""
    run = {
        "train.epochs": config.search.epochs,
        "train.threads": config.dask.torch_threads,
        "train.progress": False,
        "train.patience": 0,
    }
    return apply_overrides(base.model_dump(mode="json"), {**tuned, **run})


def _api_url() -> str | None:
    from prefect.client.orchestration import get_client

    try:
        return str(get_client(sync_client=True).api_url)
    except Exception:  # no API to pass on: the workers use their own settings
        return None


@flow(name="hyperparameter_search", log_prints=True)
def hyperparameter_search(config: TuningConfig | None = None) -> dict:
    """Tune GRU4Rec on a split's validation part with Optuna; trials run as Prefect tasks on Dask."""
    config = config or TuningConfig()
    logger = get_run_logger()
    started = time.perf_counter()
    out = Path(config.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = load_split(config.split_dir)
    if split.valid.height == 0:
        raise ConfigError(f"split {config.split_dir} has no validation events: a search is judged on them only")
    base = config.base_config()
    loss = base.train.loss
    fixed = kept_as_given(base, config.overrides)
    spec = _study_spec(config, out, split.fingerprint())
    identity = {
        "base": config.preset_file or config.preset,
        "loss": loss,
        "metric": config.search.metric,
        "direction": config.search.direction,
        "epochs": config.search.epochs,
        "split_fingerprint": split.fingerprint(),
        "fixed": sorted(fixed),
    }
    study = t.open_study(spec, identity)
    stale = t.fail_stale(study)
    done, running = t.counted_trials(study)
    logger.info(
        "study %r in %s: %d of %d trials already counted%s",
        spec["study_name"],
        spec["storage"],
        done,
        config.search.n_trials,
        f"; {stale} trials of a killed search failed and queued again" if stale else "",
    )
    if config.search.start_from_base:
        _queue_the_base(study, base, loss, fixed)
    flow_run_id = str(get_run_context().flow_run.id)
    runs = _run_trials(config, study, spec, split.directory, base, loss, fixed, out, flow_run_id)
    return _report(config, study, spec, base, loss, out, runs, time.perf_counter() - started)


def _queue_the_base(study, base: Gru4RecConfig, loss: str, fixed: set[str]) -> None:
    """A new study's first trial is the starting configuration (its searched values; the search's epochs)."""
    logger = get_run_logger()
    if study.get_trials(deepcopy=False):
        return  # resumed: the base was queued (and maybe run) by the first run
    params, outside = base_params(base, loss, fixed)
    if outside:
        logger.warning(
            "the base configuration is not tried as trial 0: outside the search space: %s", "; ".join(outside)
        )
        return
    study.enqueue_trial(params, user_attrs={"base": True})
    logger.info("trial 0 is the base configuration: %s", params)


def _run_trials(config, study, spec, split_dir, base, loss, fixed, out, flow_run_id) -> list[dict]:
    """Keep up to n_workers trials in flight until the study holds n_trials (or the timeout)."""
    logger = get_run_logger()
    s, d = config.search, config.dask
    deadline = time.monotonic() + s.timeout_minutes * 60 if s.timeout_minutes else None
    runner = t.dask_task_runner(d.n_workers, d.address, d.torch_threads, _api_url())
    storage = t.open_storage(spec["storage"], spec["heartbeat_seconds"])
    results: list[dict] = []
    in_flight: dict = {}  # future -> trial id
    last_beat = last_read = 0.0
    changed = True  # the study is read before the first trial starts
    counted = running = 0
    with t.glibc_malloc_defaults_in_workers(), runner:
        while True:
            if time.monotonic() - last_beat >= spec["heartbeat_seconds"]:
                # The flow beats for its trials too: one queued on a worker that is still starting is not stale.
                for trial_id in in_flight.values():
                    storage.record_heartbeat(trial_id)
                last_beat = time.monotonic()
            out_of_time = deadline is not None and time.monotonic() >= deadline
            can_start = len(in_flight) < d.n_workers and not out_of_time
            # Reading the study costs CPU the trials need: only when a trial could start or none runs
            # here, and then after a change here or once a heartbeat interval (another process's trials).
            if (can_start or not in_flight) and (changed or time.monotonic() - last_read >= spec["heartbeat_seconds"]):
                t.fail_stale(study)
                counted, running = t.counted_trials(study)
                last_read, changed = time.monotonic(), False
            if can_start and counted < s.n_trials:
                with t.quiet():
                    trial = study.ask()
                trial.set_user_attr("flow_run_id", flow_run_id)
                storage.record_heartbeat(trial._trial_id)  # stale if we die before a worker beats
                tuned = suggest_overrides(trial, loss, fixed, base.train.optimizer)
                cfg = _trial_config(config, base, tuned)
                trial.set_user_attr("overrides", tuned)
                future = runner.submit(
                    t.trial_task.with_options(task_run_name=f"trial-{trial.number}"),
                    {
                        "spec": spec,
                        "trial_id": trial._trial_id,
                        "split_dir": str(split_dir),
                        "config_json": cfg.model_dump_json(),
                        "work_dir": str(out / "trials"),
                    },
                )
                in_flight[future] = trial._trial_id
                changed = True
                logger.info("trial %d started: %s", trial.number, tuned)
                continue
            if not in_flight:
                if running and not out_of_time:
                    # Trials of another process: a search running beside this one (they end), or a killed
                    # one (they go stale, are queued again and run here). Either way the study completes.
                    time.sleep(spec["heartbeat_seconds"])
                    continue
                break
            finished = [f for f in in_flight if f.wrapped_future.done()]
            if not finished:
                time.sleep(POLL_SECONDS)
                continue
            changed = True
            for future in finished:
                trial_id = in_flight.pop(future)
                try:
                    results.append(future.result())
                except Exception as e:  # the trial told the study FAIL itself; the search goes on
                    number = storage.get_trial(trial_id).number
                    logger.error("trial %d failed: %s", number, e)
                    results.append({"number": number, "state": "FAIL", "error": str(e)})
    return results


def _best_trial(study):
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if complete else None


def _report(config, study, spec, base, loss, out, runs, seconds) -> dict:
    logger = get_run_logger()
    rows = t.trial_rows(study)
    t.write_trials(rows, out)
    create_table_artifact(
        key="tuning-trials",
        table=rows,
        description=f"Trials of study {spec['study_name']} (validation {config.search.metric}, best epoch)",
    )
    history_png = t.history_plot(study, out / "optimization_history.png", config.search.metric)
    importances = t.param_importances(study)
    lines = ["## Hyperparameter search", "", markdown_image(history_png, "optimisation history"), ""]
    if importances:
        importance_png = t.importance_plot(importances, out / "param_importances.png")
        write_json_atomic(out / "param_importances.json", importances)
        lines += [markdown_image(importance_png, "parameter importances"), ""]
        create_table_artifact(
            key="tuning-importances",
            table=[{"parameter": k, "importance": round(v, 4)} for k, v in importances.items()],
            description="Optuna parameter importances (PED-ANOVA) over the finished trials",
        )
    best = _best_trial(study)
    summary = {
        "study_name": spec["study_name"],
        "storage": spec["storage"],
        "loss": loss,
        "metric": config.search.metric,
        "direction": config.search.direction,
        "n_trials": len(rows),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "trials_this_run": len(runs),
        "seconds": round(seconds, 1),
        "importances": importances,
        "best": None,
        "best_preset": None,
    }
    if best is None:
        lines.append("No trial finished: no best configuration.")
        logger.warning("no trial of the study finished: no preset written")
    else:
        tuned = overrides_from_params(best.params, loss, base.train.optimizer)
        epochs = best.user_attrs.get("best_epoch") or config.search.epochs
        cfg = apply_overrides(base.model_dump(mode="json"), {**tuned, "train.epochs": epochs})
        path = Path(config.best_preset).expanduser() if config.best_preset else out / "best_preset.json"
        name = f"tuned-{spec['study_name']}-trial-{best.number}"
        write_preset_file(
            path,
            cfg,
            name,
            tuning={
                "study_name": spec["study_name"],
                "storage": spec["storage"],
                "trial": best.number,
                "validation": {config.search.metric: best.value},
                "best_epoch": epochs,
                "tuned": tuned,
                "base": config.preset_file or config.preset,
                "split_dir": str(Path(config.split_dir).resolve()),
            },
        )
        summary["best"] = {"trial": best.number, "value": best.value, "best_epoch": epochs, "overrides": tuned}
        summary["best_preset"] = str(path)
        lines += [
            f"Best: trial **{best.number}**, validation {config.search.metric} **{best.value:.4f}** at epoch "
            f"{epochs}; preset file `{path}`:",
            "",
            "| setting | value |",
            "|---|---|",
            *[f"| `{k}` | {v} |" for k, v in tuned.items()],
            "",
            f"Train with it: `gru4rec-pipeline train --split SPLIT --preset-file {path} --out MODEL_DIR` or "
            f"`gru4rec-pipeline run --preset-file {path} ...`.",
        ]
        logger.info("best trial %d: %s %.4f; preset written to %s", best.number, config.search.metric, best.value, path)
    create_markdown_artifact(key="tuning-report", markdown="\n".join(lines), description="Hyperparameter search")
    write_json_atomic(out / "summary.json", summary)
    return summary
