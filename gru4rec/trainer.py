"""Training loop: session-parallel mini-batches, sampled or full output, checkpoint/resume, early stopping.

`train(split, cfg, out_dir)` trains a `GRU4Rec` and returns a `TrainResult`. Per epoch it walks the
precomputed schedule (`gru4rec.batching`): the hidden state is detached every step (no BPTT), rows
of slots that start a new session are zeroed, rows of slots that ran dry are dropped, and one
optimiser step is taken per mini-batch. The one-layer fp32 model uses the hand-written step of
`gru4rec.fused` (same gradients as autograd, far fewer ops); otherwise autograd is used
(``engine`` forces one).

After every epoch: validation with `gru4rec.evaluate.evaluate_model` on the valid split (unless
``full=True``, which trains on train + valid and does not validate), early stopping on
``cfg.train.early_stopping_metric`` when ``patience > 0`` (the best epoch's weights are kept and
restored at the end), then ``out_dir/checkpoint.pt`` (atomic) and ``out_dir/history.json``.

The checkpoint holds only plain tensors / numbers / strings / lists / dicts (it loads with
``torch.load(..., weights_only=True)``): model and optimiser state, sampler state, torch / numpy /
python RNG states, epoch, history, best weights and the config JSON. A killed run restarted with
``resume=True`` continues after its last finished epoch and ends with the same weights as an
uninterrupted run (the batch order is deterministic: sessions in start-time order).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gru4rec import fused
from gru4rec.batching import build_schedule
from gru4rec.config import Gru4RecConfig
from gru4rec.data.split_dir import SessionArrays, Split, load_split, session_arrays, training_sessions
from gru4rec.device import select_device
from gru4rec.errors import ConfigError, ModelFileError, TrainingError
from gru4rec.io import atomic_path, write_json_atomic
from gru4rec.losses import compute_loss, item_log_q, sampled_columns
from gru4rec.model import GRU4Rec
from gru4rec.optim import make_optimizer
from gru4rec.sampler import NegativeSampler

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
CHECKPOINT_FORMAT = "gru4rec-checkpoint/1"
# Settings that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"epochs", "progress", "threads", "device", "patience"}

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
# data


def _sessions(split: Split, full: bool) -> tuple[SessionArrays, SessionArrays | None]:
    train_s = training_sessions(split, full)
    valid_s = None if full or split.valid.height == 0 else session_arrays(split.valid)
    return train_s, valid_s


# ------------------------------------------------------------------------------------------------
# engines: one mini-batch → loss (a 0-d tensor) and the new hidden state, parameters updated


class _AutogradEngine:
    def __init__(self, model, opt, tcfg, full, log_q_batch, log_q_sample, device):
        self.model, self.opt, self.t, self.full = model, opt, tcfg, full
        self.log_q_batch, self.log_q_sample = log_q_batch, log_q_sample
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
                if t.loss == "cross-entropy" and t.logq and self.log_q_batch is not None:
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
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach(), [h.detach() for h in new_hidden]


class _FusedEngine:
    def __init__(self, model, opt, params, tcfg, full, log_q_batch, log_q_sample):
        self.opt = opt
        # The dense GRU weights become views of one flat buffer (so do their optimiser state and the
        # gradient buffers the fused step writes into): the dense update is a few ops on one tensor.
        dense = model.dense_parameters()
        gbufs = opt.pack(dense)
        # With a sampled output the output item rows (and bias, and their optimiser state) are
        # gathered and updated together: one row-major table (see gru4rec.optim.pack_rows).
        row_table = None
        if not full:
            row_table = opt.pack_rows([p for p in (model.item_out, model.item_bias) if p is not None])
        self.step = fused.FusedStep(
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
        )

    def __call__(self, inputs, targets, hidden, negatives):
        with torch.inference_mode():  # see FusedStep.grads; in-place updates of parameters are allowed
            loss, grads, hn = self.step.grads(inputs, targets, hidden[0], negatives)
            self.opt.step_grads(grads)
        return loss, [hn]


# ------------------------------------------------------------------------------------------------
# checkpoint


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


def load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a checkpoint / unsafe content
        raise ModelFileError(f"cannot read checkpoint {path}: {e}; delete it or pass resume=False") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a GRU4Rec training checkpoint ({CHECKPOINT_FORMAT})")
    return ck


def _config_diff(a: Gru4RecConfig, b: Gru4RecConfig) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    diffs = [f"model.{k}" for k in da["model"] if da["model"][k] != db["model"][k]]
    diffs += [f"train.{k}" for k in da["train"] if k not in RESUMABLE_CHANGES and da["train"][k] != db["train"][k]]
    return diffs


# ------------------------------------------------------------------------------------------------
# the loop


def _nan_error(epoch: int, step: int | str, loss: float, cfg: Gru4RecConfig) -> TrainingError:
    return TrainingError(
        f"training diverged: loss is {loss} at epoch {epoch}, step {step}. "
        f"Lower the learning rate (train.lr={cfg.train.lr:g}, try {cfg.train.lr / 10:g}), "
        + ("disable bf16, " if cfg.train.bf16 else "")
        + "or check the data for degenerate sessions."
    )


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
    when present (a config that differs in more than epochs/patience/progress/threads/device is refused).
    ``callbacks``: called after each epoch (after the checkpoint) with the epoch's history record; a
    callback returning True stops training. ``engine``: "auto" | "fused" | "autograd".
    ``evaluate_fn``: defaults to `gru4rec.evaluate.evaluate_model`.
    """
    if not isinstance(cfg, Gru4RecConfig):
        raise ConfigError(f"cfg must be a Gru4RecConfig, got {type(cfg).__name__}")
    if not isinstance(split, Split):
        split = load_split(split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = select_device(t.device)
    n_items = split.n_items

    train_s, valid_s = _sessions(split, full)
    if train_s.n_events == 0:
        raise TrainingError("the training split has no events")
    counts = torch.from_numpy(np.bincount(train_s.items, minlength=n_items).astype(np.float64))

    # ---- seeding (before the model is built: initialisation draws from torch's RNG)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % 2**32)
    random.seed(t.seed)

    model = GRU4Rec(cfg.model, n_items).to(device)
    full_out = t.n_sample == "full"
    model.set_sparse_grad(not full_out)
    params = model.sparse_parameters() + model.dense_parameters()
    opt = make_optimizer(t.optimizer, params, lr=t.lr, momentum=t.momentum)
    n_sample = 0 if full_out else int(t.n_sample)
    sampler = (
        NegativeSampler(counts, n_sample, t.sample_alpha, device=device, seed=t.seed + 1) if n_sample > 0 else None
    )
    log_q_batch = log_q_sample = None
    if t.loss == "cross-entropy" and t.logq > 0 and not full_out:
        lb, ls = item_log_q(counts, t.sample_alpha)
        log_q_batch, log_q_sample = lb.to(device, torch.float32), ls.to(device, torch.float32)

    use_fused = engine == "fused" or (
        engine == "auto" and fused.supports(model) and not (t.bf16 and device.type == "cuda")
    )
    if engine not in ("auto", "fused", "autograd"):
        raise ConfigError(f"unknown engine {engine!r}; choose auto, fused or autograd")
    if use_fused:
        run_step = _FusedEngine(model, opt, params, t, full_out, log_q_batch, log_q_sample)
    else:
        run_step = _AutogradEngine(model, opt, t, full_out, log_q_batch, log_q_sample, device)

    # ---- schedule, once; per step only views of device tensors
    sched = build_schedule(train_s.offsets, train_s.items, t.batch_size)
    # 0 for rows whose slot starts a new session: multiplying zeroes their hidden state on the device.
    keep_row = torch.from_numpy(~sched.resets).to(device, torch.float32).unsqueeze(1)
    # Plain Python lists for the per-step bookkeeping (numpy scalars cost more per use).
    offsets, sizes, has_reset = sched.step_offsets.tolist(), sched.step_sizes(), sched.step_has_reset()
    # Each step's inputs / targets as ready-made views (one split instead of two slices per step).
    step_inputs = torch.from_numpy(sched.inputs).to(device).split(sizes)
    step_targets = torch.from_numpy(sched.targets).to(device).split(sizes)

    # ---- state, possibly resumed
    history: list[dict] = []
    best = {"epoch": None, "value": None, "state": None}
    bad_epochs, stopped, start_epoch = 0, False, 1
    ck_path = out_dir / CHECKPOINT
    if resume and ck_path.exists():
        ck = load_checkpoint(ck_path)
        saved_cfg = Gru4RecConfig.model_validate_json(ck["config"])
        diffs = _config_diff(saved_cfg, cfg)
        if diffs or ck.get("n_items") != n_items or ck.get("full") != full:
            what = ", ".join(diffs) or "data (number of items / full)"
            raise ConfigError(
                f"checkpoint {ck_path} was made with different settings ({what}); "
                "use another out_dir or resume=False to start over"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sampler is not None and ck.get("sampler") is not None:
            sampler.load_state_dict(ck["sampler"])
        _set_rng_state(ck["rng"])
        if use_fused and ck.get("dropout_masks"):
            run_step.step.load_mask_state(ck["dropout_masks"])
        history = list(ck["history"])
        best = dict(ck["best"])
        bad_epochs, stopped = int(ck["bad_epochs"]), bool(ck["stopped"])
        start_epoch = int(ck["epoch"]) + 1

    evaluate = evaluate_fn
    if evaluate is None and valid_s is not None:
        from gru4rec.evaluate import evaluate_model as evaluate  # the evaluation module owns metrics
    metric = t.early_stopping_metric
    cb_list = list(callbacks or [])
    on_cpu = device.type == "cpu"

    epoch = start_epoch
    for epoch in range(start_epoch, t.epochs + 1):
        if stopped:
            break
        model.train()
        hidden = model.init_hidden(sizes[0] if sizes else 0, device)
        loss_total = 0.0
        pending = torch.zeros((), dtype=torch.float64, device=device)
        bar = None
        if t.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sched.n_events, desc=f"epoch {epoch}/{t.epochs}", unit="ev", leave=False)
        t0 = time.perf_counter()
        last_bar, last_events = 0, 0
        for step in range(sched.n_steps):  # as `gru4rec.batching.iterate`, without per-step objects
            a, b = offsets[step], offsets[step + 1]
            if step and sizes[step] != sizes[step - 1]:  # the batch shrank: drop slots that ran dry
                keep = torch.from_numpy(sched.kept_rows(step)).to(device)
                hidden = [h.index_select(0, keep) for h in hidden]
            if has_reset[step]:
                km = keep_row[a:b]
                hidden = [h * km for h in hidden]
            negatives = sampler.draw() if sampler is not None else None
            loss, hidden = run_step(step_inputs[step], step_targets[step], hidden, negatives)
            if on_cpu:  # .item() costs nothing on the CPU: check every step
                value = loss.item()
                if not math.isfinite(value):
                    raise _nan_error(epoch, step, value, cfg)
                loss_total += value * (b - a)
            else:  # no host sync per step on an accelerator
                pending += loss.double() * (b - a)
                if (step + 1) % 64 == 0 or step + 1 == sched.n_steps:
                    value = float(pending)
                    if not math.isfinite(value):
                        raise _nan_error(epoch, f"{max(step - 63, 0)}..{step}", value, cfg)
                    loss_total += value
                    pending.zero_()
            if bar is not None and (step - last_bar >= 50 or step + 1 == sched.n_steps):
                el = time.perf_counter() - t0
                bar.update(b - last_events)
                last_events, last_bar = b, step
                bar.set_postfix(loss=f"{float(loss):.4f}", ev_s=f"{b / max(el, 1e-9):,.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_total / max(sched.n_events, 1),
            "events": int(sched.n_events),
            "steps": int(sched.n_steps),
            "seconds": seconds,
            "events_per_s": sched.n_events / max(seconds, 1e-9),
        }
        if valid_s is not None:
            model.eval()
            tv = time.perf_counter()
            with torch.no_grad():
                metrics = evaluate(model, valid_s, ks=tuple(t.eval_ks), ties=t.eval_ties, device=device)
            record["valid_seconds"] = time.perf_counter() - tv
            for k, v in metrics.items():
                record[f"valid_{k}"] = float(v) if isinstance(v, (int, float)) else v
            if metric not in metrics:
                raise ConfigError(
                    f"early_stopping_metric {metric!r} is not computed by the evaluation; "
                    f"available: {', '.join(sorted(metrics))}"
                )
            value = float(metrics[metric])
            if best["value"] is None or value > best["value"]:
                best = {"epoch": epoch, "value": value, "state": _cpu_state(model) if t.patience > 0 else None}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if t.patience > 0 and bad_epochs >= t.patience:
                    stopped = True
            model.train()
        history.append(record)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": cfg.model_dump_json(),
            "n_items": n_items,
            "full": full,
            "epoch": epoch,
            "history": history,
            "model": _cpu_state(model),
            "optimizer": _to_cpu(opt.state_dict()),
            "sampler": _to_cpu(sampler.state_dict()) if sampler is not None else None,
            "rng": _rng_state(),
            "dropout_masks": _to_cpu(run_step.step.mask_state()) if use_fused else None,
            "best": best,
            "bad_epochs": bad_epochs,
            "stopped": stopped,
        }
        save_checkpoint(ck_path, payload)
        write_json_atomic(out_dir / HISTORY, history)
        if any(cb(record) is True for cb in cb_list):
            break

    if t.patience > 0 and best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best["epoch"],
        device=str(device),
        config=cfg,
        stopped_early=stopped,
        checkpoint=ck_path,
    )
