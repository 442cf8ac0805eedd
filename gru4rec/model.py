"""GRU4Rec: a GRU over the items of a session that scores every item as the next one.

Read top to bottom: config → initialisation → GRU layer → model. Hidasi et al. 2016 / 2018.

Item input comes in three flavours (``ModelConfig.embedding``):
- ``onehot``: the one-hot vector times the first layer's input weights, i.e. a row lookup of a
  (n_items × 3H) matrix — the reference tutorial's variant;
- ``separate``: a learned item embedding (n_items × d) fed to the first GRU layer;
- ``constrained``: the input embedding *is* the output item matrix (n_items × H_last), usually best.

Scores are ``final hidden · output item vectors + item bias``. All item-indexed tables are
looked up with ``sparse=True`` so that, with a sampled output, the gradient (and the optimiser
step) touches only the rows of the items in the mini-batch, whatever the catalogue size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding: Literal["onehot", "separate", "constrained"] = Field(
        default="constrained", description="Item input: one-hot, separate embedding, or tied to the output matrix."
    )
    embedding_dim: int = Field(default=0, ge=0, description="Size of a separate embedding; 0 = first layer size.")
    layers: list[int] = Field(default=[100], description="GRU layer sizes (one entry per layer).")
    dropout_embedding: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the item input.")
    dropout_hidden: float = Field(default=0.0, ge=0, lt=1, description="Dropout on each layer's output.")
    dropout_carry: bool = Field(
        default=False,
        description="Training only: the dropped-out output of a layer is also the hidden state carried to the "
        "next step (GRU4Rec's reference code); False = the clean state is carried, dropout only on what is passed on.",
    )
    output_bias: bool = Field(default=True, description="Per-item bias added to the scores.")
    cell: Literal["paper", "torch"] = Field(
        default="paper",
        description="GRU formulation: 'paper' = reset gate on the hidden state before its matmul, one bias per "
        "gate; 'torch' = torch.nn.GRUCell's (reset gate on the hidden state's projection, separate input and "
        "hidden biases), which GRU4Rec's reference code uses with constrained or separate embeddings.",
    )

    @field_validator("layers")
    @classmethod
    def _layers_positive(cls, v: list[int]) -> list[int]:
        if not v or any(n <= 0 for n in v):
            raise ValueError(f"layers must be a non-empty list of positive sizes, got {v}")
        return v


def init_uniform_(t: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """GRU4Rec's initialisation: U(-s, s) with s = sqrt(6 / (fan_in + fan_out))."""
    s = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return t.uniform_(-s, s)


class GRULayer(nn.Module):
    """One GRU layer; gates [candidate | reset | update], vx = x W_x + b::

        paper:  r, z = σ(vx_r + h W_r), σ(vx_z + h W_z);       c = tanh(vx_c + (r ⊙ h) W_h)
        torch:  r, z = σ(vx_r + h W_r + b_hr), σ(... + b_hz);  c = tanh(vx_c + r ⊙ (h W_h + b_hc))
        h' = (1 - z) ⊙ h + z ⊙ c

    ('torch' is torch.nn.GRUCell's formulation with hidden biases b_h; GRUCell's update gate is 1 - z.) ``input_lookup`` makes the
    input weights a row-lookup table (the one-hot input): then ``forward`` takes item indices instead
    of vectors and ``dim_in`` is the number of items.
    """

    def __init__(self, dim_in: int, dim_out: int, input_lookup: bool = False, cell: str = "paper"):
        super().__init__()
        self.input_lookup = input_lookup
        self.cell = cell
        self.sparse_grad = True
        # Input weights for the three gates [candidate | reset | update], stored (dim_in × 3H).
        self.w_x = nn.Parameter(torch.empty(dim_in, 3 * dim_out))
        self.w_rz = nn.Parameter(torch.empty(dim_out, 2 * dim_out))
        self.w_h = nn.Parameter(torch.empty(dim_out, dim_out))
        self.b = nn.Parameter(torch.zeros(3 * dim_out))
        self.b_h = nn.Parameter(torch.zeros(3 * dim_out)) if cell == "torch" else None
        # Fans per gate, as GRU4Rec does (each gate block initialised as its own matrix).
        init_uniform_(self.w_x, dim_in, dim_out)
        init_uniform_(self.w_rz, dim_out, dim_out)
        init_uniform_(self.w_h, dim_out, dim_out)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.input_lookup:
            vx = F.embedding(x, self.w_x, sparse=self.sparse_grad) + self.b
        else:
            vx = torch.addmm(self.b, x, self.w_x)
        vx_h, vx_r, vx_z = vx.chunk(3, dim=1)
        H = h.shape[1]
        if self.cell == "torch":
            vh_r, vh_z = torch.addmm(self.b_h[H:], h, self.w_rz).chunk(2, dim=1)
        else:
            vh_r, vh_z = (h @ self.w_rz).chunk(2, dim=1)
        r = torch.sigmoid(vx_r + vh_r)
        z = torch.sigmoid(vx_z + vh_z)
        if self.cell == "torch":
            candidate = torch.tanh(vx_h + r * torch.addmm(self.b_h[:H], h, self.w_h))
        else:
            candidate = torch.tanh(vx_h + (r * h) @ self.w_h)
        return torch.lerp(h, candidate, z)  # (1 - z) * h + z * candidate


class GRU4Rec(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__()
        if n_items <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.cfg, self.n_items = cfg, n_items
        sizes = list(cfg.layers)
        h_last = sizes[-1]

        # Output item matrix and bias; with the constrained embedding it is also the input.
        self.item_out = nn.Parameter(init_uniform_(torch.empty(n_items, h_last), n_items, h_last))
        # Stored as a column (n_items × 1) so a sparse lookup needs no view of it.
        self.item_bias = nn.Parameter(torch.zeros(n_items, 1)) if cfg.output_bias else None

        if cfg.embedding == "onehot":
            self.item_in = None
            first = GRULayer(n_items, sizes[0], input_lookup=True, cell=cfg.cell)
        elif cfg.embedding == "separate":
            dim = cfg.embedding_dim or sizes[0]
            self.item_in = nn.Parameter(init_uniform_(torch.empty(n_items, dim), n_items, dim))
            first = GRULayer(dim, sizes[0], cell=cfg.cell)
        else:  # constrained
            self.item_in = None
            first = GRULayer(h_last, sizes[0], cell=cfg.cell)
        rest = [GRULayer(a, b, cell=cfg.cell) for a, b in zip(sizes[:-1], sizes[1:])]
        self.layers = nn.ModuleList([first] + rest)
        self.drop_embedding = nn.Dropout(cfg.dropout_embedding)
        self.drop_hidden = nn.Dropout(cfg.dropout_hidden)
        # Sparse row gradients for item lookups. Must be False when the full catalogue is scored
        # (a parameter cannot receive both a sparse and a dense gradient in one backward pass).
        self.sparse_grad = True

    # --- hidden state -------------------------------------------------------------------------
    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> list[torch.Tensor]:
        dev = device if device is not None else self.item_out.device
        return [torch.zeros(batch_size, n, device=dev, dtype=self.item_out.dtype) for n in self.cfg.layers]

    # --- one step of the session ----------------------------------------------------------------
    def embed(self, items: torch.Tensor) -> torch.Tensor:
        if self.cfg.embedding == "onehot":
            return items  # the first layer looks its input weights up directly
        table = self.item_in if self.cfg.embedding == "separate" else self.item_out
        return self.drop_embedding(F.embedding(items, table, sparse=self.sparse_grad))

    def step(self, items: torch.Tensor, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Feed one item per session slot; return the final layer's output and the new hidden states."""
        x = self.embed(items)
        new_hidden = []
        for layer, h in zip(self.layers, hidden):
            h = layer(x, h)
            x = self.drop_hidden(h)  # the identity in eval mode
            new_hidden.append(x if self.cfg.dropout_carry else h)
        # Dropout on the one-hot input is dropout on its looked-up input weights; GRU4Rec applies
        # embedding dropout only for real embeddings, which is what we do.
        return x, new_hidden

    # --- scoring --------------------------------------------------------------------------------
    def score(self, out: torch.Tensor, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the given items (B × M), or of the whole catalogue when item_idx is None."""
        if item_idx is None:
            if self.item_bias is None:
                return out @ self.item_out.t()
            return torch.addmm(self.item_bias.t(), out, self.item_out.t())
        w = F.embedding(item_idx, self.item_out, sparse=self.sparse_grad)
        if self.item_bias is None:
            return out @ w.t()
        b = F.embedding(item_idx, self.item_bias, sparse=self.sparse_grad)
        return torch.addmm(b.t(), out, w.t())

    def set_sparse_grad(self, sparse: bool) -> None:
        self.sparse_grad = sparse
        self.layers[0].sparse_grad = sparse

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Item-indexed tables whose gradients are sparse (rows of the items in the batch)."""
        params = [self.item_out]
        if self.item_bias is not None:
            params.append(self.item_bias)
        if self.item_in is not None:
            params.append(self.item_in)
        if self.cfg.embedding == "onehot":
            params.append(self.layers[0].w_x)
        return params

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]
