"""Integration: the `prepare_data` flow and the `prepare` CLI on real MovieLens-100K and synthetic data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.config import PrepareConfig
from gru4rec.data.config import IngestConfig
from gru4rec.data.split_dir import load_split
from gru4rec.errors import DataValidationError
from tests.conftest import shared_file
from tests.synthetic import synthetic_movielens

pytestmark = pytest.mark.slow


def test_prepare_data_flow_on_ml100k(prefect_harness, tmp_path):
    from flows.prepare import prepare_data

    src = shared_file("ml-100k/u.data.gz")
    cfg = PrepareConfig(ingest=IngestConfig(source=str(src)), out_dir=str(tmp_path / "split"))
    result = prepare_data(cfg)

    split = load_split(result["split_dir"])
    assert split.train.height > 0 and split.valid.height > 0 and split.test.height > 0
    # MovieLens defaults: the tutorial protocol.
    resolved = split.manifest["config"]
    assert resolved["session"] == "user" and resolved["split"] == "session-end"
    assert resolved["test_days"] == 100
    # Lineage reaches the split manifest.
    assert split.manifest["lineage"]["format"] == "ml-100k"
    names = [r["split"] if "split" in r else r.get("name") for r in result["table"]]
    assert {"train", "valid", "test"} <= set(names)
    # Every train item is indexed; test items are a subset of the index.
    assert set(split.test["item_idx"].to_list()) <= set(split.items["item_idx"].to_list())


def _tree(directory):
    """Every file under directory (except failed attempts) → its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".attempts" not in p.parts
    }


def test_failed_prepare_leaves_every_file_of_the_last_good_run(prefect_harness, tmp_path):
    from flows.prepare import prepare_data
    from gru4rec.errors import SplitError

    src = synthetic_movielens(tmp_path / "good" / "u.data")
    out = tmp_path / "split"
    prepare_data(PrepareConfig(ingest=IngestConfig(source=str(src)), out_dir=str(out)))
    before = _tree(out)
    assert "ingest/events.parquet" in before and "validation/validation_manifest.json" in before
    assert not any((out / ".attempts").iterdir()), "a successful attempt cleans up after itself"

    # Same data with a few timestamps in 1970: the suite fails and nothing downstream runs.
    lines = src.read_text().splitlines()
    for i in (3, 10, 20):
        u, it, r, _ = lines[i].split("\t")
        lines[i] = f"{u}\t{it}\t{r}\t100"
    bad = tmp_path / "bad" / "u.data"
    bad.parent.mkdir()
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as info:
        prepare_data(PrepareConfig(ingest=IngestConfig(source=str(bad)), out_dir=str(out)))
    assert "timestamp" in str(info.value) and f"Nothing in {out} was changed" in str(info.value)
    assert _tree(out) == before, "every file of the last good run must stay byte-identical"
    (attempt,) = (out / ".attempts").iterdir()
    assert str(attempt) in str(info.value) and (attempt / "validation" / "validation_result.json").is_file()

    # A split that cannot be made (a test window with no sessions) leaves it untouched too.
    with pytest.raises(SplitError):
        prepare_data(PrepareConfig(ingest=IngestConfig(source=str(src)), split={"test_days": 0.0001}, out_dir=str(out)))
    assert _tree(out) == before

    # A later good run replaces the files and leaves the failed attempts alone.
    other = synthetic_movielens(tmp_path / "other" / "u.data", seed=3)
    prepare_data(PrepareConfig(ingest=IngestConfig(source=str(other)), out_dir=str(out)))
    after = _tree(out)
    assert after["train.parquet"] != before["train.parquet"]
    stable = lambda tree: {name for name in tree if "data_docs" not in name}  # noqa: E731  (Data Docs names hold times)
    assert stable(after) == stable(before)
    assert load_split(out).manifest["lineage"]["sources"]["events"]["path"] == str(other)
    assert len(list((out / ".attempts").iterdir())) == 2


def test_prepare_cli_gap_global_cut(prefect_harness, tmp_path):
    from flows.cli import app

    src = shared_file("ml-100k/u.data.gz")
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        ["prepare", "--source", str(src), "--session", "gap", "--split", "global-cut", "--days", "30",
         "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "test" in res.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["split"] == "global-cut"
    for name in ("train.parquet", "valid.parquet", "test.parquet", "items.parquet", "manifest.json"):
        assert (out / name).exists()


def test_prepare_cli_reports_bad_input_without_traceback(prefect_harness, tmp_path):
    from flows.cli import app

    empty = tmp_path / "ratings.dat"
    empty.write_text("")
    res = CliRunner().invoke(app, ["prepare", "--source", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "ratings.dat" in res.output
