"""Data health: how the data a model is trained on compares with the data of the champion.

`data_profile` summarises what a model was trained on (events, sessions, catalogue, session
lengths, item popularity); `compare_profiles` measures the change against the champion's profile:
relative size changes, the share of new items (and of events on them), and the shift of the item
popularity and session-length distributions as Jensen-Shannon divergences (base 2: 0 = the same
distribution, 1 = no overlap). A change above its threshold is a warning.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gru4rec.data.split_dir import load_split, training_sessions

# Session-length bins: 1, 2, 3–5, 6–10, 11–20, 21–50, 51–100, 101–200, > 200 events.
LENGTH_EDGES = (1, 2, 3, 6, 11, 21, 51, 101, 201)


def data_profile(split_dir, full: bool) -> dict:
    """What a model trained on this split (train, or train+valid with `full`) has seen."""
    from gru4rec.jobs import items_for_model

    split = load_split(split_dir)
    sessions = training_sessions(split, full)
    lengths = np.diff(sessions.offsets)
    hist = np.histogram(lengths, bins=[*LENGTH_EDGES, max(int(lengths.max(initial=0)), LENGTH_EDGES[-1]) + 1])[0]
    items = items_for_model(split, full).filter(pl.col("count") > 0)
    return {
        "events": int(sessions.n_events),
        "sessions": int(sessions.n_sessions),
        "items": int(items.height),
        "session_length_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "session_length_median": float(np.median(lengths)) if len(lengths) else 0.0,
        "session_length_bins": [int(x) for x in hist],
        "item_counts": {str(i): int(c) for i, c in zip(items["item_id"].to_list(), items["count"].to_list())},
    }


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors over the same support."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


class HealthThresholds(BaseModel):
    """Above these, a run warns that its data differs from the champion's (and the decision says so)."""

    model_config = ConfigDict(extra="forbid")

    size_change: float = Field(default=0.5, ge=0, description="Relative change of events or sessions (0.5 = ±50%).")
    new_item_event_share: float = Field(
        default=0.2, ge=0, le=1, description="Share of training events on items the champion never saw."
    )
    popularity_shift: float = Field(
        default=0.2, ge=0, le=1, description="Jensen-Shannon divergence (base 2) of the item popularity distributions."
    )
    session_length_shift: float = Field(
        default=0.2, ge=0, le=1, description="Jensen-Shannon divergence (base 2) of the session-length distributions."
    )


def _change(now: float, before: float) -> float:
    return (now - before) / before if before else (0.0 if now == before else math.inf)


def compare_profiles(current: dict, reference: dict, thresholds: HealthThresholds | None = None) -> dict:
    """The changes from `reference` (the champion's data) to `current`, and a warning for each
    one above its threshold."""
    now, before = current["item_counts"], reference["item_counts"]
    ids = sorted(set(now) | set(before))
    p = np.array([now.get(i, 0) for i in ids])
    q = np.array([before.get(i, 0) for i in ids])
    new = [i for i in now if i not in before]
    report = {
        "events_change": _change(current["events"], reference["events"]),
        "sessions_change": _change(current["sessions"], reference["sessions"]),
        "items_change": _change(current["items"], reference["items"]),
        "new_items": len(new),
        "new_item_share": len(new) / max(len(now), 1),
        "new_item_event_share": sum(now[i] for i in new) / max(sum(now.values()), 1),
        "popularity_shift": js_divergence(p, q),
        "session_length_mean": (reference.get("session_length_mean"), current["session_length_mean"]),
    }
    if reference.get("session_length_bins"):
        report["session_length_shift"] = js_divergence(current["session_length_bins"], reference["session_length_bins"])
    report["warnings"] = _warnings(report, thresholds or HealthThresholds())
    return report


def _warnings(r: dict, t: HealthThresholds) -> list[str]:
    out = []
    for key in ("events_change", "sessions_change"):
        if abs(r[key]) > t.size_change:
            out.append(f"{key.split('_')[0]} changed by {r[key]:+.0%} (threshold ±{t.size_change:.0%})")
    if r["new_item_event_share"] > t.new_item_event_share:
        out.append(
            f"{r['new_item_event_share']:.0%} of events are on {r['new_items']:,} items the champion never saw "
            f"(threshold {t.new_item_event_share:.0%})"
        )
    if r["popularity_shift"] > t.popularity_shift:
        out.append(
            f"item popularity shifted: JS divergence {r['popularity_shift']:.3f} (threshold {t.popularity_shift})"
        )
    if r.get("session_length_shift", 0.0) > t.session_length_shift:
        out.append(
            f"session lengths shifted: JS divergence {r['session_length_shift']:.3f} (threshold {t.session_length_shift})"
        )
    return out
