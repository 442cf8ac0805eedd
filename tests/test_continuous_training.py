"""Integration: nightly retraining on data that grows (issue 9, point 1). Run 1 on data A with weak
settings becomes champion; run 2 on data B (A plus later events) with better settings replaces it
by a head-to-head on run 2's test targets; run 3 with a broken learning rate stays challenger;
the same data and settings again register nothing; `rollback` restores the previous champion."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.config import NotificationSettings, PipelineConfig, RegistrySettings, TrainingSettings
from gru4rec.data.config import IngestConfig
from gru4rec.data.health import HealthThresholds
from tests.synthetic import synthetic_movielens
from tests.test_notify import Receiver

pytestmark = pytest.mark.slow

NAME = "nightly"
WEAK = {"model.layers": "[8]", "train.n_sample": "32", "train.batch_size": "16", "train.epochs": 1, "train.lr": "0.02"}
BETTER = {"model.layers": "[32]", "train.n_sample": "64", "train.batch_size": "16", "train.epochs": 4}
COMMON = {"train.threads": 1, "train.device": "cpu"}


def _config(workdir, source, overrides, notify_url=None, **settings) -> PipelineConfig:
    return PipelineConfig(
        ingest=IngestConfig(source=str(source), format="ml-100k"),
        training=TrainingSettings(preset="gru4rec-xe", overrides=COMMON | overrides),
        registry=RegistrySettings(name=NAME),
        notifications=NotificationSettings(notify_url=notify_url),
        workdir=str(workdir),
        **settings,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A: everything before day 600 of the log; B: all of it (A plus later events)."""
    root = tmp_path_factory.mktemp("sources")
    full = synthetic_movielens(root / "all.data", n_users=300, n_items=120, seed=3)
    rows = pl.read_csv(full, separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
    cut = rows["t"].min() + 600 * 86_400
    a = root / "a" / "u.data"
    a.parent.mkdir()
    rows.filter(pl.col("t") < cut).write_csv(a, separator="\t", include_header=False)
    b = root / "b" / "u.data"
    b.parent.mkdir()
    rows.write_csv(b, separator="\t", include_header=False)
    return a, b


def _client(workdir):
    from mlflow import MlflowClient

    from tasks.registry import embedded_tracking_uri

    uri, _ = embedded_tracking_uri(workdir / "mlflow")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_new_data_can_win_and_rollback_restores(prefect_harness, data, tmp_path):
    from flows.cli import app
    from flows.training import training_pipeline

    a, b = data
    workdir = tmp_path / "runs"
    first = training_pipeline(_config(workdir, a, WEAK))
    assert first["registration"]["alias"] == "champion" and first["registration"]["version"] == "1"

    receiver = Receiver()  # a webhook on 127.0.0.1 hears about the new champion
    try:
        # a strict size threshold: B's extra events are flagged as a data change (not blocking)
        strict = HealthThresholds(size_change=0.01)
        second = training_pipeline(_config(workdir, b, BETTER, notify_url=receiver.url + "/hook", health=strict))
        heard = receiver.wait(1)
    finally:
        receiver.close()
    assert len(heard) == 1 and heard[0]["path"] == "/hook", heard
    assert "version 2 is the new champion" in json.dumps(heard[0]["body"])
    reg = second["registration"]
    assert second["split_fingerprint"] != first["split_fingerprint"]
    h2h = reg["head_to_head"]
    assert h2h["champion_version"] == "1" and h2h["test_fingerprint"] == second["split_fingerprint"]
    assert h2h["n_targets"] == second["metrics"]["gru4rec"]["n_targets"]  # the same targets
    assert reg["alias"] == "champion", reg["decision"]
    assert reg["candidate_metric"] > h2h["value"] and "re-evaluated on this run's test split" in reg["decision"]
    assert any(w.startswith("DATA WARNING: events changed by +") for w in reg["warnings"]), reg["warnings"]
    assert "DATA WARNING: sessions changed by +" in reg["decision"]
    from prefect.artifacts import Artifact

    health = Artifact.get("data-health")
    assert str(health.flow_run_id) == second["flow_run_id"] and "events changed by" in health.description
    client = _client(workdir)
    tags = client.get_model_version(NAME, "2").tags
    assert float(tags["head_to_head_champion_value"]) == h2h["value"]
    assert tags["head_to_head_test_fingerprint"] == second["split_fingerprint"]
    assert tags["previous_champion"] == "1" and _champion(client) == "2"

    broken = training_pipeline(_config(workdir, b, BETTER | {"train.lr": "0.000001"}))
    assert broken["registration"]["alias"] == "challenger", broken["registration"]["decision"]
    assert broken["registration"]["head_to_head"] is None  # same split as the champion: its own number counts
    assert _champion(client) == "2"

    again = training_pipeline(_config(workdir, b, BETTER))
    assert again["registration"]["registered"] is False and again["registration"]["version"] == "2"
    assert "no new version" in again["registration"]["decision"] and again["model_dir"] is None
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == [1, 2, 3]

    out = CliRunner().invoke(app, ["rollback", "--model", NAME, "--reason", "test rollback", "--workdir", str(workdir)])
    assert out.exit_code == 0, out.output
    assert "v1 is now champion (was v2)" in out.output
    assert _champion(client) == "1"
    assert "test rollback" in client.get_model_version(NAME, "2").tags["rolled_back"]
