"""Sources that grow: a directory or glob of daily files, a rolling window, per-file caching in the flow."""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.data.config import ColumnMapping, IngestConfig, SplitConfig
from gru4rec.data.ingest import ingest, resolve_sources, source_fingerprint
from gru4rec.data.sources import expand_source
from gru4rec.errors import DataFormatError
from gru4rec.io import sha256_file

COLUMNS = ColumnMapping(session="session", item="item", time="ts", time_unit="s")
LAST_DAY = date(2026, 11, 29)


def daily_dumps(root: Path, days: int, last: date = LAST_DAY, sessions: int = 12, items: int = 20, seed: int = 0):
    """``root/date=YYYY-MM-DD/part-0.parquet`` for ``days`` days ending at ``last``: click sessions
    (item i mostly followed by i+1), ids unique per day. Returns the files, oldest first."""
    files = []
    for d in range(days):
        day = last - timedelta(days=days - 1 - d)
        files.append(write_day(root, day, sessions, items, seed))
    return files


def write_day(root: Path, day: date, sessions: int = 12, items: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng([seed, day.toordinal()])
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())
    rows = {"session": [], "item": [], "ts": []}
    for s in range(sessions):
        item = int(rng.integers(0, items))
        start = midnight + int(rng.integers(0, 20 * 3600))
        for j in range(int(rng.integers(3, 7))):
            item = (item + 1) % items if rng.random() < 0.8 else int(rng.integers(0, items))
            rows["session"].append(day.toordinal() * 1000 + s)
            rows["item"].append(item)
            rows["ts"].append(start + 60 * j)
    path = root / f"date={day.isoformat()}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def _cfg(source, **kw) -> IngestConfig:
    return IngestConfig(source=str(source), format="parquet", columns=COLUMNS, **kw)


# --- expansion ----------------------------------------------------------------------------------


def test_directory_and_glob_expand_to_the_same_sorted_data_files(tmp_path):
    files = daily_dumps(tmp_path / "events", 4)
    noise = [
        "events/_SUCCESS",
        "events/date=2026-11-29/.part-1.parquet.crc",
        "events/date=2026-11-29/part-1.parquet.tmp",
        "events/date=2026-11-29/part-2.parquet.inprogress",
        "events/date=2026-11-29/part-3.parquet~",
        "events/_temporary/0/part-9.parquet",
        "events/.staging/part-9.parquet",
    ]
    for n in noise:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    assert expand_source(str(tmp_path / "events")) == files
    assert expand_source(str(tmp_path / "events" / "date=*" / "part-*.parquet")) == files
    assert expand_source(str(tmp_path / "events" / "date=*")) == files  # a glob matching folders
    assert expand_source(str(tmp_path / "events" / "**" / "*.parquet")) == files
    assert expand_source(str(files[0])) == [files[0]]  # a file is itself


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[._]?[a-z0-9=-]{1,8}(\.csv|\.tmp|\.crc|~)?", fullmatch=True),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    seed=st.integers(0, 1000),
)
def test_expansion_is_sorted_deterministic_and_skips_hidden_and_temporary_files(tmp_path_factory, names, seed):
    root = tmp_path_factory.mktemp("src")
    order = names[:]
    random.Random(seed).shuffle(order)
    for n in order:  # created in any order
        (root / n).write_text("x")
    wanted = sorted(
        (root / n for n in names if not n.startswith((".", "_")) and not n.endswith((".tmp", ".crc", "~"))), key=str
    )
    if not wanted:
        with pytest.raises(DataFormatError, match="no data files"):
            expand_source(str(root))
        return
    assert expand_source(str(root)) == wanted
    assert expand_source(str(root)) == expand_source(str(root / "*"))


def test_empty_missing_and_unmatched_sources_are_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"no data files in directory .*empty") as e:
        expand_source(str(tmp_path / "empty"))
    assert "\n" not in str(e.value)
    with pytest.raises(DataFormatError, match=r"no data files in pattern .*\*\.parquet"):
        expand_source(str(tmp_path / "empty" / "*.parquet"))
    with pytest.raises(DataFormatError, match=r"test_source .*nope not found"):
        expand_source(str(tmp_path / "nope"), "test_source")


def test_a_file_with_glob_characters_in_its_name_is_one_file(tmp_path):
    f = tmp_path / "dump[1].csv"
    f.write_text("session,item,ts\n1,2,1764460800\n")
    (tmp_path / "dump1.csv").write_text("other")
    assert expand_source(str(f)) == [f]
    assert resolve_sources(IngestConfig(source=str(f)))["events"] == [f]


def test_cli_accepts_directories_and_globs_and_refuses_missing_ones_before_prefect(tmp_path, capsys):
    import typer

    from flows.cli import _check_sources

    daily_dumps(tmp_path / "ev", 2)
    _check_sources(_cfg(tmp_path / "ev"))
    _check_sources(_cfg(tmp_path / "ev" / "date=*" / "part-*.parquet"))
    for missing, needle in [
        (tmp_path / "nope", "source " + str(tmp_path / "nope") + " not found"),
        (tmp_path / "ev" / "date=1999-*" / "*.parquet", "no data files in pattern"),
    ]:
        with pytest.raises(typer.Exit):
            _check_sources(_cfg(missing))
        err = capsys.readouterr().err
        assert needle in " ".join(err.split()) and err.startswith("error:"), err


def test_mixed_formats_are_refused(tmp_path):
    (day,) = daily_dumps(tmp_path / "ev", 1)
    csv = tmp_path / "ev" / "date=2026-11-30" / "part-0.csv"
    csv.parent.mkdir()
    csv.write_text("session,item,ts\n1,2,1764460800\n")
    for fmt in (None, "parquet", "csv"):
        with pytest.raises(DataFormatError, match="mixed formats in one source") as e:
            source_fingerprint(IngestConfig(source=str(tmp_path / "ev"), format=fmt, columns=COLUMNS))
        assert f"{day} is parquet, {csv} is a text file" in str(e.value) and "\n" not in str(e.value)
    # two detectable text formats
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.dat").write_text("1::10::5::978300760\n")
    (mixed / "b.tsv").write_text("SessionId\tItemId\tTime\n1\t10\t100\n")
    with pytest.raises(DataFormatError, match=r"a.dat is ml-1m, .*b.tsv is gru4rec-tsv"):
        source_fingerprint(IngestConfig(source=str(mixed)))
    # one format, but not the one named
    with pytest.raises(DataFormatError, match="format is csv but its files are parquet"):
        source_fingerprint(IngestConfig(source=str(tmp_path / "ev" / "*" / "*.parquet"), format="csv", columns=COLUMNS))


# --- ingest of a directory: lineage, window, content key ------------------------------------------


def test_directory_ingest_lists_every_file_and_equals_the_files_read_one_by_one(tmp_path):
    files = daily_dumps(tmp_path / "ev", 5)
    m = ingest(_cfg(tmp_path / "ev"), tmp_path / "out")
    lineage = m["sources"]["events"]
    assert lineage["path"] == str((tmp_path / "ev").resolve())
    assert [f["path"] for f in lineage["files"]] == [str(f.resolve()) for f in files]
    for entry, f in zip(lineage["files"], files, strict=True):
        rows = pl.read_parquet(f).height
        assert entry["sha256"] == sha256_file(f) and entry["bytes"] == f.stat().st_size
        assert entry["rows"] == entry["rows_used"] == rows
    events = pl.read_parquet(tmp_path / "out" / "events.parquet")
    one_by_one = pl.concat(
        [
            ingest(_cfg(f), tmp_path / f"o{i}") and pl.read_parquet(tmp_path / f"o{i}" / "events.parquet")
            for i, f in enumerate(files)
        ]
    )
    assert events.equals(one_by_one) and lineage["rows"] == events.height == m["tables"]["events"]["rows"]
    # the glob gives the same table and the same content key
    g = ingest(_cfg(tmp_path / "ev" / "date=*" / "*.parquet"), tmp_path / "out-glob")
    assert g["content_key"] == m["content_key"] == source_fingerprint(_cfg(tmp_path / "ev"))
    assert g["sources"]["events"]["path"].endswith("date=*/*.parquet")
    # a new day is a new key
    write_day(tmp_path / "ev", LAST_DAY + timedelta(days=1))
    assert source_fingerprint(_cfg(tmp_path / "ev")) != m["content_key"]


def test_rolling_window_keeps_the_last_days_and_skips_older_files(tmp_path):
    daily_dumps(tmp_path / "ev", 10)
    full = ingest(_cfg(tmp_path / "ev"), tmp_path / "all")
    m = ingest(_cfg(tmp_path / "ev", window_days=3), tmp_path / "w3")
    events = pl.read_parquet(tmp_path / "w3" / "events.parquet")
    newest = pl.read_parquet(tmp_path / "all" / "events.parquet")["timestamp"].max()
    assert events["timestamp"].min() >= newest - 3 * 86_400_000
    window = m["sources"]["events"]["window"]
    assert window["days"] == 3 and window["end_ms"] == newest and window["start_ms"] == newest - 3 * 86_400_000
    files = m["sources"]["events"]["files"]
    assert len(files) == 10, "lineage lists every file, used or not"
    used = [f["rows_used"] for f in files]
    assert used[:6] == [0] * 6 and all(u > 0 for u in used[-3:]), used
    assert sum(used) == events.height and window["rows_dropped"] == full["tables"]["events"]["rows"] - events.height
    assert m["content_key"] != full["content_key"]
    # the window applies to a single-file source too
    one = tmp_path / "all" / "events.parquet"
    single = ingest(
        IngestConfig(
            source=str(one),
            format="parquet",
            window_days=3,
            columns=ColumnMapping(session="session_key", item="item_id", time="timestamp", time_unit="ms"),
        ),
        tmp_path / "single",
    )
    assert single["tables"]["events"]["rows"] == events.height
    assert single["sources"]["events"]["window"]["rows_dropped"] == window["rows_dropped"]


def test_ids_that_are_numbers_in_one_file_and_text_in_another_become_text(tmp_path):
    a, b = tmp_path / "d" / "a.csv", tmp_path / "d" / "b.csv"
    a.parent.mkdir()
    a.write_text("session,item,ts\n1,10,1764460800\n1,11,1764460860\n")
    b.write_text("session,item,ts\ns2,10,1764547200\ns2,x7,1764547260\n")
    m = ingest(IngestConfig(source=str(a.parent), format="csv", columns=COLUMNS), tmp_path / "o")
    ev = pl.read_parquet(tmp_path / "o" / "events.parquet")
    assert ev.schema["session_key"] == pl.String and ev["session_key"].to_list() == ["1", "1", "s2", "s2"]
    assert ev["item_id"].to_list() == ["10", "11", "10", "x7"] and m["sources"]["events"]["n_files"] == 2


def test_directory_sources_resolve_per_role(tmp_path):
    daily_dumps(tmp_path / "ev", 2)
    resolved = resolve_sources(_cfg(tmp_path / "ev"))
    assert list(resolved) == ["events"] and len(resolved["events"]) == 2


# --- the prepare_data flow: a nightly run reads only the new day ---------------------------------


def _task_states(flow_run_id, expected: int) -> dict[str, str]:
    """ingest-file task run name -> its final state's name, for one flow run (``expected`` of them)."""
    import time

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return [r for r in runs if r.name.startswith("ingest-file")]

    for _ in range(100):  # task runs and their states reach the server's database a moment after the flow ends
        runs = anyio.run(read)
        if len(runs) >= expected and all(r.state is not None and r.state.is_final() for r in runs):
            break
        time.sleep(0.1)
    return {r.name: r.state.name for r in runs}


@pytest.mark.slow
def test_nightly_prepare_reads_only_the_new_day(prefect_harness, tmp_path):
    from flows.config import PrepareConfig
    from flows.prepare import prepare_data

    daily_dumps(tmp_path / "events", 6)
    split = SplitConfig(
        session="source", split="global-cut", test_days=1, valid_days=1, min_item_support=1, min_test_sessions=2
    )
    cfg = PrepareConfig(ingest=_cfg(tmp_path / "events"), split=split, out_dir=str(tmp_path / "prep"))

    def run():
        state = prepare_data(cfg, return_state=True)
        result = state.result()
        manifest = json.loads(Path(result["ingest_manifest"]).read_text())
        files = manifest["sources"]["events"]["files"]
        n = len(list((tmp_path / "events").rglob("*.parquet")))
        return _task_states(state.state_details.flow_run_id, n), [f["cache"] for f in files], result

    states, cache, first = run()
    assert len(states) == 6 and set(states.values()) == {"Completed"}
    assert cache == ["read"] * 6

    new_day = write_day(tmp_path / "events", LAST_DAY + timedelta(days=1))  # the nightly dump arrives
    states, cache, second = run()
    assert states.pop("ingest-file date=2026-11-30/part-0.parquet") == "Completed"
    assert len(states) == 6 and set(states.values()) == {"Cached"}, states
    assert cache == ["cached"] * 6 + ["read"]
    lineage = json.loads(Path(second["manifest"]).read_text())["lineage"]["sources"]["events"]
    assert [Path(f["path"]).parent.name for f in lineage["files"]][-1] == "date=2026-11-30"
    assert lineage["files"][-1]["sha256"] == sha256_file(new_day) and len(lineage["files"]) == 7
    assert second["stats"] != first["stats"]

    # A cached part that was damaged on disk is read again, the others stay cached.
    parts = sorted((tmp_path / "prep" / ".cache" / "ingest-files").glob("*.parquet"))
    assert len(parts) == 7
    first_part = next(
        p
        for p in parts
        if json.loads(p.with_suffix(".json").read_text())["source"]["first_path"].endswith(
            "date=2026-11-24/part-0.parquet"
        )
    )
    first_part.write_bytes(first_part.read_bytes()[:-10])
    _, cache, _ = run()
    assert cache == ["read"] + ["cached"] * 6

    # Nothing new: no file is read.
    states, _, _ = run()
    assert len(states) == 7 and set(states.values()) == {"Cached"}, states
