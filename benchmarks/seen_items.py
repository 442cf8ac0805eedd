"""Items already seen in the session: repeat share per dataset and accuracy with/without excluding them.

    python benchmarks/seen_items.py                                # shares + ML-100K and YooChoose accuracy
    python benchmarks/seen_items.py --accuracy ml-100k --seed 1 --epochs 10

For each dataset in ../shared/data, prepared as the pipeline prepares it (MovieLens: user sessions,
session-end split, N = 100 days; YooChoose 100k sample: its GRU4Rec-prepared train_full/test through
the `given` split; DIGINETICA sample: its sessions, global-cut split), the share of repeated
(session, item) pairs (`gru4rec.seen.repeat_stats`) of the raw events and of the training data
(train+valid, what a pipeline model trains on) and what `exclude_seen=auto` decides. For the
datasets given to --accuracy: `gru4rec-xe` at its preset defaults (trained on train+valid, one seed,
CPU, one thread) and the popularity and item-kNN baselines, Recall@20 / MRR@20 on the test set with
and without excluding the session's items (a repeated target is then a miss). Writes --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

DATASETS = {
    "ml-100k": dict(source=SHARED / "ml-100k" / "u.data.gz", session="user", split="session-end", test_days=100),
    "ml-1m-subset": dict(
        source=SHARED / "ml-1m-subset-cs100" / "ratings.dat.gz", session="user", split="session-end", test_days=100
    ),
    "yoochoose-100k": dict(
        source=SHARED / "rsc15-sample-100k" / "yoochoose-clicks-100k_train_full.txt.gz",
        test_source=SHARED / "rsc15-sample-100k" / "yoochoose-clicks-100k_test.txt.gz",
        split="given",
    ),
    "diginetica-sample": dict(
        source=SHARED / "diginetica-sample" / "sample_train-item-views.csv.gz",
        session="source",
        split="global-cut",
        test_days=7,
        min_item_support=1,
    ),
}


def prepare(name: str, workdir: Path) -> tuple[Path, Path]:
    """(events table of the source, split directory), prepared once under workdir."""
    from gru4rec.data.config import IngestConfig, SourceFormat, SplitConfig
    from gru4rec.data.ingest import ingest
    from gru4rec.data.splitter import make_split

    d = DATASETS[name]
    out = workdir / name
    manifest_file = out / "ingest" / "ingest_manifest.json"
    ic = IngestConfig(source=str(d["source"]), test_source=str(d["test_source"]) if "test_source" in d else None)
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else ingest(ic, out / "ingest")
    tables = {r: out / "ingest" / t["file"] for r, t in manifest["tables"].items()}
    if not (out / "split" / "manifest.json").exists():
        extra = {k: d[k] for k in ("session", "test_days", "min_item_support") if k in d}
        make_split(tables, SourceFormat(manifest["format"]), SplitConfig(split=d["split"], **extra), out / "split")
    return tables.get("events") or tables["train"], out / "split"


def shares(name: str, workdir: Path) -> dict:
    import polars as pl

    from gru4rec.data.split_dir import load_split
    from gru4rec.jobs import seen_items_decision
    from gru4rec.seen import repeat_stats

    events, split_dir = prepare(name, workdir)
    raw = repeat_stats(pl.scan_parquet(events), session="session_key", item="item_id")
    split = load_split(split_dir)
    train = seen_items_decision(split, full=True, setting="auto")
    test = repeat_stats(split.test.select("session_id", "item_idx"))
    # every repeat event is a target (a session's first event is not): the share of test targets that
    # excluding seen items turns into misses
    targets = test.events - split.test["session_id"].n_unique()
    return {
        "dataset": name,
        "raw_events": raw.to_dict(),
        "train_valid": train,
        "test": test.to_dict() | {"targets": targets, "repeated_target_share": (test.events - test.pairs) / targets},
        "auto_excludes_seen": train["exclude_seen"],
    }


def accuracy(name: str, workdir: Path, seed: int, epochs: int | None, threads: int) -> dict:
    from gru4rec.jobs import build_config, evaluate_on_split, train_on_split

    _, split_dir = prepare(name, workdir)
    settings = dict(seed=seed, threads=threads, progress=False, device="cpu")
    if epochs is not None:
        settings["epochs"] = epochs
    cfg = build_config("gru4rec-xe", {}, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train_on_split(split_dir, cfg, Path(tmp) / "model", full=True, preset="gru4rec-xe")
        train_s = time.perf_counter() - t
        report = evaluate_on_split(
            split_dir, Path(tmp) / "model", ks=(20,), device="cpu", exclude_seen="auto", compare_seen=True
        )
    chosen, other = report["metrics"], report["metrics_other_seen"]["metrics"]
    excluded = report["seen_items"]["exclude_seen"]
    with_excl, without = (chosen, other) if excluded else (other, chosen)
    rows = {
        model: {
            "recall@20": without[model]["recall@20"],
            "mrr@20": without[model]["mrr@20"],
            "recall@20_excluding_seen": with_excl[model]["recall@20"],
            "mrr@20_excluding_seen": with_excl[model]["mrr@20"],
        }
        for model in chosen
    }
    return {
        "dataset": name,
        "preset": "gru4rec-xe",
        "settings": {"seed": seed, "epochs": cfg.train.epochs, "threads": threads, "trained_on": "train+valid"},
        "train_seconds": round(train_s, 1),
        "n_targets": report["n_targets"],
        "auto_excludes_seen": excluded,
        "repeat_share": report["seen_items"]["repeat_share"],
        "models": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), help="repeat shares of these")
    ap.add_argument("--accuracy", nargs="*", default=["ml-100k", "yoochoose-100k"], help="accuracy on these")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's (10)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-seen-items"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "seen_items.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {
        "command": "python benchmarks/seen_items.py " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
        "shares": [],
        "accuracy": [],
    }
    for name in args.datasets:
        s = shares(name, args.workdir)
        result["shares"].append(s)
        t = s["train_valid"]
        print(
            f"{name}: raw {s['raw_events']['repeat_share']:.4f}, train+valid {t['repeat_share']:.4f} "
            f"({t['repeated_pairs']:,} of {t['pairs']:,} pairs) → auto excludes seen: {t['exclude_seen']}; "
            f"test targets that repeat a seen item {s['test']['repeated_target_share']:.4f}",
            flush=True,
        )
    for name in args.accuracy:
        a = accuracy(name, args.workdir, args.seed, args.epochs, args.threads)
        result["accuracy"].append(a)
        for model, m in a["models"].items():
            print(
                f"{name} {model}: R@20 {m['recall@20']:.4f} / MRR@20 {m['mrr@20']:.4f}; excluding seen "
                f"{m['recall@20_excluding_seen']:.4f} / {m['mrr@20_excluding_seen']:.4f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
