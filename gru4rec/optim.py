"""Adagrad with momentum (GRU4Rec's optimiser) and Adam, with row-sparse updates for item tables.

A parameter whose gradient is sparse (the item tables of `GRU4Rec.sparse_parameters()` with a
sampled output) is updated on the touched rows only: the gradient is coalesced (duplicate rows
summed), the state rows are gathered, updated and scattered back, and the parameter rows are
changed with ``index_add_``. The step cost is proportional to the rows in the batch, not to the
catalogue. Untouched rows and their state do not change at all (also no momentum carry-over, as in
GRU4Rec's sparse updates). Dense gradients get the same formulas on the whole tensor.

Adagrad with momentum, per element, g = gradient (eps = 1e-6, acc and v start at 0)::

    acc ← acc + g²
    v   ← momentum · v + lr · g / sqrt(acc + eps)
    p   ← p - v

(with momentum = 0, v is not stored and p ← p - lr · g / sqrt(acc + eps)).

Adam (Kingma & Ba), t counted per parameter (every step that has a gradient for it, like
``torch.optim.SparseAdam``)::

    m ← β1 m + (1 - β1) g;  u ← β2 u + (1 - β2) g²
    p ← p - lr · (m / (1 - β1^t)) / (sqrt(u / (1 - β2^t)) + eps)

`step()` reads ``p.grad`` (dense or sparse); `step_grads(grads)` takes the gradients directly, each
either a dense tensor or a ``(rows, values)`` pair with unique rows — used by the fused training step.

`pack_rows(params)` stores item tables with the same rows (the output item matrix and its bias) and
their optimiser state side by side in one row-major table, ``[params | state 1 | state 2]`` per row:
the forward pass gathers a batch's rows once (`RowTable.gather`), and the update of every touched
row — parameters and state together — is a few ops on those gathered rows plus one ``index_copy_``.
The gradient then comes as a `TableRows` in the first packed parameter's slot (the others None).

`pack(params)` stores a group of dense parameters (and their optimiser state) as views of one flat
buffer each and returns gradient buffers (views of one flat gradient buffer) to fill: when
`step_grads` receives exactly those buffers, the group is updated with a handful of ops on the
flat tensors instead of per-tensor ops. Parameter names, shapes and the state dict are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch


def coalesce_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the values of duplicate rows: (unique sorted rows, summed values)."""
    uniq, inv = torch.unique(rows, sorted=True, return_inverse=True)
    out = torch.zeros((len(uniq),) + values.shape[1:], dtype=values.dtype, device=values.device)
    out.index_add_(0, inv, values)
    return uniq, out


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU table with an even row width viewed as float64 (two columns per element), else
    itself: the CPU index_copy_ moves a row element by element, and half the elements take ~20 %
    less time (~7 % of a gru4rec-bprmax step)."""
    if t.dtype == torch.float32 and t.device.type == "cpu" and t.shape[1] % 2 == 0:
        return t.view(torch.float64)
    return t


class RowTable(NamedTuple):
    """Item tables and their optimiser state packed per row (see `_RowOptimizer.pack_rows`)."""

    table: torch.Tensor  # n_rows × (1 + n_state) · width
    width: int  # columns of the packed parameters together
    index: list[int]  # the packed parameters' positions in the optimiser
    blocks: dict[str, int]  # state key → block number (block 0 = the parameters)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Scratch copy of ``rows`` (parameters and state); `TableRows` hands it back updated."""
        return self.table.index_select(0, rows)


class TableRows(NamedTuple):
    """Gradient of a `RowTable`: unique ``rows``, ``grad`` (rows × width) and the gathered rows."""

    rows: torch.Tensor
    grad: torch.Tensor
    table_rows: torch.Tensor


class _RowOptimizer:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float):
        self.params = list(params)
        self.lr = float(lr)
        self.state: list[dict[str, torch.Tensor]] = [self._init_state(p) for p in self.params]
        self._pack: tuple[list[int], dict[str, torch.Tensor], torch.Tensor, list[torch.Tensor]] | None = None
        self._row_table: RowTable | None = None

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def pack(self, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
        """Make ``params`` (dense, same dtype/device) and their state views of flat buffers; return
        one gradient buffer per parameter (views of a flat buffer) for `step_grads`."""
        pos = {id(p): i for i, p in enumerate(self.params)}
        idx = [pos[id(p)] for p in params]
        if not idx:
            return []
        ref = self.params[idx[0]]
        sizes = [self.params[i].numel() for i in idx]
        total = sum(sizes)

        def flat_of(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
            flat = torch.empty(total, dtype=ref.dtype, device=ref.device)
            views = []
            for t, chunk in zip(tensors, flat.split(sizes)):
                v = chunk.view(t.shape)
                v.copy_(t)
                views.append(v)
            return flat, views

        flat_p, views = flat_of([self.params[i].data for i in idx])
        for i, v in zip(idx, views):
            self.params[i].data = v
        flat_state = {}
        for key, t0 in self.state[idx[0]].items():
            if t0.shape != self.params[idx[0]].shape:  # scalars (Adam's step count) stay per tensor
                continue
            flat_state[key], views = flat_of([self.state[i][key] for i in idx])
            for i, v in zip(idx, views):
                self.state[i][key] = v
        flat_state["param"] = flat_p
        flat_g = torch.zeros(total, dtype=ref.dtype, device=ref.device)
        gviews = [c.view(self.params[i].shape) for i, c in zip(idx, flat_g.split(sizes))]
        self._pack = (idx, flat_state, flat_g, gviews)
        return gviews

    @torch.no_grad()
    def pack_rows(self, params: Sequence[torch.nn.Parameter]) -> RowTable:
        """Make ``params`` (2-D, same rows, dtype and device) and their per-element state column views
        of one row-major table; return it. Names, shapes and the state dict are unchanged."""
        pos = {id(p): i for i, p in enumerate(self.params)}
        idx = [pos[id(p)] for p in params]
        ref = self.params[idx[0]]
        if any(self.params[i].dim() != 2 or self.params[i].shape[0] != ref.shape[0] for i in idx):
            raise ValueError("pack_rows needs 2-D tables with the same number of rows")
        keys = [k for k, t in self.state[idx[0]].items() if t.shape == ref.shape]
        widths = [self.params[i].shape[1] for i in idx]
        width = sum(widths)
        cols = (1 + len(keys)) * width
        cols += cols % 2  # an even row width (one unused column): see `_pairs`
        table = torch.zeros(ref.shape[0], cols, dtype=ref.dtype, device=ref.device)

        def place(block: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            views, col = [], block * width
            for t, w in zip(tensors, widths):
                v = table[:, col : col + w]
                v.copy_(t)
                views.append(v)
                col += w
            return views

        for i, v in zip(idx, place(0, [self.params[i].data for i in idx])):
            self.params[i].data = v
        for b, key in enumerate(keys, start=1):
            for i, v in zip(idx, place(b, [self.state[i][key] for i in idx])):
                self.state[i][key] = v
        self._row_table = RowTable(table, width, idx, {k: b for b, k in enumerate(keys, start=1)})
        return self._row_table

    def _table_block(self, rows: torch.Tensor, key: str) -> torch.Tensor:
        w = self._row_table.width
        b = self._row_table.blocks[key]
        return rows[:, b * w : (b + 1) * w]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = []
        for p in self.params:
            g = p.grad
            if g is not None and g.is_sparse:
                g = g.coalesce()
                g = (g.indices()[0], g.values())
            grads.append(g)
        self.step_grads(grads)

    @torch.inference_mode()  # also accepts the inference-mode gradients of gru4rec.fused
    def step_grads(self, grads: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor] | TableRows | None]) -> None:
        dense_i = []
        for i, g in enumerate(grads):
            if g is None:
                continue
            if isinstance(g, TableRows):
                tr = g.table_rows
                self._table_rows(self._row_table.index, tr[:, : self._row_table.width], tr, g.grad)
                _pairs(self._row_table.table).index_copy_(0, g.rows, _pairs(tr))
            elif isinstance(g, tuple):
                self._rows(i, *g)
            else:
                dense_i.append(i)
        if self._pack is not None and dense_i:
            idx, flat, flat_g, gviews = self._pack
            if all(grads[i] is gv for i, gv in zip(idx, gviews)):
                self._flat(idx, flat, flat_g)
                packed = set(idx)
                dense_i = [i for i in dense_i if i not in packed]
        if dense_i:
            self._dense(dense_i, [grads[i] for i in dense_i])

    def _rows(self, i: int, rows: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError

    def _table_rows(self, idx: list[int], p: torch.Tensor, rows: torch.Tensor, g: torch.Tensor) -> None:
        """Update gathered table rows in place: parameters ``p`` (a view of ``rows``) and state."""
        raise NotImplementedError

    def _flat(self, idx: list[int], flat: dict[str, torch.Tensor], g: torch.Tensor) -> None:
        raise NotImplementedError

    def _dense(self, idx: list[int], grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"lr": self.lr, "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, sd: dict) -> None:
        if len(sd["state"]) != len(self.params):
            raise ValueError("optimiser state does not match the parameters")
        for s, saved in zip(self.state, sd["state"]):
            for k, v in saved.items():
                s[k].copy_(v)


class AdagradM(_RowOptimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0, eps: float = 1e-6):
        self.momentum = float(momentum)
        self.eps = float(eps)
        super().__init__(params, lr)

    def _init_state(self, p):
        s = {"acc": torch.zeros_like(p, memory_format=torch.contiguous_format)}
        if self.momentum > 0:
            s["v"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return s

    def _rows(self, i, rows, g):
        p, s = self.params[i], self.state[i]
        acc = s["acc"].index_select(0, rows).addcmul_(g, g)
        s["acc"].index_copy_(0, rows, acc)
        std = acc.add_(self.eps).sqrt_()
        if self.momentum > 0:
            upd = s["v"].index_select(0, rows).mul_(self.momentum).addcdiv_(g, std, value=self.lr)
            s["v"].index_copy_(0, rows, upd)
            p.index_add_(0, rows, upd, alpha=-1.0)
        else:  # same rounding as addcdiv_ in `_update`: (value · g) / std
            p.index_add_(0, rows, (g * -self.lr).div_(std))

    def _update(self, p, acc, v, g, std_out=None):
        """The Adagrad-momentum formulas on matching tensors (in place)."""
        acc.addcmul_(g, g)
        std = torch.add(acc, self.eps, out=std_out).sqrt_()
        if v is not None:
            p.sub_(v.mul_(self.momentum).addcdiv_(g, std, value=self.lr))
        else:
            p.addcdiv_(g, std, value=-self.lr)

    def _table_rows(self, idx, p, rows, g):
        v = self._table_block(rows, "v") if self.momentum > 0 else None
        self._update(p, self._table_block(rows, "acc"), v, g)

    def _flat(self, idx, flat, g):
        if "_std" not in flat:
            flat["_std"] = torch.empty_like(g)
        self._update(flat["param"], flat["acc"], flat.get("v"), g, std_out=flat["_std"])

    def _dense(self, idx, grads):
        ps = [self.params[i] for i in idx]
        accs = [self.state[i]["acc"] for i in idx]
        torch._foreach_addcmul_(accs, grads, grads)
        std = torch._foreach_add(accs, self.eps)
        torch._foreach_sqrt_(std)
        if self.momentum > 0:
            vs = [self.state[i]["v"] for i in idx]
            torch._foreach_mul_(vs, self.momentum)
            torch._foreach_addcdiv_(vs, grads, std, value=self.lr)
            torch._foreach_sub_(ps, vs)
        else:
            torch._foreach_addcdiv_(ps, grads, std, value=-self.lr)


class Adam(_RowOptimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.b1, self.b2 = betas
        self.eps = float(eps)
        super().__init__(params, lr)

    def _init_state(self, p):
        return {
            "m": torch.zeros_like(p, memory_format=torch.contiguous_format),
            "u": torch.zeros_like(p, memory_format=torch.contiguous_format),
            "t": torch.zeros((), dtype=torch.float64),
        }

    def _coef(self, s) -> tuple[float, float]:
        s["t"] += 1
        t = float(s["t"])
        return self.lr / (1 - self.b1**t), 1.0 / (1 - self.b2**t) ** 0.5

    def _rows(self, i, rows, g):
        p, s = self.params[i], self.state[i]
        step, bc2 = self._coef(s)
        m = s["m"].index_select(0, rows).mul_(self.b1).add_(g, alpha=1 - self.b1)
        u = s["u"].index_select(0, rows).mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        s["m"].index_copy_(0, rows, m)
        s["u"].index_copy_(0, rows, u)
        denom = u.sqrt_().mul_(bc2).add_(self.eps)
        p.index_add_(0, rows, m.mul_(-step).div_(denom))  # addcdiv_'s rounding, as in `_update`

    def _update(self, p, m, u, g, step, bc2, denom_out=None):
        """The Adam formulas on matching tensors (in place)."""
        m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        u.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        denom = torch.sqrt(u, out=denom_out).mul_(bc2).add_(self.eps)
        p.addcdiv_(m, denom, value=-step)

    def _table_rows(self, idx, p, rows, g):
        step, bc2 = [self._coef(self.state[i]) for i in idx][0]  # packed tables step together
        self._update(p, self._table_block(rows, "m"), self._table_block(rows, "u"), g, step, bc2)

    def _flat(self, idx, flat, g):
        step, bc2 = [self._coef(self.state[i]) for i in idx][0]  # every packed tensor has the same step count
        if "_denom" not in flat:
            flat["_denom"] = torch.empty_like(g)
        self._update(flat["param"], flat["m"], flat["u"], g, step, bc2, denom_out=flat["_denom"])

    def _dense(self, idx, grads):
        for i, g in zip(idx, grads):
            s = self.state[i]
            self._update(self.params[i], s["m"], s["u"], g, *self._coef(s))


def make_optimizer(name: str, params, lr: float, momentum: float = 0.0) -> _RowOptimizer:
    if name == "adagrad":
        return AdagradM(params, lr=lr, momentum=momentum)
    if name == "adam":
        return Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose adagrad or adam")
