"""Negative items shared by the mini-batch, drawn in bulk on the training device.

Items are drawn with replacement with probability ∝ count^alpha over the items seen in training
(count > 0; alpha = 0 is uniform over them). Draws come from a buffer of ``buffer_batches`` batches
refilled with one ``searchsorted`` over the cumulative distribution, so sampling costs a slice per
step. The state is (generator state at the last refill, position in the buffer): restoring it
regenerates the same buffer and continues exactly where a checkpoint left off.
"""

from __future__ import annotations

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
        if buffer_batches is None:  # about 10M draws per refill at most, at least one batch
            buffer_batches = max(1, min(1000, 10_000_000 // self.n_sample))
        self.buffer_batches = int(buffer_batches)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._fill_state = self.generator.get_state()
        self._buffer = None
        self._pos = 0

    def _refill(self) -> None:
        self._fill_state = self.generator.get_state()
        u = torch.rand(
            self.buffer_batches * self.n_sample, generator=self.generator, device=self.device, dtype=torch.float64
        )
        idx = torch.searchsorted(self._cdf, u, right=True).clamp_(max=self._last)
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
