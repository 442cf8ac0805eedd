"""Optuna side of the hyperparameter search: the study, one trial as a Prefect task, the reports.

The study lives in an RDB storage (SQLite file by default, any SQLAlchemy URL), so it outlives the
process: the flow asks the study for a trial (TPE, seeded) and submits `trial_task` to the Dask
workers; the task trains on the split's train part, reports the validation metric after every
epoch (the pruner may stop it there), records a heartbeat while it runs and tells the study its
outcome itself — a trial finished on a worker is kept even if the flow dies just after. A trial
whose heartbeat stops (the search was killed) is failed and queued again with the same parameters
(`optuna.storages.RetryHeartbeatStaleTrialCallback`) when the search is started again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

STALE_AFTER_BEATS = 3  # a trial without a heartbeat for 3 intervals is stale
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # states that use up the study's n_trials (+ FAIL with an error)


# ------------------------------------------------------------------------------------------------
# the study


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{(Path(out_dir).expanduser().resolve() / 'study.db').as_posix()}"


@functools.lru_cache(maxsize=4)
def open_storage(url: str, heartbeat_seconds: int):
    """The RDB storage (one engine per process and URL) with heartbeats and a retry of stale trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with quiet():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=STALE_AFTER_BEATS * heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )


@contextlib.contextmanager
def quiet():
    """Without Optuna's warnings that heartbeats (stable since 2.9) are experimental and meant for
    Study.optimize: we record them ourselves around ask/tell."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
        warnings.filterwarnings("ignore", message="Target and region quantiles", category=UserWarning)
        yield


def make_pruner(spec: dict):
    import optuna

    if spec["pruner"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec["prune_after_trials"], n_warmup_steps=spec["prune_warmup_epochs"]
    )


def load_study(spec: dict, sampler=None):
    """The study of ``spec`` (a `study_spec`) as it is in its storage."""
    import optuna

    storage = open_storage(spec["storage"], spec["heartbeat_seconds"])
    return optuna.load_study(study_name=spec["study_name"], storage=storage, sampler=sampler, pruner=make_pruner(spec))


def open_study(spec: dict, identity: dict):
    """Create the study, or load it (``load_if_exists``) when a search of the same name ran before.

    ``identity`` (base preset, loss, metric, epochs, split fingerprint, direction) is stored with a new
    study; an existing study of that name made for something else is refused rather than mixed in."""
    import optuna

    from gru4rec.errors import ConfigError

    storage = open_storage(spec["storage"], spec["heartbeat_seconds"])
    study = optuna.create_study(
        study_name=spec["study_name"],
        storage=storage,
        pruner=make_pruner(spec),
        direction=spec["direction"],
        load_if_exists=True,
    )
    # Seeded, and on a resumed study seeded past what it holds: the same seed in a new process would
    # propose the killed search's random startup trials once more.
    seed = spec["seed"] + len(study.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec["startup_trials"])
    study = load_study(spec, sampler=sampler)
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        diff = ", ".join(f"{k} {stored.get(k)!r} → {v!r}" for k, v in identity.items() if stored.get(k) != v)
        raise ConfigError(
            f"study {spec['study_name']!r} in {spec['storage']} was made for another search ({diff}); "
            "give another --study-name (or --out) to start a new one"
        )
    return study


def fail_stale(study) -> int:
    """Fail trials whose heartbeat stopped (a killed search); they are queued again. How many."""
    import optuna

    before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    with quiet():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return len(before - after)


def counted_trials(study) -> tuple[int, int]:
    """(trials that use up n_trials, of which running): finished, pruned, running, and failed with an error
    (a stale trial failed by `fail_stale` is not counted: its queued copy runs instead)."""
    counted = running = 0
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state in COUNTED or (state == "FAIL" and "error" in t.user_attrs):
            counted += 1
            running += state == "RUNNING"
    return counted, running


# ------------------------------------------------------------------------------------------------
# one trial (runs on a Dask worker)


@functools.lru_cache(maxsize=2)
def _split(split_dir: str, manifest_mtime: float):
    from gru4rec.data.split_dir import load_split

    return load_split(split_dir)  # verified once per worker process and split version


class _Heartbeat:
    """Records the trial's heartbeat in the storage every interval while training runs."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a busy database: the next beat tries again
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class _Reporter:
    """Epoch callback: report the validation metric to the trial; stop training when it is pruned."""

    def __init__(self, trial, metric: str, direction: str, logger):
        self.trial, self.metric, self.logger = trial, metric, logger
        self.better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
        self.values: list[float] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.pruned = False

    def __call__(self, record: dict) -> bool:
        value = float(record[f"valid_{self.metric}"])
        epoch = int(record["epoch"])
        self.values.append(value)
        if self.best_value is None or self.better(value, self.best_value):
            self.best_value, self.best_epoch = value, epoch
        self.trial.report(value, epoch)
        self.logger.info(
            "trial %d epoch %d: valid %s %.4f (loss %.4g, %.0f events/s)",
            self.trial.number,
            epoch,
            self.metric,
            value,
            record["loss"],
            record["events_per_s"],
        )
        if self.trial.should_prune():
            self.pruned = True
            return True
        return False


@task(name="tuning-trial", cache_policy=NO_CACHE)
def trial_task(spec: dict, trial_id: int, split_dir: str, config_json: str, work_dir: str) -> dict:
    """Train one trial's configuration on train, validate every epoch, tell the study the outcome."""
    import optuna
    import torch

    from gru4rec.config import Gru4RecConfig
    from gru4rec.errors import TrainingError
    from gru4rec.trainer import train

    logger = get_run_logger()
    study = load_study(spec)
    trial = optuna.trial.Trial(study, trial_id)
    cfg = Gru4RecConfig.model_validate_json(config_json)
    manifest = Path(split_dir) / "manifest.json"
    split = _split(str(split_dir), manifest.stat().st_mtime)
    out = Path(work_dir) / f"trial-{trial.number:04d}"
    reporter = _Reporter(trial, spec["metric"], spec["direction"], logger)
    started = time.perf_counter()
    state, error, history = "COMPLETE", None, []
    with _Heartbeat(open_storage(spec["storage"], spec["heartbeat_seconds"]), trial_id, spec["heartbeat_seconds"]):
        try:
            result = train(split, cfg, out, full=False, resume=False, callbacks=[reporter])
            history = result.history
        except TrainingError as e:  # diverged: a normal outcome of a search, not a failed flow
            state, error = "FAIL", str(e)
        except BaseException as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise
    seconds = time.perf_counter() - started
    if state == "COMPLETE" and reporter.pruned:
        state = "PRUNED"
    if state == "COMPLETE" and reporter.best_value is None:
        state, error = "FAIL", "no validation metric was reported (empty validation split?)"
    attrs = {
        "best_epoch": reporter.best_epoch,
        "epochs_run": len(reporter.values),
        "values": reporter.values,
        "seconds": round(seconds, 2),
        "events_per_s": round(sum(h["events_per_s"] for h in history) / len(history), 1) if history else None,
        "torch_threads": torch.get_num_threads(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    if error:
        attrs["error"] = error[:2000]
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == "COMPLETE":
        study.tell(trial, reporter.best_value)
    else:
        study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    (out / "checkpoint.pt").unlink(missing_ok=True)  # history.json stays; the weights are not needed
    logger.info("trial %d %s in %.1f s: %s", trial.number, state.lower(), seconds, reporter.best_value)
    return {"number": trial.number, "state": state, "value": reporter.best_value, **attrs}


# ------------------------------------------------------------------------------------------------
# the Dask task runner


@contextlib.contextmanager
def glibc_malloc_defaults_in_workers():
    """While open, the local cluster's workers start without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    Setting that variable turns glibc's dynamic mmap threshold off, so every torch buffer over 128 KiB
    is mapped and unmapped again at each step: on a 2-core VM two BPR-max trials spent a third of their
    time in the kernel (76,000 page faults a second) and trained at 2,209-2,291 events/s, against
    3,665-3,962 without it."""
    import dask

    key = "MALLOC_TRIM_THRESHOLD_"
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    dasks = environ.pop(key, None)
    # A nanny writes its pre-spawn variables into this process's environment for good, so an earlier
    # cluster here leaves Dask's value behind; a value of the user's own is kept.
    leftover = os.environ.get(key) if dasks is not None and os.environ.get(key) == str(dasks) else None
    if leftover is not None:
        del os.environ[key]
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        if leftover is not None:
            os.environ[key] = leftover


def dask_task_runner(n_workers: int, address: str | None, torch_threads: int, api_url: str | None):
    """prefect-dask's runner: an existing cluster at ``address``, or a local one of ``n_workers``
    single-threaded worker processes (trials run one per worker, each with ``torch_threads``)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    threads = str(torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    if api_url:  # the workers report to this flow's API (in ephemeral mode they would each start a server)
        env["PREFECT_API_URL"] = api_url
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",  # a free port: two searches at once do not collide
            "env": env,
        }
    )


# ------------------------------------------------------------------------------------------------
# reports: the trials table, the optimisation history, the parameter importances


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "value": None if t.value is None else round(t.value, 5),
            "best_epoch": t.user_attrs.get("best_epoch"),
            "epochs_run": t.user_attrs.get("epochs_run"),
            "seconds": t.user_attrs.get("seconds"),
        }
        if "failed_trial" in t.system_attrs:
            row["retry_of"] = t.system_attrs["failed_trial"]
        row |= {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.params.items()}
        rows.append(row)
    return rows


def param_importances(study) -> dict[str, float] | None:
    """Optuna's parameter importances over the finished trials (None with too few of them)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    try:
        with quiet():
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None


def history_plot(study, path: Path, metric: str) -> Path:
    """Each finished trial's value, and the best so far (Optuna's optimisation history)."""
    import optuna

    from tasks.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.PRUNED]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, color="tab:blue", label="trial", zorder=3)
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best, so_far = [], None
        for y in ys:
            so_far = y if so_far is None else pick(so_far, y)
            best.append(so_far)
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    if pruned:
        values = [t.intermediate_values[max(t.intermediate_values)] for t in pruned if t.intermediate_values]
        ax.scatter(
            [t.number for t in pruned if t.intermediate_values], values, marker="x", color="grey", label="pruned"
        )
    ax.set(xlabel="trial", ylabel=f"validation {metric}", title="Optimisation history")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(fontsize=8)
    return _save(fig, path)


def importance_plot(importances: dict[str, float], path: Path) -> Path:
    from tasks.plots import _pyplot, _save

    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    bars = ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set(xlabel="importance", title="Hyperparameter importances")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_trials(rows: list[dict], out_dir: Path) -> Path:
    from gru4rec.io import write_json_atomic

    return write_json_atomic(out_dir / "trials.json", rows)
