"""Benchmark: a nightly run over a directory of daily dumps ingests only the new day.

Builds ``--days`` daily Parquet files ``events/date=YYYY-MM-DD/part-0.parquet`` from the ML-1M
subset in ../shared/data (the time-sorted ratings cut into equal daily shares, each share's times
mapped into its day, order kept), then, in a temporary Prefect server (as the tests run flows):

* ``ingest`` alone, as the flows run it (`tasks.data.ingest_sources` inside a small flow): the
  first run over days 1..N-1 (every file read), the nightly run after day N arrived (only day N
  read, the others served from the per-file cache), and a rerun with nothing new;
* the whole ``prepare_data`` flow (ingest → validate → split), first run and nightly run;
* without Prefect and without a cache: `gru4rec.data.ingest.ingest` reading all N files;
* the parts: sha256 of all files (every run hashes them to see what changed), one file read.

``--scale K`` repeats every day's ratings K times under other user ids (bigger days, same shape);
``--file-format csv`` writes the days as CSV (text to parse, as most raw dumps are).

Each figure is the median over ``--repeats`` repeats, every repeat in fresh directories (a fresh
cache). Results go to benchmarks/results/daily_ingest.json, one entry per scenario (format, scale).

    python benchmarks/bench_daily_ingest.py                              # 30 Parquet days, 3 repeats
    python benchmarks/bench_daily_ingest.py --file-format csv --scale 10 # 30 CSV days of ~160 k events
    python benchmarks/bench_daily_ingest.py --days 10 --repeats 1
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SOURCE = REPO.parent / "shared" / "data" / "ml-1m-subset-cs100" / "ratings.dat.gz"
LAST_DAY = date(2026, 11, 29)
DAY_S = 86_400


def build_days(src: Path, root: Path, days: int, scale: int = 1, file_format: str = "parquet") -> list[Path]:
    """The ratings, time-sorted, cut into ``days`` equal shares; share d is mapped into day d (and
    repeated ``scale`` times under other user ids)."""
    import polars as pl

    from gru4rec.data.readers import read_events

    events, _ = read_events(src)
    events = events.sort("timestamp", maintain_order=True)
    n = events.height
    files = []
    for d in range(days):
        part = events.slice(d * n // days, (d + 1) * n // days - d * n // days)
        day = LAST_DAY - timedelta(days=days - 1 - d)
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())
        t = part["timestamp"]
        lo, span = t.min(), max(1, t.max() - t.min())
        seconds = ((t - lo) * (DAY_S - 1) // span + midnight).alias("ts")
        out = part.select(
            pl.col("session_key").alias("user_id"), pl.col("item_id").alias("movie_id"), pl.col("rating"), seconds
        )
        if scale > 1:
            out = pl.concat([out.with_columns(pl.col("user_id") + k * 10_000_000) for k in range(scale)])
        path = root / f"date={day.isoformat()}" / f"part-0.{file_format}"
        path.parent.mkdir(parents=True, exist_ok=True)
        out.write_parquet(path) if file_format == "parquet" else out.write_csv(path)
        files.append(path)
    return files


def ingest_config(source: Path, file_format: str = "parquet"):
    from gru4rec.data.config import ColumnMapping, IngestConfig

    columns = ColumnMapping(session="user_id", item="movie_id", time="ts", rating="rating", time_unit="s")
    return IngestConfig(source=str(source), format=file_format, columns=columns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1, help="repeat each day's ratings K times (other user ids)")
    ap.add_argument("--file-format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "daily_ingest.json")
    args = ap.parse_args()
    if not SOURCE.exists():
        print(f"skipped: {SOURCE} not found (the benchmark reads the ML-1M subset beside the repository)")
        return

    os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows.config import PrepareConfig
    from flows.prepare import prepare_data
    from gru4rec.data.config import SplitConfig
    from gru4rec.data.ingest import ingest, read_part
    from gru4rec.data.sources import SourceFile
    from tasks.data import ingest_sources

    def ingest_file_states(flow_run_id, expected: int) -> list[str]:
        """'read' or 'cached' for each ingest-file task run of the flow run (from the Prefect API)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        for _ in range(100):  # task runs and their states reach the server's database a moment after the flow ends
            with get_client(sync_client=True) as client:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            runs = [r for r in runs if r.name.startswith("ingest-file")]
            if len(runs) == expected and all(r.state is not None and r.state.is_final() for r in runs):
                break
            time.sleep(0.1)
        states = [r.state.name for r in runs]
        return ["cached" if s == "Cached" else "read" for s in states]

    @flow(name="bench-daily-ingest")
    def nightly_ingest(cfg, out_dir: str, cache_dir: str) -> dict:
        t = time.perf_counter()
        manifest = ingest_sources(cfg, out_dir, cache_dir, use_cache=True, cache_scope=cache_dir)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "manifest": manifest}

    def timed_ingest(cfg, out_dir: str, cache_dir: str) -> dict:
        state = nightly_ingest(cfg, out_dir, cache_dir, return_state=True)
        n = len(list(Path(cfg.source).rglob("part-0.*")))
        return state.result() | {"cache": ingest_file_states(state.state_details.flow_run_id, n)}

    scratch = Path(tempfile.mkdtemp(prefix="bench-daily-", dir=args.workdir))
    atexit.register(shutil.rmtree, scratch, True)  # created here by this script; removed even after a failure
    all_days = scratch / "all-days"
    t = time.perf_counter()
    day_files = build_days(SOURCE, all_days, args.days, args.scale, args.file_format)
    print(f"built {len(day_files)} daily files in {time.perf_counter() - t:.1f} s under {all_days}")
    split = SplitConfig(session="gap", split="global-cut", test_days=1, valid_days=1)
    m: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        m.setdefault(name, []).append(seconds)
        print(f"  {name:32s} {seconds:8.3f} s", flush=True)

    def add_day(src: Path, f: Path) -> None:
        dest = src / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)

    checks = {}
    with prefect_test_harness(server_startup_timeout=120):
        for r in range(args.repeats):
            print(f"repeat {r + 1}/{args.repeats}")
            rep = scratch / f"r{r}"
            src = rep / "events"
            for f in day_files[:-1]:
                add_day(src, f)
            cfg = ingest_config(src, args.file_format)
            cache = str(rep / "cache")
            first = timed_ingest(cfg, str(rep / "i1"), cache)
            record("ingest_first_run_s", first["seconds"])
            add_day(src, day_files[-1])  # the nightly dump arrives
            nightly = timed_ingest(cfg, str(rep / "i2"), cache)
            record("ingest_nightly_s", nightly["seconds"])
            again = timed_ingest(cfg, str(rep / "i3"), cache)
            record("ingest_nothing_new_s", again["seconds"])
            checks = {"first": first["cache"], "nightly": nightly["cache"], "nothing_new": again["cache"]}
            assert sorted(nightly["cache"]) == ["cached"] * (args.days - 1) + ["read"], nightly["cache"]
            assert again["cache"] == ["cached"] * args.days, again["cache"]

            # The whole prepare_data flow, first run (N-1 days) and nightly run (N days).
            shutil.rmtree(src / day_files[-1].parent.name)
            prep = PrepareConfig(ingest=ingest_config(src, args.file_format), split=split, out_dir=str(rep / "prep"))
            t = time.perf_counter()
            prepare_data(prep)
            record("prepare_first_run_s", time.perf_counter() - t)
            add_day(src, day_files[-1])
            t = time.perf_counter()
            prepared = prepare_data(prep)
            record("prepare_nightly_s", time.perf_counter() - t)
            ingest_manifest = json.loads(Path(prepared["ingest_manifest"]).read_text())
            checks["prepare_nightly"] = [f["cache"] for f in ingest_manifest["sources"]["events"]["files"]]

            # No Prefect, no cache: every file read.
            t = time.perf_counter()
            plain = ingest(cfg, rep / "plain")
            record("plain_ingest_all_files_s", time.perf_counter() - t)
            t = time.perf_counter()
            listed = [SourceFile.of(f) for f in sorted(src.rglob(f"*.{args.file_format}"))]
            record("sha256_all_files_s", time.perf_counter() - t)
            t = time.perf_counter()
            read_part(day_files[-1], cfg.format, cfg.columns)
            record("read_one_file_s", time.perf_counter() - t)

    total_bytes = sum(f.bytes for f in listed)
    scenario = f"{args.file_format}-x{args.scale}-{args.days}days"
    result = {
        "scenario": scenario,
        "file_format": args.file_format,
        "scale": args.scale,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(SOURCE.relative_to(REPO.parent)),
        "days": args.days,
        "events": plain["tables"]["events"]["rows"],
        "bytes_all_files": total_bytes,
        "repeats": args.repeats,
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in m.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in m.items()},
        "ingest_file_tasks_last_repeat": {k: dict(Counter(v)) for k, v in checks.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/bench_daily_ingest.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    scenarios = previous.get("scenarios", {}) | {scenario: result}
    text = json.dumps({"benchmark": "daily_ingest", "scenarios": scenarios}, indent=2) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(json.dumps(result["median_seconds"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
