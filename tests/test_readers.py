"""Readers: every format (plain/.gz/.zip), detection, encodings and structural errors."""

from __future__ import annotations

import gzip
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gru4rec.data.config import ColumnMapping, SourceFormat
from gru4rec.data.readers import detect_format, read_events
from gru4rec.errors import DataFormatError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ML1M = b"1::1193::5::978300760\n1::661::3::978302109\n2::914::4::978301968\n"
ML100K = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
MLLATEST = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n2,6,4.5,964982224\n"
YOO = (
    b"1,2014-04-07T10:51:09.277Z,214536502,0\n"
    b"1,2014-04-07T10:54:09.868Z,214536500,S\n"
    b"2,2014-04-07T13:56:37.614Z,214662742,12\n"
)
TSV = b"SessionId\tItemId\tTime\n3\t214716935\t1396437466.94\n3\t214832672\t1396438212.318\n4\t7\t1396438212\n"
DIGI = b"session_id;user_id;item_id;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n1;NA;31331;1031018;2016-05-09\n48;2;24764;8863;2016-04-09\n"
DIGI_CAMEL = DIGI.replace(b"session_id;user_id;item_id", b"sessionId;userId;itemId")

CASES = {
    SourceFormat.ML_1M: ("ratings.dat", ML1M, [1, 1, 2], [1193, 661, 914], [978300760000, 978302109000, 978301968000]),
    SourceFormat.ML_100K: (
        "u.data",
        ML100K,
        [196, 186, 22],
        [242, 302, 377],
        [881250949000, 891717742000, 878887116000],
    ),
    SourceFormat.ML_LATEST: ("ratings.csv", MLLATEST, [1, 1, 2], [1, 3, 6], [964982703000, 964981247000, 964982224000]),
    SourceFormat.YOOCHOOSE: (
        "yoochoose-clicks.dat",
        YOO,
        [1, 1, 2],
        [214536502, 214536500, 214662742],
        [1396867869277, 1396868049868, 1396878997614],
    ),
    SourceFormat.GRU4REC_TSV: (
        "train.txt",
        TSV,
        [3, 3, 4],
        [214716935, 214832672, 7],
        [1396437466940, 1396438212318, 1396438212000],
    ),
    SourceFormat.DIGINETICA: (
        "train-item-views.csv",
        DIGI,
        [1, 1, 48],
        [81766, 31331, 24764],
        [1462752000000 + 526309, 1462752000000 + 1031018, 1460160000000 + 8863],
    ),
}


def _write(tmp_path: Path, name: str, data: bytes, packing: str) -> Path:
    if packing == "plain":
        p = tmp_path / name
        p.write_bytes(data)
    elif packing == "gz":
        p = tmp_path / (name + ".gz")
        p.write_bytes(gzip.compress(data))
    elif packing == "gz-noext":  # compressed but without the .gz extension: magic bytes decide
        p = tmp_path / name
        p.write_bytes(gzip.compress(data))
    else:
        p = tmp_path / "archive.zip"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("README", "not the data")
            zf.writestr(f"sub/{name}", data)
            if name not in ("ratings.dat", "u.data", "ratings.csv"):
                p = tmp_path / "single.zip"
                with zipfile.ZipFile(p, "w") as z2:
                    z2.writestr(f"sub/{name}", data)
    return p


@pytest.mark.parametrize("packing", ["plain", "gz", "gz-noext", "zip"])
@pytest.mark.parametrize("fmt", list(CASES))
def test_read_every_format(tmp_path, fmt, packing):
    name, data, sess, items, times = CASES[fmt]
    p = _write(tmp_path, name, data, packing)
    assert detect_format(p) == fmt
    df, info = read_events(p)
    assert info["format"] == fmt.value and info["reader"] == fmt.value and info["rows"] == 3
    assert df["session_key"].to_list() == sess
    assert df["item_id"].to_list() == items
    assert df["timestamp"].to_list() == times
    expected_cols = ["session_key", "item_id", "timestamp"]
    if fmt in (SourceFormat.ML_1M, SourceFormat.ML_100K, SourceFormat.ML_LATEST):
        expected_cols.append("rating")
        assert df["rating"].dtype == pl.Float64
    assert df.columns == expected_cols
    assert df["timestamp"].dtype == pl.Int64 and df["session_key"].dtype == pl.Int64


def test_ml_latest_half_star_ratings(tmp_path):
    p = _write(tmp_path, "ratings.csv", MLLATEST, "plain")
    assert read_events(p)[0]["rating"].to_list() == [4.0, 0.5, 4.5]


def test_diginetica_camel_header_and_gru4rec_extra_columns(tmp_path):
    p = _write(tmp_path, "views.csv", DIGI_CAMEL, "plain")
    assert detect_format(p) == SourceFormat.DIGINETICA
    assert read_events(p)[0].height == 3
    extra = b"SessionId\tTimeframe\tItemId\tTime\n1\t5\t10\t1.5\n1\t9\t11\t2.0004\n"
    p = _write(tmp_path, "x.tsv", extra, "plain")
    df, _ = read_events(p)
    assert df["item_id"].to_list() == [10, 11] and df["timestamp"].to_list() == [1500, 2000]


def test_ml1m_zip_like_grouplens(tmp_path):
    p = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
        zf.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
        zf.writestr("ml-1m/ratings.dat", ML1M)
    assert detect_format(p) == SourceFormat.ML_1M
    df, info = read_events(p)
    assert df.height == 3 and info["member"] == "ml-1m/ratings.dat"


def test_crlf_blank_lines_and_bom(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_bytes(b"\xef\xbb\xbf" + MLLATEST.replace(b"\n", b"\r\n") + b"\r\n")
    assert read_events(p, "ml-latest")[0].height == 3
    p = tmp_path / "ratings.dat"
    p.write_bytes(ML1M.replace(b"\n", b"\n\n", 1))
    assert read_events(p)[0]["item_id"].to_list() == [1193, 661, 914]


def test_latin1_bytes_are_decoded(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes("user,item,ts\nJos\xe9,caf\xe9,10\nAna,th\xe9,20\n".encode("latin-1"))
    df, info = read_events(p, "csv", ColumnMapping(session="user", item="item", time="ts"))
    assert df["session_key"].to_list() == ["José", "Ana"]
    assert df["item_id"].to_list() == ["café", "thé"]
    assert df["timestamp"].to_list() == [10_000, 20_000]
    assert info["latin1"] is True
    # latin-1 in an ignored column of a known format (yoochoose Category)
    p = tmp_path / "clicks.dat"
    p.write_bytes(YOO.replace(b",S\n", b",\xe9\n"))
    assert read_events(p, "yoochoose")[0].height == 3


def test_ml1m_colon_inside_field_is_an_error_naming_the_line(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_bytes(ML1M + b"3::12:3::5::978300760\n")
    with pytest.raises(DataFormatError) as e:
        read_events(p)
    msg = str(e.value)
    assert "line 4" in msg and "MovieID" in msg and "'12:3'" in msg and "ratings.dat" in msg
    assert e.value.line == 4 and e.value.column == "MovieID"


def test_ml1m_too_many_fields(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_bytes(ML1M + b"3::12::5::978300760::7\n")
    with pytest.raises(DataFormatError, match=r"5 fields, expected 4.*line 4"):
        read_events(p)


# --- broken inputs ----------------------------------------------------------------------------------


def _err(tmp_path, name, data, fmt=None, columns=None) -> DataFormatError:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DataFormatError) as e:
        read_events(p, fmt, columns)
    return e.value


def test_empty_file(tmp_path):
    e = _err(tmp_path, "ratings.dat", b"")
    assert "empty" in str(e) and "ratings.dat" in str(e)
    e = _err(tmp_path, "ratings.csv", b"userId,movieId,rating,timestamp\n", "ml-latest")
    assert "no events" in str(e)


def test_ml1m_comma_separated(tmp_path):
    e = _err(tmp_path, "ratings.dat", b"1,1193,5,978300760\n1,661,3,978302109\n")
    assert e.line == 1 and "'::'" in str(e) and "wrong separator" in str(e) and "1,1193,5,978300760" in str(e)


def test_tsv_without_tabs(tmp_path):
    e = _err(tmp_path, "train.txt", b"SessionId ItemId Time\n1 2 3.0\n", "gru4rec-tsv")
    assert e.line == 1 and "tab" in str(e) and "SessionId ItemId Time" in str(e)
    e = _err(tmp_path, "u.data", b"196 242 3 881250949\n")
    assert e.line == 1 and "tab" in str(e)


@pytest.mark.parametrize(
    "fmt,name,data,line",
    [
        ("ml-1m", "ratings.dat", ML1M + b"3::12::5", 4),
        ("ml-100k", "u.data", ML100K + b"3\t12\t5", 4),
        ("ml-latest", "ratings.csv", MLLATEST + b"3,12", 5),
        ("yoochoose", "clicks.dat", YOO + b"3,2014-04-07T13:56:37.614Z", 4),
        ("gru4rec-tsv", "t.txt", TSV + b"9\t9", 5),
        ("diginetica", "d.csv", DIGI + b"5;NA;7;100", 5),
    ],
)
def test_truncated_last_line(tmp_path, fmt, name, data, line):
    e = _err(tmp_path, name, data, fmt)
    assert e.line == line and "truncated" in str(e) and name in str(e)


@pytest.mark.parametrize(
    "fmt,name,data,line,column,value",
    [
        ("ml-1m", "ratings.dat", ML1M.replace(b"2::914", b"x2::914"), 3, "UserID", "x2"),
        ("ml-100k", "u.data", ML100K.replace(b"\t302\t", b"\t30a\t"), 2, "item_id", "30a"),
        ("ml-latest", "ratings.csv", MLLATEST.replace(b"4.5", b"good"), 4, "rating", "good"),
        ("yoochoose", "c.dat", YOO.replace(b"214662742", b"P214662742"), 3, "ItemID", "P214662742"),
        (
            "yoochoose",
            "c.dat",
            YOO.replace(b"2014-04-07T10:54", b"2014/04/07 10:54"),
            2,
            "Timestamp",
            "2014/04/07 10:54:09.868Z",
        ),
        ("gru4rec-tsv", "t.txt", TSV.replace(b"1396438212.318", b"yesterday"), 3, "Time", "yesterday"),
        ("gru4rec-tsv", "t.txt", TSV.replace(b"4\t7", b"s4\t7"), 4, "SessionId", "s4"),
        ("diginetica", "d.csv", DIGI.replace(b"2016-04-09", b"2016-13-09"), 4, "eventdate", "2016-13-09"),
    ],
)
def test_non_numeric_and_unparseable(tmp_path, fmt, name, data, line, column, value):
    e = _err(tmp_path, name, data, fmt)
    assert (e.line, e.column, e.value) == (line, column, value)
    msg = str(e)
    assert name in msg and f"line {line}" in msg and repr(value) in msg and column in msg


def test_nul_bytes_and_binary_garbage(tmp_path):
    e = _err(tmp_path, "ratings.dat", ML1M + b"\x00\x00\x00\x00garbage\x00", "ml-1m")
    assert "NUL" in str(e) and e.line == 4
    e = _err(tmp_path, "blob.bin", bytes(range(1, 256)) * 10)
    assert "cannot detect" in str(e) and "--format" in str(e)


def test_corrupt_gzip(tmp_path):
    blob = gzip.compress(ML1M * 100)
    e = _err(tmp_path, "ratings.dat.gz", blob[: len(blob) // 2], "ml-1m")
    assert "gzip" in str(e) and "ratings.dat.gz" in str(e)
    e = _err(tmp_path, "r2.dat.gz", blob[:10] + b"\xff" * 50 + blob[60:], "ml-1m")
    assert "gzip" in str(e)


def test_corrupt_zip(tmp_path):
    e = _err(tmp_path, "ml-1m.zip", b"PK\x03\x04" + b"\x00junk" * 10)
    assert "zip" in str(e)


def test_undetectable_lists_formats(tmp_path):
    e = _err(tmp_path, "events.csv", b"a,b,c\n1,2,3\n")
    msg = str(e)
    for f in SourceFormat:
        assert f.value in msg
    assert "--format" in msg and "mapping" in msg


def test_csv_mapping_missing_columns_lists_existing(tmp_path):
    m = ColumnMapping(session="sid", item="item", time="when")
    e = _err(tmp_path, "ev.csv", b"session,item,ts\n1,2,3\n", "csv", m)
    msg = str(e)
    assert "session='sid'" in msg and "time='when'" in msg and "session, item, ts" in msg


def test_csv_mapping_bad_value(tmp_path):
    m = ColumnMapping(session="s", item="i", time="t", time_unit="iso")
    e = _err(tmp_path, "ev.csv", b"s,i,t\n1,2,2020-01-01T00:00:00Z\n1,3,not a time\n", "csv", m)
    assert (e.line, e.column, e.value) == (3, "t", "not a time")


@pytest.mark.parametrize(
    "unit,values,expected",
    [
        ("s", ["1.5", "2"], [1500, 2000]),
        ("ms", ["1500", "2000"], [1500, 2000]),
        ("us", ["1500000", "2000000"], [1500, 2000]),
        ("ns", ["1500000000", "2000000000"], [1500, 2000]),
        ("iso", ["1970-01-01T00:00:01.500Z", "1970-01-01T00:00:02Z"], [1500, 2000]),
    ],
)
def test_csv_time_units(tmp_path, unit, values, expected):
    p = tmp_path / "ev.csv"
    p.write_text("s;i;t\n" + "".join(f"a;{k};{v}\n" for k, v in enumerate(values)))
    m = ColumnMapping(session="s", item="i", time="t", time_unit=unit, separator=";")
    df, _ = read_events(p, "csv", m)
    assert df["timestamp"].to_list() == expected
    assert df["session_key"].dtype == pl.String and df["item_id"].dtype == pl.Int64


def test_csv_time_format_and_rating(tmp_path):
    p = tmp_path / "ev.csv"
    p.write_text("s,i,t,r\n7,x1,2020-01-02 03:04:05,4.5\n")
    m = ColumnMapping(session="s", item="i", time="t", rating="r", time_unit="format", time_format="%Y-%m-%d %H:%M:%S")
    df, _ = read_events(p, "csv", m)
    assert df.row(0) == (7, "x1", 1577934245000, 4.5)


def test_parquet_with_mapping(tmp_path):
    p = tmp_path / "ev.parquet"
    pl.DataFrame({"sid": ["a", "b"], "iid": [5, 6], "ts": [10, 20]}).write_parquet(p)
    assert detect_format(p) == SourceFormat.PARQUET
    df, _ = read_events(p, columns=ColumnMapping(session="sid", item="iid", time="ts", time_unit="ms"))
    assert df.rows() == [("a", 5, 10), ("b", 6, 20)]
    with pytest.raises(DataFormatError, match="sid, iid, ts"):
        read_events(p, columns=ColumnMapping(session="nope", item="iid", time="ts"))
    with pytest.raises(DataFormatError, match="column mapping"):
        read_events(p)


def test_parquet_datetime_column(tmp_path):
    p = tmp_path / "ev.parquet"
    t = datetime(2020, 1, 1, tzinfo=timezone.utc)
    pl.DataFrame(
        {"s": [1], "i": [2], "t": [t]}, schema={"s": pl.Int64, "i": pl.Int64, "t": pl.Datetime("us", "UTC")}
    ).write_parquet(p)
    df, _ = read_events(p, columns=ColumnMapping(session="s", item="i", time="t"))
    assert df["timestamp"].to_list() == [1577836800000]


# --- property test: csv writer -> reader round trip ------------------------------------------------

rows = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**33),
        st.sampled_from([0.5 * k for k in range(1, 11)]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows, packing=st.sampled_from(["plain", "gz", "zip"]))
def test_roundtrip_ml_latest(tmp_path, rows, packing):
    df = pl.DataFrame(rows, schema=["userId", "movieId", "timestamp", "rating"], orient="row").select(
        "userId", "movieId", "rating", "timestamp"
    )
    p = _write(tmp_path, "ratings.csv", df.write_csv().encode(), packing)
    out, _ = read_events(p)
    assert out["session_key"].to_list() == df["userId"].to_list()
    assert out["item_id"].to_list() == df["movieId"].to_list()
    assert out["timestamp"].to_list() == [t * 1000 for t in df["timestamp"].to_list()]
    assert out["rating"].to_list() == df["rating"].to_list()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters=',"'),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_roundtrip_csv_string_ids(tmp_path, ids):
    df = pl.DataFrame({"s": ids, "i": ids, "t": list(range(len(ids)))})
    p = tmp_path / "ev.csv"
    p.write_bytes(df.write_csv().encode())
    out, _ = read_events(p, "csv", ColumnMapping(session="s", item="i", time="t", time_unit="ms"))
    assert [str(v) for v in out["session_key"].to_list()] == ids
    assert [str(v) for v in out["item_id"].to_list()] == ids
    assert out["timestamp"].to_list() == list(range(len(ids)))


# --- real data -------------------------------------------------------------------------------------

REAL = [
    ("ml-1m-subset-cs100/ratings.dat.gz", SourceFormat.ML_1M, 487_650),
    ("ml-100k/u.data.gz", SourceFormat.ML_100K, 100_000),
    ("ml-latest-small/ratings.csv.gz", SourceFormat.ML_LATEST, 100_836),
    ("rsc15-sample-100k/yoochoose-clicks-100k_train_full.txt.gz", SourceFormat.GRU4REC_TSV, 70_278),
    ("diginetica-sample/sample_train-item-views.csv.gz", SourceFormat.DIGINETICA, 12_391),
]


@pytest.mark.slow
@pytest.mark.parametrize("rel,fmt,n", REAL)
def test_real_files(rel, fmt, n):
    if not SHARED.is_dir():
        pytest.skip(f"real data directory {SHARED} is absent")
    p = SHARED / rel
    assert detect_format(p) == fmt
    df, info = read_events(p)
    assert df.height == n == info["rows"]
    assert df.null_count().sum_horizontal().item() == 0
    assert df["timestamp"].min() > 800_000_000_000  # ms, after 1995
