"""Tests of sessionizing and splitting (gru4rec.data.splitter) and of reading the result (load_split)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gru4rec.data.config import SourceFormat, SplitConfig
from gru4rec.data.split_dir import SPLIT_FILES, load_split
from gru4rec.data.splitter import make_split, split_stats_table
from gru4rec.errors import DataFormatError, SplitError

DAY = 86_400_000
MIN = 60_000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = (*SPLIT_FILES, "manifest.json")


def write_events(path: Path, keys, items, times) -> Path:
    pl.DataFrame(
        {"session_key": keys, "item_id": items, "timestamp": times},
        schema={"session_key": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64},
    ).write_parquet(path)
    return path


def read_all(d: Path) -> dict[str, pl.DataFrame]:
    return {n: pl.read_parquet(d / f"{n}.parquet") for n in ("train", "valid", "test", "items")}


# ------------------------------------------------------------------------------------------------
# generated event tables: few keys, few items, coarse times with many ties

events_st = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 4), st.integers(0, 60)), min_size=1, max_size=120)
PROP = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _cfg(**kw) -> SplitConfig:
    base = dict(min_test_sessions=1, min_item_support=1, min_session_length=1)
    base.update(kw)
    return SplitConfig(**base)


def _run(tmp_path: Path, rows, cfg: SplitConfig, scale=30 * MIN, name="out"):
    keys, items, times = zip(*rows, strict=True)
    src = write_events(tmp_path / f"{name}_events.parquet", keys, items, [t * scale for t in times])
    out = tmp_path / name
    try:
        make_split({"events": src}, SourceFormat.CSV, cfg, out)
    except SplitError as e:
        return str(e).split(":")[0][:40]
    return out


# sessions: (key, start slot, [(item, slots since the previous event)]); keys repeat, so user sessions
# span several of them and gap sessions (45 min gap, 30 min slots) split on a 2-slot step
sessions_st = st.lists(
    st.tuples(
        st.integers(0, 8),
        st.integers(0, 60),
        st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 0, 1, 1, 2])), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=25,
)
# anchors (keys unused by generated sessions; items 0/1 get support >= 8, no adjacent repeats, 3 events so
# they survive min_session_length=3): two early train sessions, one in the valid window (slots ~44-46:
# both rules put it there, since the remainder's last event is before the test boundary at slot 48) and one
# at the very end (test)
ANCHORS = [(50, 0, 0), (50, 1, 0), (50, 0, 1), (52, 1, 2), (52, 0, 3), (52, 1, 3), (53, 0, 45), (53, 1, 45),
           (53, 0, 46), (51, 1, 60), (51, 0, 60), (51, 1, 60)]  # fmt: skip


def _rows_of(sessions) -> list[tuple[int, int, int]]:
    rows = []
    for key, start, events in sessions:
        t = start
        for item, step in events:
            t += step
            rows.append((key, item, min(t, 60)))
    return rows


@PROP
@given(
    sessions=sessions_st,
    split=st.sampled_from(["session-end", "global-cut"]),
    session=st.sampled_from(["user", "gap"]),
    repeats=st.booleans(),
    min_len=st.integers(1, 3),
    support=st.integers(1, 3),
)
def test_properties(tmp_path_factory, sessions, split, session, repeats, min_len, support):
    tmp = tmp_path_factory.mktemp("p")
    rows = ANCHORS[:6] + _rows_of(sessions) + ANCHORS[6:]
    cfg = _cfg(
        split=split, session=session, remove_repeats=repeats, min_session_length=min_len,
        min_item_support=support, test_days=0.25, valid_days=0.25, gap_minutes=45,
    )  # fmt: skip
    out = _run(tmp, rows, cfg)
    event("split made" if not isinstance(out, str) else out)
    # the anchors make every generated table splittable (user sessions + global-cut included: the
    # anchors' own keys start inside the windows); SplitError paths are tested separately below
    assert not isinstance(out, str), out
    t = read_all(out)
    stats = json.loads((out / "stats.json").read_text())
    # every input event is in exactly one split or counted as removed
    removed = sum(f["events"] for f in stats["filters"].values())
    assert sum(t[n].height for n in ("train", "valid", "test")) + removed == len(rows)
    removed_s = sum(f["sessions"] for f in stats["filters"].values())
    assert (
        sum(stats["splits"][n]["sessions"] for n in ("train", "valid", "test")) + removed_s
        == stats["input"]["sessions"]
    )
    for n in ("train", "valid", "test"):
        s = t[n]
        assert stats["splits"][n]["events"] == s.height
        lengths = s.group_by("session_id").len()["len"]
        assert s.height == 0 or lengths.min() >= 2, f"{n}: a session shorter than 2 events"
        if s.height:
            # sorted by (session_id, timestamp) and item_idx consistent with items.parquet
            assert s.equals(s.sort(["session_id", "timestamp"], maintain_order=True))
            j = s.join(t["items"], on="item_idx", how="left", suffix="_items")
            assert (j["item_id"] == j["item_id_items"]).all()
    tr, va, te = (set(t[n]["item_id"]) for n in ("train", "valid", "test"))
    assert va <= tr
    assert te <= tr | va
    assert set(t["items"]["item_id"]) == tr | va
    assert t["items"]["item_idx"].to_list() == list(range(t["items"].height))
    # session ids are dense over all splits, disjoint, and ordered by start time
    heads = pl.concat([t[n].group_by("session_id").agg(pl.col("timestamp").min()) for n in ("train", "valid", "test")])
    heads = heads.sort("session_id")
    assert heads["session_id"].to_list() == list(range(heads.height))
    assert heads["timestamp"].is_sorted()
    if split == "global-cut":
        b = stats["boundaries"]
        T = b["test_start"]["ms"]
        assert t["test"].group_by("session_id").agg(pl.col("timestamp").min())["timestamp"].min() >= T
        assert (t["train"]["timestamp"] < T).all() and (t["valid"]["timestamp"] < T).all()
        if "valid_start" in b and t["valid"].height:
            T2 = b["valid_start"]["ms"]
            assert (t["train"]["timestamp"] < T2).all()
            assert t["valid"]["timestamp"].min() >= T2
    later = ("min_session_length", "min_item_support", "unknown_items_valid", "unknown_items_test")
    if repeats and not any(stats["filters"][k]["events"] for k in later):
        # repeats are removed once, before filtering (as in the tutorial); a later filter that drops the
        # event between two equal items can make them adjacent again, so check only when none did
        for n in ("train", "valid", "test"):
            s = t[n]
            same = (s["session_id"] == s["session_id"].shift(1)) & (s["item_id"] == s["item_id"].shift(1))
            assert not same.fill_null(False).any()
    # same input, same config -> same bytes
    out2 = _run(tmp, rows, cfg, name="again")
    for f in SPLIT_FILES:
        assert (out / f).read_bytes() == (out2 / f).read_bytes(), f
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (out, out2))
    assert m1["fingerprint"] == m2["fingerprint"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=events_st,
    split=st.sampled_from(["session-end", "global-cut"]),
    session=st.sampled_from(["user", "gap"]),
    min_len=st.integers(1, 3),
)
def test_split_error_path(tmp_path_factory, rows, split, session, min_len):
    """A split that cannot be made raises SplitError naming the split and a fix, and writes no manifest."""
    tmp = tmp_path_factory.mktemp("e")
    cfg = _cfg(
        split=split, session=session, min_session_length=min_len, test_days=0.25, valid_days=0.25,
        gap_minutes=45, min_test_sessions=1000,
    )  # fmt: skip
    keys, items, times = zip(*rows, strict=True)
    src = write_events(tmp / "e.parquet", keys, items, [t * 30 * MIN for t in times])
    with pytest.raises(SplitError) as e:
        make_split({"events": src}, SourceFormat.CSV, cfg, tmp / "o")
    msg = str(e.value)
    assert ("split has" in msg and "Fix:" in msg) or "no events left after filtering" in msg
    assert not (tmp / "o" / "manifest.json").exists()


def _reference_sessions(rows, gap_ms):
    """Slow reference: list of (key#n, [row indices]) from a plain loop."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][2], i))
    out, prev, n = {}, None, 0
    for i in order:
        k, _, t = rows[i]
        if prev is None or prev[0] != k or t - prev[2] > gap_ms:
            n = 0 if prev is None or prev[0] != k else n + 1
            out[f"{k}#{n}"] = []
        out[f"{k}#{n}"].append(i)
        prev = rows[i]
    return out


@PROP
@given(rows=events_st, gap=st.integers(1, 6))
def test_gap_sessions_match_reference_loop(tmp_path_factory, rows, gap):
    tmp = tmp_path_factory.mktemp("g")
    rows = [(k, i, t * MIN) for k, i, t in rows] + [(99, 0, 0), (99, 0, 0)]  # keeps train non-empty
    # 'given' mode: no filtering or cutting, so all sessions with >= 2 events survive untouched
    src = write_events(tmp / "e.parquet", *zip(*rows, strict=True))
    test = write_events(tmp / "t.parquet", [1, 1], [0, 0], [0, 1])
    make_split({"events": src, "test": test}, SourceFormat.CSV, _cfg(session="gap", gap_minutes=gap), tmp / "o")
    train = pl.read_parquet(tmp / "o" / "train.parquet")
    ref = {k: [rows[i][1] for i in v] for k, v in _reference_sessions(rows, gap * MIN).items() if len(v) >= 2}
    got = {k: g["item_id"].to_list() for (k,), g in train.group_by("session_key", maintain_order=True)}
    assert got == ref


# ------------------------------------------------------------------------------------------------
# examples


def movielens_like(tmp_path: Path) -> Path:
    """Users 1..6; user 5/6 rate late (test), user 4 rates in the valid window. Ties in time on purpose."""
    rows = []
    for u in (1, 2, 3):  # early users, each with the same items at tied times
        rows += [(u, 10, 0), (u, 11, 0), (u, 12, DAY), (u, 13, DAY)]
    rows += [(4, 10, 150 * DAY), (4, 11, 150 * DAY), (4, 12, 151 * DAY)]  # valid (ends in [100d before final2, ...])
    rows += [(5, 11, 280 * DAY), (5, 12, 281 * DAY), (5, 99, 282 * DAY)]  # 99 unknown -> dropped from test
    rows += [(6, 13, 10 * DAY), (6, 10, 300 * DAY)]  # starts early, ends late: session-end puts it in test
    keys, items, times = zip(*rows, strict=True)
    return write_events(tmp_path / "ml.parquet", keys, items, times)


def test_session_end_movielens_like(tmp_path):
    src = movielens_like(tmp_path)
    cfg = SplitConfig(min_item_support=1, min_test_sessions=1)
    make_split({"events": src}, SourceFormat.ML_1M, cfg, tmp_path / "o")
    t = read_all(tmp_path / "o")
    assert sorted(set(t["train"]["session_key"])) == ["1", "2", "3"]
    assert sorted(set(t["valid"]["session_key"])) == ["4"]
    assert sorted(set(t["test"]["session_key"])) == ["5", "6"]
    assert t["test"].filter(pl.col("session_key") == "5")["item_id"].to_list() == [11, 12]
    # ties keep the original row order
    assert t["train"].filter(pl.col("session_key") == "1")["item_id"].to_list() == [10, 11, 12, 13]
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["filters"]["unknown_items_test"]["events"] == 1
    assert stats["config"]["split"] == "session-end" and stats["config"]["session"] == "user"
    rows = split_stats_table(stats)
    assert [r["name"] for r in rows] == ["train", "valid", "test"] and rows[0]["sessions"] == 3
    # session ids numbered by start time: user 6 started (day 10) before user 5 and 4
    sid = {n: dict(zip(t[n]["session_key"], t[n]["session_id"], strict=True)) for n in ("valid", "test")}
    assert sid["test"]["6"] < sid["valid"]["4"] < sid["test"]["5"]


def test_user_sessions_global_cut_error_mentions_gap(tmp_path):
    src = movielens_like(tmp_path)
    cfg = SplitConfig(split="global-cut", min_item_support=1, min_test_sessions=2)
    with pytest.raises(SplitError) as e:
        make_split({"events": src}, SourceFormat.ML_1M, cfg, tmp_path / "o")
    msg = str(e.value)
    assert "test" in msg and "--session gap" in msg and "session(s)" in msg
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_given_mode(tmp_path):
    train = write_events(tmp_path / "tr.parquet", [1, 1, 1, 2, 2], [1, 2, 3, 2, 3], [0, 1, 2, 3, 4])
    test = write_events(tmp_path / "te.parquet", [7, 7, 7, 8, 8], [3, 9, 2, 9, 1], [9, 10, 11, 12, 13])
    make_split(
        {"events": train, "test": test}, SourceFormat.GRU4REC_TSV, SplitConfig(min_test_sessions=1), tmp_path / "o"
    )
    t = read_all(tmp_path / "o")
    assert t["valid"].height == 0
    assert t["train"]["item_id"].to_list() == [1, 2, 3, 2, 3]
    assert t["test"]["item_id"].to_list() == [3, 2]  # item 9 unknown; session 8 left with 1 event
    assert t["items"]["item_id"].to_list() == [1, 2, 3] and t["items"]["count"].to_list() == [1, 2, 2]
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["filters"]["unknown_items_test"]["events"] == 2
    assert stats["filters"]["short_after_split"]["sessions"] == 1
    assert stats["config"]["split"] == "given"


def test_load_split_verifies_and_refuses_corruption(tmp_path):
    src = movielens_like(tmp_path)
    lineage = {"source": "synthetic"}
    m = make_split({"events": src}, SourceFormat.ML_1M, SplitConfig(min_item_support=1, min_test_sessions=1),
                   tmp_path / "o", lineage=lineage)  # fmt: skip
    s = load_split(tmp_path / "o")
    assert s.fingerprint() == m["fingerprint"] and s.manifest["lineage"] == lineage
    assert set(s.manifest["files"]) == set(SPLIT_FILES)
    assert s.train.schema == pl.Schema(
        {"session_id": pl.Int64, "session_key": pl.String, "item_idx": pl.Int32, "item_id": pl.Int64,
         "timestamp": pl.Int64}
    )  # fmt: skip
    assert s.items.columns[:3] == ["item_idx", "item_id", "count"]
    p = tmp_path / "o" / "test.parquet"
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataFormatError, match="manifest hash"):
        load_split(tmp_path / "o")
    (tmp_path / "o" / "manifest.json").unlink()
    with pytest.raises(DataFormatError, match="manifest.json is missing"):
        load_split(tmp_path / "o")


def test_string_keys_and_missing_column(tmp_path):
    df = pl.DataFrame({"session_key": ["a", "a", "b", "b", "c", "c"], "item_id": ["x", "y", "x", "y", "x", "y"],
                       "timestamp": [0, 1, 2 * DAY, 2 * DAY + 1, 5 * DAY, 5 * DAY + 1]})  # fmt: skip
    df.write_parquet(tmp_path / "e.parquet")
    cfg = SplitConfig(min_item_support=1, min_test_sessions=1, test_days=1, valid_days=1)
    make_split({"events": tmp_path / "e.parquet"}, SourceFormat.DIGINETICA, cfg, tmp_path / "o")
    t = read_all(tmp_path / "o")
    assert [t[n]["session_key"].unique().to_list() for n in ("train", "valid", "test")] == [["a"], ["b"], ["c"]]
    df.drop("item_id").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match="item_id"):
        make_split({"events": tmp_path / "bad.parquet"}, SourceFormat.DIGINETICA, cfg, tmp_path / "o2")


@pytest.mark.slow
def test_ml100k_session_end(tmp_path):
    path = DATA / "ml-100k" / "u.data.gz"
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data next to the repo)")
    raw = pl.read_csv(path, separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
    raw.select(
        pl.col("u").cast(pl.Int64).alias("session_key"), pl.col("i").cast(pl.Int64).alias("item_id"),
        (pl.col("t").cast(pl.Int64) * 1000).alias("timestamp"),
    ).write_parquet(tmp_path / "e.parquet")  # fmt: skip
    m = make_split({"events": tmp_path / "e.parquet"}, SourceFormat.ML_100K, SplitConfig(), tmp_path / "o")
    assert all(r["sessions"] > 0 for r in m["stats"])
    load_split(tmp_path / "o")
