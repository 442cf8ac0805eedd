"""Negative items shared by the mini-batch, drawn in bulk on the training device.

Items are drawn with replacement with probability ∝ count^alpha over the items seen in training
(count > 0; alpha = 0 is uniform over them). Draws come from a buffer of ``buffer_batches`` batches
refilled with one ``searchsorted`` over the cumulative distribution, so sampling costs a slice per
step. The state is (generator state at the last refill, position in the buffer): restoring it
regenerates the same buffer and continues exactly where a checkpoint left off.

The inverse-CDF lookup uses a guide table (Chen & Asau): for u in bucket k = floor(u·K) of K
equal buckets, the answer ``#{cdf <= u}`` lies in ``[lo_k, lo_k + W]`` with ``lo_k = #{cdf <= k/K}``
and W the widest bucket, so W vectorised compares replace the branchy binary search. It returns
exactly what ``searchsorted(cdf, u, right=True)`` returns (used instead when W would be large).
"""

from __future__ import annotations

import math

import torch


class NegativeSampler:
    def __init__(
        self,
        counts: torch.Tensor,
        n_sample: int,
        alpha: float,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        buffer_batches: int | None = None,
    ):
        if n_sample <= 0:
            raise ValueError("NegativeSampler needs n_sample > 0 (in-batch and full need no sampler)")
        counts = torch.as_tensor(counts, dtype=torch.float64)
        if not bool((counts > 0).any()):
            raise ValueError("no item has a positive training count to sample from")
        self.device = torch.device(device)
        self.n_sample = int(n_sample)
        weights = torch.where(counts > 0, counts.clamp(min=1e-300) ** alpha, torch.zeros_like(counts))
        self.prob = (weights / weights.sum()).to(torch.float64)  # sampling probability per item (CPU)
        cdf = torch.cumsum(self.prob, 0)
        cdf = cdf / cdf[-1]
        self._cdf = cdf.to(self.device, torch.float64)
        self._last = int(torch.nonzero(self.prob > 0).max())  # guard against u rounding up to 1.0
        self._guide = self._guide_table(cdf)
        if buffer_batches is None:  # about 10M draws per refill at most, at least one batch
            buffer_batches = max(1, min(1000, 10_000_000 // self.n_sample))
        self.buffer_batches = int(buffer_batches)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._fill_state = self.generator.get_state()
        self._buffer = None
        self._pos = 0

    def _guide_table(self, cdf: torch.Tensor):
        """(K, lo table, cdf padded with +inf, W) or None when the table would be too big or too wide."""
        n = len(cdf)
        k = 1 << max(6, int(math.ceil(math.log2(64 * n))))
        if k > 1 << 20:
            return None
        edges = torch.arange(k + 1, dtype=torch.float64) / k  # exact: k is a power of two
        lo = torch.searchsorted(cdf, edges[:-1], right=True)
        width = int((torch.searchsorted(cdf, edges[1:], right=False) - lo).max())
        if width > 4:
            return None
        pad = torch.cat([cdf, torch.full((max(width, 1),), math.inf, dtype=torch.float64)])
        return k, lo.to(self.device, torch.int32), pad.to(self.device), width

    def _lookup(self, u: torch.Tensor) -> torch.Tensor:
        if self._guide is None:
            return torch.searchsorted(self._cdf, u, right=True)
        k, lo_tab, pad, width = self._guide
        lo = lo_tab.index_select(0, u.mul(k).to(torch.int32))  # u·k is exact, the cast floors
        out = lo.to(torch.int64)
        for j in range(width):
            out += pad.index_select(0, lo + j if j else lo) <= u
        return out

    def _refill(self) -> None:
        self._fill_state = self.generator.get_state()
        u = torch.rand(
            self.buffer_batches * self.n_sample, generator=self.generator, device=self.device, dtype=torch.float64
        )
        idx = self._lookup(u).clamp_(max=self._last)
        self._buffer = idx.view(self.buffer_batches, self.n_sample)
        self._pos = 0

    def draw(self) -> torch.Tensor:
        """The negatives of one mini-batch: an int64 tensor of n_sample item indices on the device."""
        if self._buffer is None or self._pos >= self.buffer_batches:
            self._refill()
        out = self._buffer[self._pos]
        self._pos += 1
        return out

    def state_dict(self) -> dict:
        return {"fill_state": self._fill_state.cpu().clone(), "pos": int(self._pos), "filled": self._buffer is not None}

    def load_state_dict(self, state: dict) -> None:
        if state["filled"]:
            self.generator.set_state(state["fill_state"])
            self._refill()
            self._pos = int(state["pos"])
        else:
            self.generator.set_state(state["fill_state"])
            self._buffer, self._pos = None, 0
