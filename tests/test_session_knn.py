"""Session-kNN baselines (SKNN, V-SKNN, STAN, VSTAN) against a plain per-session reference.

The reference below follows the papers' formulas literally (Python sets and loops, the real time
decay ``exp(-(now - t_n) / λ_snh)``). The vectorised scorer may differ from it by a positive
factor per session slot (it leaves ranks unchanged), so scores are compared after dividing each
row by its maximum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gru4rec.baselines import BASELINES, build_baseline
from gru4rec.data.split_dir import SessionArrays
from gru4rec.evaluate import StepScorer, evaluate_model
from gru4rec.session_knn import KNN_DEFAULTS, SessionKNN, SessionKNNConfig

N_ITEMS = 14
DAY_MS = 86_400_000


def _sessions(
    rng: np.random.Generator, n: int, start_ms: int, max_len: int = 8, n_items: int = N_ITEMS
) -> SessionArrays:
    """Random sessions (repeated items included) with distinct, increasing end times."""
    items, offsets, times = [], [0], []
    t = start_ms
    for _ in range(n):
        length = int(rng.integers(1, max_len + 1))
        popular = rng.random() < 0.5
        seq = rng.integers(0, 5 if popular else n_items, size=length)
        t += int(rng.integers(1, 3 * DAY_MS))
        items.extend(seq.tolist())
        times.extend(t - 60_000 * np.arange(length)[::-1])
        offsets.append(len(items))
    return SessionArrays(np.array(items, np.int64), np.array(offsets, np.int64), np.array(times, np.int64))


def _as_lists(s: SessionArrays) -> list[tuple[list[int], int]]:
    return [(s.items[a:b].tolist(), int(s.timestamps[b - 1])) for a, b in zip(s.offsets[:-1], s.offsets[1:]) if b > a]


def reference_scores(
    train, current: list[int], c: SessionKNNConfig, now_ms: float, n_items: int = N_ITEMS
) -> np.ndarray | None:
    """Scores of every item after ``current``; None when the k-th neighbour is tied (ambiguous)."""
    n_sessions = len(train)
    events = np.bincount([i for items, _ in train for i in items], minlength=n_items)
    length = len(current)
    p = {item: pos for pos, item in enumerate(current, start=1)}  # last position of each item
    if c.lambda_spw is not None:
        w = {i: math.exp((pi - length) / c.lambda_spw) for i, pi in p.items()}
    else:
        w = {
            i: {None: 1.0, "same": 1.0, "div": pi / length, "quadratic": (pi / length) ** 2}[c.weighting]
            for i, pi in p.items()
        }
    candidates = [(items, t) for items, t in train if set(items) & set(p)]
    if c.sample_size and len(candidates) > c.sample_size:
        candidates = sorted(candidates, key=lambda x: -x[1])[: c.sample_size]
    neighbours = []
    for items, t in candidates:
        shared = set(items) & set(p)
        if c.similarity == "jaccard":
            sim = len(shared) / len(set(items) | set(p))
        elif c.similarity == "vec":
            sim = sum(w[i] for i in shared) / len(p)
        else:
            sim = sum(w[i] for i in shared) / math.sqrt(sum(x * x for x in w.values()) * len(set(items)))
        if c.lambda_snh is not None:
            sim *= math.exp(-(now_ms - t) / (c.lambda_snh * DAY_MS))
        if sim > 0:
            neighbours.append((sim, items))
    neighbours.sort(key=lambda x: -x[0])
    if len(neighbours) > c.k and math.isclose(neighbours[c.k - 1][0], neighbours[c.k][0], rel_tol=1e-9):
        return None
    scores = np.zeros(n_items)
    for sim, items in neighbours[: c.k]:
        last_in_n = {item: pos for pos, item in enumerate(items, start=1)}
        shared = set(items) & set(p)
        anchor = max(last_in_n[i] for i in shared)  # a_n
        m = max(p[i] for i in shared)  # m_n
        x = length - m + 1
        if c.lambda_ipw is not None:
            d = math.exp((m - length) / c.lambda_ipw)
        else:
            f = {None: 1, "same": 1, "div": 1 / x, "quadratic": 1 / x**2, "log": 1 / math.log10(x + 1.7)}
            d = f[c.weighting_score] if c.weighting_score != "linear" else (1 - 0.1 * x if x <= 100 else 0)
        for j, pj in last_in_n.items():
            e = math.exp(-abs(pj - anchor) / c.lambda_inh) if c.lambda_inh is not None else 1.0
            idf = math.log(n_sessions / events[j])
            scores[j] += sim * d * e * (1 + c.idf_weighting * idf)
    return scores


def _normalised(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return np.divide(x, top, out=np.zeros_like(x), where=top > 0)


CONFIGS = {
    "sknn": SessionKNNConfig(k=50, sample_size=0),
    "sknn-jaccard-sampled": SessionKNNConfig(k=50, sample_size=9, similarity="jaccard"),
    "v-sknn": SessionKNNConfig(
        k=20, sample_size=12, similarity="vec", weighting="quadratic", weighting_score="div", idf_weighting=5
    ),
    "v-sknn-cosine": SessionKNNConfig(k=15, sample_size=0, weighting="div", weighting_score="log", idf_weighting=0.5),
    "v-sknn-linear": SessionKNNConfig(
        k=50, sample_size=0, similarity="vec", weighting="same", weighting_score="linear"
    ),
    "stan": SessionKNNConfig(k=5, sample_size=15, lambda_spw=1.5, lambda_snh=2, lambda_inh=1.2),
    "stan-sharp": SessionKNNConfig(k=3, sample_size=0, lambda_spw=1e-5, lambda_snh=0.5, lambda_inh=0.3),
    "vstan": SessionKNNConfig(
        k=5, sample_size=15, lambda_spw=2, lambda_snh=3, lambda_inh=2, lambda_ipw=1.5, idf_weighting=1
    ),
    "vstan-vec": SessionKNNConfig(
        k=50,
        sample_size=0,
        similarity="vec",
        lambda_spw=0.7,
        lambda_snh=1,
        lambda_inh=4,
        lambda_ipw=0.5,
        idf_weighting=2,
    ),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    train = _sessions(rng, 40, start_ms=1_000 * DAY_MS)
    test = _sessions(rng, 20, start_ms=int(train.timestamps.max()) + DAY_MS, max_len=9)
    return train, test


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scores_match_the_reference_step_by_step(data, name):
    """Several sessions side by side, slots refilled (reset_rows) and dropped (select_rows)."""
    train, test = data
    cfg = CONFIGS[name]
    scorer = SessionKNN(train, N_ITEMS, cfg)
    ref_train = _as_lists(train)
    now = float(test.timestamps.max())
    queue = [items for items, _ in _as_lists(test)]
    slots = [queue.pop(0) for _ in range(4)]
    cursor = [0] * len(slots)
    state = scorer.init_state(len(slots), torch.device("cpu"))
    checked = ambiguous = 0
    while slots:
        items = torch.tensor([s[i] for s, i in zip(slots, cursor)])
        scores, state = scorer.step(items, state)
        assert scores.shape == (len(slots), N_ITEMS)
        for row, (session, i) in enumerate(zip(slots, cursor)):
            expected = reference_scores(ref_train, session[: i + 1], cfg, now)
            if expected is None:
                ambiguous += 1
                continue
            np.testing.assert_allclose(_normalised(scores[row].numpy()), _normalised(expected), rtol=1e-9, atol=1e-12)
            checked += 1
        cursor = [i + 1 for i in cursor]
        finished = [r for r, (s, i) in enumerate(zip(slots, cursor)) if i >= len(s)]
        refill = finished[: len(queue)]
        for r in refill:
            slots[r], cursor[r] = queue.pop(0), 0
        if refill:
            state = scorer.reset_rows(state, torch.tensor(refill))
        drop = [r for r in finished if r not in refill]
        if drop:
            keep = [r for r in range(len(slots)) if r not in drop]
            slots, cursor = [slots[r] for r in keep], [cursor[r] for r in keep]
            if keep:
                state = scorer.select_rows(state, torch.tensor(keep))
    assert checked >= 40 and ambiguous <= checked // 2, (checked, ambiguous)


def _all_scores(scorer: SessionKNN, test: SessionArrays) -> np.ndarray:
    """Every prefix of every test session scored one slot at a time."""
    rows = []
    for a, b in zip(test.offsets[:-1], test.offsets[1:]):
        state = scorer.init_state(1, torch.device("cpu"))
        for item in test.items[a:b].tolist():
            scores, state = scorer.step(torch.tensor([item]), state)
            rows.append(scores[0].numpy())
    return np.array(rows)


@pytest.mark.parametrize("name", ["sknn", "v-sknn", "vstan-vec"])
def test_sparse_gather_and_dense_product_give_the_same_scores(data, name, monkeypatch):
    import gru4rec.session_knn as knn

    train, test = data
    monkeypatch.setattr(knn, "_DENSE_SPEEDUP", 1e-12)  # the dense product never pays off
    sparse = _all_scores(SessionKNN(train, N_ITEMS, CONFIGS[name]), test)
    monkeypatch.setattr(knn, "_DENSE_SPEEDUP", 1e12)  # always
    dense = _all_scores(SessionKNN(train, N_ITEMS, CONFIGS[name]), test)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-15)


def test_long_sessions_read_a_window_around_the_anchor_and_match_the_reference():
    """Neighbours far longer than STAN's item-position window (λ_inh small): only a window is read."""
    n_items = 80
    rng = np.random.default_rng(3)
    train = _sessions(rng, 25, start_ms=1_000 * DAY_MS, max_len=70, n_items=n_items)
    test = _sessions(rng, 3, start_ms=int(train.timestamps.max()) + DAY_MS, max_len=30, n_items=n_items)
    cfg = SessionKNNConfig(k=25, sample_size=0, lambda_spw=3, lambda_snh=5, lambda_inh=0.1, lambda_ipw=2)
    scorer = SessionKNN(train, n_items, cfg)
    got = _all_scores(scorer, test)
    ref_train, now = _as_lists(train), float(test.timestamps.max())
    expected = [
        reference_scores(ref_train, items[: i + 1], cfg, now, n_items)
        for items, _ in _as_lists(test)
        for i in range(len(items))
    ]
    assert all(e is not None for e in expected)
    np.testing.assert_allclose(_normalised(got), _normalised(np.array(expected)), rtol=1e-9, atol=1e-12)


def test_a_reset_slot_forgets_its_previous_session(data):
    train, _ = data
    scorer = SessionKNN(train, N_ITEMS, CONFIGS["vstan"])
    fresh = scorer.init_state(1, torch.device("cpu"))
    expected, _ = scorer.step(torch.tensor([3]), fresh)
    state = scorer.init_state(1, torch.device("cpu"))
    for item in (1, 2, 1, 7):
        _, state = scorer.step(torch.tensor([item]), state)
    state = scorer.reset_rows(state, torch.tensor([0]))
    got, _ = scorer.step(torch.tensor([3]), state)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class _ReferenceScorer(StepScorer):
    """The reference as an evaluator scorer: each slot keeps its items in a Python list."""

    def __init__(self, train: SessionArrays, cfg: SessionKNNConfig, now: float):
        self.train, self.cfg, self.now, self.n_items = _as_lists(train), cfg, now, N_ITEMS

    def init_state(self, batch_size, device):
        return [[] for _ in range(batch_size)]

    def step(self, items, state):
        rows = []
        for history, item in zip(state, items.tolist()):
            history.append(item)
            rows.append(reference_scores(self.train, history, self.cfg, self.now))
        return torch.tensor(np.round(_normalised(np.array(rows)), 9)), state

    def reset_rows(self, state, rows):
        for r in rows.tolist():
            state[r] = []
        return state

    def select_rows(self, state, keep):
        return [state[r] for r in keep.tolist()]


class _Rounded(StepScorer):
    """Normalised, rounded scores, so that both scorers' ties look the same to the evaluator."""

    def __init__(self, inner: SessionKNN):
        self.inner, self.n_items = inner, inner.n_items
        self.init_state, self.reset_rows, self.select_rows = inner.init_state, inner.reset_rows, inner.select_rows

    def step(self, items, state):
        scores, state = self.inner.step(items, state)
        return torch.tensor(np.round(_normalised(scores.numpy()), 9)), state


@pytest.mark.parametrize("name", ["sknn", "v-sknn-linear", "vstan-vec"])  # no ties at the k-th neighbour
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_evaluator_metrics_equal_the_reference(data, name, batch_size):
    train, test = data
    cfg = CONFIGS[name]
    common = dict(ks=(1, 3, 5), ties="conservative", batch_size=batch_size)
    got = evaluate_model(_Rounded(SessionKNN(train, N_ITEMS, cfg)), test, **common)
    expected = evaluate_model(_ReferenceScorer(train, cfg, float(test.timestamps.max())), test, **common)
    assert got["n_targets"] == expected["n_targets"] > 20
    for key in ("recall@1", "recall@5", "mrr@5", "ndcg@5"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_every_method_is_a_baseline_with_its_defaults(data):
    train, test = data
    counts = np.bincount(train.items, minlength=N_ITEMS)
    for name in ("sknn", "v-sknn", "stan", "vstan"):
        assert name in BASELINES
        scorer = build_baseline(name, train_sessions=train, n_items=N_ITEMS, item_counts=counts)
        assert isinstance(scorer, SessionKNN) and scorer.config == KNN_DEFAULTS[name]
        m = evaluate_model(scorer, test, ks=(5,))
        assert 0 < m["recall@5"] <= 1


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="k must be positive"):
        SessionKNNConfig(k=0)
    with pytest.raises(ValueError, match="not both"):
        SessionKNNConfig(weighting="div", lambda_spw=1.0)
    with pytest.raises(ValueError, match="lambda_ipw"):
        SessionKNNConfig(weighting_score="div", lambda_ipw=1.0)
    with pytest.raises(ValueError, match="jaccard"):
        SessionKNNConfig(similarity="jaccard", weighting="quadratic")
    with pytest.raises(ValueError, match="lambda_inh"):
        SessionKNNConfig(lambda_inh=0)
