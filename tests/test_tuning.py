"""The hyperparameter search: search spaces per loss, preset files, the study (pruning, stale trials,
identity), the flow on a local Dask cluster, and a real search killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from pydantic import ValidationError

from flows.config import TrainingSettings, TuningConfig
from gru4rec.errors import ConfigError
from gru4rec.presets import get_preset, load_preset_file, write_preset_file
from gru4rec.tuning import base_params, kept_as_given, overrides_from_params, search_space, suggest_overrides
from tests.synthetic import split_events

REPO = Path(__file__).resolve().parents[1]


def noisy_split(directory: Path, n_sessions: int = 400, n_items: int = 60, seed: int = 0) -> Path:
    """Hourly sessions walking the catalogue (i → i+1) with 30% random jumps: not too easy to learn."""
    rng = np.random.default_rng(seed)
    keys, items, times = [], [], []
    for s in range(n_sessions):
        item = int(rng.integers(0, n_items))
        for j in range(int(rng.integers(3, 10))):
            item = (item + 1) % n_items if rng.random() < 0.7 else int(rng.integers(0, n_items))
            keys.append(s)
            items.append(item)
            times.append(s * 3_600_000 + j * 60_000)
    directory.mkdir(parents=True, exist_ok=True)
    events = directory / "events.parquet"
    pl.DataFrame({"session_key": keys, "item_id": items, "timestamp": times}).write_parquet(events)
    return split_events(events, directory / "split")


# ------------------------------------------------------------------------------------------------
# search spaces


@pytest.mark.parametrize(("loss", "preset"), [("bpr-max", "gru4rec-bprmax"), ("cross-entropy", "gru4rec-xe")])
def test_search_space_samples_are_valid_configs_in_the_papers_ranges(loss, preset):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {key: [] for key in (p.key for p in search_space(loss))}
    for _ in range(40):
        trial = study.ask()
        overrides = suggest_overrides(trial, loss)
        assert set(overrides) == set(seen)
        cfg = get_preset(preset, overrides)  # every sample is a valid configuration of that preset
        assert cfg.train.loss == loss
        for key, value in overrides.items():
            seen[key].append(value[0] if key == "model.layers" else value)
        assert overrides_from_params(trial.params, loss) == overrides
        study.tell(trial, 0.0)
    assert 32 <= min(seen["model.layers"]) and max(seen["model.layers"]) <= 512
    assert all(v % 2 == 0 for v in seen["model.layers"])
    assert 32 <= min(seen["train.batch_size"]) and max(seen["train.batch_size"]) <= 256
    assert 0.0 <= min(seen["model.dropout_embedding"]) and max(seen["model.dropout_embedding"]) <= 0.5
    assert max(seen["model.dropout_hidden"]) <= 0.7
    assert 0.01 <= min(seen["train.lr"]) and max(seen["train.lr"]) <= 0.3
    assert max(seen["train.momentum"]) <= 0.9
    assert set(seen["train.n_sample"]) <= {0, 512, 1024, 2048, 4096}
    assert all(0.0 <= v <= 1.0 for v in seen["train.sample_alpha"])
    assert all(round(v, 2) == v for v in seen["model.dropout_hidden"])  # grid values, no 0.7000000000000001
    if loss == "bpr-max":
        assert "train.logq" not in seen
        assert max(seen["train.bpreg"]) <= 2.0 and set(seen["train.elu"]) <= {0.0, 0.5, 1.0}
    else:
        assert "train.bpreg" not in seen and "train.elu" not in seen
        assert all(0.0 <= v <= 1.0 for v in seen["train.logq"])


@pytest.mark.parametrize("preset", ["gru4rec-bprmax", "gru4rec-xe", "tutorial"])
def test_the_presets_lie_in_their_search_space_so_a_search_can_start_from_them(preset):
    base = get_preset(preset)
    fixed = {"train.n_sample"} if preset == "tutorial" else set()  # its full softmax is not a sampled size
    params, outside = base_params(base, base.train.loss, fixed)
    assert outside == []
    space = search_space(base.train.loss, base.train.optimizer)
    assert set(params) == {p.name for p in space if p.key not in fixed}
    assert get_preset(preset, overrides_from_params(params, base.train.loss, base.train.optimizer)) == base


def test_adam_searches_its_own_learning_rates_and_no_momentum():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    lrs = []
    for _ in range(30):
        overrides = suggest_overrides(study.ask(), "cross-entropy", optimizer="adam")
        assert "train.momentum" not in overrides
        lrs.append(overrides["train.lr"])
    assert 1e-4 <= min(lrs) and max(lrs) <= 1e-2 and min(lrs) < 1e-3 < max(lrs)
    with pytest.raises(ConfigError, match="optimizer 'sgd'"):
        search_space("cross-entropy", "sgd")


def test_a_base_outside_the_space_is_named_and_fixed_settings_are_left_out():
    base = get_preset("tutorial", {"train.lr": 0.5})
    params, outside = base_params(base, "cross-entropy", fixed={"train.batch_size"})
    assert outside == [
        "train.lr 0.5 (searched: 0.0001–0.01 (log))",
        "train.n_sample 'full' (searched: {0, 512, 1024, 2048, 4096})",
    ]
    assert "batch_size" not in params and params["dropout_hidden"] == 0.1 and params["layers"] == 50
    _, outside = base_params(get_preset("gru4rec-xe", {"model.layers": [100, 100]}), "cross-entropy")
    assert [o.split()[0] for o in outside] == ["model.layers"]


def test_fixed_settings_are_not_searched():
    trial = optuna.create_study().ask()
    overrides = suggest_overrides(trial, "bpr-max", fixed={"train.batch_size", "model.layers"})
    assert "train.batch_size" not in overrides and "model.layers" not in overrides
    assert "batch_size" not in trial.params and "layers" not in trial.params


def test_with_the_full_softmax_kept_its_sampling_settings_are_not_searched():
    full = get_preset("tutorial", {"train.n_sample": "full"})
    kept = kept_as_given(full, {"train.n_sample"})
    assert kept == {"train.n_sample", "train.sample_alpha", "train.logq"}
    trial = optuna.create_study().ask()
    assert not set(suggest_overrides(trial, "cross-entropy", kept, "adam")) & kept
    assert not set(base_params(full, "cross-entropy", kept)[0]) & {"sample_alpha", "logq", "n_sample"}
    # Sampled negatives fixed, or the sample size searched: the exponent and logQ matter, so they are searched.
    sampled = get_preset("gru4rec-xe")
    assert kept_as_given(sampled, {"train.n_sample"}) == {"train.n_sample"}
    assert kept_as_given(full, set()) == set()


def test_tuning_config_checks_loss_metric_and_overrides():
    assert TuningConfig(preset="tutorial").base_config().train.loss == "cross-entropy"
    with pytest.raises(ValidationError, match="no search space"):
        TuningConfig(overrides={"train.loss": "top1-max", "train.logq": 0})
    with pytest.raises(ValidationError, match="mrr@50"):
        TuningConfig(search={"metric": "mrr@50"})
    with pytest.raises(ValidationError, match="unknown setting"):
        TuningConfig(overrides={"train.nope": 1})


# ------------------------------------------------------------------------------------------------
# preset files


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_preset_file_round_trip(tmp_path, suffix):
    cfg = get_preset("gru4rec-bprmax", {"model.layers": [96], "train.lr": 0.07, "train.epochs": 3})
    path = write_preset_file(tmp_path / f"best{suffix}", cfg, "tuned-x", tuning={"trial": 4})
    assert load_preset_file(path) == cfg
    assert load_preset_file(path, {"train.seed": "7"}).train.seed == 7
    settings = TrainingSettings(preset_file=str(path), overrides={"train.epochs": 1})
    assert settings.gru4rec_config().model.layers == [96] and settings.gru4rec_config().train.epochs == 1
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(ConfigError, match="'config'"):
        load_preset_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read preset file"):
        load_preset_file(tmp_path / "missing.json")


def test_train_and_run_accept_a_preset_file(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    split = noisy_split(tmp_path / "data", n_sessions=120)
    cfg = get_preset("gru4rec-xe", {"model.layers": [24], "train.epochs": 1, "train.n_sample": 16})
    preset = write_preset_file(tmp_path / "best_preset.json", cfg, "tuned")
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app, ["train", "--split", str(split), "--preset-file", str(preset), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["layers"] == [24] and saved["train"]["n_sample"] == 16
    assert saved["extra"]["preset"] == str(preset)
    assert "--preset-file" in CliRunner().invoke(app, ["run", "--help"]).output
    both = CliRunner().invoke(
        app, ["train", "--split", str(split), "--preset", "tutorial", "--preset-file", str(preset), "--out", str(out)]
    )
    assert both.exit_code == 2 and "not both" in both.output


def test_a_model_from_a_preset_file_is_labelled_by_the_file(tmp_path):
    from flows.config import TrainingSettings

    cfg = get_preset("gru4rec-xe", {"train.epochs": 1})
    preset = write_preset_file(tmp_path / "best_preset.json", cfg, "tuned")
    # run names, the MLflow 'preset' tag and plot titles say what the model started from
    assert TrainingSettings(preset_file=str(preset)).label == "best_preset.json"
    assert TrainingSettings(preset="gru4rec-bprmax").label == "gru4rec-bprmax"


# ------------------------------------------------------------------------------------------------
# the study: pruning, stale trials, identity


def _spec(tmp_path: Path, **changes) -> dict:
    spec = {
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "study_name": "s",
        "direction": "maximize",
        "metric": "mrr@20",
        "seed": 0,
        "startup_trials": 2,
        "pruner": "median",
        "prune_after_trials": 1,
        "prune_warmup_epochs": 0,
        "heartbeat_seconds": 1,
    }
    return spec | changes


def test_reporter_prunes_a_trial_below_the_median(tmp_path):
    from tasks import tuning as t

    study = t.open_study(_spec(tmp_path), {"x": 1})
    first = study.ask()
    for epoch, value in enumerate([0.5, 0.6], 1):
        first.report(value, epoch)
    study.tell(first, 0.6)
    reporter = t._Reporter(study.ask(), "mrr@20", "maximize", logging.getLogger("test"))
    stop = reporter({"epoch": 1, "valid_mrr@20": 0.1, "loss": 1.0, "events_per_s": 1.0})
    assert stop is True and reporter.pruned and reporter.best_value == 0.1 and reporter.best_epoch == 1
    good = t._Reporter(study.ask(), "mrr@20", "maximize", logging.getLogger("test"))
    assert good({"epoch": 1, "valid_mrr@20": 0.9, "loss": 1.0, "events_per_s": 1.0}) is False


def test_a_study_made_for_another_search_is_refused(tmp_path):
    from tasks import tuning as t

    t.open_study(_spec(tmp_path), {"loss": "bpr-max", "epochs": 3})
    t.open_study(_spec(tmp_path), {"loss": "bpr-max", "epochs": 3})  # the same search: resumed
    with pytest.raises(ConfigError, match="epochs 3 → 5"):
        t.open_study(_spec(tmp_path), {"loss": "bpr-max", "epochs": 5})


def test_a_trial_whose_heartbeat_stopped_is_failed_and_queued_again(tmp_path):
    from tasks import tuning as t

    spec = _spec(tmp_path)
    study = t.open_study(spec, {"x": 1})
    trial = study.ask()
    trial.suggest_float("lr", 0.01, 0.3, log=True)
    t.open_storage(spec["storage"], 1).record_heartbeat(trial._trial_id)
    assert t.counted_trials(study) == (1, 1)
    time.sleep(t.STALE_AFTER_BEATS + 1.5)
    assert t.fail_stale(study) == 1
    assert t.counted_trials(study) == (0, 0)  # the failed one does not count; its copy waits
    again = study.ask()
    assert again.params == trial.params and again.number != trial.number


# ------------------------------------------------------------------------------------------------
# the flow: 3 trials on 2 local Dask workers


def test_flow_runs_trials_on_two_dask_workers(prefect_harness, tmp_path):
    from prefect.artifacts import Artifact

    from flows.tuning import hyperparameter_search

    split = noisy_split(tmp_path / "data")
    config = TuningConfig(
        split_dir=str(split),
        preset="gru4rec-bprmax",
        overrides={"train.device": "cpu"},
        search={"n_trials": 3, "epochs": 2, "startup_trials": 2},
        dask={"n_workers": 2},
        out_dir=str(tmp_path / "tuning"),
    )
    started = time.perf_counter()
    result = hyperparameter_search(config)
    seconds = time.perf_counter() - started
    print(f"3 trials on 2 Dask workers: {seconds:.1f} s")
    assert seconds < 120  # about 30 s here (2 shared cores), most of it starting the cluster
    assert result["n_trials"] == 3 and result["trials_this_run"] == 3
    assert sum(result["states"].values()) == 3 and result["states"].get("COMPLETE", 0) >= 1
    out = Path(config.out_dir)
    for name in ("study.db", "trials.json", "optimization_history.png", "summary.json", "best_preset.json"):
        assert (out / name).is_file(), name
    trials = json.loads((out / "trials.json").read_text())
    assert {r["trial"] for r in trials} == {0, 1, 2}
    study = optuna.load_study(study_name=result["study_name"], storage=result["storage"])
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # two trials ran at once, one per worker process
    assert {t.user_attrs["torch_threads"] for t in study.trials} == {1}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)  # reported per epoch
    first = study.trials[0]  # the search started from the base preset itself
    assert first.user_attrs.get("base") is True
    assert first.params == base_params(config.base_config(), "bpr-max")[0]
    assert all("base" not in t.user_attrs for t in study.trials[1:])
    best = load_preset_file(result["best_preset"])
    assert best.train.loss == "bpr-max" and best.train.epochs == result["best"]["best_epoch"]
    assert math.isclose(study.best_value, result["best"]["value"])
    for key in ("tuning-trials", "tuning-report"):
        assert Artifact.get(key) is not None, key


def test_flow_runs_trials_on_an_existing_dask_cluster_by_address(prefect_harness, tmp_path):
    from distributed import Client, LocalCluster
    from prefect.client.orchestration import get_client

    from flows.tuning import hyperparameter_search

    split = noisy_split(tmp_path / "data", n_sessions=150)
    api = str(get_client(sync_client=True).api_url)  # an existing cluster's workers bring their own PREFECT_API_URL
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", env={"PREFECT_API_URL": api}
    ) as cluster:
        with Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
        config = TuningConfig(
            split_dir=str(split),
            overrides={"train.device": "cpu", "model.layers": [16]},
            search={"n_trials": 2, "epochs": 1, "pruner": "none"},
            dask={"address": cluster.scheduler_address, "n_workers": 1},
            out_dir=str(tmp_path / "tuning"),
        )
        result = hyperparameter_search(config)
    assert result["states"] == {"COMPLETE": 2}
    study = optuna.load_study(study_name=result["study_name"], storage=result["storage"])
    assert {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials} == pids
    assert all("layers" not in t.params for t in study.trials)  # fixed, not searched
    assert load_preset_file(result["best_preset"]).model.layers == [16]


# ------------------------------------------------------------------------------------------------
# a real search, killed with SIGKILL and started again


def _tune_command(split: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-c", "from flows.cli import main; main()", "tune",
        "--split", str(split), "--out", str(out), "--preset", "gru4rec-xe",
        "--n-trials", "6", "--epochs", "4", "--n-workers", "2", "--heartbeat-seconds", "2",
        "--set", "train.device=cpu", "--set", "train.n_sample=0", "--startup-trials", "6",
        "--pruner", "none",
    ]  # fmt: skip


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _states(db: Path) -> dict[int, str]:
    if not db.exists():
        return {}
    try:
        summaries = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
        if not summaries:
            return {}
        study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{db}")
        return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    except Exception:  # the database is being created
        return {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_search_resumes_keeping_finished_trials(tmp_path):
    split = noisy_split(tmp_path / "data", n_sessions=800, n_items=150)
    out = tmp_path / "tuning"
    db = out / "study.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}
    log = tmp_path / "first-run.log"
    with log.open("w") as log_file:
        cli = subprocess.Popen(_tune_command(split, out), env=env, cwd=tmp_path, stdout=log_file, stderr=log_file)
    deadline = time.time() + 240
    while time.time() < deadline and "COMPLETE" not in _states(db).values():
        assert cli.poll() is None, "the search ended before it could be killed:\n" + log.read_text()[-4000:]
        time.sleep(0.2)
    before = _states(db)
    assert "COMPLETE" in before.values(), f"no trial finished in time: {before}"
    family = _descendants(cli.pid)  # dask nanny/workers, the temporary server and its watchdog
    assert family, "the search runs no worker processes"
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)], "processes of the killed search still run"
    at_kill = _states(db)
    finished = {n: s for n, s in at_kill.items() if s == "COMPLETE"}
    interrupted = {n for n, s in at_kill.items() if s == "RUNNING"}
    assert len(finished) < 6, "the search finished before the kill"
    assert interrupted, f"no trial was running at the kill: {at_kill}"
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{db}")[0].study_name,
                              storage=f"sqlite:///{db}")  # fmt: skip
    values = {t.number: t.value for t in study.get_trials() if t.state.name == "COMPLETE"}

    rerun = subprocess.run(
        _tune_command(split, out), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
    study = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{db}")
    trials = study.get_trials()
    after = {t.number: t for t in trials}
    seen = f"at the kill {at_kill}, after the rerun {_states(db)}; rerun output: {rerun.stdout[-1500:]}"
    for number, value in values.items():  # kept, with their values
        assert after[number].state.name == "COMPLETE" and after[number].value == value, seen
    for number in interrupted:  # failed when their heartbeat stopped, and run again with the same params
        assert after[number].state.name == "FAIL", seen
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retried) == 1 and retried[0].state.name == "COMPLETE", seen
        # The copy keeps every value the trial had drawn; a trial killed while it was being sampled
        # had drawn only some (or none), and the copy samples the rest anew.
        kept = {name: retried[0].params.get(name) for name in after[number].params}
        assert kept == after[number].params, seen
    new = [t.params for t in trials if "failed_trial" not in t.system_attrs and t.params]
    assert len({json.dumps(p, sort_keys=True) for p in new}) == len(new), f"a configuration ran twice: {seen}"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 6, seen  # the study reached n_trials
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials_this_run"] == 6 - len(finished), seen


def test_local_workers_keep_glibcs_malloc_defaults(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    # Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536, which made trials 1.7x slower (mmap churn).
    from distributed import Client, LocalCluster

    from tasks.tuning import glibc_malloc_defaults_in_workers

    def worker_env():
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")

    kwargs = dict(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(worker_env).values()) == [("65536", "1")]  # Dask's own default, checked
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536"  # the nanny left Dask's value here
    with glibc_malloc_defaults_in_workers():
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(worker_env).values()) == [(None, "1")]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # one of the user's own is respected
    with glibc_malloc_defaults_in_workers():
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(worker_env).values()) == [("1000000", "1")]
