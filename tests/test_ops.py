"""Kernels of the primitive ops: exactness on one-hot inputs, agreement between methods, gradients, hard tables."""
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from modeling_nclama import ops
from modeling_nclama.ops import PRIMITIVES, STRUCTURED, apply_int, hard_table, pushforward

OPS = list(PRIMITIVES)
OP_METHODS = [(name, method) for name in OPS for method in ("structured", "index", "topk")
              if method != "structured" or name in STRUCTURED]


def _random_dist(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05  # bounded away from 0: no top-k ties
    return (x / x.sum(-1, keepdim=True)).to(dtype)


def _binary(name):
    return PRIMITIVES[name][1] == 2


@pytest.mark.parametrize("value_size", [1, 2, 7, 16])
@pytest.mark.parametrize("name,method", OP_METHODS)
def test_one_hot_in_one_hot_out_all_pairs(name, method, value_size):
    eye = torch.eye(value_size)
    out = pushforward(name, eye[:, None, :], eye[None, :, :], method=method)  # [a, b, V]
    if not _binary(name):
        out = out.expand(value_size, value_size, value_size)  # [a, 1, V]: unary ops ignore b
    expected = F.one_hot(hard_table([name], value_size)[0].view(value_size, value_size), value_size).float()
    assert out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 1e-6


@pytest.mark.parametrize("name", ["add", "sub", "lt", "ge", "eq", "min", "max", "inc", "dec", "mul"])
@pytest.mark.parametrize("value_size", [997, 1000])
def test_one_hot_exact_at_large_value_size(name, value_size):
    """float32 FFTs alone drift to ~5e-7 at V ~ 1000; the kernels must stay within 1e-6 of exact."""
    g = torch.Generator().manual_seed(value_size)
    a, b = torch.randint(value_size, (2, 64), generator=g)
    a[:2] = torch.tensor([0, value_size - 1])
    b[:2] = torch.tensor([value_size - 1, value_size - 1])
    eye = torch.eye(value_size)
    expected = torch.stack([F.one_hot(torch.tensor(apply_int(name, int(x), int(y), value_size)), value_size)
                            for x, y in zip(a, b)]).float()
    for method in ("structured", "topk", "index"):
        if method == "structured" and name not in STRUCTURED:
            continue
        n = 64 if method != "index" else 8
        out = pushforward(name, eye[a[:n]], eye[b[:n]], method=method)
        assert (out - expected[:n]).abs().max().item() < 1e-6, method


@pytest.mark.parametrize("name,method", OP_METHODS)
def test_gradcheck_float64(name, method):
    for value_size in (7, 12):
        inputs = [_random_dist(2, value_size, dtype=torch.float64, seed=1).requires_grad_()]
        if _binary(name):
            inputs.append(_random_dist(2, value_size, dtype=torch.float64, seed=2).requires_grad_())
        assert torch.autograd.gradcheck(lambda *p: pushforward(name, *p, method=method), inputs)


@pytest.mark.parametrize("value_size", [1, 2, 7, 12, 16])
@pytest.mark.parametrize("name", OPS)
def test_methods_agree_with_index_path(name, value_size):
    p_a = _random_dist(5, value_size, seed=3)
    p_b = _random_dist(5, value_size, seed=4)
    reference = pushforward(name, p_a, p_b, method="index")
    assert torch.allclose(reference.sum(-1), torch.ones(5), atol=1e-5)
    assert (reference >= 0).all()
    others = {"topk": pushforward(name, p_a, p_b, method="topk", top_k=value_size),
              "auto": pushforward(name, p_a, p_b)}
    if name in STRUCTURED:
        others["structured"] = pushforward(name, p_a, p_b, method="structured")
    for method, out in others.items():
        assert (out - reference).abs().max().item() < 1e-5, method
        assert torch.allclose(out.sum(-1), torch.ones(5), atol=1e-5), method


@pytest.mark.parametrize("name", OPS)
def test_gradients_agree_across_methods(name):
    """Every method computes the same multilinear function, so gradients agree too (top-k with k = V)."""
    grads = {}
    weights = _random_dist(3, 9, dtype=torch.float64, seed=7)
    for method in ("index", "topk") + (("structured",) if name in STRUCTURED else ()):
        p_a = _random_dist(3, 9, dtype=torch.float64, seed=5).requires_grad_()
        p_b = _random_dist(3, 9, dtype=torch.float64, seed=6).requires_grad_()
        (pushforward(name, p_a, p_b, method=method, top_k=9) * weights).sum().backward()
        grads[method] = (p_a.grad, p_b.grad if _binary(name) else None)
    for method, (ga, gb) in grads.items():
        assert torch.allclose(ga, grads["index"][0], atol=1e-10), method
        if gb is not None:
            assert torch.allclose(gb, grads["index"][1], atol=1e-10), method


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([n for n in OPS if _binary(n)]), st.integers(1, 4), st.integers(2, 12), st.data())
def test_topk_exact_on_small_support(name, support, value_size, data):
    """Top-k is exact when each input has at most k values with non-zero probability."""
    support = min(support, value_size)
    def sparse():
        idx = data.draw(st.lists(st.integers(0, value_size - 1), min_size=support, max_size=support, unique=True))
        w = data.draw(st.lists(st.floats(0.01, 1.0), min_size=support, max_size=support))
        p = torch.zeros(value_size, dtype=torch.float64)
        p[idx] = torch.tensor(w, dtype=torch.float64)
        return p / p.sum()
    p_a, p_b = sparse(), sparse()
    out = pushforward(name, p_a, p_b, method="topk", top_k=4)
    assert torch.allclose(out, pushforward(name, p_a, p_b, method="index"), atol=1e-12)


def test_topk_is_a_lower_bound_that_reports_dropped_mass():
    p_a, p_b = _random_dist(4, 20, seed=8), _random_dist(4, 20, seed=9)
    exact = pushforward("mul", p_a, p_b, method="index")
    approx = pushforward("mul", p_a, p_b, method="topk", top_k=4)
    assert (approx <= exact + 1e-7).all()
    kept = p_a.topk(4, -1).values.sum(-1) * p_b.topk(4, -1).values.sum(-1)
    assert torch.allclose(approx.sum(-1), kept, atol=1e-6)


@pytest.mark.parametrize("method", ["structured", "index", "topk"])
def test_batch_dims_broadcast(method):
    p_a, p_b = _random_dist(3, 1, 8, seed=10), _random_dist(1, 4, 8, seed=11)
    out = pushforward("add", p_a, p_b, method=method, top_k=8)
    assert out.shape == (3, 4, 8)
    for i in range(3):
        for j in range(4):
            expected = pushforward("add", p_a[i, 0], p_b[0, j], method="index")
            assert torch.allclose(out[i, j], expected, atol=1e-6)


def test_unary_ops_ignore_p_b_and_dtypes_are_kept():
    p = _random_dist(2, 6, dtype=torch.float64)
    assert pushforward("inc", p).dtype == torch.float64
    assert torch.equal(pushforward("inc", p), pushforward("inc", p, torch.zeros(9)))
    assert torch.allclose(pushforward("nop", p), F.one_hot(torch.zeros(2, dtype=torch.long), 6).double())
    assert pushforward("add", p.float(), p.float()).dtype == torch.float32


def test_hard_table_matches_apply_int():
    names = list(PRIMITIVES)
    table = hard_table(names, 16)
    assert table.shape == (len(names), 256) and table.dtype == torch.long
    expected = torch.tensor([[apply_int(n, a, b, 16) for a in range(16) for b in range(16)] for n in names])
    assert torch.equal(table, expected)

    value_size = 256
    table = hard_table(names, value_size)
    rng = random.Random(0)
    flat = table.view(-1)
    for row, name in enumerate(names):
        for _ in range(200):
            a, b = rng.randrange(value_size), rng.randrange(value_size)
            assert int(flat[row * value_size * value_size + a * value_size + b]) == apply_int(name, a, b, value_size)
    assert hard_table([], 4).shape == (0, 16)
    assert torch.equal(hard_table(["sub"], 1), torch.zeros(1, 1, dtype=torch.long))


def test_table_verification_catches_a_wrong_vectorized_function(monkeypatch):
    """A function that runs on tensors but means something else there must fall back to the Python loop."""
    sneaky = lambda a, b: a // 2 if isinstance(a, int) else a  # noqa: E731
    monkeypatch.setitem(PRIMITIVES, "_test_halve", (sneaky, 1))
    try:
        assert hard_table(["_test_halve"], 10)[0].view(10, 10)[:, 0].tolist() == [a // 2 for a in range(10)]
    finally:
        ops._table.cache_clear()
        ops._device_table.cache_clear()


def test_errors_are_clear():
    p = _random_dist(2, 5)
    with pytest.raises(ValueError, match="frobnicate"):
        pushforward("frobnicate", p, p)
    with pytest.raises(ValueError, match="frobnicate"):
        hard_table(["add", "frobnicate"], 5)
    with pytest.raises(ValueError, match="method"):
        pushforward("add", p, p, method="magic")
    with pytest.raises(ValueError, match="mul has no structured kernel"):
        pushforward("mul", p, p, method="structured")
    with pytest.raises(ValueError, match="p_b is required"):
        pushforward("add", p)
    with pytest.raises(ValueError, match="same V"):
        pushforward("add", p, _random_dist(2, 6))
    with pytest.raises(ValueError, match="broadcast"):
        pushforward("add", p, _random_dist(3, 5))
    with pytest.raises(ValueError, match="floating point"):
        pushforward("add", torch.ones(2, 5, dtype=torch.long), p)
    with pytest.raises(ValueError, match=r"\[\.\.\., V\]"):
        pushforward("inc", torch.tensor(1.0))
    with pytest.raises(ValueError, match="top_k"):
        pushforward("add", p, p, method="topk", top_k=0)
    with pytest.raises(ValueError, match="value_size"):
        hard_table(["add"], 0)


def test_bench_ops_smoke():
    from modeling_nclama.toolchain.bench import bench_ops, format_ops_table

    rows = bench_ops(value_sizes=(8,), batch=4, repeats=1, ops=("add", "mul"))
    assert {(r["op"], r["method"]) for r in rows} == {
        ("add", "structured"), ("add", "index"), ("add", "topk (k=4)"), ("mul", "index"), ("mul", "topk (k=4)")}
    assert all(r["ms"] > 0 for r in rows)
    assert format_ops_table(rows).count("\n") == len(rows) + 1
