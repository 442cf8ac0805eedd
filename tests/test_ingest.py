"""Ingest: events parquet + manifest, given split, content key, default source via env var."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from gru4rec.data.config import ColumnMapping, IngestConfig
from gru4rec.data.download import ENV_ML1M_PATH
from gru4rec.data.ingest import MANIFEST_NAME, ingest, source_fingerprint
from gru4rec.errors import DataFormatError
from gru4rec.io import sha256_file

TSV = b"SessionId\tItemId\tTime\n1\t10\t100.5\n1\t11\t101\n2\t10\t102\n"
TEST = b"SessionId\tItemId\tTime\n3\t10\t200\n3\t11\t201\n"
VALID = b"SessionId\tItemId\tTime\n4\t11\t150\n"


def test_ingest_given_split(tmp_path):
    src, test, valid = tmp_path / "train.txt", tmp_path / "test.txt", tmp_path / "valid.txt"
    src.write_bytes(TSV)
    test.write_bytes(TEST)
    valid.write_bytes(VALID)
    out = tmp_path / "out"
    cfg = IngestConfig(source=str(src), test_source=str(test), valid_source=str(valid))
    m = ingest(cfg, out)
    assert m == json.loads((out / MANIFEST_NAME).read_text())
    assert m["format"] == "gru4rec-tsv"
    assert m["config"] == cfg.model_dump(mode="json")
    assert {k: v["rows"] for k, v in m["tables"].items()} == {"events": 3, "test": 2, "valid": 1}
    for role, fname in [
        ("events", "events.parquet"),
        ("test", "test_events.parquet"),
        ("valid", "valid_events.parquet"),
    ]:
        assert m["tables"][role]["file"] == fname
        assert m["tables"][role]["sha256"] == sha256_file(out / fname)
    ev = pl.read_parquet(out / "events.parquet")
    assert ev.columns == ["session_key", "item_id", "timestamp"]
    assert ev["timestamp"].to_list() == [100500, 101000, 102000]
    s = m["sources"]["events"]
    assert s["path"] == str(src.resolve()) and s["sha256"] == sha256_file(src) and s["bytes"] == len(TSV)
    assert s["rows"] == 3 and s["reader"] == "gru4rec-tsv" and s["ingested_at"].endswith("Z")
    assert m["content_key"] == source_fingerprint(cfg)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_content_key_depends_on_content_not_path(tmp_path):
    a, b = tmp_path / "a" / "x.txt", tmp_path / "b" / "y.txt"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(TSV)
    ka = ingest(IngestConfig(source=str(a)), tmp_path / "oa")["content_key"]
    kb = ingest(IngestConfig(source=str(b)), tmp_path / "ob")["content_key"]
    assert ka == kb
    b.write_bytes(TSV + b"2\t11\t103\n")
    assert source_fingerprint(IngestConfig(source=str(b))) != ka
    # same bytes, different reading config -> different key
    c = tmp_path / "c.csv"
    c.write_bytes(b"s,i,t\n1,2,3\n")
    k1 = source_fingerprint(
        IngestConfig(source=str(c), format="csv", columns=ColumnMapping(session="s", item="i", time="t"))
    )
    k2 = source_fingerprint(
        IngestConfig(
            source=str(c), format="csv", columns=ColumnMapping(session="s", item="i", time="t", time_unit="ms")
        )
    )
    assert k1 != k2


def test_default_source_from_env(tmp_path, monkeypatch):
    p = tmp_path / "ratings.dat.gz"
    p.write_bytes(gzip.compress(b"1::1193::5::978300760\n1::661::3::978302109\n"))
    monkeypatch.setenv(ENV_ML1M_PATH, str(p))
    m = ingest(IngestConfig(data_dir=str(tmp_path / "cache")), tmp_path / "out")
    assert m["format"] == "ml-1m" and m["tables"]["events"]["rows"] == 2
    assert pl.read_parquet(tmp_path / "out" / "events.parquet").columns == [
        "session_key",
        "item_id",
        "timestamp",
        "rating",
    ]


def test_bad_source_writes_nothing(tmp_path):
    src = tmp_path / "ratings.dat"
    src.write_bytes(b"1::1193::5::978300760\n1::66")
    with pytest.raises(DataFormatError, match="line 2"):
        ingest(IngestConfig(source=str(src)), tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
