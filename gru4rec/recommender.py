"""Inference with a saved model: batch recommendation and a stateful per-session scorer.

Item ids go in and come out as the original ids of ``items.parquet``; ids are matched to the
index's type (``"1193"`` and ``1193`` are the same item for an integer index). Ids not in the
index are skipped and reported. A session with no known item gets the most popular items,
flagged ``fallback=True``.

``exclude_seen`` (leave the session's own items out of the top-k) defaults to the model's own
setting, decided when it was trained from how often its training data repeats items (see
`gru4rec.seen`; a model saved before that keeps them); ``True``/``False`` override it per call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from gru4rec.persist import LoadedModel


@dataclass
class Recommendation:
    items: list  # original item ids, best first
    scores: list[float]  # model scores (popularity counts when fallback)
    unknown_items: list = field(default_factory=list)  # ids skipped because not in the item index
    fallback: bool = False  # True: no known item in the session, items are the most popular ones


def _id_normaliser(dtype: pl.DataType) -> Callable[[Any], Any]:
    """Map an incoming id to the type of the index's item_id (None when it cannot be one)."""
    if dtype.is_integer():

        def to_int(x: Any) -> Any:
            if isinstance(x, (bool, np.bool_)):
                return None
            if isinstance(x, (int, np.integer)):
                return int(x)
            if isinstance(x, str):
                try:
                    return int(x.strip())
                except ValueError:
                    return None
            if isinstance(x, (float, np.floating)) and float(x).is_integer():
                return int(x)
            return None

        return to_int

    def to_str(x: Any) -> Any:
        if isinstance(x, str):
            return x
        if isinstance(x, (bool, np.bool_)) or x is None:
            return None
        if isinstance(x, (int, np.integer)):
            return str(int(x))
        return str(x)

    return to_str


class Recommender:
    """Top-k next items for whole sessions, batched."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device | None = None, batch_size: int = 256):
        self.loaded = loaded
        self.model = loaded.model
        self.model.eval()
        self.device = torch.device(device) if device is not None else self.model.item_out.device
        self.model.to(self.device)
        self.batch_size = batch_size
        self.n_items = loaded.n_items
        self.exclude_seen = loaded.exclude_seen  # the model's default
        self._item_ids = loaded.item_ids
        self._key = _id_normaliser(loaded.items.schema["item_id"])
        self._index = loaded.item_to_idx
        counts = loaded.counts.astype(np.float64)
        self._pop_order = np.lexsort((np.arange(self.n_items), -counts))  # by count, ties by index
        self._pop_scores = counts[self._pop_order]

    # --- ids ----------------------------------------------------------------------------------
    def item_index(self, item_id: Any) -> int | None:
        key = self._key(item_id)
        return None if key is None else self._index.get(key)

    def to_indices(self, session: Sequence[Any]) -> tuple[list[int], list[Any]]:
        known, unknown = [], []
        for item in session:
            idx = self.item_index(item)
            if idx is None:
                unknown.append(item)
            else:
                known.append(idx)
        return known, unknown

    # --- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def _final_outputs(self, seqs: list[list[int]]) -> torch.Tensor:
        """Last-layer output after each (non-empty) sequence, stepping the GRU over all of them at once."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        lengths = np.array([len(seqs[i]) for i in order])
        padded = np.zeros((len(seqs), int(lengths[0])), dtype=np.int64)
        for row, i in enumerate(order):
            padded[row, : lengths[row]] = seqs[i]
        x = torch.as_tensor(padded, device=self.device)
        hidden = self.model.init_hidden(len(seqs), device=self.device)
        out = torch.zeros(len(seqs), self.model.cfg.layers[-1], device=self.device, dtype=hidden[0].dtype)
        # Sorted by length (longest first), the sequences still running at step t are a prefix.
        n_active = (lengths[None, :] > np.arange(padded.shape[1])[:, None]).sum(axis=1)
        for t, n in enumerate(n_active.tolist()):
            o, new = self.model.step(x[:n, t], [h[:n] for h in hidden])
            for h, hn in zip(hidden, new):
                h[:n] = hn
            out[:n] = o
        result = torch.empty_like(out)
        result[torch.as_tensor(order, device=self.device)] = out
        return result

    @torch.no_grad()
    def _top(self, out: torch.Tensor, seen: list[list[int]], k: int, exclude_seen: bool) -> list[tuple[list, list]]:
        scores = self.model.score(out)
        if exclude_seen:
            rows = [r for r, s in enumerate(seen) for _ in s]
            cols = [c for s in seen for c in s]
            if cols:
                scores[
                    torch.as_tensor(rows, device=self.device), torch.as_tensor(cols, device=self.device)
                ] = -torch.inf
        kk = min(k, self.n_items)
        val, idx = torch.topk(scores, kk, dim=1)
        val, idx = val.cpu().numpy(), idx.cpu().numpy()
        res = []
        for v, i in zip(val, idx):
            ok = np.isfinite(v) if exclude_seen else slice(None)
            res.append((self._item_ids[i[ok]].tolist(), v[ok].astype(float).tolist()))
        return res

    def _fallback(self, k: int, unknown: list) -> Recommendation:
        kk = min(k, self.n_items)
        return Recommendation(
            items=self._item_ids[self._pop_order[:kk]].tolist(),
            scores=self._pop_scores[:kk].tolist(),
            unknown_items=unknown,
            fallback=True,
        )

    # --- public -------------------------------------------------------------------------------
    def recommend(
        self, sessions: Sequence[Sequence[Any]], k: int = 20, exclude_seen: bool | None = None
    ) -> list[Recommendation]:
        """Top-k next items after each session (a list of original item ids, oldest first);
        ``exclude_seen=None`` = the model's default (`Recommender.exclude_seen`)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        exclude_seen = self.exclude_seen if exclude_seen is None else bool(exclude_seen)
        mapped = [self.to_indices(s) for s in sessions]
        results: list[Recommendation | None] = [None] * len(mapped)
        live = [i for i, (known, _) in enumerate(mapped) if known]
        for i, (known, unknown) in enumerate(mapped):
            if not known:
                results[i] = self._fallback(k, unknown)
        # Longest first, so each batch holds sequences of similar length.
        live.sort(key=lambda i: -len(mapped[i][0]))
        for start in range(0, len(live), self.batch_size):
            chunk = live[start : start + self.batch_size]
            seqs = [mapped[i][0] for i in chunk]
            out = self._final_outputs(seqs)
            for i, (items, scores) in zip(chunk, self._top(out, seqs, k, exclude_seen)):
                results[i] = Recommendation(items=items, scores=scores, unknown_items=mapped[i][1])
        return results  # type: ignore[return-value]

    def recommend_one(self, session: Sequence[Any], k: int = 20, exclude_seen: bool | None = None) -> Recommendation:
        return self.recommend([session], k=k, exclude_seen=exclude_seen)[0]


@dataclass
class _SessionState:
    hidden: list[torch.Tensor]
    out: torch.Tensor
    seen: list[int]


class SessionScorer:
    """Live scoring: keeps each session's hidden state, one event at a time.

    ``feed(session_id, item_id)`` advances the session by one item and returns the top-k next
    items. An unknown item leaves the session's state unchanged and is reported in that call's
    ``unknown_items``. At most ``max_sessions`` sessions are kept; the least recently fed one is
    evicted beyond that (a later event for it starts it afresh). Thread-safe.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        k: int = 20,
        exclude_seen: bool | None = None,
        max_sessions: int = 100_000,
        device: str | torch.device | None = None,
    ):
        if k <= 0 or max_sessions <= 0:
            raise ValueError(f"k and max_sessions must be positive, got k={k}, max_sessions={max_sessions}")
        self._rec = Recommender(loaded, device=device)
        self.k, self.max_sessions = k, max_sessions
        self.exclude_seen = self._rec.exclude_seen if exclude_seen is None else bool(exclude_seen)
        self._states: OrderedDict[Hashable, _SessionState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, session_id: Hashable) -> bool:
        return session_id in self._states

    @torch.no_grad()
    def feed(self, session_id: Hashable, item_id: Any) -> Recommendation:
        rec = self._rec
        idx = rec.item_index(item_id)
        with self._lock:
            st = self._states.get(session_id)
            if st is not None:
                self._states.move_to_end(session_id)
            if idx is not None:
                hidden = st.hidden if st is not None else rec.model.init_hidden(1, device=rec.device)
                out, hidden = rec.model.step(torch.tensor([idx], device=rec.device), hidden)
                seen = (st.seen if st is not None else []) + [idx]
                st = _SessionState(hidden=hidden, out=out, seen=seen)
                self._states[session_id] = st
                while len(self._states) > self.max_sessions:
                    self._states.popitem(last=False)
                    self.evicted += 1
        unknown = [] if idx is not None else [item_id]
        if st is None:
            return rec._fallback(self.k, unknown)
        items, scores = rec._top(st.out, [st.seen], self.k, self.exclude_seen)[0]
        return Recommendation(items=items, scores=scores, unknown_items=unknown)

    def reset(self, session_id: Hashable) -> None:
        """Start the session over (its next item is scored from a zero state)."""
        with self._lock:
            self._states.pop(session_id, None)

    def close(self, session_id: Hashable) -> None:
        """The session has ended: forget it and free its state."""
        with self._lock:
            self._states.pop(session_id, None)
