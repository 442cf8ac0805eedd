"""Accuracy report: Recall@20 and MRR@20 (conservative ties; mean ± std over seeds) of each preset
and the baselines, trained on train+valid and tested on test.

    python benchmarks/accuracy.py                                  # everything (hours on 2 CPU cores)
    python benchmarks/accuracy.py --datasets ml-100k yoochoose-100k --seeds 1 2 3
    python benchmarks/accuracy.py --datasets ml-1m-subset --presets gru4rec-xe --seeds 1

Datasets (from ../shared/data): the MovieLens-1M subset and MovieLens-100K with user sessions and
the tutorial's session-end split (N = 100 days), and the YooChoose 100k sample through the
`given` split of its GRU4Rec-prepared train_full/test files. Results are appended to
--out (JSON lines, one per run) so an interrupted report keeps what it finished; `--table`
prints the markdown table from that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

DATASETS = {
    "ml-1m-subset": dict(source=SHARED / "ml-1m-subset-cs100" / "ratings.dat.gz", session="user", split="session-end"),
    "ml-100k": dict(source=SHARED / "ml-100k" / "u.data.gz", session="user", split="session-end"),
    "yoochoose-100k": dict(
        source=SHARED / "rsc15-sample-100k" / "yoochoose-clicks-100k_train_full.txt.gz",
        test_source=SHARED / "rsc15-sample-100k" / "yoochoose-clicks-100k_test.txt.gz",
        split="given",
    ),
}
PRESETS = ["tutorial", "gru4rec-xe", "gru4rec-bprmax"]


def prepare(name: str, workdir: Path) -> Path:
    from gru4rec.data.config import IngestConfig, SplitConfig
    from gru4rec.data.ingest import ingest
    from gru4rec.data.splitter import make_split

    d = DATASETS[name]
    out = workdir / name
    if (out / "split" / "manifest.json").exists():
        return out / "split"
    ic = IngestConfig(source=str(d["source"]), test_source=str(d["test_source"]) if "test_source" in d else None)
    manifest = ingest(ic, out / "ingest")
    from gru4rec.data.config import SourceFormat

    tables = {r: out / "ingest" / t["file"] for r, t in manifest["tables"].items()}
    sc = SplitConfig(session=d.get("session"), split=d["split"], test_days=100 if d["split"] != "given" else None)
    make_split(tables, SourceFormat(manifest["format"]), sc, out / "split")
    return out / "split"


def run(name: str, preset: str, seed: int, split_dir: Path, threads: int) -> dict:
    from gru4rec.jobs import build_config, evaluate_on_split, train_on_split

    cfg = build_config(preset, {}, seed=seed, threads=threads, progress=False, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = train_on_split(split_dir, cfg, Path(tmp) / "model", full=True, preset=preset)
        train_s = time.perf_counter() - t
        report = evaluate_on_split(split_dir, Path(tmp) / "model", ks=(20,), ties="conservative", device="cpu")
    m = report["metrics"]
    return {
        "dataset": name, "preset": preset, "seed": seed, "train_seconds": train_s,
        "epochs": len(summary["history"]), "n_targets": m["gru4rec"]["n_targets"],
        **{f"{model}_{k}": m[model][f"{k}@20"] for model in m for k in ("recall", "mrr")},
    }


def table(rows: list[dict]) -> str:
    out = ["| dataset | model | Recall@20 | MRR@20 | seeds |", "|---|---|---:|---:|---:|"]

    def fmt(vals):
        return f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"

    for ds in DATASETS:
        sub = [r for r in rows if r["dataset"] == ds]
        if not sub:
            continue
        for base in ("popularity", "item-knn"):
            first = sub[0]
            out.append(f"| {ds} | {base} | {first[f'{base}_recall']:.4f} | {first[f'{base}_mrr']:.4f} | – |")
        for preset in PRESETS:
            rs = [r for r in sub if r["preset"] == preset]
            if rs:
                out.append(f"| {ds} | {preset} | {fmt([r['gru4rec_recall'] for r in rs])} | "
                           f"{fmt([r['gru4rec_mrr'] for r in rs])} | {len(rs)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-accuracy"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "accuracy.jsonl")
    ap.add_argument("--table", action="store_true", help="only print the table from --out")
    args = ap.parse_args()
    rows = [json.loads(x) for x in args.out.read_text().splitlines()] if args.out.exists() else []
    if not args.table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.datasets:
            split_dir = prepare(name, args.workdir)
            for preset in args.presets:
                for seed in args.seeds:
                    if any(r["dataset"] == name and r["preset"] == preset and r["seed"] == seed for r in rows):
                        continue
                    r = run(name, preset, seed, split_dir, args.threads)
                    rows.append(r)
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{name} {preset} seed {seed}: recall@20 {r['gru4rec_recall']:.4f} "
                          f"mrr@20 {r['gru4rec_mrr']:.4f} ({r['train_seconds']:.0f} s)", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
