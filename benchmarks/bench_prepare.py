"""Benchmark of the data half: ingest → validate → sessionize/filter/split → Parquet.

Generates a synthetic YooChoose-format click log (RSC15 scale by default: 31 M events, ~8 M
sessions, ~37 k items, Zipf-like item popularity, realistic gaps), then times each step of our
pipeline in its own process (wall time and peak RSS of that process), then all three steps in one
process (as the Prefect flow runs them: imports and page cache shared), and the same steps written
plainly in pandas on a smaller log for a speed ratio at equal size. "seconds" is measured inside
the child (after interpreter start), "process_seconds" around it (spawn to exit).

    python benchmarks/bench_prepare.py                       # 31 M events + 3 M pandas comparison
    python benchmarks/bench_prepare.py --events 3000000      # quicker
    python benchmarks/bench_prepare.py --threads 1           # one Polars thread

The CSV is generated once per size into --workdir (excluded from the timings).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("ingest", "validate", "split")


# --------------------------------------------------------------------------------------------
# Synthetic click log
# --------------------------------------------------------------------------------------------
def generate_clicks(path: Path, n_events: int, n_items: int = 37_000, seed: int = 0) -> None:
    """YooChoose clicks CSV: SessionID,Timestamp(ISO-8601 UTC),ItemID,Category (no header)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    # Session lengths: 1 + geometric, mean ≈ 3.9 like RSC15 (31.6 M events / 8 M sessions).
    n_sessions_est = int(n_events / 3.9) + 10
    lengths = 1 + rng.geometric(1 / 2.9, size=n_sessions_est)
    while lengths.sum() < n_events:  # the estimate fell short (large n): draw more sessions
        lengths = np.r_[lengths, 1 + rng.geometric(1 / 2.9, size=n_sessions_est // 100 + 10)]
    cum = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(cum, n_events) + 1)
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(cum[n_sessions - 1] - n_events)
    session_of_event = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
    # Items: Zipf-like popularity (exponent ~1.05) over n_items ids, ids scattered like real ones.
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = ranks**-1.05
    p /= p.sum()
    item_ids = rng.choice(np.arange(214_500_000, 214_500_000 + 40 * n_items, 40), size=n_items, replace=False)
    items = item_ids[rng.choice(n_items, size=n_events, p=p)]
    # Times: session starts uniform over 183 days (RSC15's six months, sorted so ids follow time);
    # gaps within a session exponential with mean 90 s; millisecond resolution.
    t0 = 1396310400000  # 2014-04-01T00:00:00Z
    starts = np.sort(rng.integers(0, 183 * 86_400_000, size=n_sessions)) + t0
    gaps = rng.exponential(90_000, size=n_events).astype(np.int64)
    first = np.zeros(n_events, dtype=bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]]] = True
    gaps[first] = 0
    # time = session start + cumulative gap inside the session
    csum = np.cumsum(gaps)
    base = np.repeat(csum[first], lengths)
    times = np.repeat(starts, lengths) + (csum - base)
    df = pl.DataFrame(
        {
            "session": session_of_event + 1,
            "time": pl.Series(times).cast(pl.Datetime("ms", "UTC")),
            "item": items,
            "category": np.zeros(n_events, dtype=np.int8),
        }
    ).with_columns(pl.col("time").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
    tmp = path.with_suffix(".tmp")
    df.write_csv(tmp, include_header=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# One step in its own process
# --------------------------------------------------------------------------------------------
def _do_step(step: str, csv: Path, work: Path) -> None:
    from gru4rec.data.config import IngestConfig, SourceFormat, SplitConfig
    from tasks.validation import ValidationConfig

    if step == "ingest":
        from gru4rec.data.ingest import ingest

        ingest(IngestConfig(source=str(csv), format="yoochoose"), work / "ingest")
    elif step == "validate":
        from tasks.validation import validate_events

        manifest = json.loads((work / "ingest" / "ingest_manifest.json").read_text())
        validate_events(
            manifest, work / "ingest", ValidationConfig(data_docs=False), SourceFormat.YOOCHOOSE, work / "validation"
        )
    elif step == "split":
        from gru4rec.data.splitter import make_split

        v = json.loads((work / "validation" / "validation_manifest.json").read_text())
        tables = {
            r: (Path(t["file"]) if Path(t["file"]).is_absolute() else work / "validation" / t["file"])
            for r, t in v["tables"].items()
        }
        make_split(tables, SourceFormat.YOOCHOOSE, SplitConfig(), work / "split")
    elif step == "pandas":
        pandas_pipeline(csv, work / "pandas")
    elif step == "generate":
        generate_clicks(csv, int(os.environ["BENCH_GENERATE_EVENTS"]))
    else:
        raise SystemExit(f"unknown step {step}")


def run_step(step: str, csv: Path, work: Path) -> dict:
    """Executed in the child process: run one step, print its in-process wall time as JSON.

    ``all`` runs ingest, validate and split one after the other in this one process, as the Prefect
    flow does (imports and memory are shared; per-step times are reported too).
    """
    t = time.perf_counter()
    if step == "all":
        per = {}
        for s in STEPS:
            t1 = time.perf_counter()
            _do_step(s, csv, work)
            per[s] = time.perf_counter() - t1
        return {"step": step, "seconds": time.perf_counter() - t, "steps": per}
    _do_step(step, csv, work)
    return {"step": step, "seconds": time.perf_counter() - t}


def spawn(step: str, csv: Path, work: Path, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env.update(POLARS_MAX_THREADS=str(threads), OMP_NUM_THREADS=str(threads), ARROW_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", step, "--csv", str(csv), "--workdir", str(work)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, cwd=REPO)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step {step} failed")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res.update(process_seconds=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return res


# --------------------------------------------------------------------------------------------
# The same steps, plainly in pandas (the comparison baseline)
# --------------------------------------------------------------------------------------------
def pandas_pipeline(csv: Path, out: Path, test_days: float = 1.0, min_len: int = 2, min_support: int = 5) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(csv, header=None, names=["session_key", "ts", "item_id", "category"], usecols=[0, 1, 2])
    ts = pd.to_datetime(df["ts"], format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)
    df["timestamp"] = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    df = df.drop(columns="ts")
    df.to_parquet(out / "events.parquet")
    # validate: nulls, time window, duplicates, row count
    assert not df[["session_key", "item_id", "timestamp"]].isna().any().any()
    lo, hi = pd.Timestamp("1995-01-01", tz="UTC").value // 10**6, (time.time() + 86400) * 1000
    assert df["timestamp"].between(lo, hi).all()
    _dups = int(df.duplicated(["session_key", "item_id", "timestamp"]).sum())
    assert len(df) >= 100
    # sessionize (source ids) in deterministic order, then filter until stable
    df["row"] = range(len(df))
    df = df.sort_values(["session_key", "timestamp", "row"], kind="stable")
    while True:
        n = len(df)
        df = df[df.groupby("session_key")["item_id"].transform("size") >= min_len]
        df = df[df.groupby("item_id")["session_key"].transform("size") >= min_support]
        if len(df) == n:
            break
    # global cut
    final = df["timestamp"].max()
    cut = final - test_days * 86_400_000
    start = df.groupby("session_key")["timestamp"].transform("min")
    test = df[start >= cut]
    train_full = df[(start < cut) & (df["timestamp"] < cut)]
    vcut = train_full["timestamp"].max() - test_days * 86_400_000
    vstart = train_full.groupby("session_key")["timestamp"].transform("min")
    valid = train_full[vstart >= vcut]
    train = train_full[(vstart < vcut) & (train_full["timestamp"] < vcut)]
    items = pd.Index(train["item_id"].unique())
    valid = valid[valid["item_id"].isin(items)]
    test = test[test["item_id"].isin(pd.Index(pd.concat([train["item_id"], valid["item_id"]]).unique()))]
    valid = valid[valid.groupby("session_key")["item_id"].transform("size") >= 2]
    test = test[test.groupby("session_key")["item_id"].transform("size") >= 2]
    idx = pd.Series(range(len(items)), index=items)
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        part = part.assign(item_idx=idx.reindex(part["item_id"]).to_numpy())
        part.to_parquet(out / f"{name}.parquet")


# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=31_000_000)
    ap.add_argument("--pandas-events", type=int, default=3_000_000, help="0 skips the pandas comparison")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-bench"))
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of each measurement (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="Polars/Arrow threads (default: all cores)")
    ap.add_argument("--child", choices=[*STEPS, "all", "pandas", "generate"], help=argparse.SUPPRESS)
    ap.add_argument("--no-one-process", action="store_true", help="skip the one-process (flow-like) variant")
    ap.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(run_step(args.child, args.csv, args.workdir)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads or os.cpu_count(), "cpu_count": os.cpu_count()}

    def ours(n: int) -> dict:
        csv = args.workdir / f"clicks-{n}.csv"
        if not csv.exists():
            # in a child process: ru_maxrss survives fork+exec, so a big parent would inflate every
            # later child's peak RSS (the generator needs ~3 GB at 31 M events)
            t = time.perf_counter()
            os.environ["BENCH_GENERATE_EVENTS"] = str(n)
            spawn("generate", csv, args.workdir, args.threads)
            print(f"generated {csv} ({csv.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
        runs = []
        for _ in range(args.repeat):
            work = args.workdir / f"ours-{n}"
            runs.append([spawn(s, csv, work, args.threads) for s in STEPS])
        steps = {}
        for i, s in enumerate(STEPS):
            steps[s] = {
                "seconds": statistics.median(r[i]["seconds"] for r in runs),
                "process_seconds": statistics.median(r[i]["process_seconds"] for r in runs),
                "peak_rss_mb": max(r[i]["peak_rss_mb"] for r in runs),
            }
        total = sum(v["seconds"] for v in steps.values())
        total_proc = sum(v["process_seconds"] for v in steps.values())
        res = {
            "events": n,
            "steps": steps,
            "total_seconds": total,
            "total_process_seconds": total_proc,
            "peak_rss_mb": max(v["peak_rss_mb"] for v in steps.values()),
        }
        if not args.no_one_process:
            one = [spawn("all", csv, args.workdir / f"one-{n}", args.threads) for _ in range(args.repeat)]
            res["one_process"] = {
                "note": "ingest+validate+split in ONE process (as the Prefect flow runs them)",
                "seconds": statistics.median(r["seconds"] for r in one),
                "process_seconds": statistics.median(r["process_seconds"] for r in one),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in one),
                "steps": {s: statistics.median(r["steps"][s] for r in one) for s in STEPS},
            }
        return res

    report["ours"] = ours(args.events)
    print(json.dumps(report["ours"], indent=2))
    if args.pandas_events:
        small = ours(args.pandas_events) if args.pandas_events != args.events else report["ours"]
        csv = args.workdir / f"clicks-{args.pandas_events}.csv"
        pruns = [spawn("pandas", csv, args.workdir / "pandas", args.threads) for _ in range(args.repeat)]
        pandas = {
            "events": args.pandas_events,
            "seconds": statistics.median(r["seconds"] for r in pruns),
            "process_seconds": statistics.median(r["process_seconds"] for r in pruns),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in pruns),
        }
        report["comparison"] = {
            "ours": small,
            "pandas": pandas,
            "speedup": pandas["seconds"] / small["total_seconds"],
            "speedup_process_seconds": pandas["process_seconds"] / small["total_process_seconds"],
        }
        if "one_process" in small:
            report["comparison"]["speedup_one_process"] = pandas["seconds"] / small["one_process"]["seconds"]
        print(json.dumps(report["comparison"], indent=2))
    out = args.workdir / "bench_prepare.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
