"""Evaluate a model on a split it was not trained on: the champion on the challenger's test set.

A nightly retrain on new data has a new item index (new items appear, old ones may drop out), so
the old champion cannot simply be evaluated on the new split. `RemappedScorer` wraps its scorer
in the split's item index:

- an item the champion never saw gets the lowest score, so as a target it is a miss (counted and
  reported, never silently dropped);
- as an input it is skipped: the session's state stays as it was after the last known item and
  the previous scores are repeated (as if the click had not been seen).

Both models are therefore ranked on exactly the same targets, with the same evaluator code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from gru4rec.data.split_dir import SessionArrays, load_split, session_arrays
from gru4rec.device import select_device
from gru4rec.evaluate import StepScorer


def index_map(split_item_ids: pl.Series, model_item_ids: pl.Series) -> np.ndarray:
    """For each item index of the split, the model's index of the same item id (-1: unknown to it)."""
    position = pl.DataFrame({"id": model_item_ids.cast(pl.String), "model_idx": np.arange(len(model_item_ids))})
    joined = pl.DataFrame({"id": split_item_ids.cast(pl.String)}).join(
        position, on="id", how="left", maintain_order="left"
    )
    return joined["model_idx"].fill_null(-1).to_numpy().astype(np.int64)


def unknown_targets(sessions: SessionArrays, mapping: np.ndarray) -> int:
    """How many targets (every event but a session's first) are items the model never saw."""
    is_target = np.ones(len(sessions.items), dtype=bool)
    is_target[sessions.offsets[:-1][np.diff(sessions.offsets) > 0]] = False
    return int(((mapping[sessions.items] < 0) & is_target).sum())


class RemappedScorer(StepScorer):
    """A batch-first-state scorer (e.g. `ModelScorer`) seen through another item index."""

    def __init__(self, inner: StepScorer, mapping: np.ndarray):
        self.inner = inner
        self.n_items = len(mapping)
        self.mapping = torch.as_tensor(mapping, dtype=torch.long)

    def begin(self, device: torch.device) -> None:
        self.inner.begin(device)
        self.mapping = self.mapping.to(device)
        self.known = self.mapping >= 0
        self.columns = self.mapping.clamp(min=0)

    def end(self) -> None:
        self.inner.end()

    def _blank(self, rows: int, device: torch.device) -> torch.Tensor:
        # Before any known item: no preference among known items, unknown items last.
        blank = torch.zeros(rows, self.n_items, device=device)
        return blank.masked_fill(~self.known.to(device), -math.inf)

    def init_state(self, batch_size: int, device: torch.device) -> tuple[Any, torch.Tensor]:
        return self.inner.init_state(batch_size, device), self._blank(batch_size, device)

    def step(self, items: torch.Tensor, state: tuple[Any, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        inner_state, last = state
        mapped = self.mapping[items]
        known_rows = mapped >= 0
        before = [h.clone() for h in inner_state]
        inner_scores, inner_state = self.inner.step(mapped.clamp(min=0), inner_state)
        scores = inner_scores[:, self.columns].masked_fill(~self.known, -math.inf)
        if not bool(known_rows.all()):  # unknown input: keep the state and the scores it had
            keep = known_rows.view(-1, 1)
            inner_state = [torch.where(keep, new, old) for new, old in zip(inner_state, before)]
            scores = torch.where(keep, scores, last)
        return scores, (inner_state, scores)

    def reset_rows(self, state: tuple[Any, torch.Tensor], rows: torch.Tensor) -> tuple[Any, torch.Tensor]:
        inner_state, last = state
        last[rows] = self._blank(len(rows), last.device)
        return self.inner.reset_rows(inner_state, rows), last

    def select_rows(self, state: tuple[Any, torch.Tensor], keep: torch.Tensor) -> tuple[Any, torch.Tensor]:
        inner_state, last = state
        return self.inner.select_rows(inner_state, keep), last[keep]


def evaluate_on_new_split(
    split_dir: str | Path,
    model_dir: str | Path,
    *,
    ks: tuple[int, ...],
    ties: str = "conservative",
    device: str = "auto",
    batch_size: int = 512,
    exclude_seen: bool = False,
) -> dict:
    """Test metrics of a model directory on a split with another item index (see the module doc);
    ``exclude_seen``: the session's own items are left out of the ranking (as in `evaluate_on_split`)."""
    from gru4rec.evaluate import ModelScorer, evaluate_scorer
    from gru4rec.persist import load_model

    split = load_split(split_dir)
    dev = select_device(device)
    loaded = load_model(model_dir, device=dev)
    mapping = index_map(split.items["item_id"], loaded.items["item_id"])
    test = session_arrays(split.test)
    counts = split.items["count"].to_numpy() if "count" in split.items.columns else None
    scorer = RemappedScorer(ModelScorer(loaded.model), mapping)
    exclude = "seen" if exclude_seen else None
    metrics = evaluate_scorer(
        scorer, test, ks=ks, ties=ties, batch_size=batch_size, device=dev, item_counts=counts, exclude=exclude
    )
    return {
        "split_fingerprint": split.fingerprint(),
        "model_dir": str(Path(model_dir).resolve()),
        "metrics": metrics,
        "n_targets": metrics["n_targets"],
        "unknown_targets": unknown_targets(test, mapping),
        "unknown_items": int((mapping < 0).sum()),
        "n_items": int(len(mapping)),
    }
