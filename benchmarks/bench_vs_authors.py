"""Training speed of our GRU4Rec against the authors' PyTorch GRU4Rec, alternating, on one CPU thread.

    python benchmarks/bench_vs_authors.py --ref /tmp/ref                        # both presets, 3 repeats
    python benchmarks/bench_vs_authors.py --ref /tmp/ref --presets gru4rec-bprmax --repeats 5

The ML-1M subset protocol of benchmarks/parity.py (user sessions, session-end split, trained on
train+valid: 429 k events per epoch), each preset with its settings in both implementations
(`parity.AUTHORS`). Every measurement is one training of --epochs epochs in a fresh process with
one thread; ours and the authors' alternate (the order flips every repeat), so both see the same
load on a shared machine. Reported per run: events/s over the wall-clock time of the whole
training call (setup included, the same for both) and over its CPU time (what a busy machine
disturbs least); per preset the medians and the ratios ours/authors of the medians. --ref is a
checkout of github.com/hidasib/GRU4Rec_PyTorch_Official (research-only licence: nothing of it is in
this repository). JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def measure(impl: str, preset: str, ref: Path, workdir: Path, epochs: int, seed: int) -> dict:
    """One training in this process: seconds (wall, CPU) and events."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from accuracy import prepare

    split = prepare("ml-1m-subset", workdir)
    if impl == "ours":
        from gru4rec.data.split_dir import load_split
        from gru4rec.jobs import build_config
        from gru4rec.trainer import train

        data = load_split(split)
        cfg = build_config(preset, {}, seed=seed, epochs=epochs, threads=1, device="cpu", progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            res = train(data, cfg, Path(tmp), full=True, resume=False, evaluate_fn=None)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        events = sum(h["events"] for h in res.history)
    else:
        import numpy as np
        import pandas as pd
        from parity import AUTHORS, authors_events, authors_module

        authors, _ = authors_module(ref)
        torch.manual_seed(seed)
        np.random.seed(seed)
        train_df = pd.concat([authors_events(split, "train"), authors_events(split, "valid")], ignore_index=True)
        gru = authors.GRU4Rec(device=torch.device("cpu"), n_epochs=epochs, **AUTHORS[preset])
        wall, cpu = time.perf_counter(), time.process_time()
        gru.fit(train_df)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        events = len(train_df) * epochs
    return dict(impl=impl, preset=preset, events=events, wall_s=wall, cpu_s=cpu,
                ev_s_wall=events / wall, ev_s_cpu=events / cpu)  # fmt: skip


def summary(runs: list[dict]) -> dict:
    out = {}
    for preset in dict.fromkeys(r["preset"] for r in runs):
        med = {}
        for impl in ("ours", "authors"):
            rs = [r for r in runs if r["preset"] == preset and r["impl"] == impl]
            med[impl] = {k: statistics.median(r[k] for r in rs) for k in ("ev_s_wall", "ev_s_cpu")}
            med[impl]["runs"] = len(rs)
        out[preset] = dict(
            med, ratio_wall=med["ours"]["ev_s_wall"] / med["authors"]["ev_s_wall"],
            ratio_cpu=med["ours"]["ev_s_cpu"] / med["authors"]["ev_s_cpu"],
        )  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path, required=True, help="checkout of the authors' GRU4Rec_PyTorch_Official")
    ap.add_argument("--presets", nargs="*", default=["gru4rec-bprmax", "gru4rec-xe"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-accuracy"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_vs_authors.json")
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "PRESET"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.one:
        r = measure(*args.one, args.ref, args.workdir, args.epochs, args.seed)
        print("RESULT", json.dumps(r), flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runs = []
    for rep in range(args.repeats):
        for preset in args.presets:
            for impl in ("ours", "authors") if rep % 2 == 0 else ("authors", "ours"):
                cmd = [sys.executable, __file__, "--ref", str(args.ref), "--workdir", str(args.workdir),
                       "--epochs", str(args.epochs), "--seed", str(args.seed), "--one", impl, preset]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
                r["repeat"] = rep
                runs.append(r)
                print(f"{rep} {preset:15s} {impl:7s} {r['ev_s_wall']:>8,.0f} ev/s wall  {r['ev_s_cpu']:>8,.0f} ev/s cpu",
                      flush=True)  # fmt: skip
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "epochs": args.epochs,
        "load_average_end": os.getloadavg(),
        "summary": summary(runs),
        "runs": runs,
    }
    for preset, s in report["summary"].items():
        print(f"{preset}: ours {s['ours']['ev_s_wall']:,.0f} vs authors {s['authors']['ev_s_wall']:,.0f} ev/s wall "
              f"({s['ratio_wall']:.2f}x); CPU time {s['ratio_cpu']:.2f}x")  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
