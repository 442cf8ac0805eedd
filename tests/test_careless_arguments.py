"""Careless arguments get a one-line error before any work, and leave nothing behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from tests.synthetic import synthetic_split

runner = CliRunner()


def _refused(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, res.output


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from gru4rec.jobs import build_config, train_on_split

    tmp = tmp_path_factory.mktemp("careless")
    split = synthetic_split(tmp / "data")
    cfg = build_config("gru4rec-xe", {"model.layers": "[4]", "train.n_sample": "0"}, epochs=1, progress=False)
    train_on_split(split, cfg, tmp / "model")
    return split, tmp / "model"


@pytest.mark.parametrize("k", ["0", "-1"])
def test_recommend_k_must_be_positive(model_dir, k):
    _, model = model_dir
    _refused(runner.invoke(app, ["recommend", "--model", str(model), "--k", k, "1", "2"]), "--k")


def test_recommend_shortens_a_long_list_of_unknown_items(model_dir):
    _, model = model_dir
    unknown = [f"x{i}" for i in range(10_000)]
    res = runner.invoke(app, ["recommend", "--model", str(model), "--k", "3", *unknown])
    assert res.exit_code == 0, res.output
    assert "x0, x1" in res.output and "and 9,990 more" in res.output and "x9999" not in res.output


def test_recommend_mistyped_model_path_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(runner.invoke(app, ["recommend", "--model", "./modle", "1"]), "model directory ./modle not found", "NAME[@alias]")
    _refused(runner.invoke(app, ["recommend", "--model", "gru4rec@champion", "1"]), "no MLflow store")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_out_directory_is_refused_before_evaluating(model_dir, tmp_path, monkeypatch):
    import gru4rec.evaluate

    split, model = model_dir
    monkeypatch.setattr(gru4rec.evaluate, "evaluate_model", lambda *a, **k: pytest.fail("evaluated anyway"))
    res = runner.invoke(app, ["evaluate", "--split", str(split), "--model", str(model), "--out", str(tmp_path)])
    _refused(res, "is a directory")


def test_prepare_out_and_run_workdir_that_are_files(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    _refused(runner.invoke(app, ["prepare", "--source", "x.csv", "--out", str(a_file)]), "existing file")
    _refused(runner.invoke(app, ["run", "--source", "x.csv", "--workdir", str(a_file)]), "existing file")
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("seed", [str(2**64), "-1"])
def test_out_of_range_seed(seed, model_dir, tmp_path):
    split, _ = model_dir
    _refused(runner.invoke(app, ["train", "--split", str(split), "--out", str(tmp_path / "m"), "--seed", seed]), "seed")
    assert not (tmp_path / "m").exists()


def test_directory_without_data_files_as_source(tmp_path):
    from gru4rec.data.config import IngestConfig
    from gru4rec.data.ingest import resolve_sources
    from gru4rec.errors import DataFormatError

    (tmp_path / ".hidden.csv").write_text("s,i,t\n")
    with pytest.raises(DataFormatError, match="no data files in directory"):
        resolve_sources(IngestConfig(source=str(tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_leaves_no_directory(model_dir, tmp_path):
    split, _ = model_dir
    res = runner.invoke(app, ["train", "--split", str(split), "--out", str(tmp_path / "m"), "--device", "cuda"])
    _refused(res, "CUDA is not available")
    assert list(tmp_path.iterdir()) == []


def test_sqlite_tracking_uri_keeps_artifacts_beside_the_database(tmp_path):
    from tasks.registry import store_locations

    uri, artifacts = store_locations(f"sqlite:///{tmp_path}/store/mlflow.db", tmp_path / "work")
    assert uri == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert artifacts == (tmp_path / "store" / "artifacts").as_uri()
    assert store_locations("http://127.0.0.1:5000", tmp_path) == ("http://127.0.0.1:5000", None)


def test_written_files_get_the_usual_permissions(tmp_path, model_dir):
    from gru4rec.io import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_train_out_that_holds_other_files_is_refused_unless_overwrite(model_dir, tmp_path):
    split, _ = model_dir
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("keep")
    args = ["train", "--split", str(split), "--out", str(out), "--layers", "4", "--epochs", "1", "--no-progress"]
    _refused(runner.invoke(app, args), "important.txt")
    assert (out / "important.txt").read_text() == "keep"
    _refused(runner.invoke(app, ["train", "--split", str(split), "--out", str(split), "--epochs", "1"]), str(split))
    assert (split / "manifest.json").is_file()
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and not (out / "important.txt").exists()


def test_missing_or_directory_source_is_refused_before_the_flow_starts(tmp_path, monkeypatch):
    import flows.prepare
    import flows.training

    monkeypatch.setattr(flows.prepare, "prepare_data", lambda cfg: pytest.fail("the flow started"))
    monkeypatch.setattr(flows.training, "training_pipeline", lambda cfg: pytest.fail("the flow started"))
    _refused(runner.invoke(app, ["prepare", "--source", str(tmp_path), "--out", str(tmp_path / "o")]), "no data files")
    _refused(runner.invoke(app, ["run", "--source", str(tmp_path / "nope.csv"), "--workdir", str(tmp_path / "w")]),
             "nope.csv not found")
