"""Inference: batch recommend, id mapping, fallback, exclude_seen, the stateful scorer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from gru4rec.model import GRU4Rec, ModelConfig
from gru4rec.persist import load_model, save_model
from gru4rec.recommender import Recommender, SessionScorer

N = 12
COUNTS = [3, 9, 1, 9, 4, 0, 7, 2, 2, 5, 6, 8]
POP_ORDER = [1, 3, 11, 6, 10, 9, 4, 0, 7, 8, 2, 5]  # by count, ties by index


def build(tmp_path, ids, name="m"):
    torch.manual_seed(0)
    model = GRU4Rec(ModelConfig(layers=[8]), N)
    items = pl.DataFrame({"item_idx": pl.Series(range(N), dtype=pl.Int32), "item_id": ids, "count": COUNTS})
    save_model(tmp_path / name, model, {"model": model.cfg.model_dump()}, items)
    return load_model(tmp_path / name)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return build(tmp_path_factory.mktemp("rec"), pl.Series([100 + i for i in range(N)], dtype=pl.Int64))


@pytest.fixture(scope="module")
def loaded_str(tmp_path_factory):
    return build(tmp_path_factory.mktemp("rec_str"), [f"i{i}" for i in range(N)])


def reference_top(loaded, idx_seq, k, exclude=()):
    m = loaded.model
    with torch.no_grad():
        h = m.init_hidden(1)
        for i in idx_seq:
            out, h = m.step(torch.tensor([i]), h)
        sc = m.score(out)[0].numpy().astype(np.float64)
    sc[list(exclude)] = -np.inf
    order = [i for i in np.argsort(-sc, kind="stable") if np.isfinite(sc[i])][:k]
    return [100 + int(i) for i in order], sc[order]


def test_recommend_matches_reference_mixed_lengths(loaded):
    rec = Recommender(loaded, batch_size=3)
    sessions = [[101], [102, 103, 104, 105, 106], [107, 100], [111, 110, 109, 108, 107, 106, 105], [104, 104]]
    results = rec.recommend(sessions, k=5)
    for s, r in zip(sessions, results):
        items, sc = reference_top(loaded, [i - 100 for i in s], 5)
        assert r.items == items
        np.testing.assert_allclose(r.scores, sc, rtol=1e-5, atol=1e-6)
        assert not r.fallback and r.unknown_items == []
        assert r.scores == sorted(r.scores, reverse=True)


def test_ids_as_strings_or_ints(loaded):
    rec = Recommender(loaded)
    a, b, c = rec.recommend([[101, 102], ["101", "102"], [np.int64(101), 102.0]], k=4)
    assert a.items == b.items == c.items
    assert all(isinstance(i, int) for i in a.items)


def test_unknown_items_skipped_and_reported(loaded):
    rec = Recommender(loaded)
    r, plain = rec.recommend([[101, 99999, "abc", 102, None], [101, 102]], k=6)
    assert r.unknown_items == [99999, "abc", None]
    assert r.items == plain.items and not r.fallback


def test_empty_or_unknown_session_falls_back_to_popularity(loaded):
    rec = Recommender(loaded)
    empty, unknown = rec.recommend([[], [5, "x"]], k=4)
    for r in (empty, unknown):
        assert r.fallback
        assert r.items == [100 + i for i in POP_ORDER[:4]]
        assert r.scores == [9.0, 9.0, 8.0, 7.0]
    assert unknown.unknown_items == [5, "x"] and empty.unknown_items == []
    assert rec.recommend([], k=3) == []


def test_exclude_seen(loaded):
    rec = Recommender(loaded)
    session = [101, 103, 101, 107]
    r = rec.recommend_one(session, k=N, exclude_seen=True)
    assert not set(r.items) & set(session)
    assert len(r.items) == N - 3
    items, _ = reference_top(loaded, [1, 3, 1, 7], 5, exclude=[1, 3, 7])
    assert rec.recommend_one(session, k=5, exclude_seen=True).items == items
    assert len(rec.recommend_one(session, k=N).items) == N


def test_string_index(loaded_str):
    rec = Recommender(loaded_str)
    r, unk = rec.recommend([["i1", "i2"], [1, 2]], k=3)
    assert all(i.startswith("i") for i in r.items) and not r.fallback
    assert unk.fallback and unk.unknown_items == [1, 2]


def test_scorer_equals_batch_recommend(loaded):
    rec = Recommender(loaded)
    scorer = SessionScorer(loaded, k=5, exclude_seen=True)
    sessions = {"a": [101, 102, 777, 103, 110], "b": [105, 105, 106], 7: ["nope", 111, 100]}
    prefixes = {sid: [] for sid in sessions}
    for step in range(5):  # interleave the sessions
        for sid, seq in sessions.items():
            if step >= len(seq):
                continue
            prefixes[sid].append(seq[step])
            got = scorer.feed(sid, seq[step])
            want = rec.recommend_one(prefixes[sid], k=5, exclude_seen=True)
            assert got.items == want.items
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
            assert got.fallback == want.fallback
            known = rec.item_index(seq[step]) is not None
            assert got.unknown_items == ([] if known else [seq[step]])
    assert len(scorer) == 3


def test_scorer_lru_reset_close(loaded):
    rec = Recommender(loaded)
    scorer = SessionScorer(loaded, k=4, max_sessions=2)
    scorer.feed("s1", 101)
    scorer.feed("s1", 102)
    scorer.feed("s2", 103)
    scorer.feed("s1", 104)  # s1 is now the most recent
    scorer.feed("s3", 105)  # evicts s2
    assert "s2" not in scorer and "s1" in scorer and len(scorer) == 2 and scorer.evicted == 1
    assert scorer.feed("s2", 106).items == rec.recommend_one([106], k=4).items  # starts afresh
    assert scorer.feed("s3", 107).items == rec.recommend_one([105, 107], k=4).items
    scorer.reset("s3")
    assert scorer.feed("s3", 108).items == rec.recommend_one([108], k=4).items
    scorer.close("s3")
    assert "s3" not in scorer
    r = scorer.feed("new", "unknown-id")
    assert r.fallback and r.unknown_items == ["unknown-id"] and "new" not in scorer
