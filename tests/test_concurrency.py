"""Concurrency with real processes: two registrations on a fresh store, a champion race, and two
whole `run`s in one workdir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.synthetic import synthetic_movielens, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 12

REGISTER = textwrap.dedent(
    """
    import sys, time
    import tasks.registry as reg
    model_dir, uri, artifacts, mrr, start, staged = sys.argv[1:7]
    if staged == "1":
        # Worst case, made deterministic: both processes read the champion at the same moment
        # (start), then the better model moves the alias first and the worse one a second later.
        decide, record = reg._decision_for, reg.record_decision
        def decide_at_start(*args, **kwargs):
            while time.time() < float(start):
                time.sleep(0.001)
            return decide(*args, **kwargs)
        def record_late(*args, **kwargs):
            time.sleep(0.5 if float(mrr) > 0.7 else 1.5)
            return record(*args, **kwargs)
        reg._decision_for, reg.record_decision = decide_at_start, record_late
    else:
        while time.time() < float(start):  # all processes leave the barrier together
            time.sleep(0.001)
    r = reg.log_and_register(model_dir, metrics={"mrr@20": float(mrr)}, config={"mrr": mrr},
                             split_fingerprint="f" * 64, data_manifest_hash="m" * 64, registry_name="race",
                             tracking_uri=uri, artifact_location=artifacts, experiment="race")
    print(r.version, r.alias)
    """
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "m", N_ITEMS, layers=4)


def _register_together(model_dir: Path, store: Path, mrrs: list[float], staged: bool = False) -> list[str]:
    from tasks.registry import embedded_tracking_uri

    uri, artifacts = embedded_tracking_uri(store)
    start = time.time() + (20 if staged else 8)  # time to import mlflow (and log the run) first
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER, str(model_dir), uri, artifacts, str(m), str(start), str(int(staged))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for m in mrrs
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out.strip().splitlines()[-1] for out, _ in outputs]


def _client(store: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_two_registrations_on_a_fresh_store(model_dir, tmp_path):
    lines = _register_together(model_dir, tmp_path / "store", [0.2, 0.3])
    client = _client(tmp_path / "store")
    versions = sorted(int(v.version) for v in client.search_model_versions("name='race'"))
    assert versions == [1, 2], lines
    assert all(v.tags.get("alias") for v in client.search_model_versions("name='race'"))


@pytest.mark.slow
@pytest.mark.parametrize("staged", [True, False], ids=["worst-case-timing", "free-running"])
def test_champion_race_the_better_model_wins(model_dir, tmp_path, staged):
    from tasks.registry import embedded_tracking_uri, log_and_register

    uri, artifacts = embedded_tracking_uri(tmp_path / "store")
    log_and_register(model_dir, metrics={"mrr@20": 0.1}, config={}, split_fingerprint="f" * 64,
                     data_manifest_hash="m" * 64, registry_name="race", tracking_uri=uri,
                     artifact_location=artifacts, experiment="race")
    _register_together(model_dir, tmp_path / "store", [0.5, 0.9], staged=staged)
    client = _client(tmp_path / "store")
    champion = client.get_model_version_by_alias("race", "champion")
    assert float(champion.tags["primary_metric_value"]) == 0.9
    worse = next(v for v in client.search_model_versions("name='race'") if v.tags["primary_metric_value"] == "0.5")
    assert worse.tags["alias"] in ("champion", "challenger") and worse.version != champion.version


@pytest.mark.slow
def test_two_runs_in_one_fresh_workdir(tmp_path):
    source = synthetic_movielens(tmp_path / "u.data")
    workdir = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    args = ["--source", str(source), "--workdir", str(workdir), "--layers", "8", "--batch-size", "16",
            "--epochs", "1", "--threads", "1", "--registry-name", "pair", "--set", "train.n_sample=16"]
    cli = [sys.executable, "-c", "from flows.cli import main; main()", "run"]
    procs = [subprocess.Popen([*cli, *args, "--seed", str(seed)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    summaries = [json.loads(p.read_text()) for p in sorted((workdir / "runs").glob("*/summary.json"))]
    assert len(summaries) == 2
    a, b = summaries
    assert a["run_dir"] != b["run_dir"] and a["model_dir"] != b["model_dir"]
    assert {a["registration"]["version"], b["registration"]["version"]} == {"1", "2"}
    for s in summaries:  # each run wrote only inside its own run directory
        assert Path(s["model_dir"]).is_relative_to(s["run_dir"])
        assert Path(s["split_dir"]).is_relative_to(workdir / "runs")
