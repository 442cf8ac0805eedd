"""Optimisers: sparse-row and dense paths against a plain dense reference."""

from __future__ import annotations

import pytest
import torch

from gru4rec.optim import AdagradM, Adam, TableRows, coalesce_rows


def ref_adagrad(p, grads, lr, mom, eps=1e-6):
    p = p.clone()
    acc = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for g in grads:
        touched = g.abs().sum(1) > 0  # sparse semantics: untouched rows keep everything
        acc_n = acc + g * g
        v_n = mom * v + lr * g / torch.sqrt(acc_n + eps)
        acc = torch.where(touched[:, None], acc_n, acc)
        v = torch.where(touched[:, None], v_n, v)
        p = torch.where(touched[:, None], p - v_n, p)
    return p, acc, v


def ref_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    p = p.clone()
    m = torch.zeros_like(p)
    u = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        touched = (g.abs().sum(1) > 0)[:, None]
        m_n = b1 * m + (1 - b1) * g
        u_n = b2 * u + (1 - b2) * g * g
        step = (m_n / (1 - b1**t)) / (torch.sqrt(u_n / (1 - b2**t)) + eps)
        m, u = torch.where(touched, m_n, m), torch.where(touched, u_n, u)
        p = torch.where(touched, p - lr * step, p)
    return p, m, u


def _sparse_steps(n_rows=10, dim=3, steps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        rows = torch.randint(0, n_rows // 2, (6,), generator=g)  # rows >= n_rows/2 are never touched
        vals = torch.randn(6, dim, generator=g, dtype=torch.float64)
        out.append((rows, vals))
    return out


def _dense(rows, vals, n_rows):
    return torch.zeros(n_rows, vals.shape[1], dtype=vals.dtype).index_add_(0, rows, vals)


@pytest.mark.parametrize("how", ["sparse_tensor", "rows"])
@pytest.mark.parametrize("mom", [0.0, 0.3])
def test_adagrad_sparse_matches_reference(how, mom):
    n = 10
    p0 = torch.randn(n, 3, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = AdagradM([p], lr=0.1, momentum=mom)
    steps = _sparse_steps(n)
    for rows, vals in steps:
        if how == "sparse_tensor":
            p.grad = torch.sparse_coo_tensor(rows.view(1, -1), vals, (n, 3), check_invariants=True)
            opt.step()
        else:
            opt.step_grads([coalesce_rows(rows, vals)])
    want_p, want_acc, want_v = ref_adagrad(p0, [_dense(r, v, n) for r, v in steps], 0.1, mom)
    assert torch.allclose(p.detach(), want_p, atol=1e-12)
    assert torch.allclose(opt.state[0]["acc"], want_acc, atol=1e-12)
    if mom:
        assert torch.allclose(opt.state[0]["v"], want_v, atol=1e-12)
    # Untouched rows: parameters and state bit-identical to the start.
    assert torch.equal(p.detach()[n // 2 :], p0[n // 2 :])
    assert torch.all(opt.state[0]["acc"][n // 2 :] == 0)


@pytest.mark.parametrize("mom", [0.0, 0.3])
def test_adagrad_dense_matches_reference(mom):
    p0 = torch.randn(4, 3, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = AdagradM([p], lr=0.05, momentum=mom)
    grads = [torch.randn(4, 3, dtype=torch.float64) for _ in range(5)]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    want, _, _ = ref_adagrad(p0, grads, 0.05, mom)
    assert torch.allclose(p.detach(), want, atol=1e-12)


@pytest.mark.parametrize("sparse", [True, False])
def test_adam_matches_reference(sparse):
    n = 10
    p0 = torch.randn(n, 3, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = Adam([p], lr=0.01)
    steps = _sparse_steps(n, seed=3)
    for rows, vals in steps:
        if sparse:
            opt.step_grads([coalesce_rows(rows, vals)])
        else:
            p.grad = _dense(rows, vals, n)
            opt.step()
    if sparse:
        want, m, u = ref_adam(p0, [_dense(r, v, n) for r, v in steps], 0.01)
        assert torch.allclose(p.detach(), want, atol=1e-12)
        assert torch.allclose(opt.state[0]["m"], m, atol=1e-12)
        assert torch.equal(p.detach()[n // 2 :], p0[n // 2 :])
    else:
        ref = torch.nn.Parameter(p0.clone())
        topt = torch.optim.Adam([ref], lr=0.01)
        for rows, vals in steps:
            ref.grad = _dense(rows, vals, n)
            topt.step()
        assert torch.allclose(p.detach(), ref.detach(), atol=1e-12)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 2))
    b = torch.nn.Parameter(a.detach().clone())
    oa, ob = AdagradM([a], lr=0.1, momentum=0.5), AdagradM([b], lr=0.1, momentum=0.5)
    g1 = (torch.tensor([0, 2]), torch.randn(2, 2))
    g2 = (torch.tensor([1, 2]), torch.randn(2, 2))
    oa.step_grads([g1])
    ob.step_grads([g1])
    ob2 = AdagradM([b], lr=0.1, momentum=0.5)
    ob2.load_state_dict(ob.state_dict())
    oa.step_grads([g2])
    ob2.step_grads([g2])
    assert torch.equal(a, b)


def test_coalesce_rows_sums_duplicates():
    rows, vals = coalesce_rows(torch.tensor([3, 1, 3]), torch.tensor([[1.0], [2.0], [4.0]]))
    assert rows.tolist() == [1, 3] and vals.view(-1).tolist() == [2.0, 5.0]


@pytest.mark.parametrize("name", ["adagrad0", "adagrad", "adam"])
def test_packed_dense_group_and_row_table_match_plain_updates(name):
    """`pack` (flat buffers) and `pack_rows` (a row table of two item tables) give bit-identical updates."""

    def make(params):
        if name == "adam":
            return Adam(params, lr=0.01)
        return AdagradM(params, lr=0.1, momentum=0.0 if name == "adagrad0" else 0.3)

    torch.manual_seed(0)
    shapes = [(5, 3), (4,), (2, 6)]
    init = [torch.randn(s, dtype=torch.float64) for s in shapes]
    init += [torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)]
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    packed = [torch.nn.Parameter(t.clone()) for t in init]
    o_plain, o_packed = make(plain), make(packed)
    gbufs = o_packed.pack(packed[:3])
    table = o_packed.pack_rows(packed[3:])
    assert all(g.shape == p.shape for g, p in zip(gbufs, packed))
    assert table.width == 4 and packed[3].data_ptr() == table.table.data_ptr()
    for rows, vals in _sparse_steps(10, dim=4):
        dense = [torch.randn(s, dtype=torch.float64) for s in shapes]
        for buf, g in zip(gbufs, dense):
            buf.copy_(g)
        r, v = coalesce_rows(rows, vals)
        o_plain.step_grads(dense + [(r, v[:, :3]), (r, v[:, 3:])])
        o_packed.step_grads(gbufs + [TableRows(r, v, table.gather(r)), None])
    for p, q in zip(plain, packed):
        assert torch.equal(p, q)
    # State dicts keep the per-parameter layout (and load back into the packed views).
    key = "m" if name == "adam" else "acc"
    sd = o_packed.state_dict()
    assert [s[key].shape for s in sd["state"]] == [p.shape for p in plain]
    for a, b in zip(o_packed.state_dict()["state"], o_plain.state_dict()["state"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    o_packed.load_state_dict(o_plain.state_dict())
    assert torch.equal(o_packed.state[0][key], o_plain.state[0][key])
    assert torch.equal(o_packed.state[4][key], o_plain.state[4][key])


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_float32_row_table_of_odd_width_is_padded_and_updates_exactly(momentum):
    # A float32 row table gets an even row width (one unused column) so that the write-back can move
    # column pairs as float64: the updates stay bit-identical to the plain sparse ones.
    torch.manual_seed(1)
    init = [torch.randn(10, 3), torch.randn(10, 2)]  # width 5: 15 columns with Adagrad-momentum
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    packed = [torch.nn.Parameter(t.clone()) for t in init]
    o_plain, o_packed = AdagradM(plain, lr=0.1, momentum=momentum), AdagradM(packed, lr=0.1, momentum=momentum)
    table = o_packed.pack_rows(packed)
    n_blocks = 3 if momentum else 2
    assert table.table.shape == (10, 5 * n_blocks + (5 * n_blocks) % 2)
    for rows, vals in _sparse_steps(10, dim=5):
        r, v = coalesce_rows(rows, vals.float())
        o_plain.step_grads([(r, v[:, :3]), (r, v[:, 3:])])
        o_packed.step_grads([TableRows(r, v, table.gather(r)), None])
    for p, q in zip(plain, packed):
        assert torch.equal(p, q)
    for a, b in zip(o_packed.state_dict()["state"], o_plain.state_dict()["state"]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pack_rows_refuses_tables_of_different_rows():
    a, b = torch.nn.Parameter(torch.zeros(4, 2)), torch.nn.Parameter(torch.zeros(5, 1))
    with pytest.raises(ValueError, match="same number of rows"):
        AdagradM([a, b], lr=0.1).pack_rows([a, b])
