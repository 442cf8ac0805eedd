"""`train_on_split` / `train --out`: what may be replaced, which checkpoint may be resumed, what a
killed training leaves behind, and the modes of what it writes."""

from __future__ import annotations

import os

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from gru4rec.data.split_dir import load_split
from gru4rec.errors import ConfigError
from gru4rec.jobs import build_config, train_on_split
from gru4rec.trainer import CHECKPOINT, load_checkpoint
from tests.synthetic import split_events, synthetic_split

TINY = {"model.layers": "[8]", "train.n_sample": "0", "train.batch_size": "8", "train.lr": "0.1"}
runner = CliRunner()


def cfg(epochs: int = 2, **train):
    return build_config("gru4rec-xe", TINY, epochs=epochs, progress=False, threads=1, **train)


def _tree(d):
    return sorted((str(p.relative_to(d)), p.read_bytes() if p.is_file() else None) for p in d.rglob("*"))


def _weights(model_dir):
    return (model_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirs")
    return root, synthetic_split(root / "a")


@pytest.fixture(scope="module")
def swapped(data):
    """The same events with two item ids swapped, prepared again: same catalogue size, other content."""
    root, _ = data
    events = pl.read_parquet(root / "a" / "events.parquet")
    events = events.with_columns(pl.col("item_id").replace({3: 17, 17: 3}))
    (root / "b").mkdir()
    events.write_parquet(root / "b" / "events.parquet")
    split_events(root / "b" / "events.parquet", root / "b" / "split")
    return root / "b" / "split"


# --- what --out may replace -------------------------------------------------------------------------


def test_cli_refuses_a_directory_that_is_not_a_model(data, tmp_path):
    from flows.cli import app

    _, split = data
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "important.txt").write_text("keep me")
    (mine / "sub" / "more.txt").write_text("and me")
    before = _tree(mine)
    res = runner.invoke(app, ["train", "--split", str(split), "--out", str(mine), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "error:" in res.output and "not a model directory" in res.output and "--overwrite" in res.output
    assert _tree(mine) == before and sorted(os.listdir(tmp_path)) == ["mine"]  # no .work either
    summary = train_on_split(split, cfg(1), mine, overwrite=True)  # asked for explicitly
    assert summary["model_dir"] == str(mine) and not (mine / "important.txt").exists()


@pytest.mark.parametrize("where", ["the split itself", "inside the split", "around the split"])
def test_the_split_is_never_replaced(data, tmp_path, where):
    from flows.cli import app

    root, split = data
    out = {"the split itself": split, "inside the split": split / "model", "around the split": root / "a"}[where]
    before = _tree(root / "a")
    res = runner.invoke(app, ["train", "--split", str(split), "--out", str(out), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "overlap" in res.output
    assert _tree(root / "a") == before
    with pytest.raises(ConfigError, match="overlap"):
        train_on_split(split, cfg(1), out, overwrite=True)
    assert _tree(root / "a") == before


def test_retraining_into_the_same_model_directory_replaces_it(data, tmp_path):
    _, split = data
    train_on_split(split, cfg(1), tmp_path / "m")
    summary = train_on_split(split, cfg(1, seed=5), tmp_path / "m")
    assert "another job" in summary["notes"][0]  # the first one's checkpoint: set aside, started over
    train_on_split(split, cfg(1, seed=5), tmp_path / "n")
    assert _weights(tmp_path / "m") == _weights(tmp_path / "n")


# --- which checkpoint is resumed ----------------------------------------------------------------------


def test_a_prepared_again_split_is_not_resumed_from_the_old_checkpoint(data, swapped, tmp_path):
    _, split = data
    assert load_split(swapped).n_items == load_split(split).n_items
    train_on_split(split, cfg(), tmp_path / "m")
    summary = train_on_split(swapped, cfg(), tmp_path / "m")
    assert summary["split_fingerprint"] == load_split(swapped).fingerprint()
    assert any("split fingerprint" in n for n in summary["notes"])
    train_on_split(swapped, cfg(), tmp_path / "fresh")
    assert _weights(tmp_path / "m") == _weights(tmp_path / "fresh")  # trained on the new split, not resumed


def test_fewer_epochs_over_a_finished_checkpoint_trains_anew(data, tmp_path):
    import json

    _, split = data
    train_on_split(split, cfg(3), tmp_path / "m")
    summary = train_on_split(split, cfg(1), tmp_path / "m")
    assert summary["epochs_run"] == 1 and len(summary["history"]) == 1
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["epochs"] == 1
    train_on_split(split, cfg(1), tmp_path / "fresh")
    assert _weights(tmp_path / "m") == _weights(tmp_path / "fresh")


def test_a_finished_training_of_the_same_job_is_not_run_again(data, tmp_path, monkeypatch):
    import gru4rec.trainer as trainer_mod

    _, split = data
    first = train_on_split(split, cfg(), tmp_path / "m")
    weights = _weights(tmp_path / "m")
    assert load_checkpoint(tmp_path / "m.work" / CHECKPOINT)["done"] is True
    # killed after training, before registration: the model directory is lost or was never written
    for p in (tmp_path / "m").iterdir():
        p.unlink()
    (tmp_path / "m").rmdir()
    monkeypatch.setattr(trainer_mod, "_train_epoch", lambda *a: pytest.fail("trained again"))
    again = train_on_split(split, cfg(), tmp_path / "m")
    assert _weights(tmp_path / "m") == weights and again["history"] == first["history"]


# --- leftovers, devices, modes, one training at a time -----------------------------------------------


def test_leftovers_of_a_killed_training_are_removed(data, tmp_path):
    _, split = data
    train_on_split(split, cfg(1), tmp_path / "m")
    left = [tmp_path / ".m.tmp-0123456789ab", tmp_path / "m.work" / ".checkpoint.pt.k1ll3d_9.tmp"]
    left[0].mkdir()
    (left[0] / "model.safetensors").write_bytes(b"half")
    left[1].write_bytes(b"half")
    kept = [tmp_path / ".m.tmp-notmine", tmp_path / "m.work" / "mine.tmp"]
    kept[0].mkdir()
    kept[1].write_text("x")
    summary = train_on_split(split, cfg(1), tmp_path / "m")
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
    assert any(".m.tmp-0123456789ab" in n for n in summary["notes"])


def test_a_failing_save_leaves_nothing_half_written(data, tmp_path, monkeypatch):
    import gru4rec.persist as persist

    _, split = data

    def disk_full(*a, **k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(persist, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        train_on_split(split, cfg(1), tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m.work"]
    assert sorted(os.listdir(tmp_path / "m.work")) == [".lock", CHECKPOINT, "history.json"]


def test_an_absent_device_creates_nothing(data, tmp_path, monkeypatch):
    _, split = data
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'cuda' requested but CUDA is not available"):
        train_on_split(split, cfg(1, device="cuda"), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_model_directory_modes_are_those_of_plain_files(data, tmp_path):
    _, split = data
    old = os.umask(0o022)
    try:
        train_on_split(split, cfg(1), tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()} == {
        n: 0o644 for n in ("model.safetensors", "config.json", "items.parquet", "history.json")
    }


def test_one_training_at_a_time_into_a_place(data, tmp_path):
    from filelock import FileLock

    _, split = data
    (tmp_path / "m.work").mkdir()
    with FileLock(str(tmp_path / "m.work" / ".lock")):
        with pytest.raises(ConfigError, match="another training is writing to"):
            train_on_split(split, cfg(1), tmp_path / "m")
    assert not (tmp_path / "m").exists()
