"""Training loop: session-parallel mini-batches, sampled or full output, checkpoint/resume, early stopping.

`train(split, cfg, out_dir)` trains a `GRU4Rec` and returns a `TrainResult`. Words used below: a
*batch* is one session-parallel mini-batch, i.e. one position of the precomputed schedule
(`gru4rec.batching`, where it is called a step); an *update* is the one optimiser step taken per
batch; an *engine* turns a batch into its loss and that update: the hand-written kernel of
`gru4rec.fused` (`fused.FusedStep`: same gradients as autograd, far fewer ops) for the one-layer
fp32 model, autograd through `GRU4Rec.step` otherwise (``engine`` forces one).

Per epoch the batches are walked in schedule order: the hidden state is detached after every batch
(no BPTT), rows of slots that start a new session are zeroed, rows of slots that ran dry are dropped.
After every epoch: validation with `gru4rec.evaluate.evaluate_model` on the valid split (unless
``full=True``, which trains on train + valid and does not validate), early stopping on
``cfg.train.early_stopping_metric`` when ``patience > 0`` (the best epoch's weights are kept and
restored at the end), then ``out_dir/checkpoint.pt`` (atomic) and ``out_dir/history.json``.

The checkpoint holds only plain tensors / numbers / strings / lists / dicts (it loads with
``torch.load(..., weights_only=True)``): model and optimiser state, sampler state, torch / numpy /
python RNG states, epoch, history, best weights, the config JSON, the job it belongs to (split
fingerprint, item count, ``full``, device type, `code_version`), the thread count and ``done``. A
killed run restarted with ``resume=True`` continues after its last finished epoch and ends with the
same weights as an uninterrupted run (the batch order is deterministic: sessions in start-time order).

Only the very same job is resumed: same job and same config except ``progress``, ``device`` (the
device *type* used is part of the job) and ``threads``. A different thread count is resumed with a
note in the result (bit-identical weights are promised with the same thread count only). A checkpoint
of another job is never resumed: a finished one (``done``) is moved aside to
``checkpoint.stale.pt`` and training starts over, with a note; an unfinished one is refused
(`ConfigError`) unless ``resume=False``, which moves it aside too. A finished checkpoint of the same
job returns its model without training again. The notes are in ``TrainResult.extra["notes"]``.

The module reads top to bottom: setup (data, seeding, model, optimiser, sampler, engine, schedule),
one epoch (the hot loop), validation and early stopping, checkpoint and resume, then `train`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from gru4rec import fused
from gru4rec.batching import build_schedule
from gru4rec.config import Gru4RecConfig
from gru4rec.data.split_dir import SessionArrays, Split, load_split, session_arrays, training_sessions
from gru4rec.device import select_device
from gru4rec.errors import ConfigError, ModelFileError, TrainingError
from gru4rec.faults import kill_point
from gru4rec.io import atomic_path, write_json_atomic
from gru4rec.losses import compute_loss, item_log_q, sampled_columns
from gru4rec.model import GRU4Rec
from gru4rec.optim import make_optimizer
from gru4rec.sampler import NegativeSampler
from gru4rec.seen import repeat_stats, resolve_exclude_seen

CHECKPOINT = "checkpoint.pt"
STALE_CHECKPOINT = "checkpoint.stale.pt"  # a checkpoint of another job, moved aside
HISTORY = "history.json"
CHECKPOINT_FORMAT = "gru4rec-checkpoint/1"
# Settings that may differ between a run and its resumption: the device type actually used is part
# of the job (`_job`), the thread count actually used is compared apart (a note, not a refusal).
RESUMABLE_CHANGES = {"progress", "threads", "device"}
# The temporary files atomic_path leaves in out_dir when killed (tempfile's 8-character names).
_TEMP_FILE = re.compile(rf"\.({re.escape(CHECKPOINT)}|{re.escape(HISTORY)})\.[a-z0-9_]{{8}}\.tmp")
# The source files whose content decides the trained weights (see `code_version`).
CODE_FILES = (
    "trainer.py",
    "model.py",
    "fused.py",
    "optim.py",
    "losses.py",
    "sampler.py",
    "batching.py",
    "evaluate.py",
    "data/split_dir.py",
)

log = logging.getLogger(__name__)

Callback = Callable[[dict], Any]


@dataclass
class TrainResult:
    model: GRU4Rec
    history: list[dict]
    best_epoch: int | None
    device: str
    config: Gru4RecConfig
    stopped_early: bool = False
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# setup: data and seeding


def _sessions(split: Split, full: bool) -> tuple[SessionArrays, SessionArrays | None]:
    train_s = training_sessions(split, full)
    valid_s = None if full or split.valid.height == 0 else session_arrays(split.valid)
    return train_s, valid_s


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------------------------
# setup: engines. ``engine(inputs, targets, hidden, negatives)`` runs one batch: the loss (a 0-d
# tensor) and the new hidden state come back, the parameters are updated.


class _AutogradEngine:
    def __init__(self, model, opt, tcfg, full, log_q_batch, log_q_sample, device):
        self.model, self.opt, self.t, self.full = model, opt, tcfg, full
        self.log_q_batch, self.log_q_sample = log_q_batch, log_q_sample  # set only for logQ-corrected CE
        self.autocast = bool(tcfg.bf16 and device.type == "cuda")
        self.device_type = device.type

    def __call__(self, inputs, targets, hidden, negatives):
        t = self.t
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            out, new_hidden = self.model.step(inputs, hidden)
            if self.full:
                scores = self.model.score(out)
                pos, exclude, log_q = targets, None, None
            else:
                cols, exclude = sampled_columns(targets, negatives)
                scores = self.model.score(out, cols)
                pos, log_q = None, None
                if self.log_q_batch is not None:
                    parts = [self.log_q_batch[targets]]
                    if negatives is not None:
                        parts.append(self.log_q_sample[negatives])
                    log_q = torch.cat(parts)
        loss = compute_loss(
            scores.float(),
            t.loss,
            pos=pos,
            exclude=exclude,
            log_q=log_q,
            logq=0.0 if self.full else t.logq,
            bpreg=t.bpreg,
            elu=t.elu,
        )
        b = targets.shape[0]
        scaled = loss
        if t.loss_scale == "batch_size" and b != t.batch_size:
            scaled = loss * (b / t.batch_size)  # sum over the rows / configured batch size
        self.opt.zero_grad()
        scaled.backward()
        self.opt.step()
        return loss.detach(), [h.detach() for h in new_hidden]

    def mask_state(self) -> None:  # no buffered masks: nn.Dropout draws from torch's RNG every batch
        return None

    def load_mask_state(self, state: dict) -> None:
        pass


class _FusedEngine:
    def __init__(self, model, opt, params, tcfg, full, log_q_batch, log_q_sample):
        self.opt = opt
        # The dense GRU weights become views of one flat buffer (so do their optimiser state and the
        # gradient buffers the kernel writes into): the dense update is a few ops on one tensor.
        dense = model.dense_parameters()
        gbufs = opt.pack(dense)
        # With a sampled output the output item rows (and bias, and their optimiser state) are
        # gathered and updated together: one row-major table (see gru4rec.optim.pack_rows).
        row_table = None
        if not full:
            row_table = opt.pack_rows([p for p in (model.item_out, model.item_bias) if p is not None])
        self.kernel = fused.FusedStep(
            model,
            params,
            loss=tcfg.loss,
            full=full,
            logq=tcfg.logq,
            bpreg=tcfg.bpreg,
            elu=tcfg.elu,
            log_q_batch=log_q_batch,
            log_q_sample=log_q_sample,
            grad_buffers={id(p): g for p, g in zip(dense, gbufs)},
            row_table=row_table,
            loss_batch_size=tcfg.batch_size if tcfg.loss_scale == "batch_size" else None,
        )

    def __call__(self, inputs, targets, hidden, negatives):
        with torch.inference_mode():  # see FusedStep.grads; in-place updates of parameters are allowed
            loss, grads, hn = self.kernel.grads(inputs, targets, hidden[0], negatives)
            self.opt.step_grads(grads)
        return loss, [hn]

    def mask_state(self) -> dict:  # the kernel's dropout-mask buffers
        return self.kernel.mask_state()

    def load_mask_state(self, state: dict) -> None:
        self.kernel.load_mask_state(state)


def _make_engine(choice, model, opt, params, tcfg, full_out, counts, device) -> _AutogradEngine | _FusedEngine:
    """The engine ``choice`` ("auto" | "fused" | "autograd") asks for, with its logQ tables."""
    log_q_batch = log_q_sample = None
    if tcfg.loss == "cross-entropy" and tcfg.logq > 0 and not full_out:
        lb, ls = item_log_q(counts, tcfg.sample_alpha, normalize=tcfg.logq_base == "probability")
        log_q_batch, log_q_sample = lb.to(device, torch.float32), ls.to(device, torch.float32)
    if choice not in ("auto", "fused", "autograd"):
        raise ConfigError(f"unknown engine {choice!r}; choose auto, fused or autograd")
    use_fused = choice == "fused" or (
        choice == "auto" and fused.supports(model) and not (tcfg.bf16 and device.type == "cuda")
    )
    if use_fused:
        return _FusedEngine(model, opt, params, tcfg, full_out, log_q_batch, log_q_sample)
    return _AutogradEngine(model, opt, tcfg, full_out, log_q_batch, log_q_sample, device)


# ------------------------------------------------------------------------------------------------
# setup: the schedule, and everything together


@dataclass
class _Batches:
    """The epoch's schedule on the device, with plain Python lists for the per-batch bookkeeping
    (numpy scalars cost more per use). Batch i is rows ``offsets[i]:offsets[i + 1]``."""

    inputs: tuple[torch.Tensor, ...]  # per batch, ready-made views (one split, not two slices a batch)
    targets: tuple[torch.Tensor, ...]
    sizes: list[int]  # rows per batch (never growing)
    offsets: list[int]  # n_batches + 1
    kept: list[torch.Tensor | None]  # where the batch shrank: rows of the previous batch still active
    has_reset: list[bool]  # does a slot start a new session in this batch?
    not_reset: torch.Tensor  # per row: 0 where the slot starts a new session, else 1 (a column)

    @property
    def n_events(self) -> int:
        return self.offsets[-1]


def _device_batches(train_s: SessionArrays, batch_size: int, device: torch.device) -> _Batches:
    """The schedule (`gru4rec.batching`), built once; per batch only views of device tensors."""
    sched = build_schedule(train_s.offsets, train_s.items, batch_size)
    sizes = sched.step_sizes()
    kept: list[torch.Tensor | None] = [None] * len(sizes)
    for i in range(1, len(sizes)):
        if sizes[i] != sizes[i - 1]:
            kept[i] = torch.from_numpy(sched.kept_rows(i)).to(device)
    return _Batches(
        inputs=torch.from_numpy(sched.inputs).to(device).split(sizes),
        targets=torch.from_numpy(sched.targets).to(device).split(sizes),
        sizes=sizes,
        offsets=sched.step_offsets.tolist(),
        kept=kept,
        has_reset=sched.step_has_reset(),
        not_reset=torch.from_numpy(~sched.resets).to(device, torch.float32).unsqueeze(1),
    )


@dataclass
class _Run:
    """Everything the epochs need, built once by `_setup`."""

    cfg: Gru4RecConfig
    full: bool
    n_items: int
    device: torch.device
    model: GRU4Rec
    opt: Any
    sampler: NegativeSampler | None
    engine: _AutogradEngine | _FusedEngine
    batches: _Batches
    valid: SessionArrays | None
    valid_exclude: str | None  # "seen": the session's own items are left out of the validation ranking


def _setup(split: Split, cfg: Gru4RecConfig, full: bool, engine_choice: str) -> _Run:
    """Data, seeding, model, optimiser, sampler, engine, schedule: in this order, which fixes what
    each draws from the seeded random number generators."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = select_device(t.device)
    train_s, valid_s = _sessions(split, full)
    if train_s.n_events == 0:
        raise TrainingError("the training split has no events")
    counts = torch.from_numpy(np.bincount(train_s.items, minlength=split.n_items).astype(np.float64))
    _seed_everything(t.seed)  # before the model is built: initialisation draws from torch's RNG
    model = GRU4Rec(cfg.model, split.n_items).to(device)
    full_out = t.n_sample == "full"
    model.set_sparse_grad(not full_out)
    params = model.sparse_parameters() + model.dense_parameters()
    opt = make_optimizer(t.optimizer, params, lr=t.lr, momentum=t.momentum)
    n_sample = 0 if full_out else int(t.n_sample)
    sampler = None
    if n_sample > 0:
        sampler = NegativeSampler(counts, n_sample, t.sample_alpha, device=device, seed=t.seed + 1)
    return _Run(
        cfg=cfg,
        full=full,
        n_items=split.n_items,
        device=device,
        model=model,
        opt=opt,
        sampler=sampler,
        engine=_make_engine(engine_choice, model, opt, params, t, full_out, counts, device),
        batches=_device_batches(train_s, t.batch_size, device),
        valid=valid_s,
        valid_exclude="seen" if valid_s is not None and _validation_excludes_seen(split, t) else None,
    )


def _validation_excludes_seen(split: Split, t) -> bool:
    """``train.eval_exclude_seen`` decided on the training part, by the rule evaluation uses (`gru4rec.seen`)."""
    share = repeat_stats(split.train).repeat_share if t.eval_exclude_seen == "auto" else None
    return resolve_exclude_seen(t.eval_exclude_seen, share)


# ------------------------------------------------------------------------------------------------
# one epoch


def _nan_error(epoch: int, batch: int | str, loss: float, cfg: Gru4RecConfig) -> TrainingError:
    return TrainingError(
        f"training diverged: loss is {loss} at epoch {epoch}, step {batch}. "
        f"Lower the learning rate (train.lr={cfg.train.lr:g}, try {cfg.train.lr / 10:g}), "
        + ("disable bf16, " if cfg.train.bf16 else "")
        + "or check the data for degenerate sessions."
    )


class _EpochBar:
    """Progress bar over an epoch's events with the last loss and events/s (redrawn every 50 batches)."""

    def __init__(self, batches: _Batches, epoch: int, epochs: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=batches.n_events, desc=f"epoch {epoch}/{epochs}", unit="ev", leave=False)
        self.offsets, self.shown = batches.offsets, 0
        self.t0 = time.perf_counter()

    def show(self, batch: int, loss: torch.Tensor) -> None:
        done, seconds = self.offsets[batch + 1], time.perf_counter() - self.t0
        self.bar.update(done - self.shown)
        self.shown = done
        self.bar.set_postfix(loss=f"{float(loss):.4f}", ev_s=f"{done / max(seconds, 1e-9):,.0f}")

    def close(self) -> None:
        self.bar.close()


def _run_batches(run: _Run, epoch: int, bar: _EpochBar | None) -> float:
    """The hot loop: every batch through the engine, in schedule order; the loss summed over rows.
    Per batch nothing but list lookups, the engine and the loss check (tuned to ~20 µs a batch)."""
    b = run.batches
    inputs, targets, sizes, offsets, kept = b.inputs, b.targets, b.sizes, b.offsets, b.kept
    has_reset, not_reset = b.has_reset, b.not_reset
    engine, draw = run.engine, (run.sampler.draw if run.sampler is not None else None)
    n_batches, on_cpu, cfg = len(sizes), run.device.type == "cpu", run.cfg
    hidden = run.model.init_hidden(sizes[0] if sizes else 0, run.device)
    loss_sum = 0.0
    pending = torch.zeros((), dtype=torch.float64, device=run.device)
    for i in range(n_batches):
        if (rows := kept[i]) is not None:  # the batch shrank: drop the rows of slots that ran dry
            hidden = [h.index_select(0, rows) for h in hidden]
        if has_reset[i]:  # zero the rows of slots that start a new session
            mask = not_reset[offsets[i] : offsets[i + 1]]
            hidden = [h * mask for h in hidden]
        loss, hidden = engine(inputs[i], targets[i], hidden, draw() if draw is not None else None)
        if on_cpu:  # .item() costs nothing on the CPU: check every batch
            value = loss.item()
            if not math.isfinite(value):
                raise _nan_error(epoch, i, value, cfg)
            loss_sum += value * sizes[i]
        else:  # no host sync per batch on an accelerator: check every 64 batches
            pending += loss.double() * sizes[i]
            if (i + 1) % 64 == 0 or i + 1 == n_batches:
                value = float(pending)
                if not math.isfinite(value):
                    raise _nan_error(epoch, f"{i - i % 64}..{i}", value, cfg)
                loss_sum += value
                pending.zero_()
        if bar is not None and ((i and i % 50 == 0) or i + 1 == n_batches):
            bar.show(i, loss)
    return loss_sum


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the training batches; the epoch's history record."""
    t, n_events = run.cfg.train, run.batches.n_events
    run.model.train()
    bar = _EpochBar(run.batches, epoch, t.epochs) if t.progress else None
    t0 = time.perf_counter()
    loss_sum = _run_batches(run, epoch, bar)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return {
        "epoch": epoch,
        "loss": loss_sum / max(n_events, 1),
        "events": n_events,
        "steps": len(run.batches.sizes),  # batches = optimiser updates
        "seconds": seconds,
        "events_per_s": n_events / max(seconds, 1e-9),
    }


# ------------------------------------------------------------------------------------------------
# validation and early stopping


@dataclass
class _Progress:
    """What carries over from epoch to epoch (and through a checkpoint) besides the weights."""

    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "value": None, "state": None})
    bad_epochs: int = 0
    stopped: bool = False
    epoch: int = 0  # the last finished epoch


def _validate(run: _Run, evaluate: Callable, record: dict) -> dict:
    """Metrics on the valid split, also written into ``record`` as ``valid_<metric>``."""
    t = run.cfg.train
    run.model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        metrics = evaluate(
            run.model, run.valid, ks=tuple(t.eval_ks), ties=t.eval_ties, device=run.device, exclude=run.valid_exclude
        )
    record["valid_seconds"] = time.perf_counter() - t0
    for k, v in metrics.items():
        record[f"valid_{k}"] = float(v) if isinstance(v, (int, float)) else v
    run.model.train()
    return metrics


def _early_stopping(run: _Run, progress: _Progress, metrics: dict, epoch: int) -> None:
    """Track the best epoch (its weights too when ``patience > 0``); stop after ``patience`` worse ones."""
    t = run.cfg.train
    metric = t.early_stopping_metric
    if metric not in metrics:
        raise ConfigError(
            f"early_stopping_metric {metric!r} is not computed by the evaluation; "
            f"available: {', '.join(sorted(metrics))}"
        )
    value = float(metrics[metric])
    if progress.best["value"] is None or value > progress.best["value"]:
        state = _cpu_state(run.model) if t.patience > 0 else None
        progress.best = {"epoch": epoch, "value": value, "state": state}
        progress.bad_epochs = 0
    else:
        progress.bad_epochs += 1
        if t.patience > 0 and progress.bad_epochs >= t.patience:
            progress.stopped = True


# ------------------------------------------------------------------------------------------------
# checkpoint and resume


def _np_state() -> dict:
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _rng_state() -> dict:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state(),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]), float(n["gauss"]))
    )
    version, internal, gauss = json.loads(st["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        kill_point("checkpoint-write")  # written to the temporary file, not yet renamed


def load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a checkpoint / unsafe content
        raise ModelFileError(f"cannot read checkpoint {path}: {e}; delete it or pass resume=False") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a GRU4Rec training checkpoint ({CHECKPOINT_FORMAT})")
    return ck


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and a hash of the source files that decide the trained weights."""
    from gru4rec.persist import package_version

    root, digest = Path(__file__).resolve().parent, hashlib.sha256()
    for name in CODE_FILES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return f"{package_version()}+{digest.hexdigest()[:16]}"


def _job(split: Split, run: _Run) -> dict:
    """What a checkpoint must have been made for to be resumed (besides the config)."""
    return {
        "split": split.fingerprint(),
        "n_items": run.n_items,
        "full": run.full,
        "device": run.device.type,
        "code": code_version(),
    }


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 20 else text[:19] + "…"


def _config_diff(a: Gru4RecConfig, b: Gru4RecConfig) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    keys = [("model", k) for k in da["model"]] + [("train", k) for k in da["train"] if k not in RESUMABLE_CHANGES]
    return [f"{p}.{k} ({_short(da[p][k])} → {_short(db[p].get(k))})" for p, k in keys if da[p][k] != db[p].get(k)]


def _job_diff(ck: dict, job: dict, cfg: Gru4RecConfig) -> list[str]:
    """How the checkpoint's job differs from this one (empty: the very same job)."""
    names = {"split": "split fingerprint", "code": "code version"}
    old = ck.get("job") or {}
    diffs = [f"{names.get(k, k)} ({_short(old.get(k))} → {_short(v)})" for k, v in job.items() if old.get(k) != v]
    try:
        return diffs + _config_diff(Gru4RecConfig.model_validate_json(ck["config"]), cfg)
    except (ValidationError, KeyError, TypeError):
        return diffs + ["config (unreadable)"]


def _done(ck: dict) -> bool:
    """Whether the checkpoint's training had finished (checkpoints without the flag: by their epochs)."""
    if "done" in ck:
        return bool(ck["done"])
    try:
        return bool(ck.get("stopped")) or int(ck["epoch"]) >= json.loads(ck["config"])["train"]["epochs"]
    except (KeyError, TypeError, ValueError):
        return False


def _checkpoint(run: _Run, progress: _Progress, job: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": run.cfg.model_dump_json(),
        "n_items": run.n_items,
        "full": run.full,
        "job": job,
        "threads": torch.get_num_threads(),
        "done": progress.stopped or progress.epoch >= run.cfg.train.epochs,
        "epoch": progress.epoch,
        "history": progress.history,
        "model": _cpu_state(run.model),
        "optimizer": _to_cpu(run.opt.state_dict()),
        "sampler": _to_cpu(run.sampler.state_dict()) if run.sampler is not None else None,
        "rng": _rng_state(),
        "dropout_masks": _to_cpu(run.engine.mask_state()),
        "best": progress.best,
        "bad_epochs": progress.bad_epochs,
        "stopped": progress.stopped,
    }


def _load_progress(run: _Run, ck: dict) -> _Progress:
    """Load the checkpoint's state into the run; its progress."""
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    if run.sampler is not None and ck.get("sampler") is not None:
        run.sampler.load_state_dict(ck["sampler"])
    _set_rng_state(ck["rng"])
    if ck.get("dropout_masks"):
        run.engine.load_mask_state(ck["dropout_masks"])
    return _Progress(
        history=list(ck["history"]),
        best=dict(ck["best"]),
        bad_epochs=int(ck["bad_epochs"]),
        stopped=bool(ck["stopped"]),
        epoch=int(ck["epoch"]),
    )


def _set_aside(ck_path: Path, why: str) -> str:
    """Move a checkpoint that is not to be resumed to STALE_CHECKPOINT (replacing an older one)."""
    stale = ck_path.with_name(STALE_CHECKPOINT)
    os.replace(ck_path, stale)
    return f"{why}: started over (the old checkpoint is kept as {stale})"


def _resume_notes(ck: dict, ck_path: Path, run: _Run) -> list[str]:
    notes = [
        f"training had already finished in {ck_path.parent} (same split, settings and code): "
        "its model is returned without training again"
        if _done(ck)
        else f"resumed from {ck_path} after epoch {ck['epoch']}"
    ]
    threads = torch.get_num_threads()
    if run.device.type == "cpu" and not _done(ck) and ck.get("threads") != threads:
        notes.append(
            f"resumed with {threads} CPU threads a checkpoint made with {ck.get('threads')}: the weights may "
            "differ in the last bits from an uninterrupted run (bit-identical only with the same thread count)"
        )
    return notes


def _start(run: _Run, ck_path: Path, job: dict, resume: bool) -> tuple[_Progress, list[str]]:
    """The progress to continue from (the checkpoint's when it is of this very job) and notes on it."""
    if not ck_path.exists():
        return _Progress(), []
    if not resume:
        return _Progress(), [_set_aside(ck_path, f"resume=False with a checkpoint in {ck_path.parent}")]
    ck = load_checkpoint(ck_path)
    diffs = _job_diff(ck, job, run.cfg)
    if diffs and not _done(ck):
        raise ConfigError(
            f"checkpoint {ck_path} holds an unfinished training (epoch {ck.get('epoch')}) of another job "
            f"({'; '.join(diffs)}): rerun with the same split, settings and code to resume it, or pass "
            f"resume=False (--no-resume) to start over (the checkpoint is then kept as {STALE_CHECKPOINT})"
        )
    if diffs:
        return _Progress(), [
            _set_aside(ck_path, f"the checkpoint in {ck_path.parent} is of another job ({'; '.join(diffs)})")
        ]
    return _load_progress(run, ck), _resume_notes(ck, ck_path, run)


def clean_temp_files(out_dir: str | Path) -> list[str]:
    """Remove the temporary files a killed training left in ``out_dir`` (our exact names only)."""
    out_dir, removed = Path(out_dir), []
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if _TEMP_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def _out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"cannot keep checkpoints in {out_dir}: it (or a parent) exists and is not a directory"
        ) from None
    clean_temp_files(out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------------
# train


def train(
    split: Split | str | Path,
    cfg: Gru4RecConfig,
    out_dir: str | Path,
    *,
    full: bool = False,
    resume: bool = True,
    callbacks: Sequence[Callback] | None = None,
    engine: str = "auto",
    evaluate_fn: Callable | None = None,
) -> TrainResult:
    """Train GRU4Rec on ``split`` (a `Split` or a split directory) into ``out_dir``.

    ``full``: train on train + valid, no validation. ``resume``: continue from ``out_dir/checkpoint.pt``
    when it is of this very job (see the module docstring for what happens otherwise; ``resume=False``
    moves an existing checkpoint aside). ``callbacks``: called after each epoch (after the checkpoint)
    with the epoch's history record; a callback returning True stops training. ``engine``: "auto" |
    "fused" | "autograd". ``evaluate_fn``: defaults to `gru4rec.evaluate.evaluate_model`.
    Nothing is created before the settings and the device are checked; temporary files a killed
    training left in ``out_dir`` are removed first. Call it while no other process trains there.
    """
    if not isinstance(cfg, Gru4RecConfig):
        raise ConfigError(f"cfg must be a Gru4RecConfig, got {type(cfg).__name__}")
    if not isinstance(split, Split):
        split = load_split(split)
    run = _setup(split, cfg, full, engine)
    ck_path = _out_dir(out_dir) / CHECKPOINT
    job = _job(split, run)
    progress, notes = _start(run, ck_path, job, resume)
    for note in notes:
        log.warning(note)
    evaluate = evaluate_fn
    if evaluate is None and run.valid is not None:
        from gru4rec.evaluate import evaluate_model as evaluate  # the evaluation module owns metrics
    _epochs(run, progress, evaluate, list(callbacks or []), ck_path, job)
    return _result(run, progress, ck_path, notes)


def _epochs(run: _Run, progress: _Progress, evaluate, callbacks: list, ck_path: Path, job: dict) -> None:
    """The epochs left after ``progress``: train, validate, checkpoint, call back (True stops)."""
    for epoch in range(progress.epoch + 1, run.cfg.train.epochs + 1):
        if progress.stopped:
            break
        record = _train_epoch(run, epoch)
        if run.valid is not None:
            _early_stopping(run, progress, _validate(run, evaluate, record), epoch)
        progress.history.append(record)
        progress.epoch = epoch
        save_checkpoint(ck_path, _checkpoint(run, progress, job))
        write_json_atomic(ck_path.with_name(HISTORY), progress.history)
        if any(cb(record) is True for cb in callbacks):
            break


def _result(run: _Run, progress: _Progress, ck_path: Path, notes: list[str]) -> TrainResult:
    """The model in eval mode, with the best epoch's weights when early stopping kept them."""
    if run.cfg.train.patience > 0 and progress.best["state"] is not None:
        run.model.load_state_dict(progress.best["state"])
    run.model.eval()
    return TrainResult(
        model=run.model,
        history=progress.history,
        best_epoch=progress.best["epoch"],
        device=str(run.device),
        config=run.cfg,
        stopped_early=progress.stopped,
        checkpoint=ck_path,
        extra={"notes": notes},
    )
