"""Transient vs permanent failures: decided in one place, and never turned permanent on the way."""

from __future__ import annotations

import errno
import urllib.error

import polars as pl
import pytest

from gru4rec.errors import (
    ConfigError,
    DataFormatError,
    DataValidationError,
    ModelFileError,
    SourceUnavailableError,
    is_transient,
)
from tests.synthetic import synthetic_split


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.EIO, "I/O error"), True),
        (urllib.error.URLError("unreachable"), True),
        (SourceUnavailableError("offline", transient=True), True),
        (SourceUnavailableError("404"), False),
        (FileNotFoundError("gone"), False),
        (PermissionError("no"), False),
        (IsADirectoryError("dir"), False),
        (DataFormatError("bad value"), False),
        (DataValidationError("bad data"), False),
        (ConfigError("bad setting"), False),
        (ValueError("bug"), False),
        (None, False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def _eio(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error (injected)")


def test_reading_a_split_passes_transient_io_errors_through(tmp_path, monkeypatch):
    from gru4rec.data.split_dir import load_split

    split_dir = synthetic_split(tmp_path)
    monkeypatch.setattr(pl, "read_parquet", _eio)
    with pytest.raises(OSError, match="injected") as e:
        load_split(split_dir, verify=False)
    assert not isinstance(e.value, DataFormatError)


def test_splitter_input_passes_transient_io_errors_through(tmp_path, monkeypatch):
    from gru4rec.data.splitter import _read_events

    events = tmp_path / "events.parquet"
    pl.DataFrame({"session_key": [1], "item_id": [1], "timestamp": [1]}).write_parquet(events)
    monkeypatch.setattr(pl, "read_parquet_schema", _eio)
    with pytest.raises(OSError, match="injected"):
        _read_events(events, "events")
    monkeypatch.setattr(pl, "read_parquet_schema", lambda p: (_ for _ in ()).throw(pl.exceptions.ComputeError("junk")))
    with pytest.raises(DataFormatError, match="cannot read events"):
        _read_events(events, "events")


def test_loading_a_model_passes_transient_io_errors_through(tmp_path, monkeypatch):
    import gru4rec.persist as persist
    from gru4rec.jobs import build_config, train_on_split

    split_dir = synthetic_split(tmp_path)
    cfg = build_config("gru4rec-xe", {"model.layers": "[4]", "train.n_sample": "0"}, epochs=1, progress=False)
    train_on_split(split_dir, cfg, tmp_path / "m")
    monkeypatch.setattr(persist, "load_file", _eio)
    with pytest.raises(OSError, match="injected") as e:
        persist.load_model(tmp_path / "m")
    assert not isinstance(e.value, ModelFileError)
    monkeypatch.undo()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        persist.load_model(tmp_path / "m")


def test_batch_input_passes_transient_io_errors_through(tmp_path, monkeypatch):
    from flows.batch import read_sessions

    path = tmp_path / "s.parquet"
    pl.DataFrame({"session_id": [1], "item_id": [2]}).write_parquet(path)
    monkeypatch.setattr(pl, "read_parquet", _eio)
    with pytest.raises(OSError, match="injected"):
        read_sessions(path)


def test_every_task_retries_transient_failures_the_same_number_of_times():
    from flows.training import fingerprint_task
    from tasks.common import RETRIES
    from tasks.data import ingest_task, split_task, validate_task
    from tasks.training import evaluate_task, register_task, train_task

    for t in (fingerprint_task, ingest_task, validate_task, split_task, train_task, evaluate_task, register_task):
        assert t.retries == RETRIES == 3, t.name
        assert t.retry_condition_fn is not None, t.name
