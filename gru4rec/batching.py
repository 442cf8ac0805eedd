"""Session-parallel mini-batches (Hidasi et al. 2016), precomputed for a whole epoch as flat arrays.

B slots each walk through one session at a time; at every step a slot yields (current item, next
item). A *step* is one position of the schedule, i.e. one mini-batch (the trainer runs one optimiser
update per step and calls it a batch). When a slot's session is used up, the slot takes the next
session in start-time order at the very next step and its hidden state must be zeroed. Once no
session is left, finished slots stay empty and the batch shrinks; active slots keep their relative
order, so hidden rows stay aligned by indexing with `Schedule.kept_rows` (`Step.keep`).

The schedule: a session of length L (≥ 2; shorter ones yield nothing) occupies its slot for L - 1
consecutive steps. Sessions are handed out in order, each to the slot that frees first (ties: lowest
slot index) — a heap walk over *sessions*, not steps. Every (session, position) pair then gets
step = start_step + position and a slot; one counting sort by (step, slot) lays out the epoch in
step-major order, so a step is a slice ``[step_offsets[t]:step_offsets[t+1]]`` of flat arrays.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    """A whole epoch, step-major. Row r of step t is ``[step_offsets[t] + r]`` of the flat arrays."""

    inputs: np.ndarray  # int64 item index fed at this (step, slot)
    targets: np.ndarray  # int64 next item
    slots: np.ndarray  # int64 slot of each row (ascending within a step)
    sessions: np.ndarray  # int64 session number (index into the offsets given)
    positions: np.ndarray  # int64 position of the input item inside its session
    step_offsets: np.ndarray  # int64, n_steps + 1
    batch_size: int

    @property
    def n_steps(self) -> int:
        return len(self.step_offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.inputs)

    @property
    def resets(self) -> np.ndarray:
        """True for rows whose slot starts a new session (hidden state to zero)."""
        return self.positions == 0

    def step_sizes(self) -> list[int]:
        """Rows per step (never growing)."""
        return np.diff(self.step_offsets).tolist()

    def step_has_reset(self) -> list[bool]:
        """Per step: does any row start a new session?"""
        if not self.n_steps:
            return []
        return (np.add.reduceat(self.resets, self.step_offsets[:-1]) > 0).tolist()

    def kept_rows(self, t: int) -> np.ndarray | None:
        """Rows of step t-1 whose slots are still active at step t, in order; None when step t has as
        many rows as step t-1 (no slot ran dry; always so for t = 0)."""
        so = self.step_offsets
        if t == 0 or so[t + 1] - so[t] == so[t] - so[t - 1]:
            return None
        return np.searchsorted(self.slots[so[t - 1] : so[t]], self.slots[so[t] : so[t + 1]])


@dataclass(frozen=True)
class Step:
    """One mini-batch. ``keep`` (or None when the batch did not shrink) indexes the previous step's rows
    that are still active, in order; ``reset`` lists rows (of this step) that start a new session."""

    index: int
    inputs: np.ndarray
    targets: np.ndarray
    slots: np.ndarray
    reset: np.ndarray  # int64 row indices
    keep: np.ndarray | None


def _assign(lengths: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot and start step of every session (all of length ≥ 2), sessions taken in the given order."""
    n = len(lengths)
    slot = np.empty(n, np.int64)
    start = np.empty(n, np.int64)
    first = min(batch_size, n)
    slot[:first] = np.arange(first)
    start[:first] = 0
    if n > first:
        span = (lengths - 1).tolist()  # steps each session occupies its slot for
        heap = [(span[s], s) for s in range(first)]  # (free at step, slot)
        heapq.heapify(heap)
        for s in range(first, n):
            t, k = heap[0]
            slot[s] = k
            start[s] = t
            heapq.heapreplace(heap, (t + span[s], k))
    return slot, start


def build_schedule(offsets: np.ndarray, items: np.ndarray, batch_size: int) -> Schedule:
    """The epoch's session-parallel schedule for sessions ``items[offsets[s]:offsets[s+1]]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offsets = np.asarray(offsets, np.int64)
    items = np.asarray(items, np.int64)
    lengths_all = np.diff(offsets)
    used = np.flatnonzero(lengths_all >= 2)
    lengths = lengths_all[used]
    slot_s, start_s = _assign(lengths, batch_size)
    pairs = lengths - 1
    total = int(pairs.sum())
    # Expand per session to its (session, position) pairs.
    sess_rep = np.repeat(np.arange(len(used)), pairs)
    first_pair = np.cumsum(pairs) - pairs
    pos = np.arange(total, dtype=np.int64) - np.repeat(first_pair, pairs)
    pair_step = np.repeat(start_s, pairs) + pos
    slot = np.repeat(slot_s, pairs)
    n_steps = int(pair_step.max()) + 1 if total else 0
    order = np.argsort(pair_step * batch_size + slot, kind="stable")
    sess = used[sess_rep[order]]
    pos = pos[order]
    src = offsets[sess] + pos
    counts = np.bincount(pair_step, minlength=n_steps)
    step_offsets = np.zeros(n_steps + 1, np.int64)
    np.cumsum(counts, out=step_offsets[1:])
    return Schedule(
        inputs=items[src],
        targets=items[src + 1],
        slots=slot[order],
        sessions=sess,
        positions=pos,
        step_offsets=step_offsets,
        batch_size=batch_size,
    )


def iterate(schedule: Schedule, start_step: int = 0) -> Iterator[Step]:
    """Walk the schedule step by step (numpy slices; only a shrinking step does a searchsorted).
    The trainer walks the same way with precomputed per-step lists (`step_sizes`, `step_has_reset`,
    `kept_rows`)."""
    so = schedule.step_offsets.tolist()
    for t in range(start_step, schedule.n_steps):
        a, b = so[t], so[t + 1]
        reset = np.flatnonzero(schedule.resets[a:b])
        yield Step(t, schedule.inputs[a:b], schedule.targets[a:b], schedule.slots[a:b], reset, schedule.kept_rows(t))
