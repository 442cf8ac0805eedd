"""Training and evaluation throughput of GRU4Rec on the MovieLens-1M subset (session-end split).

    python benchmarks/bench_train.py                      # all presets + gru4rec-xe n_sample 0, 1 and 2 threads
    python benchmarks/bench_train.py --presets gru4rec-xe --threads 1 --epochs 3

For each configuration: training events/s per epoch (median of --epochs epochs; each epoch is
a full pass over the training split) and evaluation events/s (targets scored per second over
the full catalogue, median of 3 runs). Figures go to the README; JSON to --out.
Where CUDA is available it also runs a 512-unit, batch-256 model on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "ml-1m-subset-cs100" / "ratings.dat.gz"

CONFIGS = {
    "tutorial": ("tutorial", {}),
    "gru4rec-xe": ("gru4rec-xe", {}),
    "gru4rec-xe n_sample=0": ("gru4rec-xe", {"train.n_sample": "0"}),
    "gru4rec-bprmax": ("gru4rec-bprmax", {}),
}


def prepare(workdir: Path, source: Path) -> Path:
    from gru4rec.data.config import IngestConfig, SourceFormat, SplitConfig
    from gru4rec.data.ingest import ingest
    from gru4rec.data.splitter import make_split

    split_dir = workdir / "ml1m-session-end"
    if (split_dir / "manifest.json").exists():
        return split_dir
    ingest(IngestConfig(source=str(source)), workdir / "ingest")
    make_split(
        {"events": workdir / "ingest" / "events.parquet"},
        SourceFormat.ML_1M,
        SplitConfig(session="user", split="session-end", test_days=100),
        split_dir,
    )
    return split_dir


def run_one(split_dir: Path, preset: str, overrides: dict, threads: int, epochs: int, device: str) -> dict:
    import torch

    from gru4rec.data.split_dir import load_split, session_arrays
    from gru4rec.evaluate import evaluate_model
    from gru4rec.jobs import build_config
    from gru4rec.trainer import train

    torch.set_num_threads(threads)
    split = load_split(split_dir)
    cfg = build_config(preset, overrides, epochs=epochs, threads=threads, device=device, progress=False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # No validation pass inside the timed epochs: evaluation is measured on its own below.
        result = train(split, cfg, Path(tmp), resume=False, evaluate_fn=None, full=True)
    train_eps = [h["events_per_s"] for h in result.history]
    test = session_arrays(split.test)
    eval_times = []
    for _ in range(3):
        t = time.perf_counter()
        m = evaluate_model(result.model, test, device=device)
        eval_times.append(time.perf_counter() - t)
    return {
        "train_events_per_s": statistics.median(train_eps),
        "train_events_per_s_all": train_eps,
        "train_events": result.history[0]["events"],
        "eval_events_per_s": m["n_targets"] / statistics.median(eval_times),
        "eval_targets": m["n_targets"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DATA)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-bench-train"))
    ap.add_argument("--presets", nargs="*", default=list(CONFIGS))
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.source.exists():
        raise SystemExit(f"dataset not found: {args.source} (the benchmark reads ../shared/data)")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(args.threads)))
    args.workdir.mkdir(parents=True, exist_ok=True)
    split_dir = prepare(args.workdir, args.source)

    import torch

    report = {"split": str(split_dir), "torch": torch.__version__, "cpu_count": os.cpu_count(), "runs": []}
    for name in args.presets:
        preset, overrides = CONFIGS[name]
        for threads in args.threads:
            r = run_one(split_dir, preset, overrides, threads, args.epochs, "cpu")
            r.update(config=name, threads=threads, device="cpu")
            report["runs"].append(r)
            print(f"{name:24s} cpu threads={threads}: train {r['train_events_per_s']:>9,.0f} ev/s   "
                  f"eval {r['eval_events_per_s']:>9,.0f} ev/s", flush=True)
    if torch.cuda.is_available():
        for name, (preset, overrides) in {
            "gru4rec-xe": CONFIGS["gru4rec-xe"],
            "gru4rec-xe 512 units batch 256": ("gru4rec-xe", {"model.layers": "[512]", "train.batch_size": "256"}),
        }.items():
            r = run_one(split_dir, preset, overrides, 1, args.epochs, "cuda")
            r.update(config=name, threads=1, device="cuda")
            report["runs"].append(r)
            print(f"{name:24s} cuda: train {r['train_events_per_s']:>9,.0f} ev/s   "
                  f"eval {r['eval_events_per_s']:>9,.0f} ev/s", flush=True)
    out = args.out or args.workdir / "bench_train.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
