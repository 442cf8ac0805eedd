"""Integration: the end-to-end `training_pipeline` and `batch_recommend` flows under
prefect_test_harness, with a tiny model, on a synthetic MovieLens-style log (so a fresh clone runs
them) and once on the real MovieLens-100K: artifacts, MLflow registry decisions, validation stops,
retries of transient failures, training resumed from its checkpoint, caching."""

from __future__ import annotations

import polars as pl
import pytest

from flows.config import PipelineConfig, RegistrySettings, TrainingSettings
from gru4rec.data.config import IngestConfig
from gru4rec.errors import DataValidationError
from tests.conftest import shared_file
from tests.synthetic import synthetic_movielens

pytestmark = pytest.mark.slow

TINY = {
    "model.layers": "[16]",
    "train.n_sample": "64",
    "train.batch_size": "16",
    "train.epochs": 1,
    "train.threads": 1,
    "train.device": "cpu",
}


def _config(workdir, source, overrides=None, **settings) -> PipelineConfig:
    return PipelineConfig(
        ingest=IngestConfig(source=str(source)),
        training=TrainingSettings(preset="gru4rec-xe", overrides=TINY | (overrides or {})),
        registry=RegistrySettings(name="ml100k"),
        workdir=str(workdir),
        **settings,
    )


def _versions(workdir, name="ml100k"):
    from mlflow import MlflowClient

    from tasks.registry import embedded_tracking_uri

    uri, _ = embedded_tracking_uri(workdir / "mlflow")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client, sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    from flows.training import training_pipeline

    workdir = tmp_path_factory.mktemp("pipeline")
    src = synthetic_movielens(tmp_path_factory.mktemp("source") / "u.data")
    result = training_pipeline(_config(workdir, src))
    return workdir, src, result


def test_pipeline_on_real_movielens_100k(prefect_harness, tmp_path):
    from flows.training import training_pipeline

    src = shared_file("ml-100k/u.data.gz")
    result = training_pipeline(_config(tmp_path, src))
    m = result["metrics"]
    assert m["gru4rec"]["n_targets"] == m["popularity"]["n_targets"] > 1000
    assert result["registration"]["alias"] == "champion"


def test_pipeline_completes_with_artifacts_and_champion(first_run):
    from prefect.artifacts import Artifact

    workdir, _, result = first_run
    assert result["device"] == "cpu"
    m = result["metrics"]
    assert set(m) == {"gru4rec", "popularity", "item-knn"}
    assert m["gru4rec"]["n_targets"] == m["popularity"]["n_targets"] > 100
    for key in (
        "split-statistics",
        "validation-summary",
        "training-history",
        "training-chart",
        "evaluation",
        "registration",
    ):
        art = Artifact.get(key)
        assert art is not None, key
        assert str(art.flow_run_id) == result["flow_run_id"], key
    reg = result["registration"]
    assert reg["alias"] == "champion" and reg["version"] == "1"
    client, versions = _versions(workdir)
    assert versions == [1]
    v = client.get_model_version_by_alias("ml100k", "champion")
    assert v.tags["split_fingerprint"] == result["split_fingerprint"]
    assert v.tags["prefect_flow_run_id"] == result["flow_run_id"]
    run = client.get_run(reg["run_id"])
    assert "mrr_at_20" in run.data.metrics and run.data.tags["data_manifest_hash"]
    assert result["timings"]["overhead"] > 0 and result["timings"]["compute"] > 0


def test_weak_model_becomes_challenger_and_data_cache_is_reused(first_run):
    from flows.training import training_pipeline

    workdir, src, first = first_run
    weak = _config(workdir, src, overrides={"train.lr": "0.000001"})
    result = training_pipeline(weak)
    assert result["split_dir"] == first["split_dir"], "same content + settings must reuse the cached split"
    reg = result["registration"]
    assert reg["alias"] == "challenger" and "does not beat" in reg["decision"]
    client, versions = _versions(workdir)
    assert versions == [1, 2]
    assert str(client.get_model_version_by_alias("ml100k", "champion").version) == "1"
    assert client.get_model_version("ml100k", "2").tags["decision"] == reg["decision"]


def test_failed_validation_stops_before_training(first_run, tmp_path):
    from flows.training import training_pipeline

    workdir, src, _ = first_run
    lines = src.read_text().splitlines()
    for i in (5, 50):
        u, it, r, _ = lines[i].split("\t")
        lines[i] = f"{u}\t{it}\t{r}\t100"  # 1970
    bad = tmp_path / "u.data"
    bad.write_text("\n".join(lines) + "\n")
    _, before = _versions(workdir)
    with pytest.raises(DataValidationError, match="timestamp"):
        training_pipeline(_config(workdir, bad))
    _, after = _versions(workdir)
    assert after == before


def test_transient_failure_is_retried(first_run, monkeypatch):
    import gru4rec.data.ingest as ingest_mod
    from flows.training import training_pipeline

    workdir, src, _ = first_run
    real, calls = ingest_mod.ingest, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("injected transient failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "ingest", flaky)
    cfg = _config(workdir, src).model_copy(update={"cache_data": False})
    result = training_pipeline(cfg)
    assert len(calls) == 2 and result["registration"]["version"]


def test_killed_training_resumes_from_checkpoint(first_run, monkeypatch):
    import gru4rec.trainer as trainer_mod
    from flows.training import training_pipeline

    workdir, src, _ = first_run
    real, starts = trainer_mod.train, []

    def killed_after_first_epoch(split, cfg, out_dir, **kwargs):
        ck = out_dir / trainer_mod.CHECKPOINT
        starts.append(trainer_mod.load_checkpoint(ck)["epoch"] if ck.exists() else 0)
        if len(starts) == 1:

            def die(record):
                raise ConnectionAbortedError("worker lost after epoch 1 (injected)")

            kwargs["callbacks"] = [die]
        return real(split, cfg, out_dir, **kwargs)

    monkeypatch.setattr(trainer_mod, "train", killed_after_first_epoch)
    result = training_pipeline(_config(workdir, src, overrides={"train.epochs": 2}))
    assert starts == [0, 1], "the retry must start from the epoch-1 checkpoint"
    import json
    from pathlib import Path

    history = json.loads((Path(result["model_dir"]) / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_batch_recommend_covers_every_session(first_run, tmp_path):
    from flows.batch import batch_recommend

    workdir, _, _ = first_run
    sessions = pl.DataFrame(
        {"session_id": [1, 1, 1, 2, 3, 3], "item_id": [50, 51, 52, 999999, 1, 2], "timestamp": [1, 2, 3, 1, 1, 2]}
    )
    inp = tmp_path / "sessions.csv"
    sessions.write_csv(inp)
    out = tmp_path / "recs.parquet"
    summary = batch_recommend(str(inp), str(out), model_name="ml100k", k=5, workdir=str(workdir))
    recs = pl.read_parquet(out)
    assert summary["sessions"] == 3 and recs.height == 3
    assert all(len(x) == 5 for x in recs["items"].to_list())
    assert summary["fallbacks"] == 1 and summary["unknown_items"] == 1
    assert recs.filter(pl.col("session_id") == 2)["fallback"].item() is True


def test_registration_failing_after_the_version_exists_is_retried_without_a_duplicate(first_run, monkeypatch):
    import tasks.registry as registry
    from flows.training import training_pipeline

    workdir, src, _ = first_run
    _, before = _versions(workdir)
    real, calls = registry.record_decision, []

    def lost_connection_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("tracking server connection lost (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "record_decision", lost_connection_once)
    result = training_pipeline(_config(workdir, src, overrides={"train.seed": 5}))
    client, after = _versions(workdir)
    assert len(calls) == 2 and len(after) == len(before) + 1, "the retry must finish the version it created"
    version = client.get_model_version("ml100k", result["registration"]["version"])
    assert version.tags["alias"] == result["registration"]["alias"] and version.tags["decision"]


def test_run_can_be_watched_in_the_ui_and_mlflow(first_run):
    """Progress while training, epoch lines in the flow-run log, PNG plots in the artifacts and in
    MLflow, per-epoch curves in MLflow, and a run graph that connects the data and model halves."""
    import asyncio
    import base64

    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    workdir, _, result = first_run
    run_id = result["flow_run_id"]
    progress = Artifact.get("training-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    chart = Artifact.get("training-chart").data
    png = base64.b64decode(chart.split("data:image/png;base64,")[1].split(")")[0])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "data:image/png;base64," in Artifact.get("evaluation-chart").data

    async def logs_and_task_runs():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return [log.message for log in logs], runs

    messages, task_runs = asyncio.run(logs_and_task_runs())
    assert any(m.startswith("epoch 1/1: loss ") and "events/s" in m for m in messages), messages
    assert any(m.startswith("registered ml100k v1 as champion") for m in messages)
    by_id = {str(t.id): t for t in task_runs}
    train = next(t for t in task_runs if t.task_key.startswith("train-") or t.name.startswith("train-"))
    upstream = {
        by_id[str(i.id)].name.split("-")[0] for ins in train.task_inputs.values() for i in ins if str(i.id) in by_id
    }
    assert "split" in upstream, train.task_inputs
    register = next(t for t in task_runs if t.name.startswith("register-"))
    upstream = {by_id[str(i.id)].name.rsplit("-", 1)[0] for ins in register.task_inputs.values() for i in ins}
    assert {"train", "evaluate"} <= upstream, upstream

    client, _ = _versions(workdir)
    run_id = result["registration"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "epoch_loss")] == [1]
    assert [m.step for m in client.get_metric_history(run_id, "epoch_events_per_s")] == [1]
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert {"training.png", "comparison.png"} <= logged, logged
