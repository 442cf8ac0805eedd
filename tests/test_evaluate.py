"""Evaluation: hand-computed ranks and metrics, every target scored, agreement with a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.data.split_dir import SessionArrays
from gru4rec.errors import ConfigError
from gru4rec.evaluate import (
    PopularityModel,
    StepScorer,
    evaluate_model,
    evaluate_scorer,
    metrics_from_ranks,
    ranks_from_scores,
)
from gru4rec.model import GRU4Rec, ModelConfig

N_ITEMS = 25


def make_sessions(sessions: list[list[int]]) -> SessionArrays:
    lengths = [len(s) for s in sessions]
    items = np.array([i for s in sessions for i in s], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return SessionArrays(items=items, offsets=offsets, timestamps=np.arange(len(items), dtype=np.int64))


def tiny_model(embedding: str = "constrained", seed: int = 0) -> GRU4Rec:
    torch.manual_seed(seed)
    return GRU4Rec(ModelConfig(embedding=embedding, layers=[8, 6]), N_ITEMS)


MODEL = tiny_model()


# --- ranks and metrics by hand ---------------------------------------------------------------
def test_ranks_ties_hand_computed():
    # Target (item 0) tied with two others at the top.
    scores = torch.tensor([[0.9, 0.9, 0.9, 0.2, 0.1]])
    t = torch.tensor([0])
    assert ranks_from_scores(scores, t, "conservative").tolist() == [3.0]
    assert ranks_from_scores(scores, t, "standard").tolist() == [1.0]
    assert ranks_from_scores(scores, t, "median").tolist() == [2.0]
    # One strictly higher item, target tied with two others; a second row without ties.
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])
    t = torch.tensor([2, 1])
    assert ranks_from_scores(scores, t, "conservative").tolist() == [4.0, 4.0]
    assert ranks_from_scores(scores, t, "standard").tolist() == [2.0, 4.0]
    assert ranks_from_scores(scores, t, "median").tolist() == [3.0, 4.0]
    assert ranks_from_scores(scores, t).dtype == torch.float64


def test_ranks_bad_ties_value():
    with pytest.raises(ConfigError, match="ties must be one of"):
        ranks_from_scores(torch.zeros(1, 3), torch.tensor([0]), "optimistic")


def test_metrics_hand_computed():
    m = metrics_from_ranks([1, 2, 3, 25, 2.5], ks=(1, 5, 20))
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(4 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["mrr@1"] == pytest.approx(1 / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 2.5) / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(3.5)) / 5)
    assert set(m) == {f"{n}@{k}" for n in ("recall", "mrr", "ndcg") for k in (1, 5, 20)}


# --- every target scored, batch size does not matter ----------------------------------------
SESSIONS = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 1], [13, 14], [3, 2, 1, 0, 24]]


def test_every_target_scored_any_batch_size():
    data = make_sessions(SESSIONS)
    expected_targets = sum(len(s) - 1 for s in SESSIONS)
    results = [evaluate_model(MODEL, data, batch_size=b) for b in (1, 2, 3, 4, 512)]
    for r in results:
        assert r["n_targets"] == expected_targets
        assert r["n_sessions"] == 6  # the one-event session has no target
    for r in results[1:]:
        assert r == pytest.approx(results[0], abs=1e-12)


def test_last_session_tail_is_scored():
    # A long last session that outlives all the others in a shrinking batch.
    sessions = [[1, 2], [3, 4], [5] + list(range(N_ITEMS))]
    r = evaluate_model(MODEL, make_sessions(sessions), batch_size=2)
    assert r["n_targets"] == 1 + 1 + N_ITEMS


# --- slow reference ---------------------------------------------------------------------------
def reference(model, sessions, ks, ties):
    """Each session alone, from a zero state; rank by a full sort of the scores."""
    model.eval()
    ranks, covered = [], {k: set() for k in ks}
    with torch.no_grad():
        for s in sessions:
            h = model.init_hidden(1)
            for inp, tgt in zip(s[:-1], s[1:]):
                out, h = model.step(torch.tensor([inp]), h)
                sc = model.score(out)[0].numpy()
                order = np.argsort(-sc, kind="stable")
                sorted_sc = sc[order]
                tied = np.flatnonzero(sorted_sc == sc[tgt])
                first, last = tied[0] + 1, tied[-1] + 1
                ranks.append({"standard": first, "conservative": last, "median": (first + last) / 2}[ties])
                for k in ks:
                    covered[k].update(order[:k].tolist())
    m = metrics_from_ranks(ranks, ks)
    for k in ks:
        m[f"coverage@{k}"] = len(covered[k]) / model.n_items
    m["n_targets"] = len(ranks)
    return m


@settings(max_examples=25, deadline=None)
@given(
    sessions=st.lists(st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=7), min_size=1, max_size=10),
    batch_size=st.integers(1, 6),
    ties=st.sampled_from(["conservative", "standard", "median"]),
)
def test_matches_reference_loop(sessions, batch_size, ties):
    ks = (1, 3, 10)
    got = evaluate_model(MODEL, make_sessions(sessions), ks=ks, ties=ties, batch_size=batch_size)
    want = reference(MODEL, sessions, ks, ties)
    assert got["n_targets"] == want["n_targets"] == sum(len(s) - 1 for s in sessions)
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key])
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("embedding", ["onehot", "separate"])
def test_other_embeddings_match_reference(embedding):
    model = tiny_model(embedding, seed=1)
    got = evaluate_model(model, make_sessions(SESSIONS), ks=(1, 5), batch_size=3)
    want = reference(model, SESSIONS, (1, 5), "conservative")
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_mode_and_device_restored():
    model = tiny_model()
    model.train()
    evaluate_model(model, make_sessions(SESSIONS))
    assert model.training
    model.eval()
    evaluate_model(model, make_sessions(SESSIONS))
    assert not model.training


# --- popularity baseline ----------------------------------------------------------------------
COUNTS = np.array([5, 3, 3, 1, 0])
TOY = make_sessions([[0, 1, 2], [3, 4]])  # targets: 1, 2 (first session), 4 (second)


def test_popularity_baseline_toy():
    r = evaluate_model(PopularityModel(COUNTS), TOY, ks=(1, 3, 5), item_counts=COUNTS)
    # Targets 1 and 2 (count 3, tied with each other, one item above): conservative rank 3; target 4: rank 5.
    assert r["n_targets"] == 3 and r["n_sessions"] == 2
    assert r["recall@1"] == 0
    assert r["recall@3"] == pytest.approx(2 / 3)
    assert r["recall@5"] == pytest.approx(1.0)
    assert r["mrr@5"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 5) / 3)
    assert r["ndcg@3"] == pytest.approx((2 / math.log2(4)) / 3)
    assert r["coverage@1"] == pytest.approx(1 / 5)  # always item 0
    assert r["coverage@5"] == pytest.approx(1.0)
    assert r["popularity@1"] == pytest.approx(1.0)  # count 5 / max 5
    assert r["popularity@5"] == pytest.approx((5 + 3 + 3 + 1 + 0) / 5 / 5)
    med = evaluate_model(PopularityModel(COUNTS), TOY, ks=(5,), ties="median")
    assert med["mrr@5"] == pytest.approx((1 / 2.5 + 1 / 2.5 + 1 / 5) / 3)
    std = evaluate_model(PopularityModel(COUNTS), TOY, ks=(5,), ties="standard")
    assert std["mrr@5"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 5) / 3)


def test_exclude_seen_and_static():
    r = evaluate_model(PopularityModel(COUNTS), TOY, ks=(5,), exclude="seen")
    # [0,1,2]: after 0, target 1 ties with 2 → rank 2; after 0,1, target 2 is alone on top → 1.
    # [3,4]: after 3, target 4 below items 0, 1, 2 → rank 4.
    assert r["mrr@5"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    r = evaluate_model(PopularityModel(COUNTS), TOY, ks=(5,), exclude=[0])
    assert r["mrr@5"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4) / 3)
    with pytest.raises(ConfigError):
        evaluate_model(PopularityModel(COUNTS), TOY, exclude="everything")


def test_custom_scorer_plugs_in():
    """A scorer with its own kind of state (last item per slot), as a kNN baseline would have."""

    class NextItem(StepScorer):
        n_items = N_ITEMS

        def init_state(self, batch_size, device):
            return torch.full((batch_size,), -1, dtype=torch.long, device=device)

        def step(self, items, state):
            scores = torch.zeros(len(items), self.n_items)
            scores[torch.arange(len(items)), (items + 1) % self.n_items] = 1.0
            return scores, items.clone()

        def reset_rows(self, state, rows):
            state[rows] = -1
            return state

        def select_rows(self, state, keep):
            return state[keep]

    sessions = [[1, 2, 3, 4], [7, 8], [0, 5, 6]]
    r = evaluate_scorer(NextItem(), make_sessions(sessions), ks=(1,), batch_size=2)
    assert r["n_targets"] == 6
    assert r["recall@1"] == pytest.approx(5 / 6)  # all but 0 → 5


def test_empty_and_invalid_input():
    r = evaluate_model(MODEL, make_sessions([[1], [2]]))
    assert r["n_targets"] == 0 and math.isnan(r["recall@20"])
    with pytest.raises(ConfigError, match="outside"):
        evaluate_model(MODEL, make_sessions([[1, N_ITEMS]]))
    with pytest.raises(ConfigError, match="item_counts"):
        evaluate_model(MODEL, make_sessions([[1, 2]]), item_counts=np.ones(3))
