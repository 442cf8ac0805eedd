"""Training losses over a score matrix (B × M).

Layout. Row i is one mini-batch event; column ``pos[i]`` holds the score of its target. With the
sampled output (`sampled_columns`) the columns are ``[targets of the batch (B) | shared negatives (S)]``,
so the positive is the diagonal and every other column is a negative for row i — the other events'
targets act as popularity-distributed negatives, the extra S are drawn ∝ count^alpha. With "full"
the columns are the whole catalogue and ``pos = targets``.

Masking duplicates of the positive. A negative column that holds the *same item* as row i's target
(another event in the batch with the same target, or a sampled negative that hit it) is not a
negative at all. Those columns are given in the boolean ``exclude`` mask (B × M, never the positive
column itself) and are dropped: for cross-entropy they are set to -inf before the softmax, for the
ranking losses they get zero weight and are not counted. (GRU4Rec's *-max losses exclude the
diagonal from the negatives' softmax; we apply the same rule to every column with the target's id.)

Losses (mean over the B rows; r = scores, after ELU(alpha) for the ranking losses when ``elu > 0``;
N_i = the valid negative columns of row i; s_ij = softmax of r_ij over j ∈ N_i):

- ``cross-entropy``: ``-log softmax(z_i)[pos_i]`` with z = r - logq · log Q over all kept columns.
  **logQ correction** (sampled softmax, Jean et al. 2015 / Yi et al. 2019 as used by GRU4Rec's XE):
  Q_j is the probability with which column j's item entered the candidate set: for the in-batch
  columns (the targets) the empirical item frequency count_j / Σcount, for the sampled columns the
  sampling distribution count_j^alpha / Σcount^alpha. It is subtracted from every column, the
  positive included, so that popular items — over-represented among candidates — are not pushed down
  more than the full softmax would. With "full" nothing is sampled and logq is ignored.
- ``bpr-max`` (2018): ``-log Σ_j s_ij σ(r_i,pos - r_ij) + bpreg · Σ_j s_ij r_ij²``.
- ``top1-max`` (2018): ``Σ_j s_ij (σ(r_ij - r_i,pos) + σ(r_ij²))``.
- ``bpr`` (2016): ``mean_j -log σ(r_i,pos - r_ij)``; ``top1`` (2016): ``mean_j σ(r_ij - r_i,pos) + σ(r_ij²)``.
A row without any valid negative contributes 0.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

LossName = Literal["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"]
LOSSES: tuple[str, ...] = get_args(LossName)


def sampled_columns(targets: torch.Tensor, negatives: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Column items ``[targets | negatives]`` and the duplicate-of-positive mask (B × M)."""
    cols = targets if negatives is None else torch.cat([targets, negatives])
    exclude = cols.unsqueeze(0) == targets.unsqueeze(1)
    exclude[:, : len(targets)].fill_diagonal_(False)
    return cols, exclude


def _pos_mask(scores: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    b, m = scores.shape
    if pos is None:
        return torch.eye(b, m, dtype=torch.bool, device=scores.device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=scores.device)
    mask[torch.arange(b, device=scores.device), pos] = True
    return mask


def _pos_scores(r: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    if pos is None:
        return torch.diagonal(r).unsqueeze(1)
    return r.gather(1, pos.view(-1, 1))


def _neg_softmax(r: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    m = r.masked_fill(~neg, float("-inf")).amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(r - m) * neg
    return e / e.sum(1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)


def compute_loss(
    scores: torch.Tensor,
    loss: str,
    *,
    pos: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    logq: float = 0.0,
    bpreg: float = 0.0,
    elu: float = 0.0,
) -> torch.Tensor:
    """Mean loss of a score matrix. ``pos``: column of each row's positive (None = the diagonal);
    ``exclude``: duplicate-of-positive columns; ``log_q``: log candidate probability per column (M,)."""
    if loss == "cross-entropy":
        z = scores
        if logq and log_q is not None:
            z = z - logq * log_q
        if exclude is not None:
            z = z.masked_fill(exclude, float("-inf"))
        return (torch.logsumexp(z, 1) - _pos_scores(z, pos).squeeze(1)).mean()
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    r = F.elu(scores, alpha=elu) if elu > 0 else scores
    pm = _pos_mask(r, pos)
    neg = ~pm if exclude is None else ~(pm | exclude)
    rp = _pos_scores(r, pos)
    negf = neg.to(r.dtype)
    if loss in ("bpr-max", "top1-max"):
        s = _neg_softmax(r, neg)
        if loss == "bpr-max":
            has = neg.any(1)
            inner = (s * torch.sigmoid(rp - r)).sum(1)
            per_row = -torch.log(inner + 1e-24) * has + bpreg * (s * r * r).sum(1)
        else:
            per_row = (s * (torch.sigmoid(r - rp) + torch.sigmoid(r * r))).sum(1)
        return per_row.mean()
    n = negf.sum(1).clamp_min(1.0)
    if loss == "bpr":
        per_row = (-F.logsigmoid(rp - r) * negf).sum(1) / n
    else:
        per_row = ((torch.sigmoid(r - rp) + torch.sigmoid(r * r)) * negf).sum(1) / n
    return per_row.mean()


def cross_entropy_and_grad(
    scores: torch.Tensor,
    *,
    pos: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    logq: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (as `compute_loss`) and its gradient w.r.t. the scores, in closed form:
    dL/dscores = (softmax(z) - onehot(pos)) / B (the logQ shift is a constant per column)."""
    z = scores
    if logq and log_q is not None:
        z = z - logq * log_q
    if exclude is not None:
        z = z.masked_fill(exclude, float("-inf"))
    b = scores.shape[0]
    grad = torch.log_softmax(z, 1)
    lp = torch.diagonal(grad) if pos is None else grad.gather(1, pos.view(-1, 1))
    loss = lp.sum().div_(-b)  # = -mean; mean() costs about three sums on tensors this small
    grad.exp_()  # softmax(z)
    if pos is None:
        torch.diagonal(grad).sub_(1.0)
    else:
        grad.scatter_add_(1, pos.view(-1, 1), torch.full((b, 1), -1.0, dtype=grad.dtype, device=grad.device))
    grad.div_(b)
    return loss, grad


def item_log_q(counts: torch.Tensor, alpha: float, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log Q per item for the in-batch columns (empirical frequency) and the sampled ones (∝ count^alpha).
    Items with count 0 get log Q = 0 (they are never candidates through sampling). ``normalize=False``:
    log count and alpha · log count, unnormalised (GRU4Rec's reference code) — the in-batch columns then
    sit log(Σ count / Σ count^alpha) lower relative to the sampled ones than with probabilities."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    pos = c > 0
    if not normalize:
        logc = torch.where(pos, c.clamp(min=1e-300).log(), torch.zeros_like(c))
        return logc, logc * alpha
    freq = torch.where(pos, c / c.sum(), torch.ones_like(c))
    w = torch.where(pos, c.clamp(min=1e-300) ** alpha, torch.zeros_like(c))
    samp = torch.where(pos, w / w.sum(), torch.ones_like(c))
    return torch.log(freq), torch.log(samp)


def bpr_max_and_grad(
    scores: torch.Tensor, pos: torch.Tensor, log_count: torch.Tensor, *, bpreg: float, elu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR-max (as `compute_loss`) and its gradient w.r.t. the scores, in closed form, over
    deduplicated columns: column j stands for ``exp(log_count[j])`` identical candidate columns
    (-inf: not a candidate at all), row i's positive is column ``pos[i]``, and the column of its
    target is no negative for row i (the duplicates of the positive are excluded, as in `compute_loss`).

    The same sums as the B × M layout with one autograd pass, in ~25 passes over a B × U matrix
    (U distinct candidates ≤ M), which is what makes the fused BPR-max step cheap. With
    s_j = softmax of r_j + log n_j over the negatives, σ_j = σ(r_pos - r_j), A = Σ s σ, C = Σ s σ²,
    Q = Σ s r² and L = -log(A + ε) + λ Q (ε = 1e-24)::

        dL/dr_j   = s_j (λ (r_j² + 2 r_j - Q) + (A - σ_j²) / (A + ε))     (negatives)
        dL/dr_pos = -(A - C) / (A + ε)
        dr/dscore = 1 where score > 0, else elu · exp(score)             (ELU with alpha = elu)

    A row without any negative has s = 0: loss and gradient 0. Loss and gradient are the mean over
    the rows."""
    b = scores.shape[0]
    pcol = pos.view(-1, 1)
    r = scores
    if elu > 0:  # by hand: F.elu is several times slower on the CPU
        r = scores.clamp(min=0.0).add_(scores.clamp(max=0.0).exp_().sub_(1.0), alpha=elu)
    # Softmax over the negatives, a column counting as often as its item was drawn.
    s = r + log_count
    s.scatter_(1, pcol, float("-inf"))  # the own target is no negative
    s.sub_(s.amax(1, keepdim=True).nan_to_num_(neginf=0.0)).exp_()  # rows without negatives: all -inf
    z = s.sum(1, keepdim=True)
    has = z > 0  # rows with a negative; the others contribute 0
    s.div_(z.clamp_min_(torch.finfo(s.dtype).tiny))
    sig = torch.sub(r.gather(1, pcol), r).sigmoid_()  # σ(r_pos - r_j)
    sr = s * r
    A = torch.linalg.vecdot(s, sig).unsqueeze(1)
    Q = torch.linalg.vecdot(sr, r).unsqueeze(1)
    inv = (A + 1e-24).reciprocal_()
    loss = ((-torch.log(A + 1e-24)).mul_(has) + bpreg * Q).sum() / b
    sig2 = sig.square_()
    C = torch.linalg.vecdot(s, sig2).unsqueeze(1)
    # s (λ (r² + 2r - Q) + (A - σ²) / (A + ε)) = λ sr (r + 2) + s (A / (A + ε) - λ Q - σ² / (A + ε))
    g = torch.addcmul(A * inv - bpreg * Q, sig2, inv.neg()).mul_(s)
    g.addcmul_(sr, r + 2.0, value=bpreg)
    g.scatter_(1, pcol, (C - A) * inv)
    if elu > 0:  # times elu'(score), read off r: 1 where r > 0, else r + elu
        g = torch.ops.aten.elu_backward(g, elu, 1.0, 1.0, True, r)
    return loss, g.div_(b)
