"""Tests of tasks.validation (GX-backed validation of the canonical events tables)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.data.config import SourceFormat
from gru4rec.errors import DataValidationError
from gru4rec.io import sha256_file
from tasks.validation import KEY_COLUMNS, ValidationConfig, _duplicate_mask, validate_events

DAY_MS = 86_400_000
T0 = 1_600_000_000_000  # 2020-09-13, well inside the sane window


def clean_events(n: int = 200, rating: bool = True, string_ids: bool = False) -> pl.DataFrame:
    sessions = [i // 4 for i in range(n)]
    items = [(i * 7) % 23 for i in range(n)]
    data = {
        "session_key": [f"s{s}" for s in sessions] if string_ids else sessions,
        "item_id": [f"i{x}" for x in items] if string_ids else items,
        "timestamp": [T0 + i * 60_000 for i in range(n)],
    }
    schema = {
        "session_key": pl.String if string_ids else pl.Int64,
        "item_id": pl.String if string_ids else pl.Int64,
        "timestamp": pl.Int64,
    }
    if rating:
        data["rating"] = [float(1 + i % 5) for i in range(n)]
        schema["rating"] = pl.Float64
    return pl.DataFrame(data, schema=schema)


def ingest(tmp_path: Path, tables: dict[str, pl.DataFrame]) -> tuple[dict, Path]:
    ingest_dir = tmp_path / "ingest"
    ingest_dir.mkdir(exist_ok=True)
    manifest = {"tables": {}}
    for role, df in tables.items():
        path = ingest_dir / f"{role}.parquet"
        df.write_parquet(path)
        manifest["tables"][role] = {"file": path.name, "rows": df.height, "sha256": sha256_file(path)}
    return manifest, ingest_dir


def run_failing(tmp_path, tables, cfg, fmt) -> tuple[DataValidationError, Path]:
    manifest, ingest_dir = ingest(tmp_path, tables)
    out = tmp_path / "out"
    with pytest.raises(DataValidationError) as info:
        validate_events(manifest, ingest_dir, cfg, fmt, out)
    return info.value, out


def failed(err: DataValidationError) -> dict[str, dict]:
    return {f["description"]: f for f in err.failures}


def test_clean_table_passes_and_writes_reports(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    manifest, ingest_dir = ingest(tmp_path, {"events": clean_events()})
    before = sorted(p.name for p in ingest_dir.iterdir())
    out = tmp_path / "out"

    result = validate_events(manifest, ingest_dir, ValidationConfig(), SourceFormat.ML_1M, out)

    assert result["success"] is True
    assert all(c["success"] for c in result["checks"])
    kinds = {c["expectation"] for c in result["checks"]}
    assert {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_table_row_count_to_be_between",
        "duplicate_key_fraction_at_most",
    } <= kinds
    assert {c["engine"] for c in result["checks"]} == {"great_expectations", "polars"}
    assert any(c["column"] == "rating" and "between 1 and 5" in c["description"] for c in result["checks"])
    assert result["duplicates"] == {"events": {"count": 0, "fraction": 0.0, "dropped": False}}
    table = result["tables"]["events"]
    assert (out / table["file"]).resolve() == (ingest_dir / "events.parquet").resolve()  # relative to out
    assert table["rows"] == 200 and table["sha256"] == manifest["tables"]["events"]["sha256"]
    for key in ("to_pandas_s", "gx_s", "data_docs_s", "gx_import_s", "total_s"):
        assert result["timings"][key] >= 0

    assert json.loads((out / "validation_manifest.json").read_text()) == result
    gx_json = json.loads((out / "validation_result.json").read_text())
    assert gx_json["events"]["success"] is True and gx_json["events"]["results"]
    assert result["reports"]["data_docs_index"] == "data_docs/index.html"
    assert (out / "data_docs" / "index.html").is_file()
    # Nothing written beside the inputs or in the working directory.
    assert sorted(p.name for p in ingest_dir.iterdir()) == before
    assert list(cwd.iterdir()) == []


def test_many_defects_reported_in_one_run(tmp_path):
    df = clean_events(200)
    now_ms = int(time.time() * 1000)
    rows = df.with_row_index("i").with_columns(
        session_key=pl.when(pl.col("i").is_in([3, 4])).then(None).otherwise(pl.col("session_key")),
        item_id=pl.when(pl.col("i") == 5).then(None).otherwise(pl.col("item_id")),
        timestamp=pl.when(pl.col("i") == 6)
        .then(None)
        .when(pl.col("i") == 7)
        .then(788_918_400_000 - DAY_MS)  # 1994-12-31
        .when(pl.col("i") == 8)
        .then(now_ms + 10 * DAY_MS)  # 10 days in the future
        .otherwise(pl.col("timestamp")),
        rating=pl.when(pl.col("i") == 9).then(7.0).otherwise(pl.col("rating")),
    )
    dups = rows.filter(pl.col("i") >= 100).head(20)  # 20 exact duplicates of later rows = 9.1%
    bad = pl.concat([rows, dups]).drop("i")

    err, out = run_failing(tmp_path, {"events": bad}, ValidationConfig(), SourceFormat.ML_1M)

    f = failed(err)
    msg = str(err)
    assert "validation failed for events" in msg
    assert f["session_key not null"]["unexpected_count"] == 2 and "session_key not null: 2 nulls" in msg
    assert f["item_id not null"]["unexpected_count"] == 1
    assert f["timestamp not null"]["unexpected_count"] == 1
    ts = next(v for k, v in f.items() if k.startswith("timestamp between 1995-01-01 and "))
    assert ts["unexpected_count"] == 2
    assert set(ts["examples"]) == {788_918_400_000 - DAY_MS, now_ms + 10 * DAY_MS}
    assert "2 rows outside, e.g. [" in msg and str(788_918_400_000 - DAY_MS) in msg
    assert f["rating between 1 and 5"]["examples"] == [7.0] and "rating between 1 and 5: 1 rows outside" in msg
    dup = next(v for v in err.failures if v["expectation"] == "duplicate_key_fraction_at_most")
    assert dup["engine"] == "polars" and dup["unexpected_count"] == 20
    assert "20 duplicates" in msg
    # Header counts failures out of all checks of the table.
    n_checks = len(json.loads((out / "validation_manifest.json").read_text())["checks"])
    assert f"({len(err.failures)} of {n_checks} checks)" in msg
    assert len(err.failures) == 6

    # Reports exist after a failure and the exception points at them.
    assert err.report_path == str(out / "validation_result.json")
    assert str(out / "validation_result.json") in msg
    assert json.loads(Path(err.report_path).read_text())["events"]["success"] is False
    assert (out / "data_docs" / "index.html").is_file()
    written = json.loads((out / "validation_manifest.json").read_text())
    assert written["success"] is False
    assert written["duplicates"]["events"]["count"] == 20 and not written["duplicates"]["events"]["dropped"]


def test_ml_latest_half_star_domain_and_min_rows(tmp_path):
    df = clean_events(10).with_columns(rating=pl.Series([0.5, 0.25, 5.0, 4.5] + [3.0] * 6))
    cfg = ValidationConfig(data_docs=False)

    err, out = run_failing(tmp_path, {"events": df}, cfg, SourceFormat.ML_LATEST)

    f = failed(err)
    assert set(f) == {"rating between 0.5 and 5", "at least 100 rows"}
    assert f["rating between 0.5 and 5"]["examples"] == [0.25]
    assert "at least 100 rows: got 10" in str(err)
    assert not (out / "data_docs").exists()
    assert json.loads((out / "validation_manifest.json").read_text())["reports"]["data_docs_index"] is None


def test_wrong_and_missing_columns(tmp_path):
    df = pl.DataFrame(
        {
            "session_key": [1.5] * 150,
            "timestamp": pl.Series([T0] * 150).cast(pl.Datetime("ms")),
            "rating": pl.Series([3] * 150, dtype=pl.Int64),
        }
    )
    err, _ = run_failing(tmp_path, {"events": df}, ValidationConfig(data_docs=False), SourceFormat.ML_1M)

    f = failed(err)
    assert "missing ['item_id']" in f["columns session_key, item_id, timestamp present"]["detail"]
    assert f["session_key type Int64 or String"]["observed"] == "Float64"
    assert f["timestamp type Int64"]["observed"] == "Datetime(time_unit='ms', time_zone=None)"
    assert f["rating type Float64"]["observed"] == "Int64"
    assert "session_key type Int64 or String: got Float64" in str(err)
    # Range checks on wrongly typed columns are skipped rather than erroring inside GX.
    assert not any(x["description"].startswith(("timestamp between", "rating between")) for x in err.failures)


def test_string_ids_pass_and_custom_rating_domain(tmp_path):
    df = clean_events(120, string_ids=True).with_columns(rating=pl.lit(10.0))
    manifest, ingest_dir = ingest(tmp_path, {"events": df})
    cfg = ValidationConfig(rating_min=0, rating_max=10, data_docs=False)
    result = validate_events(manifest, ingest_dir, cfg, SourceFormat.CSV, tmp_path / "out")
    assert result["success"]
    assert result["window"]["rating_max"] == 10


def test_drop_duplicates_writes_deduplicated_table(tmp_path):
    df = clean_events(200)
    # Rows 10 and 50 repeat later; the repeats carry a different rating so "keep first" is visible.
    extra = df[[10, 50]].with_columns(rating=pl.lit(4.0))  # originals have 1.0
    events = pl.concat([df[:100], extra, df[100:]])
    manifest, ingest_dir = ingest(tmp_path, {"events": events})
    out = tmp_path / "out"

    result = validate_events(
        manifest, ingest_dir, ValidationConfig(drop_duplicates=True, data_docs=False), SourceFormat.ML_1M, out
    )

    assert result["duplicates"]["events"] == {"count": 2, "fraction": 2 / 202, "dropped": True}
    table = result["tables"]["events"]
    assert table["file"] == "events.dedup.parquet" and table["rows"] == 200
    dedup = pl.read_parquet(out / table["file"])
    assert dedup.equals(df)  # first occurrences kept, original order preserved
    assert table["sha256"] == sha256_file(out / table["file"])
    assert not list(out.glob(".*.tmp"))


def test_pre_split_tables_are_each_validated(tmp_path):
    test = clean_events(150).with_columns(item_id=pl.lit(None, dtype=pl.Int64))
    err, out = run_failing(
        tmp_path,
        {"events": clean_events(), "test": test, "valid": clean_events(120)},
        ValidationConfig(data_docs=False),
        SourceFormat.GRU4REC_TSV,
    )
    assert {f["table"] for f in err.failures} == {"test"}
    assert str(err).startswith("validation failed for test (1 of ")
    assert "item_id not null: 150 nulls" in str(err)
    written = json.loads((out / "validation_manifest.json").read_text())
    assert set(written["tables"]) == {"events", "test", "valid"}
    assert set(json.loads((out / "validation_result.json").read_text())) == {"events", "test", "valid"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
        min_size=1,
        max_size=60,
    )
)
def test_duplicate_mask_matches_first_occurrence(rows):
    df = pl.DataFrame(rows, schema=list(KEY_COLUMNS), orient="row")
    seen, expected = set(), []
    for row in rows:
        expected.append(row in seen)
        seen.add(row)
    assert _duplicate_mask(df).to_list() == expected


def test_module_import_is_light():
    code = (
        "import sys, tasks.validation; "
        "bad = [m for m in ('great_expectations', 'prefect') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_ended_rating_domain_is_described_as_such(tmp_path):
    df = clean_events(120, string_ids=True).with_columns(rating=pl.lit(-1.0))
    err, _ = run_failing(tmp_path, {"events": df}, ValidationConfig(rating_min=0, data_docs=False), SourceFormat.CSV)
    assert "rating between 0 and inf: 120 rows outside" in str(err)
