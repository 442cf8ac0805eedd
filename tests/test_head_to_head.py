"""The champion evaluated on a split with another item index (`gru4rec.head_to_head`)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from gru4rec.data.split_dir import SessionArrays
from gru4rec.evaluate import ModelScorer, evaluate_scorer, metrics_from_ranks, ranks_from_scores
from gru4rec.head_to_head import RemappedScorer, evaluate_on_new_split, index_map, unknown_targets
from gru4rec.jobs import build_config, evaluate_on_split, train_on_split
from gru4rec.persist import load_model
from tests.synthetic import synthetic_split, tiny_model_dir

KS = (1, 3, 5)


def _sessions(lists: list[list[int]]) -> SessionArrays:
    items = np.array([i for s in lists for i in s], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    return SessionArrays(items=items, offsets=offsets, timestamps=np.arange(len(items), dtype=np.int64))


def test_index_map_matches_ids_and_marks_unknown_items():
    split_ids = pl.Series([105, 999, 100, 111])
    model_ids = pl.Series([100 + i for i in range(12)])
    assert index_map(split_ids, model_ids).tolist() == [5, -1, 0, 11]
    # ids read as strings in one source and integers in the other still match
    assert index_map(pl.Series(["105", "7"]), model_ids).tolist() == [5, -1]


def test_unknown_targets_skip_each_sessions_first_event():
    mapping = np.array([0, -1, 1, -1])
    sessions = _sessions([[1, 0, 3], [3, 2], [0, 1, 1]])
    # targets: 0,3 | 2 | 1,1 → unknown: 3, 1, 1
    assert unknown_targets(sessions, mapping) == 3


def _reference_ranks(model, mapping: np.ndarray, sessions: SessionArrays) -> list[float]:
    """Plain loop: feed only known items to the model, one session at a time; an unknown target
    is scored lowest, an unknown input leaves the state and the scores as they were."""
    known = torch.as_tensor(mapping >= 0)
    cols = torch.as_tensor(np.clip(mapping, 0, None))
    ranks = []
    model.eval()
    with torch.no_grad():
        for s in range(sessions.n_sessions):
            seq = sessions.items[sessions.offsets[s] : sessions.offsets[s + 1]]
            hidden = model.init_hidden(1, device="cpu")
            scores = torch.zeros(1, len(mapping)).masked_fill(~known, -np.inf)
            for inp, tgt in zip(seq[:-1], seq[1:]):
                if mapping[inp] >= 0:
                    out, hidden = model.step(torch.tensor([mapping[inp]]), hidden)
                    scores = model.score(out)[:, cols].masked_fill(~known, -np.inf)
                ranks.append(ranks_from_scores(scores, torch.tensor([tgt])).item())
    return ranks


def test_remapped_scorer_equals_a_plain_loop(tmp_path):
    loaded = load_model(tiny_model_dir(tmp_path / "m", n_items=12))
    # split index: 15 items; 3 unknown to the model, the known ones in another order
    mapping = np.array([3, -1, 0, 7, 11, -1, 1, 2, 4, 5, 6, 8, 9, -1, 10])
    rng = np.random.default_rng(0)
    lists = [list(rng.integers(0, 15, size=int(rng.integers(2, 9)))) for _ in range(40)]
    lists[0] = [1, 5, 1, 2]  # starts with unknown inputs
    sessions = _sessions(lists)
    got = evaluate_scorer(RemappedScorer(ModelScorer(loaded.model), mapping), sessions, ks=KS, batch_size=7)
    want = metrics_from_ranks(_reference_ranks(loaded.model, mapping, sessions), KS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["n_targets"] == sum(len(s) - 1 for s in lists)


def test_on_its_own_split_it_equals_the_normal_evaluation(tmp_path):
    split = synthetic_split(tmp_path / "data", n_sessions=120, n_items=25)
    cfg = build_config("tutorial", {"train.epochs": 1, "model.layers": [16], "train.threads": 1})
    train_on_split(split, cfg, tmp_path / "model", full=True)
    normal = evaluate_on_split(split, tmp_path / "model", ks=KS, baselines=())
    other = evaluate_on_new_split(split, tmp_path / "model", ks=KS)
    assert other["unknown_targets"] == 0 and other["unknown_items"] == 0
    for k in KS:
        assert other["metrics"][f"recall@{k}"] == pytest.approx(normal["metrics"]["gru4rec"][f"recall@{k}"])
        assert other["metrics"][f"mrr@{k}"] == pytest.approx(normal["metrics"]["gru4rec"][f"mrr@{k}"])
    assert other["n_targets"] == normal["n_targets"]
