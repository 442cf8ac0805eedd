"""Session-kNN baselines (SKNN, V-SKNN, STAN, VSTAN) at their defaults: accuracy and speed.

    python benchmarks/session_knn.py                       # both datasets, all four methods
    python benchmarks/session_knn.py --datasets yoochoose-100k --methods vstan

YooChoose 100k sample (the given train_full/test split, all 10,152 test targets, every test item
occurs in training): Recall@20 / MRR@20 against the figures of the session-rec implementations
(issue 10). ML-1M subset (user sessions, session-end, N = 100 days; 57,534 test targets):
seconds to score every test target on one thread. Both through `evaluate_model`, full catalogue,
conservative ties; the per-target counts of items scoring higher / tied are recorded as well, so
the JSON also gives the metrics with optimistic ("standard") and expected random tie-breaking.
Writes benchmarks/results/session_knn.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402  (the datasets and their preparation)

import gru4rec.evaluate as evaluate  # noqa: E402
from gru4rec.data.split_dir import load_split, session_arrays, training_sessions  # noqa: E402
from gru4rec.session_knn import KNN_DEFAULTS, SessionKNN  # noqa: E402

# Recall@20 / MRR@20 of the session-rec implementations on the YooChoose sample (issue 10).
TARGETS = {"sknn": (0.654, 0.320), "v-sknn": (0.667, 0.364), "stan": (0.668, 0.373), "vstan": (0.685, 0.375)}
K = 20


class _Counts:
    """Records, per target, how many items score strictly higher and how many tie with it."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []
        self._ranks = evaluate.ranks_from_scores

    def __enter__(self):
        def ranks(scores, targets, ties="conservative"):
            ts = scores.gather(1, targets.view(-1, 1).long())
            self.parts.append(torch.stack([(scores > ts).sum(1), (scores == ts).sum(1) - 1], 1).cpu())
            return self._ranks(scores, targets, ties)

        evaluate.ranks_from_scores = ranks
        return self

    def __exit__(self, *exc):
        evaluate.ranks_from_scores = self._ranks

    def metrics(self) -> dict[str, float]:
        higher, tied = torch.cat(self.parts).to(torch.float64).T.numpy()
        hit_std = higher + 1 <= K
        rr_std = np.where(hit_std, 1 / (higher + 1), 0.0)
        # Random tie-breaking: the rank is uniform on higher+1 .. higher+tied+1.
        recall_rand = np.clip((K - higher) / (tied + 1), 0, 1)
        harmonic = np.r_[0.0, np.cumsum(1 / np.arange(1, K + 1))]
        top = np.minimum(higher + tied + 1, K).astype(int)
        low = np.minimum(higher, K).astype(int)
        rr_rand = (harmonic[top] - harmonic[low]) / (tied + 1)
        return {
            f"recall@{K} standard": hit_std.mean(),
            f"mrr@{K} standard": rr_std.mean(),
            f"recall@{K} random": recall_rand.mean(),
            f"mrr@{K} random": rr_rand.mean(),
        }


def run(dataset: str, method: str, split_dir: Path) -> dict:
    split = load_split(split_dir)
    train, test = training_sessions(split, True), session_arrays(split.test)
    t0 = time.perf_counter()
    scorer = SessionKNN(train, split.n_items, KNN_DEFAULTS[method])
    t1 = time.perf_counter()
    with _Counts() as counts:
        m = evaluate.evaluate_model(scorer, test, ks=(K,), ties="conservative")
    t2 = time.perf_counter()
    row = {
        "dataset": dataset,
        "method": method,
        "config": {k: v for k, v in vars(KNN_DEFAULTS[method]).items()},
        f"recall@{K}": m[f"recall@{K}"],
        f"mrr@{K}": m[f"mrr@{K}"],
        **{k: float(v) for k, v in counts.metrics().items()},
        "n_targets": m["n_targets"],
        "build_s": round(t1 - t0, 2),
        "evaluate_s": round(t2 - t1, 2),
    }
    if dataset == "yoochoose-100k":
        recall, mrr = TARGETS[method]
        row["target"] = {f"recall@{K}": recall, f"mrr@{K}": mrr}
        row["relative_diff"] = {
            f"recall@{K}": round(m[f"recall@{K}"] / recall - 1, 4),
            f"mrr@{K}": round(m[f"mrr@{K}"] / mrr - 1, 4),
        }
    print(
        f"{dataset:15s} {method:7s} R@{K} {row[f'recall@{K}']:.4f}  MRR@{K} {row[f'mrr@{K}']:.4f}  "
        f"{row['n_targets']} targets  {row['evaluate_s']:.1f} s",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["yoochoose-100k", "ml-1m-subset"])
    p.add_argument("--methods", nargs="+", default=list(KNN_DEFAULTS), choices=list(KNN_DEFAULTS))
    p.add_argument("--workdir", default=None, help="where the prepared splits go (default: a temporary directory)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "session_knn.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        rows = [
            run(dataset, method, accuracy.prepare(dataset, workdir))
            for dataset in args.datasets
            for method in args.methods
        ]
    report = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
        "ties": "conservative (the 'standard'/'random' keys: optimistic / expected random tie-breaking)",
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
