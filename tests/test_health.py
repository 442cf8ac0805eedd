"""Data health (`gru4rec.data.health`): profiles of training data and their comparison."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gru4rec.data.health import HealthThresholds, compare_profiles, data_profile, js_divergence
from gru4rec.data.split_dir import load_split, training_sessions
from tests.synthetic import synthetic_split

counts = st.lists(st.integers(0, 50), min_size=1, max_size=12)


@given(counts, counts)
def test_js_divergence_is_symmetric_and_bounded(a, b):
    n = max(len(a), len(b))
    p, q = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
    d = js_divergence(p, q)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(js_divergence(q, p))
    if sum(a):
        assert js_divergence(p, 3 * p) == pytest.approx(0.0, abs=1e-12)  # scale does not matter


def test_js_divergence_of_disjoint_supports_is_one():
    assert js_divergence([5, 0], [0, 7]) == pytest.approx(1.0)


def _profile(items: dict[str, int], events=None, sessions=10, bins=(0, 5, 5, 0, 0, 0, 0, 0, 0)) -> dict:
    return {
        "events": events if events is not None else sum(items.values()),
        "sessions": sessions,
        "items": len(items),
        "session_length_mean": 3.0,
        "session_length_median": 3.0,
        "session_length_bins": list(bins),
        "item_counts": items,
    }


def test_same_data_has_no_change_and_no_warning():
    p = _profile({"a": 10, "b": 5})
    r = compare_profiles(p, p)
    assert r["events_change"] == 0 and r["new_items"] == 0 and r["popularity_shift"] == 0
    assert r["session_length_shift"] == 0 and r["warnings"] == []


def test_new_items_and_shifts_are_measured_and_warned_above_thresholds():
    before = _profile({"a": 100, "b": 100})
    now = _profile({"a": 100, "b": 10, "c": 90}, sessions=30, bins=(0, 0, 0, 0, 0, 5, 5, 0, 0))
    r = compare_profiles(now, before)
    assert r["new_items"] == 1 and r["new_item_share"] == pytest.approx(1 / 3)
    assert r["new_item_event_share"] == pytest.approx(0.45)
    assert r["sessions_change"] == pytest.approx(2.0)
    text = " | ".join(r["warnings"])
    assert "sessions changed by +200%" in text and "45% of events are on 1 items" in text
    assert "item popularity shifted" in text and "session lengths shifted" in text
    lax = HealthThresholds(size_change=5, new_item_event_share=0.5, popularity_shift=0.9, session_length_shift=1.0)
    assert compare_profiles(now, before, lax)["warnings"] == []


def test_profile_of_a_split_counts_what_the_model_trains_on(tmp_path):
    split_dir = synthetic_split(tmp_path / "data", n_sessions=80, n_items=20)
    sessions = training_sessions(load_split(split_dir), full=True)
    p = data_profile(split_dir, full=True)
    assert p["events"] == sessions.n_events and p["sessions"] == sessions.n_sessions
    assert sum(p["session_length_bins"]) == sessions.n_sessions
    assert sum(p["item_counts"].values()) == sessions.n_events
    assert p["items"] == len(p["item_counts"])
    # an older champion's profile without the session-length bins is still comparable
    reduced = {k: v for k, v in p.items() if k != "session_length_bins"}
    assert "session_length_shift" not in compare_profiles(p, reduced)
