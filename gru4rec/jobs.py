"""Training and evaluation as jobs on files: split directory in, model directory / metrics out.

Plain functions (no Prefect) shared by the CLI (`gru4rec-pipeline train|evaluate`) and the
pipeline's Prefect tasks. They take and return paths and small JSON-able summaries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gru4rec.data.split_dir import Split, load_split, session_arrays, training_sessions
from gru4rec.device import select_device
from gru4rec.errors import ConfigError, ModelFileError
from gru4rec.io import write_json_atomic

WORK_LOCK = ".lock"  # held in the checkpoint directory while a training writes there

DEFAULT_KS = (1, 5, 10, 20)


def training_key(split_fingerprint: str, config: dict, full: bool, device: str) -> str:
    """What decides a trained model: split content, settings, train+valid or not, device type and
    the library code. Two runs with the same key train the same model (on CPU bit for bit)."""
    import hashlib
    import json

    from gru4rec.trainer import code_version

    job = {"split": split_fingerprint, "config": config, "full": full, "device": device, "code": code_version()}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def seen_items_decision(split: Split, full: bool, setting: object = "auto") -> dict:
    """How often the training data (train, or train+valid when ``full``) repeats an item within a
    session, and what ``setting`` (auto|true|false) decides from it (`gru4rec.seen`)."""
    from gru4rec.seen import repeat_stats, seen_items_record

    cols = ["session_id", "item_idx"]
    frames = [split.train.select(cols)] + ([split.valid.select(cols)] if full else [])
    stats = repeat_stats(pl.concat(frames))
    return seen_items_record(setting, stats, "train+valid" if full else "train")


def items_for_model(split: Split, full: bool) -> pl.DataFrame:
    """The item index a model ships with; `count` is the popularity over what it was trained on."""
    items = split.items
    if full and "count_valid" in items.columns:
        items = items.with_columns((pl.col("count") + pl.col("count_valid")).alias("count"))
    return items.select("item_idx", "item_id", "count")


def build_config(preset: str, overrides: dict[str, Any] | None = None, **train_settings: Any):
    """A preset with `--set key=value` overrides and the common training flags applied."""
    from gru4rec.presets import get_preset

    merged = dict(overrides or {})
    for key, value in train_settings.items():
        if value is not None:
            merged[f"train.{key}"] = value
    return get_preset(preset, merged)


def train_on_split(
    split_dir: str | Path,
    cfg,
    model_dir: str | Path,
    *,
    full: bool = False,
    work_dir: str | Path | None = None,
    resume: bool = True,
    preset: str | None = None,
    callbacks=None,
    overwrite: bool = False,
    exclude_seen: object = "auto",
) -> dict:
    """Train on a split directory and write a model directory (weights, config, items, history).

    ``exclude_seen`` (auto|true|false) is the model's default for leaving the session's own items
    out of its recommendations; ``auto`` decides from the training data's share of repeated
    (session, item) pairs. Decision and measurement go to config.json (``extra.seen_items``).

    Checkpoints go to ``work_dir`` (default ``<model_dir>.work``) after every epoch, so a killed
    run started again with the same arguments resumes where it stopped (only the very same job is
    resumed: see `gru4rec.trainer`). ``model_dir`` must not overlap the split directory; an existing
    one is replaced only when it is empty or a model directory (`gru4rec.persist.check_destination`)
    unless ``overwrite``. Nothing is created before these checks; the leftovers of a killed training
    into the same place are removed first. The summary's ``notes`` say what was resumed or set aside.
    """
    from gru4rec.persist import check_destination, save_model
    from gru4rec.trainer import train

    select_device(cfg.train.device)  # an absent device is an error before anything is created
    split = load_split(split_dir)
    seen_items = seen_items_decision(split, full, exclude_seen)  # a bad setting fails here, before any work
    model_dir = Path(model_dir)
    work = Path(work_dir) if work_dir else model_dir.with_name(model_dir.name + ".work")
    _check_places(Path(split_dir), model_dir, work)
    check_destination(model_dir, overwrite)
    with _holding(work, model_dir):
        notes = _clean_up(model_dir, overwrite)
        try:
            result = train(split, cfg, work, full=full, resume=resume, callbacks=callbacks)
            extra = _provenance(split, result, preset, full) | {"seen_items": seen_items}
            items = items_for_model(split, full)
            config = cfg.model_dump(mode="json")
            save_model(model_dir, result.model, config, items, extra=extra, history=result.history, overwrite=overwrite)
        except BaseException:
            _clean_after_failure(work, model_dir)
            raise
    notes += result.extra.get("notes", [])
    return {"model_dir": str(model_dir), "history": result.history, **extra, "notes": notes}


def _provenance(split: Split, result, preset: str | None, full: bool) -> dict:
    """What config.json records under "extra" about how the model was trained."""
    return {
        "preset": preset,
        "trained_on": "train+valid" if full else "train",
        "split_dir": str(split.directory.resolve()),
        "split_fingerprint": split.fingerprint(),
        "device": str(result.device),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "epochs_run": len(result.history),
    }


def _check_places(split_dir: Path, model_dir: Path, work: Path) -> None:
    """The model and checkpoint directories must lie outside the split (and not contain it) and apart."""
    places = {
        "the split directory": split_dir.resolve(),
        "--out": model_dir.resolve(),
        "its checkpoint directory": work.resolve(),
    }
    names = list(places)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = places[a], places[b]
            if pa == pb or pa in pb.parents or pb in pa.parents:
                raise ConfigError(
                    f"{a} {pa} and {b} {pb} overlap: the model is written outside the split and its "
                    "checkpoints beside it; choose another --out"
                )


@contextlib.contextmanager
def _holding(work: Path, model_dir: Path) -> Iterator[None]:
    """Create the checkpoint directory and hold its lock: one training at a time writes to a place."""
    from filelock import FileLock, Timeout

    try:
        work.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"cannot keep checkpoints in {work}: it exists and is not a directory") from None
    lock = FileLock(str(work / WORK_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another training is writing to {model_dir} (it holds {work / WORK_LOCK})") from None
    try:
        yield
    finally:
        lock.release()


def _clean_up(model_dir: Path, overwrite: bool) -> list[str]:
    """Under the lock: remove what a killed save left beside the model directory; notes on it."""
    from gru4rec.persist import check_destination, clean_leftovers

    notes = []
    if leftovers := clean_leftovers(model_dir):
        notes.append(f"removed what an interrupted save left beside {model_dir}: {', '.join(leftovers)}")
    check_destination(model_dir, overwrite)  # again: a previous model may have been put back in place
    return notes


def _clean_after_failure(work: Path, model_dir: Path) -> None:
    """Normally nothing is left (atomic writes clean up after themselves); make sure of it."""
    from gru4rec.persist import clean_leftovers
    from gru4rec.trainer import clean_temp_files

    with contextlib.suppress(OSError):
        clean_temp_files(work)
        clean_leftovers(model_dir)


def _check_compatible(split: Split, loaded, model_dir: Path) -> None:
    if loaded.n_items != split.n_items or not np.array_equal(
        loaded.items["item_id"].to_numpy(), split.items["item_id"].to_numpy()
    ):
        raise ModelFileError(
            f"model {model_dir} was trained on another item index ({loaded.n_items} items) than split "
            f"{split.directory} ({split.n_items} items): evaluate a model on the split it was trained on"
        )


def evaluate_on_split(
    split_dir: str | Path,
    model_dir: str | Path,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: str = "conservative",
    baselines: tuple[str, ...] = ("popularity", "item-knn"),
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 512,
    exclude_seen: object = False,
    compare_seen: bool = False,
) -> dict:
    """Evaluate a model directory (and baselines, on the same targets) on the split's test set.

    ``exclude_seen`` (auto|true|false; default false: metrics comparable with published ones) leaves
    the session's own items out of every model's ranking, a repeated target then being a miss;
    ``auto`` decides from the training data's repeat share (`gru4rec.seen`). The report's
    ``seen_items`` holds the decision and the measurement; ``compare_seen`` also evaluates every
    model with the other setting, under ``metrics_other_seen`` ({"exclude_seen", "metrics"}).
    """
    from gru4rec.baselines import build_baseline
    from gru4rec.evaluate import evaluate_model
    from gru4rec.persist import load_model

    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; name the JSON file to write")
    split = load_split(split_dir)
    dev = select_device(device)
    loaded = load_model(model_dir, device=dev)
    _check_compatible(split, loaded, Path(model_dir))
    full = loaded.config.get("extra", {}).get("trained_on") == "train+valid"
    seen_items = seen_items_decision(split, full, exclude_seen)
    test = session_arrays(split.test)
    counts = loaded.counts
    common = dict(ks=tuple(ks), ties=ties, batch_size=batch_size, device=dev, item_counts=counts)
    train_sessions = training_sessions(split, full) if baselines else None
    scorers = {"gru4rec": loaded.model} | {
        name: build_baseline(name, train_sessions=train_sessions, n_items=split.n_items, item_counts=counts)
        for name in baselines
    }

    def evaluate_all(exclude: bool) -> dict[str, dict]:
        return {
            name: evaluate_model(s, test, **common, exclude="seen" if exclude else None) for name, s in scorers.items()
        }

    results = evaluate_all(seen_items["exclude_seen"])
    report = {
        "split_dir": str(Path(split_dir).resolve()),
        "split_fingerprint": split.fingerprint(),
        "model_dir": str(Path(model_dir).resolve()),
        "ks": list(ks),
        "ties": ties,
        "n_targets": results["gru4rec"].get("n_targets"),
        "seen_items": seen_items,
        "metrics": results,
    }
    if compare_seen:
        other = not seen_items["exclude_seen"]
        report["metrics_other_seen"] = {"exclude_seen": other, "metrics": evaluate_all(other)}
    if out is not None:
        write_json_atomic(out, report)
    return report


def metrics_table(report: dict, ks: tuple[int, ...] | None = None) -> list[dict]:
    """One row per model: recall@K and MRR@K for each K; NDCG, coverage and popularity at the largest K."""
    ks = tuple(ks or report["ks"])
    rows = []
    for name, m in report["metrics"].items():
        row: dict[str, Any] = {"model": name}
        for k in ks:
            for metric in ("recall", "mrr"):
                row[f"{metric}@{k}"] = m.get(f"{metric}@{k}")
        kmax = max(ks)
        row[f"ndcg@{kmax}"] = m.get(f"ndcg@{kmax}")
        row[f"coverage@{kmax}"] = m.get(f"coverage@{kmax}")
        row[f"popularity@{kmax}"] = m.get(f"popularity@{kmax}")
        rows.append(row)
    return rows
