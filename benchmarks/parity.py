"""Side-by-side parity runs: our GRU4Rec vs the authors' PyTorch GRU4Rec on the same split.

    python benchmarks/parity.py ours --preset gru4rec-bprmax --seed 1 train.epochs=2 train.loss_scale=mean
    python benchmarks/parity.py authors --ref /tmp/ref --preset gru4rec-bprmax --epochs 2

Protocol (issue 10): the ML-1M subset, user sessions, `session-end` split, N = 100 days (prepared by
benchmarks/accuracy.py into --workdir); trained on train+valid, tested on test; Recall@20 / MRR@20
over the full catalogue with conservative ties, one CPU thread. `authors` imports the authors'
``gru4rec_pytorch`` and ``evaluation`` modules from --ref (a checkout of
github.com/hidasib/GRU4Rec_PyTorch_Official, research-only licence: nothing of it is in this
repository) and runs them on a DataFrame of our split's events, with their settings for the preset.
Each run prints one ``RESULT {json}`` line and appends it to --out (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The authors' parameter names for our presets' settings (the values are the presets').
AUTHORS = {
    "gru4rec-bprmax": dict(
        loss="bpr-max", layers=[224], batch_size=80, dropout_p_embed=0.5, dropout_p_hidden=0.05,
        learning_rate=0.05, momentum=0.4, n_sample=2048, sample_alpha=0.4, bpreg=1.95, elu_param=0.5,
        logq=0.0, constrained_embedding=True, embedding=0,
    ),
    "gru4rec-xe": dict(
        loss="cross-entropy", layers=[100], batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.4,
        learning_rate=0.2, momentum=0.2, n_sample=2048, sample_alpha=0.5, bpreg=0.0, elu_param=0.0,
        logq=1.0, constrained_embedding=True, embedding=0,
    ),
}  # fmt: skip


def run_ours(split: Path, preset: str, seed: int, overrides: dict) -> dict:
    from gru4rec.jobs import build_config, evaluate_on_split, train_on_split

    cfg = build_config(preset, overrides, seed=seed, threads=1, progress=False, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train_on_split(split, cfg, Path(tmp) / "m", full=True, preset=preset)
        seconds = time.perf_counter() - t
        rep = evaluate_on_split(split, Path(tmp) / "m", ks=(20,), ties="conservative", device="cpu")
    m = rep["metrics"]["gru4rec"]
    return dict(impl="ours", preset=preset, overrides=overrides, seed=seed, epochs=cfg.train.epochs,
                recall20=m["recall@20"], mrr20=m["mrr@20"], n_targets=m["n_targets"], train_seconds=seconds)  # fmt: skip


def authors_module(ref: Path):
    """The authors' ``gru4rec_pytorch`` and ``evaluation`` modules from the checkout ``ref``, with
    the shims current NumPy/pandas/torch need (their code is not changed or copied)."""
    import pandas as pd
    import torch

    sys.path.insert(0, str(ref))
    import evaluation  # the authors' modules
    import gru4rec_pytorch as authors

    if getattr(authors, "_shimmed", False):
        return authors, evaluation
    # NumPy 2 makes float32 * float64-scalar float64; their initialisation assumed NumPy 1 (float32).
    init = authors.GRU4RecModel._init_numpy_weights
    authors.GRU4RecModel._init_numpy_weights = lambda self, shape: init(self, shape).astype("float32")

    class _Torch:  # current torch/pandas: torch.tensor(a pandas Series) fails (their logQ table); pass its values
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def tensor(x, *a, **k):
            return torch.tensor(x.values if isinstance(x, pd.Series) else x, *a, **k)

    authors.torch = _Torch()
    authors._shimmed = True
    return authors, evaluation


def authors_events(split: Path, name: str):
    """Our split's ``name`` events as the DataFrame the authors' code reads."""
    import pandas as pd
    import polars as pl

    d = pl.read_parquet(split / f"{name}.parquet").to_pandas()
    return pd.DataFrame({"SessionId": d.session_id, "ItemId": d.item_id.astype(str), "Time": d.timestamp // 1000})


def run_authors(split: Path, ref: Path, preset: str, seed: int, epochs: int) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    authors, evaluation = authors_module(ref)
    torch.manual_seed(seed)
    np.random.seed(seed)
    train = pd.concat([authors_events(split, "train"), authors_events(split, "valid")], ignore_index=True)
    test = authors_events(split, "test")
    gru = authors.GRU4Rec(device=torch.device("cpu"), n_epochs=epochs, **AUTHORS[preset])
    t = time.perf_counter()
    gru.fit(train)
    seconds = time.perf_counter() - t
    batch = min(100, test.SessionId.nunique())  # their evaluation needs batch size <= test sessions
    recall, mrr = evaluation.batch_eval(gru, test, cutoff=[20], batch_size=batch, mode="conservative")
    return dict(impl="authors", preset=preset, seed=seed, epochs=epochs,
                recall20=float(recall[20]), mrr20=float(mrr[20]), train_seconds=seconds)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl", choices=["ours", "authors"])
    ap.add_argument("--preset", default="gru4rec-bprmax", choices=sorted(AUTHORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10, help="authors only (ours: train.epochs=N)")
    ap.add_argument("--ref", type=Path, help="checkout of the authors' GRU4Rec_PyTorch_Official")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-accuracy"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "parity_runs.jsonl")
    ap.add_argument("set", nargs="*", help="our dotted overrides, e.g. train.loss_scale=mean")
    args = ap.parse_intermixed_args()  # settings may follow the options, as in the examples above
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from accuracy import prepare

    split = prepare("ml-1m-subset", args.workdir)
    if args.impl == "ours":
        r = run_ours(split, args.preset, args.seed, dict(s.split("=", 1) for s in args.set))
    else:
        if args.ref is None:
            ap.error("authors needs --ref")
        r = run_authors(split, args.ref, args.preset, args.seed, args.epochs)
    print("RESULT", json.dumps(r), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
