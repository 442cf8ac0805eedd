"""Next-item evaluation over the full catalogue, session-parallel and vectorised.

Every event but the first of each test session is a target, predicted from the items before it
in that session (the hidden state starts at zero for every session). Sessions are processed the
way training processes them: ``B`` slots, each slot runs one session; a slot whose session has no
targets left takes the next session (its state is zeroed) or, when none is left, is dropped, so
the batch shrinks at the end and every target — including the tail of the last session — is
scored exactly once.

The rank of a target is ``1 + #items scoring strictly higher`` plus, for the items tied with it:
all of them (``conservative``, the default), none (``standard``, optimistic) or half
(``median``). It is computed by comparison counting against the target's score, not by sorting.

Anything that scores items step by step can be evaluated: a :class:`StepScorer` (``init_state``,
``step`` → scores, ``reset_rows``, ``select_rows``). :class:`ModelScorer` adapts the GRU4Rec model
API (``init_hidden``/``step``/``score``), which :class:`PopularityModel` also exposes, so
``evaluate_model`` runs the model and the popularity baseline through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from gru4rec.data.split_dir import SessionArrays
from gru4rec.errors import ConfigError, TrainingError

Ties = Literal["conservative", "standard", "median"]
TIES: tuple[str, ...] = get_args(Ties)
DEFAULT_KS = (1, 5, 10, 20)
# Metrics reported per cut-off K, named "<metric>@<K>" (e.g. "mrr@20").
METRICS = ("recall", "mrr", "ndcg", "coverage", "popularity")


def check_metric_name(name: str, ks: Iterable[int], setting: str = "metric") -> str:
    """``name`` must be ``<metric>@<K>`` with a known metric and a K that is evaluated; else ValueError."""
    metric, _, k = name.partition("@")
    valid = [f"{m}@{kk}" for m in METRICS for kk in sorted(set(ks))]
    if metric not in METRICS or not k.isdigit() or int(k) not in set(ks):
        raise ValueError(f"{setting} {name!r} is not an evaluated metric; choose one of {', '.join(valid)}")
    return name


# --------------------------------------------------------------------------------------------
# Ranks and metrics
# --------------------------------------------------------------------------------------------
def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ConfigError(f"ties must be one of {', '.join(TIES)}; got {ties!r}")


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, ties: Ties = "conservative") -> torch.Tensor:
    """Rank (1 = best) of each row's target among all columns; float64 (``median`` gives halves).

    ``scores`` is B × N, ``targets`` B item indices. Items tied with the target (other than the
    target itself) count as ranked above it for ``conservative``, not at all for ``standard`` and
    half for ``median``.
    """
    _check_ties(ties)
    scores = torch.as_tensor(scores)
    targets = torch.as_tensor(targets, device=scores.device).long()
    ts = scores.gather(1, targets.view(-1, 1))
    if torch.isnan(ts).any():
        raise TrainingError("the model produced NaN scores for some targets; it cannot be evaluated (diverged?)")
    rank = torch.count_nonzero(scores > ts, dim=1).to(torch.float64) + 1.0
    if ties != "standard":
        tied = (torch.count_nonzero(scores == ts, dim=1) - 1).to(torch.float64)
        rank += tied if ties == "conservative" else tied / 2.0
    return rank


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k <= 0 for k in out):
        raise ConfigError(f"ks must be a non-empty list of positive cut-offs, got {list(ks)}")
    return out


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray | Sequence[float], ks: Iterable[int] = DEFAULT_KS) -> dict:
    """recall@K (hit rate), MRR@K and NDCG@K averaged over the given ranks (float64)."""
    ks = _check_ks(ks)
    r = torch.as_tensor(ranks, dtype=torch.float64)
    n = r.numel()
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        if n == 0:
            out[f"recall@{k}"] = out[f"mrr@{k}"] = out[f"ndcg@{k}"] = float("nan")
            continue
        out[f"recall@{k}"] = hit.to(torch.float64).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / r, torch.zeros_like(r)).mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r)).mean().item()
    return out


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------
class StepScorer:
    """Scores the whole catalogue one event per session slot.

    The default state handling assumes the state is a list of batch-first tensors (as GRU4Rec's
    hidden state); a scorer with another kind of state (e.g. a kNN baseline keeping each slot's
    items) overrides ``reset_rows`` and ``select_rows``.
    """

    n_items: int

    def init_state(self, batch_size: int, device: torch.device) -> Any:
        raise NotImplementedError

    def step(self, items: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Feed one item index per slot; return (B × n_items scores of the next item, new state)."""
        raise NotImplementedError

    def reset_rows(self, state: Any, rows: torch.Tensor) -> Any:
        """Start a new session in the given slots (zero their state)."""
        for h in state:
            h[rows] = 0
        return state

    def select_rows(self, state: Any, keep: torch.Tensor) -> Any:
        """Keep only the given slots (the batch shrinks at the end)."""
        return [h[keep] for h in state]

    # Optional hooks around a whole evaluation (e.g. eval mode, no_grad).
    def begin(self, device: torch.device) -> None:  # noqa: B027
        pass

    def end(self) -> None:  # noqa: B027
        pass


class ModelScorer(StepScorer):
    """Adapts anything with ``init_hidden(B, device)``, ``step(items, hidden)`` and ``score(out)``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.n_items = int(model.n_items)
        self._was_training = False
        self._device: torch.device | None = None

    def begin(self, device: torch.device) -> None:
        self._was_training = self.model.training
        params = list(self.model.parameters()) + list(self.model.buffers())
        self._device = params[0].device if params else None
        self.model.to(device)
        self.model.eval()

    def end(self) -> None:
        self.model.train(self._was_training)
        if self._device is not None:
            self.model.to(self._device)

    def init_state(self, batch_size: int, device: torch.device) -> list[torch.Tensor]:
        return self.model.init_hidden(batch_size, device=device)

    def step(self, items: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, state = self.model.step(items, state)
        return self.model.score(out), state


class PopularityModel(nn.Module):
    """Baseline: every item scored by its train count, whatever the session.

    Exposes GRU4Rec's ``init_hidden``/``step``/``score`` so ``evaluate_model`` runs it unchanged.
    """

    def __init__(self, item_counts: np.ndarray | torch.Tensor | Sequence[int]):
        super().__init__()
        counts = torch.tensor(np.asarray(item_counts, dtype=np.float64))
        if counts.ndim != 1 or counts.numel() == 0:
            raise ValueError(f"item_counts must be a non-empty 1-D array, got shape {tuple(counts.shape)}")
        self.register_buffer("counts", counts)
        self.n_items = counts.numel()

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> list[torch.Tensor]:
        return [torch.zeros(batch_size, 0, device=device if device is not None else self.counts.device)]

    def step(self, items: torch.Tensor, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return hidden[0], hidden

    def score(self, out: torch.Tensor, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        row = self.counts if item_idx is None else self.counts[item_idx]
        return row.unsqueeze(0).expand(out.shape[0], -1)


# --------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------
def _exclusion(exclude: Any, n_items: int, device: torch.device) -> tuple[bool, torch.Tensor | None]:
    """(exclude_seen, static bool mask of excluded items or None)."""
    if exclude is None:
        return False, None
    if isinstance(exclude, str):
        if exclude != "seen":
            raise ConfigError(f"exclude must be None, 'seen' or a list of item indices; got {exclude!r}")
        return True, None
    idx = torch.as_tensor(np.asarray(list(exclude), dtype=np.int64))
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_items):
        raise ConfigError(f"exclude holds item indices outside 0..{n_items - 1}")
    mask = torch.zeros(n_items, dtype=torch.bool, device=device)
    mask[idx.to(device)] = True
    return False, mask


def evaluate_scorer(
    scorer: StepScorer,
    sessions: SessionArrays,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    ties: Ties = "conservative",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    item_counts: np.ndarray | None = None,
    exclude: Any = None,
) -> dict[str, float]:
    """Evaluate any :class:`StepScorer` on the sessions; see :func:`evaluate_model`."""
    run = _setup(scorer, sessions, ks, ties, batch_size, device, item_counts, exclude)
    tally = _Tally.empty(run)
    scorer.begin(run.device)
    try:
        with torch.no_grad():
            _score_sessions(scorer, run, tally)
    finally:
        scorer.end()
    return tally.metrics(run)


@dataclass(frozen=True)
class _Run:
    """An evaluation's checked settings and its sessions as tensors on the device."""

    ks: tuple[int, ...]
    ties: Ties
    batch_size: int
    device: torch.device
    n_items: int
    k_max: int  # the longest top-K list that is needed
    exclude_seen: bool
    static_mask: torch.Tensor | None  # items never recommended
    pop: torch.Tensor | None  # train count per item / the largest count
    items: torch.Tensor  # all events' items, sessions contiguous
    starts: torch.Tensor  # first event of each session with a target
    ends: torch.Tensor  # one past its last event
    n_sessions: int


def _setup(
    scorer: StepScorer,
    sessions: SessionArrays,
    ks: Iterable[int],
    ties: Ties,
    batch_size: int,
    device: str | torch.device,
    item_counts: np.ndarray | None,
    exclude: Any,
) -> _Run:
    """Check every argument (before any work) and move what the loop reads onto the device."""
    _check_ties(ties)
    ks = _check_ks(ks)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    n_items = int(scorer.n_items)
    exclude_seen, static_mask = _exclusion(exclude, n_items, device)
    pop = _popularity(item_counts, n_items, device)
    items, starts, ends = _session_bounds(sessions, n_items, device)
    return _Run(
        ks=ks,
        ties=ties,
        batch_size=batch_size,
        device=device,
        n_items=n_items,
        k_max=min(max(ks), n_items),
        exclude_seen=exclude_seen,
        static_mask=static_mask,
        pop=pop,
        items=items,
        starts=starts,
        ends=ends,
        n_sessions=len(starts),
    )


def _popularity(item_counts: Any, n_items: int, device: torch.device) -> torch.Tensor | None:
    """Train counts scaled to [0, 1] by the largest (all zero stays zero), or None."""
    if item_counts is None:
        return None
    counts = torch.tensor(np.asarray(item_counts, dtype=np.float64), device=device)
    if counts.shape != (n_items,):
        raise ConfigError(f"item_counts has shape {tuple(counts.shape)}, the scorer has {n_items} items")
    top = counts.max()
    return counts / top if top > 0 else counts


def _session_bounds(
    sessions: SessionArrays, n_items: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items, starts, ends) on the device; only sessions with at least one target (2+ events) are kept."""
    offsets = np.asarray(sessions.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    scored = np.flatnonzero(lengths >= 2)
    items = torch.tensor(np.asarray(sessions.items, dtype=np.int64), device=device)
    # An out-of-range index would fail deep in the scorer (or silently wrap): say what is wrong.
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ConfigError(f"session items hold indices outside 0..{n_items - 1} (wrong items index for this model?)")
    starts = torch.as_tensor(offsets[scored], device=device)
    ends = torch.as_tensor(offsets[scored + 1], device=device)
    return items, starts, ends


@dataclass
class _Tally:
    """What the loop accumulates: the targets' ranks and, per K, the top-K lists' coverage and popularity."""

    rank_parts: list[torch.Tensor]
    covered: dict[int, torch.Tensor]  # items in any top-K list
    pop_sum: dict[int, torch.Tensor]  # summed popularity of the recommended items
    pop_n: dict[int, int]  # number of recommended items

    @classmethod
    def empty(cls, run: _Run) -> _Tally:
        return cls(
            rank_parts=[],
            covered={k: torch.zeros(run.n_items, dtype=torch.bool, device=run.device) for k in run.ks},
            pop_sum={k: torch.zeros((), dtype=torch.float64, device=run.device) for k in run.ks},
            pop_n=dict.fromkeys(run.ks, 0),
        )

    def metrics(self, run: _Run) -> dict[str, float]:
        ranks = torch.cat(self.rank_parts) if self.rank_parts else torch.zeros(0, dtype=torch.float64)
        result: dict[str, float] = metrics_from_ranks(ranks, run.ks)
        for k in run.ks:
            result[f"coverage@{k}"] = self.covered[k].sum().item() / run.n_items
            if run.pop is not None:
                pop_n = self.pop_n[k]
                result[f"popularity@{k}"] = self.pop_sum[k].item() / pop_n if pop_n else float("nan")
        result["n_targets"] = int(ranks.numel())
        result["n_sessions"] = int(run.n_sessions)
        return result


def _score_sessions(scorer: StepScorer, run: _Run, tally: _Tally) -> None:
    """The hot loop: one step scores the next target of every slot; slots refill as sessions end."""
    # Plain locals: the loop body reads them on every step.
    items, starts, ends, device = run.items, run.starts, run.ends, run.device
    n_items, ks, k_max, ties = run.n_items, run.ks, run.k_max, run.ties
    static_mask, pop = run.static_mask, run.pop
    rank_parts, covered, pop_sum, pop_n = tally.rank_parts, tally.covered, tally.pop_sum, tally.pop_n
    b = min(run.batch_size, run.n_sessions)
    pos, end = starts[:b].clone(), ends[:b].clone()
    nxt = b
    state = scorer.init_state(b, device) if b else None
    seen = torch.zeros(b, n_items, dtype=torch.bool, device=device) if run.exclude_seen else None
    while pos.numel():
        inp, tgt = items[pos], items[pos + 1]
        scores, state = scorer.step(inp, state)
        rows = torch.arange(pos.numel(), device=device)
        if seen is not None:
            seen[rows, inp] = True
        if seen is not None or static_mask is not None:
            mask = seen if static_mask is None else (static_mask if seen is None else seen | static_mask)
            # Excluded items cannot be recommended: an excluded target (a repeat of an item seen
            # in the session) is a miss at every K, as it would be for the deployed recommender.
            missed = mask[tgt] if mask.dim() == 1 else mask.gather(1, tgt.view(-1, 1)).view(-1)
            scores = scores.masked_fill(mask, -math.inf)
            rank_parts.append(ranks_from_scores(scores, tgt, ties).masked_fill(missed, math.inf))
        else:
            rank_parts.append(ranks_from_scores(scores, tgt, ties))
        top = torch.topk(scores, k_max, dim=1).indices
        for k in ks:
            kk = min(k, n_items)
            covered[k][top[:, :kk].reshape(-1)] = True
            if pop is not None:
                pop_sum[k] += pop[top[:, :kk]].sum()
                pop_n[k] += top[:, :kk].numel()

        pos += 1
        done = pos + 1 >= end  # no target left in this slot's session
        done_idx = torch.nonzero(done).view(-1)
        if done_idx.numel():
            pos, end, state, seen, nxt = _next_sessions(scorer, run, done, done_idx, pos, end, state, seen, nxt)


def _next_sessions(
    scorer: StepScorer,
    run: _Run,
    done: torch.Tensor,
    done_idx: torch.Tensor,
    pos: torch.Tensor,
    end: torch.Tensor,
    state: Any,
    seen: torch.Tensor | None,
    nxt: int,
) -> tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor | None, int]:
    """Slots whose session ended take the next sessions; when none are left they are dropped.

    Returns the new (pos, end, state, seen, nxt).
    """
    starts, ends = run.starts, run.ends
    n_new = min(done_idx.numel(), run.n_sessions - nxt)
    if n_new:
        refill = done_idx[:n_new]
        pos[refill] = starts[nxt : nxt + n_new]
        end[refill] = ends[nxt : nxt + n_new]
        state = scorer.reset_rows(state, refill)
        if seen is not None:
            seen[refill] = False
        nxt += n_new
    if n_new < done_idx.numel():
        keep_mask = torch.ones_like(done)
        keep_mask[done_idx[n_new:]] = False
        keep = torch.nonzero(keep_mask).view(-1)
        pos, end = pos[keep], end[keep]
        if keep.numel():
            state = scorer.select_rows(state, keep)
            if seen is not None:
                seen = seen[keep]
    return pos, end, state, seen, nxt


def evaluate_model(
    model: nn.Module,
    sessions: SessionArrays,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    ties: Ties = "conservative",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    item_counts: np.ndarray | None = None,
    exclude: Any = None,
) -> dict[str, float]:
    """Next-item metrics of a model (GRU4Rec, PopularityModel, or a :class:`StepScorer`).

    Returns ``recall@K``, ``mrr@K``, ``ndcg@K``, ``coverage@K`` (fraction of the catalogue that
    appears in any top-K list) for each K, ``popularity@K`` (mean train count of the recommended
    items, normalised by the largest count, so in [0, 1]) when ``item_counts`` is given, and
    ``n_targets`` (= Σ(len(session) − 1)), ``n_sessions`` (sessions with at least one target).

    ``exclude``: None; ``"seen"`` (items already in the session cannot be recommended); or item
    indices never recommended. Excluded items are removed from the ranking, and a target that is
    excluded (with ``"seen"``: an item the session already holds) counts as a miss at every K.

    The model is put in eval mode and on ``device`` for the evaluation; its previous mode and
    device are restored afterwards.
    """
    scorer = model if isinstance(model, StepScorer) else ModelScorer(model)
    return evaluate_scorer(
        scorer,
        sessions,
        ks=ks,
        ties=ties,
        batch_size=batch_size,
        device=device,
        item_counts=item_counts,
        exclude=exclude,
    )
