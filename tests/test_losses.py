"""Losses against plain per-row formulas, gradients by gradcheck, the closed-form XE gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gru4rec.losses import (
    LOSSES,
    bpr_max_and_grad,
    compute_loss,
    cross_entropy_and_grad,
    item_log_q,
    sampled_columns,
)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def elu(x, a):
    return x if x > 0 else a * (math.exp(x) - 1)


def slow_loss(S, name, pos, exclude, log_q, logq, bpreg, a):
    """One row at a time, plain Python floats."""
    B, M = len(S), len(S[0])
    total = 0.0
    for i in range(B):
        p = pos[i]
        negs = [j for j in range(M) if j != p and not exclude[i][j]]
        if name == "cross-entropy":
            z = [S[i][j] - (logq * log_q[j] if log_q is not None else 0.0) for j in range(M)]
            kept = [j for j in range(M) if j == p or not exclude[i][j]]
            mx = max(z[j] for j in kept)
            lse = mx + math.log(sum(math.exp(z[j] - mx) for j in kept))
            total += lse - z[p]
            continue
        r = [elu(S[i][j], a) if a > 0 else S[i][j] for j in range(M)]
        if not negs:
            continue
        if name in ("bpr-max", "top1-max"):
            mx = max(r[j] for j in negs)
            e = {j: math.exp(r[j] - mx) for j in negs}
            tot = sum(e.values())
            s = {j: e[j] / tot for j in negs}
            if name == "bpr-max":
                total += -math.log(sum(s[j] * sig(r[p] - r[j]) for j in negs) + 1e-24)
                total += bpreg * sum(s[j] * r[j] ** 2 for j in negs)
            else:
                total += sum(s[j] * (sig(r[j] - r[p]) + sig(r[j] ** 2)) for j in negs)
        elif name == "bpr":
            total += sum(-math.log(sig(r[p] - r[j])) for j in negs) / len(negs)
        else:
            total += sum(sig(r[j] - r[p]) + sig(r[j] ** 2) for j in negs) / len(negs)
    return total / B


def _case(seed, B=4, S=5, n_items=6):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, n_items, (B,), generator=g)
    negs = torch.randint(0, n_items, (S,), generator=g)
    cols, exclude = sampled_columns(targets, negs)
    scores = torch.randn(B, len(cols), generator=g, dtype=torch.float64)
    log_q = torch.log(torch.rand(len(cols), generator=g, dtype=torch.float64) + 0.05)
    return targets, cols, exclude, scores, log_q


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_losses_match_formulas(name, seed):
    targets, cols, exclude, scores, log_q = _case(seed)
    kw = dict(logq=0.7, log_q=log_q) if name == "cross-entropy" else dict(bpreg=0.5, elu=0.5 if seed else 0.0)
    got = compute_loss(scores, name, exclude=exclude, **kw)
    want = slow_loss(
        scores.tolist(),
        name,
        list(range(len(targets))),
        exclude.tolist(),
        log_q.tolist() if name == "cross-entropy" else None,
        kw.get("logq", 0.0),
        kw.get("bpreg", 0.0),
        kw.get("elu", 0.0),
    )
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_full_catalogue_losses_match_formulas(name):
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(3, 7, generator=g, dtype=torch.float64)
    pos = torch.tensor([2, 0, 6])
    got = compute_loss(scores, name, pos=pos, bpreg=0.3)
    want = slow_loss(scores.tolist(), name, pos.tolist(), [[False] * 7] * 3, None, 0.0, 0.3, 0.0)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_duplicate_of_positive_is_excluded():
    targets = torch.tensor([1, 1, 2])
    cols, exclude = sampled_columns(targets, torch.tensor([1, 3]))
    assert cols.tolist() == [1, 1, 2, 1, 3]
    assert exclude.tolist() == [
        [False, True, False, True, False],
        [True, False, False, True, False],
        [False, False, False, False, False],
    ]
    # Raising the score of an excluded column changes nothing.
    s = torch.randn(3, 5, dtype=torch.float64)
    s2 = torch.where(exclude, torch.full_like(s, 50.0), s)
    for name in LOSSES:
        assert compute_loss(s2, name, exclude=exclude).item() == pytest.approx(
            compute_loss(s, name, exclude=exclude).item(), rel=1e-12
        )


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck(name):
    targets, cols, exclude, scores, log_q = _case(11, B=3, S=3, n_items=5)
    scores = scores.clone().requires_grad_(True)
    kw = dict(logq=0.5, log_q=log_q) if name == "cross-entropy" else dict(bpreg=0.4, elu=0.5)

    def f(s):
        return compute_loss(s, name, exclude=exclude, **kw)

    assert torch.autograd.gradcheck(f, (scores,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("full", [False, True])
def test_cross_entropy_closed_form_gradient(full):
    targets, cols, exclude, scores, log_q = _case(3)
    scores = scores.clone().requires_grad_(True)
    if full:
        pos, exclude, log_q = torch.tensor([0, 3, 8, 2]), None, None
    else:
        pos = None
    loss = compute_loss(scores, "cross-entropy", pos=pos, exclude=exclude, log_q=log_q, logq=1.0)
    loss.backward()
    loss2, grad = cross_entropy_and_grad(scores.detach(), pos=pos, exclude=exclude, log_q=log_q, logq=1.0)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.allclose(grad, scores.grad, atol=1e-12)


@pytest.mark.parametrize("elu", [0.0, 0.5])
@pytest.mark.parametrize("case", ["sampled", "in-batch", "all-one-target", "input-only-columns", "large-scores"])
def test_bpr_max_closed_form_on_distinct_columns(case, elu):
    # The fused step's BPR-max: one column per distinct candidate item, weighted by how often it
    # occurs, against compute_loss + autograd on the full B x M layout folded onto those columns.
    g = torch.Generator().manual_seed(7)
    B, n_items = 6, 7
    targets = torch.randint(0, n_items, (B,), generator=g)
    negs = None if case in ("in-batch", "all-one-target") else torch.randint(0, n_items, (9,), generator=g)
    if case == "all-one-target":  # no row has a negative: loss and gradient 0
        targets[:] = 3
    cols, exclude = sampled_columns(targets, negs)
    items = torch.cat([cols, torch.tensor([n_items, n_items + 1])]) if case == "input-only-columns" else cols
    uniq, inv = torch.unique(items, return_inverse=True)
    inv_c = inv[: len(cols)]
    scale = 30.0 if case == "large-scores" else 2.0
    s = torch.randn(B, len(uniq), generator=g, dtype=torch.float64) * scale
    s_m = s.index_select(1, inv_c).requires_grad_(True)
    want = compute_loss(s_m, "bpr-max", exclude=exclude, bpreg=1.95, elu=elu)
    want.backward()
    want_grad = torch.zeros_like(s).index_add_(1, inv_c, s_m.grad)
    if case == "all-one-target":  # autograd through the all -inf masked softmax gives NaN there
        want_grad = torch.zeros_like(s)
    log_count = inv_c.bincount(minlength=len(uniq)).to(s.dtype).log()  # 0 -> -inf: no candidate
    loss, grad = bpr_max_and_grad(s.clone(), inv_c[:B], log_count, bpreg=1.95, elu=elu)
    assert loss.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(grad, want_grad, atol=1e-10)
    assert torch.isfinite(grad).all()
    f32_loss, f32_grad = bpr_max_and_grad(s.float(), inv_c[:B], log_count.float(), bpreg=1.95, elu=elu)
    assert f32_loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(f32_grad.double(), want_grad, atol=1e-5)


def test_item_log_q():
    lb, ls = item_log_q(torch.tensor([0.0, 1.0, 3.0]), 0.5)
    assert np.allclose(lb.exp().numpy()[1:], [0.25, 0.75])
    w = np.array([1.0, 3.0**0.5])
    assert np.allclose(ls.exp().numpy()[1:], w / w.sum())


def test_item_log_q_unnormalised_is_the_log_count():
    # GRU4Rec's reference form: log count for the in-batch columns, alpha · log count for the samples.
    lb, ls = item_log_q(torch.tensor([0.0, 1.0, 3.0]), 0.5, normalize=False)
    assert np.allclose(lb.numpy(), [0.0, 0.0, np.log(3.0)])
    assert np.allclose(ls.numpy(), [0.0, 0.0, 0.5 * np.log(3.0)])
    nb, ns = item_log_q(torch.tensor([0.0, 1.0, 3.0]), 0.5)
    # the two forms differ by one constant per block, a different one for each block
    shift_b, shift_s = (lb - nb)[1:], (ls - ns)[1:]
    assert np.allclose(shift_b, shift_b[0]) and np.allclose(shift_s, shift_s[0])
    assert not np.isclose(shift_b[0], shift_s[0])
