"""Session-based kNN baselines: SKNN, V-SKNN, STAN and VSTAN, one vectorised scorer.

Notation. The current session ``s`` holds ``L`` events so far; ``p_i`` is the last position
(1..L) of item ``i`` in it and ``|s|`` its number of distinct items. A training session ``n`` has
``|n|`` distinct items, ``P_n(j)`` the last position of item ``j`` in it and ``t_n`` the time of
its last event. Candidates are the training sessions sharing an item with ``s``; of them only
the ``sample_size`` most recent (largest ``t_n``) are kept, and the ``k`` most similar of those
(with a positive similarity) are the neighbours ``N(s)``. Every item ``j`` is then scored

    score(j) = Σ_{n ∈ N(s), j ∈ n} sim(s, n) · d(s, n) · e(s, n, j) · (1 + λ_idf · idf(j))

with ``idf(j) = ln(#training sessions / #training events of j)``.

- **SKNN** (Jannach & Ludewig 2017): ``sim = |s ∩ n| / sqrt(|s| |n|)`` (cosine) or
  ``|s ∩ n| / |s ∪ n|`` (jaccard); ``d = e = 1``, ``λ_idf = 0``.
- **V-SKNN** (Ludewig & Jannach 2018): the items of ``s`` are weighted by recency,
  ``w_i = 1``, ``p_i / L`` (``div``) or ``(p_i / L)^2`` (``quadratic``);
  ``sim = Σ_{i ∈ s∩n} w_i / |s|`` (``vec``) or ``Σ_{i ∈ s∩n} w_i / sqrt(Σ_{i ∈ s} w_i^2 · |n|)``
  (cosine); ``d = f(L − m_n + 1)`` with ``m_n = max_{i ∈ s∩n} p_i`` (how far back the last item
  shared with ``n`` is) and ``f(x) = 1, 1/x, 1/x^2, 1/log10(x + 1.7)`` or ``1 − 0.1x`` (``same``,
  ``div``, ``quadratic``, ``log``, ``linear``); ``e = 1``; ``λ_idf`` as configured.
- **STAN** (Garg et al. 2019): ``w_i = exp((p_i − L) / λ_spw)``, cosine as above times
  ``exp(−(t − t_n) / λ_snh)`` (``t`` = now, ``λ_snh`` in days); ``d = 1``;
  ``e = exp(−|P_n(j) − a_n| / λ_inh)`` with ``a_n = max_{i ∈ s∩n} P_n(i)`` (the position in
  ``n`` of its last item shared with ``s``).
- **VSTAN** (Latifi et al. 2022): STAN with ``d = exp((m_n − L) / λ_ipw)`` and the idf factor.

Every λ can be None (the factor is dropped). Details follow the widely used session-rec
implementations: duplicates count once (at their last position), the candidate pool is the union
of the sessions of all items of ``s``, ties among equally similar neighbours at the k-th place
are broken arbitrarily.

Vectorised, incremental state. For each session slot the scorer keeps, over all training
sessions ``n`` (a dense row, the evaluator's batch × training sessions): the weighted overlap
``Σ_{i ∈ s∩n} w_i``, ``a_n`` and ``m_n``; a new event only touches the sessions holding its
item (a column of the sparse session × item matrix). The recency weights are kept up to a factor
that is the same for every candidate of a slot (``p_i`` instead of ``p_i / L``; STAN's weights
decayed by ``exp(−1/λ_spw)`` per event), and ``exp(−(t − t_n)/λ_snh)`` is applied as
``exp((t_n − t_last)/λ_snh)`` (``t_last`` = the training data's last event): a common factor scales
all scores of a slot alike and leaves every rank unchanged. For the same reason V-SKNN's session
weightings are limited to those that factor this way (``same``, ``div``, ``quadratic``).

Long sessions. As in the papers and session-rec (whose V-SKNN ``last_n_clicks`` is off by default),
the whole session counts, not its last N items. Item scores are gathered from the neighbours'
items, or computed as one dense (slots × sessions) @ (sessions × items) product when the neighbours
are long; STAN's ``e`` reads only the items within ``λ_inh · ln(1e16)`` positions of the anchor and
skips neighbours weaker than 1e-16 of the slot's strongest (terms below float64 precision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch

from gru4rec.data.split_dir import SessionArrays
from gru4rec.evaluate import StepScorer

Similarity = Literal["cosine", "jaccard", "vec"]
SessionWeighting = Literal["same", "div", "quadratic"]
ScoreWeighting = Literal["same", "div", "quadratic", "log", "linear"]
_MS_PER_DAY = 86_400_000.0
_EPS = 1e-16  # STAN's item-position terms below this share of a slot's strongest neighbour are skipped
_DENSE_SPEEDUP = 300.0  # a dense product's cost per cell, relative to a gathered entry
_DENSE_MAX_CELLS = 50_000_000  # dense sessions × items matrix only when it is at most this large


@dataclass(frozen=True)
class SessionKNNConfig:
    """Hyperparameters; the defaults of each method are in ``KNN_DEFAULTS``."""

    k: int = 100  # neighbours
    sample_size: int = 500  # most recent candidate sessions considered (0 = all)
    similarity: Similarity = "cosine"
    weighting: SessionWeighting | None = None  # V-SKNN recency weights of the session's items
    weighting_score: ScoreWeighting | None = None  # V-SKNN decay d of a neighbour by its last shared item
    idf_weighting: float = 0.0  # λ_idf
    lambda_spw: float | None = None  # STAN: session item position weights
    lambda_snh: float | None = None  # STAN: neighbour recency, in days
    lambda_inh: float | None = None  # STAN: item position in the neighbour
    lambda_ipw: float | None = None  # VSTAN: neighbour decay by its last shared item

    def __post_init__(self) -> None:
        if self.k <= 0 or self.sample_size < 0:
            raise ValueError(f"k must be positive and sample_size >= 0, got k={self.k}, sample_size={self.sample_size}")
        if self.weighting is not None and self.lambda_spw is not None:
            raise ValueError("choose either V-SKNN's weighting or STAN's lambda_spw, not both")
        if self.weighting_score is not None and self.lambda_ipw is not None:
            raise ValueError("choose either V-SKNN's weighting_score or VSTAN's lambda_ipw, not both")
        if self.similarity == "jaccard" and (self.weighting not in (None, "same") or self.lambda_spw is not None):
            raise ValueError("jaccard similarity takes unweighted sessions (no weighting / lambda_spw)")
        for f in fields(self):
            if f.name.startswith("lambda_") and getattr(self, f.name) is not None and getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive or None, got {getattr(self, f.name)}")


# Defaults of each method: the session-rec framework's published settings for the YooChoose
# (RSC15) data (conf/save/rsc15/window: the baselines file for SKNN and V-SKNN, the "-mrr" runs for
# STAN and VSTAN); benchmarks/session_knn.py shows they reproduce its figures.
KNN_DEFAULTS: dict[str, SessionKNNConfig] = {
    "sknn": SessionKNNConfig(k=500, sample_size=10000, similarity="jaccard"),
    "v-sknn": SessionKNNConfig(
        k=100, sample_size=1000, similarity="vec", weighting="quadratic", weighting_score="quadratic"
    ),
    "stan": SessionKNNConfig(k=1000, sample_size=10000, lambda_spw=1e-5, lambda_snh=10, lambda_inh=2),
    "vstan": SessionKNNConfig(
        k=1500, sample_size=10000, lambda_spw=0.5, lambda_snh=5, lambda_inh=2, lambda_ipw=2, idf_weighting=2
    ),
}


# --------------------------------------------------------------------------------------------
# The training sessions as sparse (CSR) arrays
# --------------------------------------------------------------------------------------------
@dataclass
class _Index:
    """Training sessions numbered by recency (0 = the oldest end time), as CSR arrays both ways."""

    sess_ptr: torch.Tensor  # S + 1: session n's distinct items are sess_item[sess_ptr[n]:sess_ptr[n+1]]
    sess_item: torch.Tensor
    sess_pos: torch.Tensor  # their last positions in n (1-based, events)
    item_ptr: torch.Tensor  # I + 1: the sessions holding item i (ascending), and where i is in sess_*
    item_sess: torch.Tensor
    item_entry: torch.Tensor  # 1 + the index of (n, i) in sess_item / sess_pos
    n_distinct: torch.Tensor  # |n|, float64
    end_ms: np.ndarray  # t_n
    idf: torch.Tensor  # per item, float64 (0 for items absent from training)

    @property
    def n_sessions(self) -> int:
        return len(self.n_distinct)


def _build_index(sessions: SessionArrays, n_items: int) -> _Index:
    offsets = np.asarray(sessions.offsets, dtype=np.int64)
    items = np.asarray(sessions.items, dtype=np.int64)
    lengths = np.diff(offsets)
    n_sessions = len(lengths)
    sid = np.repeat(np.arange(n_sessions), lengths)
    pos = np.arange(len(items)) - offsets[sid] + 1
    # The last occurrence of each (session, item): sort by (session, item, position), keep group ends.
    order = np.lexsort((pos, items, sid))
    last = np.r_[(sid[order][1:] != sid[order][:-1]) | (items[order][1:] != items[order][:-1]), True]
    e_sid, e_item, e_pos = sid[order][last], items[order][last], pos[order][last]
    # Renumber sessions by end time (ties: original order) so that "most recent" = largest index.
    times = np.asarray(sessions.timestamps, dtype=np.int64)
    end_ms = times[offsets[1:] - 1] if n_sessions else np.zeros(0, np.int64)
    rank = np.empty(n_sessions, np.int64)
    rank[np.lexsort((np.arange(n_sessions), end_ms))] = np.arange(n_sessions)
    e_sid = rank[e_sid]
    by_sess = np.lexsort((e_pos, e_sid))
    by_item = np.lexsort((e_sid, e_item))
    entry_of = np.empty(len(by_sess), np.int64)
    entry_of[by_sess] = np.arange(len(by_sess))
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    idf = np.where(counts > 0, np.log(max(n_sessions, 1) / np.maximum(counts, 1)), 0.0)
    t = torch.from_numpy
    return _Index(
        sess_ptr=t(np.r_[0, np.cumsum(np.bincount(e_sid, minlength=n_sessions))]),
        sess_item=t(e_item[by_sess]),
        sess_pos=t(e_pos[by_sess]),
        item_ptr=t(np.r_[0, np.cumsum(np.bincount(e_item, minlength=n_items))]),
        item_sess=t(e_sid[by_item]),
        item_entry=t(entry_of[by_item] + 1),
        n_distinct=t(np.bincount(e_sid, minlength=n_sessions).astype(np.float64)),
        end_ms=np.sort(end_ms),
        idf=t(idf),
    )


def _expand(ptr: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For CSR rows ``keys``: (which key each entry belongs to, the entries' flat indices)."""
    starts = ptr[keys]
    lengths = ptr[keys + 1] - starts
    owner = torch.repeat_interleave(torch.arange(len(keys)), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    return owner, starts[owner] + torch.arange(len(owner)) - first[owner]


# --------------------------------------------------------------------------------------------
# Per-slot state
# --------------------------------------------------------------------------------------------
@dataclass
class _State:
    """One row per session slot; the wide ones span all training sessions (see the module doc)."""

    length: torch.Tensor  # L (int64)
    pos: torch.Tensor  # p_i, slots × items (int64, 0 = not in the session)
    n_distinct: torch.Tensor  # |s| (float64)
    wsq: torch.Tensor  # Σ w_i^2 (float64)
    overlap: torch.Tensor  # Σ_{i ∈ s∩n} w_i, slots × sessions (float64)
    anchor: torch.Tensor  # 1 + the sess_* index of a_n, slots × sessions (int64, 0 = not a candidate)
    last_shared: torch.Tensor  # m_n, slots × sessions (int64)

    def tensors(self) -> list[str]:
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]


class SessionKNN(StepScorer):
    """SKNN / V-SKNN / STAN / VSTAN (one :class:`SessionKNNConfig`) as an evaluator :class:`StepScorer`."""

    def __init__(self, sessions: SessionArrays, n_items: int, config: SessionKNNConfig | None = None, **overrides):
        self.config = replace(config or SessionKNNConfig(), **overrides)
        self.n_items = int(n_items)
        self.index = _build_index(sessions, self.n_items)
        c = self.config
        last = float(self.index.end_ms[-1]) if self.index.n_sessions else 0.0
        snh = c.lambda_snh * _MS_PER_DAY if c.lambda_snh is not None else None
        # exp((t_n - t_last) / λ_snh): the time decay up to a factor common to all neighbours.
        age = torch.from_numpy(self.index.end_ms.astype(np.float64) - last)
        self.time_weight = torch.exp(age / snh) if snh is not None else None
        self.item_factor = 1.0 + c.idf_weighting * self.index.idf if c.idf_weighting else None
        self._dense: torch.Tensor | None = None  # sessions × items, built when first needed
        self.device = torch.device("cpu")

    # ---- the evaluator's interface ----------------------------------------------------------
    def begin(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def init_state(self, batch_size: int, device: torch.device) -> _State:
        b, s = batch_size, self.index.n_sessions
        i64, f64 = torch.int64, torch.float64
        return _State(
            length=torch.zeros(b, dtype=i64),
            pos=torch.zeros(b, self.n_items, dtype=i64),
            n_distinct=torch.zeros(b, dtype=f64),
            wsq=torch.zeros(b, dtype=f64),
            overlap=torch.zeros(b, s, dtype=f64),
            anchor=torch.zeros(b, s, dtype=i64),
            last_shared=torch.zeros(b, s, dtype=i64),
        )

    def reset_rows(self, state: _State, rows: torch.Tensor) -> _State:
        rows = rows.cpu()
        for name in state.tensors():
            getattr(state, name)[rows] = 0
        return state

    def select_rows(self, state: _State, keep: torch.Tensor) -> _State:
        keep = keep.cpu()
        return replace(state, **{name: getattr(state, name)[keep] for name in state.tensors()})

    def step(self, items: torch.Tensor, state: _State) -> tuple[torch.Tensor, _State]:
        items = items.cpu().long()
        self._add_events(items, state)
        rows, neighbours, weights = self._neighbours(state)
        scores = self._score_items(rows, neighbours, weights, state, len(items))
        return scores.to(self.device), state

    # ---- one event per slot -----------------------------------------------------------------
    def _item_weight(self, position: torch.Tensor) -> torch.Tensor:
        """V-SKNN's weight of an item at ``position`` (1-based; 0 = absent), up to the slot's factor."""
        p = position.to(torch.float64)
        w = {None: torch.ones_like(p), "same": torch.ones_like(p), "div": p, "quadratic": p * p}[self.config.weighting]
        return torch.where(position > 0, w, torch.zeros_like(p))

    def _add_events(self, items: torch.Tensor, st: _State) -> None:
        c = self.config
        slots = torch.arange(len(items))
        st.length += 1
        old = st.pos[slots, items].clone()
        st.pos[slots, items] = st.length
        st.n_distinct += (old == 0).to(torch.float64)
        if c.lambda_spw is not None:  # w_i = exp((p_i - L) / λ_spw): older weights decay each event
            rho = math.exp(-1.0 / c.lambda_spw)
            w_old = torch.where(old > 0, torch.exp((old - st.length).to(torch.float64) / c.lambda_spw), 0.0)
            st.overlap *= rho
            st.wsq = st.wsq * rho * rho + 1.0 - w_old * w_old
            delta = 1.0 - w_old
        else:
            w_new, w_old = self._item_weight(st.length), self._item_weight(old)
            st.wsq += w_new * w_new - w_old * w_old
            delta = w_new - w_old
        slot, entry = _expand(self.index.item_ptr, items)
        sess = self.index.item_sess[entry]
        st.overlap[slot, sess] += delta[slot]
        st.anchor[slot, sess] = torch.maximum(st.anchor[slot, sess], self.index.item_entry[entry])
        st.last_shared[slot, sess] = st.length[slot]

    # ---- neighbours -------------------------------------------------------------------------
    def _similarity(self, st: _State) -> torch.Tensor:
        c, n_len = self.config, self.index.n_distinct
        ov = st.overlap
        if c.similarity == "vec":
            sim = ov / st.n_distinct.clamp(min=1).unsqueeze(1)
        elif c.similarity == "jaccard":
            sim = ov / (st.n_distinct.unsqueeze(1) + n_len - ov).clamp(min=1)
        else:
            sim = ov / torch.sqrt(st.wsq.clamp(min=1e-300).unsqueeze(1) * n_len.clamp(min=1))
        if self.time_weight is not None:
            sim = sim * self.time_weight
        return sim

    def _neighbours(self, st: _State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k neighbours of every slot: (slot, session, sim · d) triples."""
        c = self.config
        candidate = st.anchor > 0
        n_sessions = candidate.shape[1]
        if c.sample_size and c.sample_size < n_sessions:  # keep the sample_size most recent candidates
            seen = torch.cumsum(candidate.to(torch.int32), dim=1)
            candidate &= seen > seen[:, -1:] - c.sample_size
        sim = torch.where(candidate, self._similarity(st), 0.0)
        values, sessions = torch.topk(sim, min(c.k, n_sessions), dim=1, sorted=False)
        slot, nb = torch.nonzero(values > 0, as_tuple=True)
        sessions = sessions[slot, nb]
        return slot, sessions, values[slot, nb] * self._neighbour_decay(st, slot, sessions)

    def _neighbour_decay(self, st: _State, slot: torch.Tensor, sessions: torch.Tensor) -> torch.Tensor | float:
        c = self.config
        back = (st.length[slot] - st.last_shared[slot, sessions]).to(torch.float64)  # L - m_n
        if c.lambda_ipw is not None:
            return torch.exp(-back / c.lambda_ipw)
        x = back + 1
        if c.weighting_score in (None, "same"):
            return 1.0
        if c.weighting_score == "div":
            return 1.0 / x
        if c.weighting_score == "quadratic":
            return 1.0 / (x * x)
        if c.weighting_score == "log":
            return 1.0 / torch.log10(x + 1.7)
        return torch.where(x <= 100, 1.0 - 0.1 * x, 0.0)  # linear

    # ---- item scores ------------------------------------------------------------------------
    def _score_items(
        self, slot: torch.Tensor, sessions: torch.Tensor, weight: torch.Tensor, st: _State, n_slots: int
    ) -> torch.Tensor:
        """Σ over each slot's neighbours of weight · e · 1[j ∈ n], times the idf factor."""
        scores = torch.zeros(n_slots, self.n_items, dtype=torch.float64)
        if self.config.lambda_inh is None:
            self._add_neighbour_items(scores, slot, sessions, weight)
        else:
            self._add_positional(scores, slot, sessions, weight, st.anchor[slot, sessions] - 1)
        if self.item_factor is not None:
            scores *= self.item_factor
        return scores

    def _add_neighbour_items(self, scores, slot, sessions, weight) -> None:
        """scores[slot] += weight · (the neighbour's items): a sparse gather, or one dense product
        (slots × sessions) @ (sessions × items) when the neighbours hold many items (long sessions)."""
        idx = self.index
        n_entries = int((idx.sess_ptr[sessions + 1] - idx.sess_ptr[sessions]).sum())
        dense_cost = scores.shape[0] * idx.n_sessions * self.n_items / _DENSE_SPEEDUP
        if n_entries > dense_cost and idx.n_sessions * self.n_items <= _DENSE_MAX_CELLS:
            coef = torch.zeros(scores.shape[0], idx.n_sessions, dtype=torch.float64)
            coef[slot, sessions] = weight
            scores += coef @ self._dense_items()
            return
        owner, entry = _expand(idx.sess_ptr, sessions)
        scores.view(-1).index_add_(0, slot[owner] * self.n_items + idx.sess_item[entry], weight[owner])

    def _dense_items(self) -> torch.Tensor:
        if self._dense is None:
            idx = self.index
            rows = torch.repeat_interleave(torch.arange(idx.n_sessions), idx.sess_ptr[1:] - idx.sess_ptr[:-1])
            self._dense = torch.zeros(idx.n_sessions, self.n_items, dtype=torch.float64)
            self._dense[rows, idx.sess_item] = 1.0
        return self._dense

    def _add_positional(self, scores, slot, sessions, weight, anchor) -> None:
        """scores[slot, j] += weight · exp(-|P_n(j) - a_n| / λ_inh) over the neighbours' items ``j``.

        Terms below ``_EPS`` × the slot's largest neighbour weight are skipped: whole neighbours
        that weak, and items farther than λ_inh · ln(1/_EPS) positions from the anchor (then only a
        window of items around the anchor is read). They change no score by more than that share.
        """
        idx, lam = self.index, self.config.lambda_inh
        strongest = torch.zeros(scores.shape[0], dtype=torch.float64).scatter_reduce_(0, slot, weight, "amax")
        strong = weight >= _EPS * strongest[slot]
        slot, sessions, weight, anchor = slot[strong], sessions[strong], weight[strong], anchor[strong]
        start, end = idx.sess_ptr[sessions], idx.sess_ptr[sessions + 1]
        half = int(math.ceil(lam * math.log(1 / _EPS)))
        if int((end - start).sum()) <= len(sessions) * (2 * half + 1):  # short sessions: every item
            owner, entry = _expand(idx.sess_ptr, sessions)
        else:  # a window of the neighbour's items around the anchor
            window = anchor.unsqueeze(1) + torch.arange(-half, half + 1)
            inside = (window >= start.unsqueeze(1)) & (window < end.unsqueeze(1))
            owner, entry = torch.nonzero(inside, as_tuple=True)[0], window[inside]
        distance = (idx.sess_pos[entry] - idx.sess_pos[anchor[owner]]).abs().to(torch.float64)
        w = weight[owner] * torch.exp(-distance / lam)
        scores.view(-1).index_add_(0, slot[owner] * self.n_items + idx.sess_item[entry], w)
