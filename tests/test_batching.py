"""Session-parallel batching: the vectorised schedule against a slow, obviously-correct loop."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.batching import build_schedule, iterate


def reference(offsets, batch_size):
    """Slot-by-slot simulation: each step every active slot emits (session, position); a slot whose
    session is used up takes the next session of length >= 2 (in order) or goes dark."""
    sessions = [s for s in range(len(offsets) - 1) if offsets[s + 1] - offsets[s] >= 2]
    queue = list(sessions)
    slots = [None] * batch_size  # [session, position]
    for k in range(batch_size):
        if queue:
            slots[k] = [queue.pop(0), 0]
    steps = []
    while any(s is not None for s in slots):
        rows = []
        for k in range(batch_size):
            if slots[k] is not None:
                sess, pos = slots[k]
                rows.append((k, sess, pos))
        steps.append(rows)
        for k in range(batch_size):
            if slots[k] is None:
                continue
            slots[k][1] += 1
            sess, pos = slots[k]
            if pos + 1 >= offsets[sess + 1] - offsets[sess]:
                slots[k] = [queue.pop(0), 0] if queue else None
    return steps


def _offsets(lengths):
    return np.r_[0, np.cumsum(lengths)].astype(np.int64)


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=0, max_size=40), batch_size=st.integers(1, 7))
def test_schedule_matches_reference(lengths, batch_size):
    offsets = _offsets(lengths)
    items = np.arange(offsets[-1], dtype=np.int64) * 10 + 3
    sched = build_schedule(offsets, items, batch_size)
    ref = reference(offsets, batch_size)
    assert sched.n_steps == len(ref)
    # Every (session, position) pair exactly once, same multiset as the reference.
    got = Counter(zip(sched.sessions.tolist(), sched.positions.tolist()))
    want = Counter((s, p) for rows in ref for _, s, p in rows)
    assert got == want
    assert all(c == 1 for c in got.values())
    assert sched.n_events == sum(max(n - 1, 0) for n in lengths)
    # Step by step: same slots, sessions, positions; input/target are consecutive items.
    for step, rows in zip(iterate(sched), ref):
        assert step.slots.tolist() == [k for k, _, _ in rows]
        a = sched.step_offsets[step.index]
        n = len(step.slots)
        assert sched.sessions[a : a + n].tolist() == [s for _, s, _ in rows]
        assert sched.positions[a : a + n].tolist() == [p for _, _, p in rows]
        src = offsets[sched.sessions[a : a + n]] + sched.positions[a : a + n]
        assert np.array_equal(step.inputs, items[src]) and np.array_equal(step.targets, items[src + 1])
        # Hidden resets exactly where a slot starts a session.
        assert step.reset.tolist() == [r for r, (_, _, p) in enumerate(rows) if p == 0]


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(2, 8), min_size=1, max_size=30), batch_size=st.integers(1, 6))
def test_keep_tracks_slots_when_the_batch_shrinks(lengths, batch_size):
    sched = build_schedule(_offsets(lengths), np.arange(sum(lengths)), batch_size)
    prev = None
    for step in iterate(sched):
        if prev is not None:
            if step.keep is None:
                assert np.array_equal(step.slots, prev)
            else:
                assert len(step.slots) < len(prev)
                assert np.array_equal(prev[step.keep], step.slots)
        prev = step.slots
    # Sizes never grow.
    assert np.all(np.diff(np.diff(sched.step_offsets)) <= 0)
    # The trainer's per-step lists say the same as the walk.
    steps = list(iterate(sched))
    assert sched.step_sizes() == [len(s.slots) for s in steps]
    assert sched.step_has_reset() == [len(s.reset) > 0 for s in steps]


def test_short_sessions_and_empty_input():
    sched = build_schedule(np.array([0, 1, 1, 2]), np.array([5, 6]), 4)
    assert sched.n_steps == 0 and sched.n_events == 0
    assert list(iterate(sched)) == []


def test_sessions_start_in_order_small_example():
    # lengths 3, 2, 1 (ignored), 4, 2 with two slots
    sched = build_schedule(_offsets([3, 2, 1, 4, 2]), np.arange(12), 2)
    steps = list(iterate(sched))
    assert [s.inputs.tolist() for s in steps] == [[0, 3], [1, 6], [10, 7], [8]]
    assert [s.reset.tolist() for s in steps] == [[0, 1], [1], [0], []]
    assert steps[3].keep.tolist() == [1]
