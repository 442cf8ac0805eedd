"""Hand-written forward + backward of one training mini-batch for the one-layer model (no autograd).

The trainer detaches the hidden state after every batch (no BPTT), so one batch's graph is tiny and
the autograd bookkeeping costs more than the arithmetic. This computes the same gradients as
autograd through `GRU4Rec.step` + `GRU4Rec.score` + `gru4rec.losses` (checked in
tests/test_trainer.py) with a few dozen tensor ops, and hands them to the optimiser as dense
tensors or (unique rows, values) pairs.

With a sampled output the output item matrix and bias live in the optimiser's `RowTable` (per row:
``[item vector | bias | optimiser state]``): one gather brings a batch's candidate rows, the scores
are ``[o | 1] · [W | b]ᵀ`` (one matmul, bias included), their gradient ``dSᵀ [o | 1]`` gives
``[dW | db]`` in one matmul too, and the optimiser updates the gathered rows and writes them back.

GRU (gates [candidate | reset | update], h = previous hidden, constant)::

    vx = x W_x + b;  r = σ(vx_r + h W_r);  z = σ(vx_z + h W_z)
    c = tanh(vx_c + (r ⊙ h) W_h);  h' = h + z ⊙ (c - h);  o = dropout(h')
    carried state: h' (or o with ``ModelConfig.dropout_carry``; no gradient flows through it)

With ``cell='torch'`` (torch.nn.GRUCell's formulation): r, z get + b_h[r|z] and
``c = tanh(vx_c + r ⊙ hw)``, hw = h W_h + b_h[c]; in the backward below then
``dr = dc ⊙ hw ⊙ r(1 - r)``, ``dW_h = hᵀ (dc ⊙ r)``, ``db_h = Σ_rows [dc ⊙ r | dr | dz]``.

Backward from dS (scores gradient), S = o W_colsᵀ + b_cols::

    dW_cols = dSᵀ o;  db_cols = Σ_rows dS;  do = dS W_cols;  dh' = do ⊙ mask_h
    dc = dh' ⊙ z ⊙ (1 - c²);  dz = dh' ⊙ (c - h) ⊙ z(1 - z)
    d(rh) = dc W_hᵀ;  dW_h = (r⊙h)ᵀ dc;  dr = d(rh) ⊙ h ⊙ r(1 - r)
    dvx = [dc | dr | dz];  dW_rz = hᵀ [dr | dz];  db = Σ_rows dvx;  dW_x = xᵀ dvx;  dx = dvx W_xᵀ
"""

from __future__ import annotations

import torch

from gru4rec.losses import bpr_max_and_grad, compute_loss, cross_entropy_and_grad, sampled_columns
from gru4rec.model import GRU4Rec
from gru4rec.optim import RowTable, TableRows, coalesce_rows


def supports(model: GRU4Rec) -> bool:
    return len(model.layers) == 1


class FusedStep:
    """``grads(inputs, targets, hidden, negatives)`` → (loss, grads in `param_order`, new hidden).

    The forward and backward pass of one batch; the optimiser update is the caller's (the trainer
    hands ``grads`` to `step_grads`)."""

    def __init__(
        self,
        model: GRU4Rec,
        param_order: list[torch.nn.Parameter],
        *,
        loss: str,
        full: bool,
        logq: float = 0.0,
        bpreg: float = 0.0,
        elu: float = 0.0,
        log_q_batch: torch.Tensor | None = None,
        log_q_sample: torch.Tensor | None = None,
        grad_buffers: dict[int, torch.Tensor] | None = None,
        row_table: RowTable | None = None,
        loss_batch_size: int | None = None,
    ):
        """``loss_batch_size``: divide the summed loss of a batch by this many rows instead of its own
        row count (`TrainConfig.loss_scale` = 'batch_size'); the returned loss stays the mean."""
        if not supports(model):
            raise ValueError("the fused step handles one GRU layer only")
        if not full and row_table is None:
            raise ValueError("a sampled output needs the optimiser's row table of item_out (+ item_bias)")
        self.table = row_table
        self.m = model
        self.loss, self.full = loss, full
        self.loss_batch_size = loss_batch_size
        self.carry_dropout = model.cfg.dropout_carry
        self.logq, self.bpreg, self.elu = logq, bpreg, elu
        # Candidate weights of the sampled cross-entropy, per item: exp(-logq·logQ) and its log.
        self._w_batch = self._w_sample = self._lw_batch = None
        if loss == "cross-entropy" and not full and logq and log_q_batch is not None:
            self._lw_batch = log_q_batch * -logq
            self._w_batch = torch.exp(self._lw_batch)
            self._w_sample = torch.exp(log_q_sample * -logq)
        self._mark = None
        self.H = model.cfg.layers[0]
        self.emb = model.cfg.embedding
        self.p_emb = model.cfg.dropout_embedding if self.emb != "onehot" else 0.0
        self.p_hid = model.cfg.dropout_hidden
        self.n_params = len(param_order)
        # Parameters, their slots in `param_order` and the gradient buffers to write dense gradients
        # into (param id → buffer, e.g. `AdagradM.pack`'s views), looked up once: per-batch
        # nn.Module attribute access and dict lookups are measurable at this batch size.
        L = model.layers[0]
        self.w_x, self.w_rz, self.w_h, self.b = L.w_x, L.w_rz, L.w_h, L.b
        self.item_out, self.item_bias, self.item_in = model.item_out, model.item_bias, model.item_in
        self.has_bias = model.item_bias is not None
        slot = {id(p): i for i, p in enumerate(param_order)}.get
        self.i_w_x, self.i_w_rz, self.i_w_h, self.i_b = (
            slot(id(L.w_x)),
            slot(id(L.w_rz)),
            slot(id(L.w_h)),
            slot(id(L.b)),
        )
        self.torch_cell, self.b_h = L.cell == "torch", L.b_h
        self.i_b_h = slot(id(L.b_h))
        self.i_out, self.i_bias, self.i_in = (
            slot(id(model.item_out)),
            slot(id(model.item_bias)),
            slot(id(model.item_in)),
        )
        gbuf = grad_buffers or {}
        self.g_w_x, self.g_w_rz, self.g_w_h, self.g_b = (gbuf.get(id(p)) for p in (L.w_x, L.w_rz, L.w_h, L.b))
        self.g_b_h = gbuf.get(id(L.b_h))
        # Transposed views, made once: they share storage with the weights, which the optimiser
        # updates in place (build this object after `pack`/`pack_rows`, which move the storage).
        self.w_x_t, self.w_h_t = L.w_x.detach().t(), L.w_h.detach().t()
        self._dvx: dict[int, torch.Tensor] = {}  # batch size → gate-gradient buffer
        self._masks: dict = {}
        self._ones_col: dict[int, torch.Tensor] = {}  # batch size → [o | 1] buffer

    def _mask(self, like: torch.Tensor, p: float) -> torch.Tensor | None:
        """Inverted-dropout mask (0 or 1/(1-p)) for ``like``, sliced from a buffer refilled every
        ~256 batches from torch's global RNG (one bulk draw instead of a small one per batch)."""
        if p <= 0 or not self.m.training:
            return None
        n, w = like.shape
        key = (w, p)
        buf, pos = self._masks.get(key, (None, 0))
        if buf is None or pos + n > buf.shape[0]:
            rows = max(256 * n, 4096)
            buf = (torch.rand(rows, w, device=like.device) >= p).to(like.dtype).mul_(1.0 / (1.0 - p))
            pos = 0
        self._masks[key] = (buf, pos + n)
        return buf[pos : pos + n]

    def mask_state(self) -> dict:
        """Dropout buffers (checkpointed so a resumed run continues with the same masks)."""
        return {f"{w}|{p!r}": (buf.cpu(), pos) for (w, p), (buf, pos) in self._masks.items()}

    def load_mask_state(self, state: dict) -> None:
        self._masks = {}
        for k, (buf, pos) in state.items():
            w, p = k.split("|")
            self._masks[(int(w), float(p))] = (buf.to(self.m.item_out.device), int(pos))

    def _unique(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.unique(items, sorted=True, return_inverse=True)``; for a catalogue not much larger
        than ``items`` a mark-and-count over the catalogue (no sort)."""
        n = self.m.n_items
        if n > 4 * len(items):
            return torch.unique(items, sorted=True, return_inverse=True)
        if self._mark is None:
            self._mark = torch.zeros(n, dtype=torch.int64, device=items.device)
        mark = self._mark.zero_().index_fill_(0, items, 1)
        uniq = mark.nonzero().view(-1)
        inv = mark.cumsum_(0).index_select(0, items).sub_(1)
        return uniq, inv

    def _with_ones(self, hn: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[o | 1] with o = hn (· dropout mask), written into a reused buffer whose last column is 1
        (the bias input); without an output bias just o."""
        if not self.has_bias:
            return hn if mask is None else hn * mask
        n = hn.shape[0]
        buf = self._ones_col.get(n)
        if buf is None:
            buf = self._ones_col[n] = torch.ones(n, self.H + 1, dtype=hn.dtype, device=hn.device)
        o = buf[:, : self.H]
        if mask is None:
            o.copy_(hn)
        else:
            torch.mul(hn, mask, out=o)
        return buf

    def _scores_grad(self, s: torch.Tensor, pos, exclude, log_q):
        if self.loss == "cross-entropy":
            return cross_entropy_and_grad(
                s, pos=pos, exclude=exclude, log_q=log_q, logq=0.0 if self.full else self.logq
            )
        # Autograd on the scores only; `grads` runs in inference mode, so step out of it (and clone:
        # tensors made in inference mode cannot join an autograd graph).
        with torch.inference_mode(False), torch.enable_grad():
            s = s.clone().requires_grad_(True)
            loss = compute_loss(s, self.loss, pos=pos, exclude=exclude, bpreg=self.bpreg, elu=self.elu)
            (ds,) = torch.autograd.grad(loss, s)
        return loss.detach(), ds

    def _sampled_cross_entropy(self, s, pos, targets, negatives, inv_c, n_uniq):
        """Loss and score gradient of the sampled cross-entropy over deduplicated columns.

        A candidate item occurring k times contributes k·exp(z) to the softmax (a log-weight offset
        per column, with the logQ correction folded into the weights); for row i its own target
        column counts once with its own weight (its duplicates are excluded, see gru4rec.losses);
        items present only as inputs get weight 0 (offset -inf)."""
        own = None
        if self._w_batch is not None:
            w = self._w_batch.index_select(0, targets)
            if negatives is not None:
                w = torch.cat([w, self._w_sample.index_select(0, negatives)])
            own = self._lw_batch.index_select(0, targets).view(-1, 1)
        else:
            w = torch.ones(inv_c.shape[0], dtype=s.dtype, device=s.device)
        colw = torch.zeros(n_uniq, dtype=s.dtype, device=s.device).index_add_(0, inv_c, w)
        pcol = pos.view(-1, 1)
        s_pos = s.gather(1, pcol)
        logits = s.add_(colw.log_())
        logits.scatter_(1, pcol, s_pos if own is None else s_pos.add_(own))
        return cross_entropy_and_grad(logits, pos=pos)

    # Inference mode, not just no_grad: no version counters or view tracking per op, which is a
    # measurable share of a batch this small (~15 % on the ML-1M benchmark).
    @torch.inference_mode()
    def grads(self, inputs: torch.Tensor, targets: torch.Tensor, hidden: torch.Tensor, negatives: torch.Tensor | None):
        H = self.H
        h = hidden
        B = targets.shape[0]
        w_x, w_h = self.w_x, self.w_h
        # ---- forward
        if self.emb == "onehot":
            x = None
            vx = w_x.index_select(0, inputs).add_(self.b)
        else:
            x = (self.item_in if self.emb == "separate" else self.item_out).index_select(0, inputs)
            me = self._mask(x, self.p_emb)
            if me is not None:
                x.mul_(me)
            vx = torch.addmm(self.b, x, w_x)
        rz = torch.addmm(vx[:, H:], h, self.w_rz)
        if self.torch_cell:
            rz.add_(self.b_h[H:])
        rz.sigmoid_()
        r, z = rz[:, :H], rz[:, H:]
        if self.torch_cell:
            hw = torch.addmm(self.b_h[:H], h, w_h)  # h W_h + b_hc
            c = torch.addcmul(vx[:, :H], r, hw).tanh_()
        else:
            rh = r * h
            c = torch.addmm(vx[:, :H], rh, w_h).tanh_()
        c_minus_h = c - h
        hn = torch.addcmul(h, z, c_minus_h)
        mh = self._mask(hn, self.p_hid)
        # ---- scores and their gradient
        if self.full:
            o = hn if mh is None else hn * mh
            W, bias = self.item_out, self.item_bias
            s = o @ W.t() if bias is None else torch.addmm(bias.t(), o, W.t())
            loss, ds = self._scores_grad(s, targets, None, None)
        else:
            # Deduplicated columns: one per distinct item among [targets | negatives | inputs].
            parts = [targets, inputs] if negatives is None else [targets, negatives, inputs]
            uniq, inv = self._unique(torch.cat(parts))
            n_cand = inv.shape[0] - inputs.shape[0]
            inv_c, inv_in = inv[:n_cand], inv[n_cand:]
            rows = self.table.gather(uniq)  # [item vector | bias | optimiser state] per candidate
            wb = rows[:, : self.table.width]
            W = wb[:, :H]
            o1 = self._with_ones(hn, mh)
            s = o1 @ wb.t()
            pos = inv[:B]
            if self.loss == "cross-entropy":
                loss, ds = self._sampled_cross_entropy(s, pos, targets, negatives, inv_c, uniq.shape[0])
            elif self.loss == "bpr-max":  # closed form on the distinct columns, weighted by count
                log_count = inv_c.bincount(minlength=uniq.shape[0]).to(s.dtype).log_()
                loss, ds = bpr_max_and_grad(s, pos, log_count, bpreg=self.bpreg, elu=self.elu)
            else:
                # Other ranking losses: expand to the B × M candidate layout, autograd on the scores
                # only, fold the gradient back onto the distinct columns.
                _, exclude = sampled_columns(targets, negatives)
                s_m = s.index_select(1, inv_c)
                loss, ds_m = self._scores_grad(s_m, None, exclude, None)
                ds = torch.zeros_like(s).index_add_(1, inv_c, ds_m)
        if self.loss_batch_size is not None and B != self.loss_batch_size:
            ds.mul_(B / self.loss_batch_size)  # sum over the rows / configured batch size
        # ---- backward
        if self.full:
            dW = ds.t() @ o
            db_out = ds.sum(0).unsqueeze(1)
        else:
            dwb = ds.t() @ o1  # [dW | db] of the candidate rows
            dW = dwb[:, :H]
        dh = ds @ W
        if mh is not None:
            dh.mul_(mh)
        dvx = self._dvx.get(B)
        if dvx is None:
            dvx = self._dvx[B] = torch.empty(B, 3 * H, dtype=h.dtype, device=h.device)
        dc, dr, dz = dvx[:, :H], dvx[:, H : 2 * H], dvx[:, 2 * H :]
        torch.ops.aten.tanh_backward.grad_input(dh * z, c, grad_input=dc)
        torch.ops.aten.sigmoid_backward.grad_input(dh.mul_(c_minus_h), z, grad_input=dz)
        grads: list = [None] * self.n_params
        if self.torch_cell:
            torch.ops.aten.sigmoid_backward.grad_input(dc * hw, r, grad_input=dr)
            dhw = dc * r
            grads[self.i_w_h] = _mm(h.t(), dhw, self.g_w_h)
            db_h = torch.cat([dhw.sum(0), dvx[:, H:].sum(0)])
            grads[self.i_b_h] = db_h if self.g_b_h is None else self.g_b_h.copy_(db_h)
        else:
            drh = dc @ self.w_h_t
            torch.ops.aten.sigmoid_backward.grad_input(drh.mul_(h), r, grad_input=dr)
            grads[self.i_w_h] = _mm(rh.t(), dc, self.g_w_h)
        grads[self.i_w_rz] = _mm(h.t(), dvx[:, H:], self.g_w_rz)
        grads[self.i_b] = dvx.sum(0) if self.g_b is None else torch.sum(dvx, 0, out=self.g_b)
        in_rows = in_vals = None
        if self.emb == "onehot":
            grads[self.i_w_x] = coalesce_rows(inputs, dvx)
        else:
            grads[self.i_w_x] = _mm(x.t(), dvx, self.g_w_x)
            dx = dvx @ self.w_x_t
            if me is not None:
                dx.mul_(me)
            in_rows, in_vals = inputs, dx
            if self.emb == "separate":
                grads[self.i_in] = coalesce_rows(in_rows, in_vals)
                in_rows = None
        if self.full:
            if in_rows is not None:
                dW.index_add_(0, in_rows, in_vals)
            grads[self.i_out] = dW
            if self.has_bias:
                grads[self.i_bias] = db_out
        else:
            if in_rows is not None:
                dW.index_add_(0, inv_in, in_vals)
            # The gathered rows go along: the optimiser updates them and writes them back.
            grads[self.i_out] = TableRows(uniq, dwb, rows)
        if mh is not None and self.carry_dropout:  # the dropped-out output is the carried state
            hn = hn * mh
        return loss, grads, hn


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return a @ b if out is None else torch.mm(a, b, out=out)
