"""Tests of tasks.validation's process-wide side effects and error classes.

* GX's whole-batch md5 fingerprint is switched off (via GX's private HASH_THRESHOLD) only while
  validating, under a lock, and restored after - also when two threads validate at once;
* I/O errors reach the caller unchanged (a transient OSError stays retryable), a missing table is a
  permanent DataFormatError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading

import polars as pl
import pytest

from gru4rec.data.config import SourceFormat
from gru4rec.errors import DataFormatError, DataValidationError, PipelineError
from tasks import validation
from tasks.common import is_transient
from tasks.validation import ValidationConfig, validate_events
from tests.test_validate import clean_events, ingest

GX_LOGGERS = ("great_expectations", "great_expectations.core")


@pytest.fixture
def engine():
    from great_expectations.execution_engine import pandas_execution_engine

    return pandas_execution_engine


@pytest.fixture
def gx_batches(monkeypatch, engine):
    """Record, per pandas batch GX loads: the HASH_THRESHOLD it sees and whether it hashed the frame."""
    loads: list[dict] = []
    real_load = engine.PandasExecutionEngine.get_batch_data_and_markers
    real_hash = engine.hash_pandas_dataframe

    def load(self, batch_spec):
        loads.append({"threshold": engine.HASH_THRESHOLD, "hashed_rows": None})
        return real_load(self, batch_spec)

    def hash_frame(df):
        loads[-1]["hashed_rows"] = len(df)
        return real_hash(df)

    monkeypatch.setattr(engine.PandasExecutionEngine, "get_batch_data_and_markers", load)
    monkeypatch.setattr(engine, "hash_pandas_dataframe", hash_frame)
    return loads


def run(tmp_path, df: pl.DataFrame, **cfg) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    manifest, ingest_dir = ingest(tmp_path, {"events": df})
    cfg.setdefault("data_docs", False)
    return validate_events(manifest, ingest_dir, ValidationConfig(**cfg), SourceFormat.ML_1M, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# The fingerprint patch


def test_gx_fingerprints_the_whole_batch_without_the_patch(tmp_path, monkeypatch, gx_batches, engine):
    """Control: the spies see GX hash the 200-row frame when the patch is not applied."""
    monkeypatch.setattr(validation, "_no_batch_fingerprint", contextlib.nullcontext)
    run(tmp_path, clean_events(200))
    assert gx_batches == [{"threshold": engine.HASH_THRESHOLD, "hashed_rows": 200}]
    assert engine.HASH_THRESHOLD > 0


def test_validation_skips_the_fingerprint_and_restores_the_constant(tmp_path, gx_batches, engine):
    original = engine.HASH_THRESHOLD
    result = run(tmp_path, clean_events(200))
    assert result["success"]
    assert gx_batches == [{"threshold": 0, "hashed_rows": None}]  # lowered while GX loaded the batch
    assert engine.HASH_THRESHOLD == original

    # Restored after a failed validation too.
    with pytest.raises(DataValidationError):
        run(tmp_path / "bad", clean_events(150).with_columns(item_id=pl.lit(None, dtype=pl.Int64)))
    assert [b["hashed_rows"] for b in gx_batches] == [None, None]
    assert engine.HASH_THRESHOLD == original


def test_patch_restores_the_constant_when_gx_raises(engine):
    original = engine.HASH_THRESHOLD
    with pytest.raises(RuntimeError, match="inside GX"), validation._no_batch_fingerprint():
        assert engine.HASH_THRESHOLD == 0
        raise RuntimeError("inside GX")
    assert engine.HASH_THRESHOLD == original
    assert validation._FINGERPRINT_LOCK.acquire(blocking=False)  # and released
    validation._FINGERPRINT_LOCK.release()


def test_patch_holds_a_lock_so_threads_take_turns(engine):
    """Without the lock, B would enter at once, save A's 0 as "before" and restore 0 for good."""
    original = engine.HASH_THRESHOLD
    a_inside, a_release, b_inside = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}
    errors: list[BaseException] = []

    def a() -> None:
        try:
            with validation._no_batch_fingerprint():
                seen["a"] = engine.HASH_THRESHOLD
                a_inside.set()
                a_release.wait(30)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def b() -> None:
        try:
            a_inside.wait(30)
            with validation._no_batch_fingerprint():
                b_inside.set()
                seen["b"] = engine.HASH_THRESHOLD
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    try:
        assert a_inside.wait(30)
        assert not b_inside.wait(0.5), "a second thread changed the constant while the first held it"
    finally:
        a_release.set()
        for t in threads:
            t.join(30)
    assert not errors
    assert b_inside.is_set()
    assert seen == {"a": 0, "b": 0}
    assert engine.HASH_THRESHOLD == original


def test_two_threads_validate_at_once(tmp_path, gx_batches, engine):
    original = engine.HASH_THRESHOLD
    levels = [logging.getLogger(n).level for n in GX_LOGGERS]
    tables = {
        "good": clean_events(200),
        "bad": clean_events(150).with_columns(item_id=pl.lit(None, dtype=pl.Int64)),
    }
    inputs = {}
    for name, df in tables.items():
        (tmp_path / name).mkdir()
        inputs[name] = ingest(tmp_path / name, {"events": df})
    start = threading.Barrier(len(tables))
    outcome: dict[str, object] = {}

    def work(name: str) -> None:
        manifest, ingest_dir = inputs[name]
        cfg = ValidationConfig(data_docs=(name == "good"))
        start.wait(30)
        try:
            outcome[name] = validate_events(manifest, ingest_dir, cfg, SourceFormat.ML_1M, tmp_path / name / "out")
        except BaseException as e:
            outcome[name] = e

    threads = [threading.Thread(target=work, args=(name,)) for name in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)

    good, bad = outcome["good"], outcome["bad"]
    assert isinstance(good, dict) and good["success"], good
    assert good["tables"]["events"]["rows"] == 200
    assert (tmp_path / "good" / "out" / "data_docs" / "index.html").is_file()
    assert isinstance(bad, DataValidationError), bad
    assert [f["description"] for f in bad.failures] == ["item_id not null"]
    assert "item_id not null: 150 nulls" in str(bad)
    assert [b["threshold"] for b in gx_batches] == [0, 0]
    assert [b["hashed_rows"] for b in gx_batches] == [None, None]
    assert engine.HASH_THRESHOLD == original
    assert [logging.getLogger(n).level for n in GX_LOGGERS] == levels


def test_a_validation_never_writes_into_another_gx_context(tmp_path, monkeypatch):
    """GX keeps one process-wide "current" context; a suite that is not yet added resolves through it.

    Two validations in one process (two threads, or two flows of a worker) each make their own
    context; the later one becomes current. Building the earlier one's suite must not touch it:
    the CI race where GX then refused the other's suite ("has changed since it has last been saved").
    """
    import great_expectations as gx
    from great_expectations.data_context.data_context.context_factory import set_context

    other = validation._make_context(None)  # another validation's context, with its suite added
    other.suites.add(gx.ExpectationSuite(name="events_events"))
    made = validation._make_context

    def ours_then_the_other_becomes_current(docs_dir):
        context = made(docs_dir)
        set_context(other)  # the other thread made its context after ours
        return context

    monkeypatch.setattr(validation, "_make_context", ours_then_the_other_becomes_current)
    result = run(tmp_path, clean_events(200))
    assert result["success"]
    assert any(c["description"] == "item_id not null" for c in result["checks"]), "our suite ran its checks"
    assert other.suites.get("events_events").expectations == [], "our expectations went into the other context"


def test_quiet_gx_restores_levels_when_threads_overlap():
    loggers = [logging.getLogger(n) for n in GX_LOGGERS]
    before = [lg.level for lg in loggers]
    first, second = validation._quiet_gx(), validation._quiet_gx()
    first.__enter__()
    second.__enter__()  # as another thread would, while the first is inside
    assert all(lg.level == logging.ERROR for lg in loggers)
    first.__exit__(None, None, None)
    assert all(lg.level == logging.ERROR for lg in loggers)  # the second is still inside
    second.__exit__(None, None, None)
    assert [lg.level for lg in loggers] == before


# --------------------------------------------------------------------------------------------------
# Error classes: transient I/O errors pass through, bad input is permanent


def _transient(*_args, **_kwargs):
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize(
    ("target", "cfg"),
    [
        ("read", {}),
        ("write_parquet_atomic", {"drop_duplicates": True}),
        ("write_json_atomic", {}),
    ],
)
def test_transient_os_errors_propagate_unchanged(tmp_path, monkeypatch, target, cfg):
    df = clean_events(200)
    df = pl.concat([df, df.head(2)])  # duplicates, so drop_duplicates writes a table
    if target == "read":
        monkeypatch.setattr(validation.pl, "read_parquet", _transient)
    else:
        monkeypatch.setattr(validation, target, _transient)

    with pytest.raises(OSError) as info:
        run(tmp_path, df, **cfg)

    err = info.value
    assert type(err) is OSError and err.errno == errno.EIO
    assert not isinstance(err, PipelineError)
    assert is_transient(err)  # the task's retry policy retries it
    assert not (tmp_path / "out" / validation.MANIFEST_NAME).exists()


def test_missing_table_is_a_permanent_format_error(tmp_path):
    manifest, ingest_dir = ingest(tmp_path, {"events": clean_events(200)})
    (ingest_dir / "events.parquet").unlink()
    with pytest.raises(DataFormatError, match="ingested table 'events' not found") as info:
        validate_events(manifest, ingest_dir, ValidationConfig(data_docs=False), SourceFormat.ML_1M, tmp_path / "o")
    assert not is_transient(info.value)
