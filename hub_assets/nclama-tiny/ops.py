"""Primitive operations of the differentiable computer, and their exact kernels.

A value is an integer in ``[0, V)``. Every primitive is an ordinary Python function on ints; its result is
reduced modulo ``V`` (so ``add``/``sub``/``mul``/``inc``/``dec`` wrap around, and comparisons return 0 or 1).
Division by zero is defined rather than raised: ``a // 0 == 0`` and ``a % 0 == a`` (so ``a == (a // b) * b + a % b``
still holds). Numbers that do not fit in one value are digit tapes in memory, handled by library programs.

Soft mode applies a primitive to probability distributions over ``[0, V)``: the pushforward
``P(out = c) = sum_{a, b : f(a, b) = c} P(a) P(b)``. Kernels exploit structure where the function allows
(circular convolution by FFT for add/sub, cumulative sums for comparisons and min/max) and fall back to an index
map of size ``V**2`` for any other function; an optional top-k path keeps only the k most likely input values.
Hard mode uses the same functions as integer lookup tables.
"""
from __future__ import annotations

import functools
import random
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

# name -> (function on ints, arity). The order is part of the library file format: do not reorder.
PRIMITIVES: dict[str, tuple[Callable[[int, int], int], int]] = {
    "nop": (lambda a, b: 0, 0),
    "mov": (lambda a, b: a, 1),
    "add": (lambda a, b: a + b, 2),
    "sub": (lambda a, b: a - b, 2),
    "mul": (lambda a, b: a * b, 2),
    "floordiv": (lambda a, b: a // b if b else 0, 2),
    "mod": (lambda a, b: a % b if b else a, 2),
    "lt": (lambda a, b: int(a < b), 2),
    "le": (lambda a, b: int(a <= b), 2),
    "gt": (lambda a, b: int(a > b), 2),
    "ge": (lambda a, b: int(a >= b), 2),
    "eq": (lambda a, b: int(a == b), 2),
    "ne": (lambda a, b: int(a != b), 2),
    "min": (lambda a, b: min(a, b), 2),
    "max": (lambda a, b: max(a, b), 2),
    "and": (lambda a, b: int(bool(a) and bool(b)), 2),
    "or": (lambda a, b: int(bool(a) or bool(b)), 2),
    "not": (lambda a, b: int(not a), 1),
    "inc": (lambda a, b: a + 1, 1),
    "dec": (lambda a, b: a - 1, 1),
}


# The same functions written for torch grids, for the primitives whose plain form branches on Python truth values
# (``a // b if b else 0``) and so cannot run on tensors: building their V x V tables takes milliseconds instead of a
# Python loop over V^2 pairs (about half a second each at V = 1024). ``_table`` still checks them against
# ``apply_int``, the definition, and the tests compare every entry at small V.
_GRID_FORMS: dict[str, Callable] = {
    "floordiv": lambda a, b: torch.where(b == 0, 0, a // b.clamp(min=1)),
    "mod": lambda a, b: torch.where(b == 0, a, a % b.clamp(min=1)),
    "lt": lambda a, b: (a < b).long(),
    "le": lambda a, b: (a <= b).long(),
    "gt": lambda a, b: (a > b).long(),
    "ge": lambda a, b: (a >= b).long(),
    "eq": lambda a, b: (a == b).long(),
    "ne": lambda a, b: (a != b).long(),
    "min": lambda a, b: torch.minimum(a, b),
    "max": lambda a, b: torch.maximum(a, b),
    "and": lambda a, b: ((a != 0) & (b != 0)).long(),
    "or": lambda a, b: ((a != 0) | (b != 0)).long(),
    "not": lambda a, b: (a == 0).long(),
}


def apply_int(name: str, a: int, b: int, value_size: int) -> int:
    """Apply primitive ``name`` to ints, with the machine's wrap-around semantics."""
    return PRIMITIVES[name][0](a, b) % value_size


# ---------------------------------------------------------------------------------------------------------------------
# Kernels. Convention shared by every method: the output is the pushforward of the (unnormalised) product measure
# p_a x p_b, i.e. a multilinear function of the inputs. On distributions that is the exact output distribution; the
# convention also makes gradients agree across methods (the nullary "nop" keeps the mass of p_a: out[0] = sum p_a).

METHODS: tuple[str, ...] = ("auto", "structured", "index", "topk")
# Ops with a kernel that uses their structure (FFT, roll, sums, cumulative sums) instead of the V^2 index map.
STRUCTURED: frozenset[str] = frozenset(PRIMITIVES) - {"mul", "floordiv", "mod"}
# Most elements of the V*V outer product the index path materialises at once (64 MB in float32); larger batches are
# processed in chunks of rows, which is still exact.
_INDEX_CHUNK = 1 << 24
_VERIFY_SAMPLES = 64


def _check_name(name: str) -> int:
    if name not in PRIMITIVES:
        raise ValueError(f"unknown primitive op {name!r}; known ops: {', '.join(PRIMITIVES)}")
    return PRIMITIVES[name][1]


def _vectorized_table(name: str, value_size: int) -> Optional[torch.Tensor]:
    """f evaluated on torch grids (works for arithmetic lambdas), or None if it raises or returns a wrong kind."""
    fn, arity = PRIMITIVES[name]
    fn = _GRID_FORMS.get(name, fn)
    shape = (value_size, value_size) if arity == 2 else (value_size,)
    grid = torch.arange(value_size)
    try:
        out = torch.as_tensor(fn(grid[:, None], grid[None, :]) if arity == 2 else fn(grid, 0))
        if out.dtype.is_floating_point or out.dtype.is_complex:
            return None
        return (out.to(torch.long) % value_size).broadcast_to(shape).contiguous()
    except Exception:  # noqa: BLE001 - any failure means "not vectorizable": the loop below is the definition
        return None


def _agrees_with_apply_int(name: str, table: torch.Tensor, value_size: int) -> bool:
    """Check the corners and a fixed random sample of ``table`` against ``apply_int`` (the definition)."""
    last = value_size - 1
    rng = random.Random(value_size)
    points = [(0, 0), (0, last), (last, 0), (last, last)]
    points += [(rng.randrange(value_size), rng.randrange(value_size)) for _ in range(_VERIFY_SAMPLES)]
    for a, b in points:
        got = table[a, b] if table.dim() == 2 else table[a]
        if int(got) != apply_int(name, a, b if table.dim() == 2 else 0, value_size):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _table(name: str, value_size: int) -> torch.Tensor:
    """``f mod V`` over its domain, as a CPU LongTensor: shape [V, V] for binary ops, [V] (b = 0) otherwise.

    Tries the function (or its ``_GRID_FORMS`` twin) on torch grids first (milliseconds) and falls back to a Python
    loop over ``apply_int`` (about half a second at V = 1024) when that fails or disagrees with ``apply_int`` on
    sampled entries. Cached per
    (name, V); callers must not modify the result.
    """
    table = _vectorized_table(name, value_size)
    if table is None or not _agrees_with_apply_int(name, table, value_size):
        r = range(value_size)
        if PRIMITIVES[name][1] == 2:
            table = torch.tensor([apply_int(name, a, b, value_size) for a in r for b in r]).view(value_size, value_size)
        else:
            table = torch.tensor([apply_int(name, a, 0, value_size) for a in r])
    return table


@functools.lru_cache(maxsize=None)
def _device_table(name: str, value_size: int, device: torch.device) -> torch.Tensor:
    return _table(name, value_size).to(device)


def hard_table(names: Sequence[str], value_size: int) -> torch.Tensor:
    """Integer lookup tables for the hard machine: row k, entry ``a * V + b`` is ``apply_int(names[k], a, b, V)``.

    Index as ``table.view(-1)[row * V * V + a * V + b]`` to apply any op to any operands in one gather. Ops of
    arity <= 1 ignore b, so their rows repeat along b.
    """
    if not isinstance(value_size, int) or value_size < 1:
        raise ValueError(f"value_size must be a positive int, got {value_size!r}")
    rows = []
    for name in names:
        _check_name(name)
        table = _table(name, value_size)
        if table.dim() == 1:
            table = table[:, None].expand(value_size, value_size)
        rows.append(table.reshape(value_size * value_size))
    if not rows:
        return torch.empty(0, value_size * value_size, dtype=torch.long)
    return torch.stack(rows)


def _validate(name: str, arity: int, p_a: torch.Tensor, p_b: Optional[torch.Tensor]):
    """Check shapes and dtypes; broadcast the batch dims of p_a and p_b (views, no copy)."""
    if not isinstance(p_a, torch.Tensor) or p_a.dim() < 1 or p_a.shape[-1] < 1:
        raise ValueError(f"{name}: p_a must be a tensor of shape [..., V] with V >= 1, got "
                         f"{getattr(p_a, 'shape', type(p_a).__name__)}")
    if not p_a.dtype.is_floating_point:
        raise ValueError(f"{name}: p_a must be floating point, got {p_a.dtype}")
    if arity < 2:
        return p_a, None
    if p_b is None:
        raise ValueError(f"{name} is binary: p_b is required")
    if not isinstance(p_b, torch.Tensor) or p_b.dim() < 1 or p_b.shape[-1] != p_a.shape[-1]:
        raise ValueError(f"{name}: p_a and p_b must both have shape [..., V] with the same V, got "
                         f"{tuple(p_a.shape)} and {getattr(p_b, 'shape', type(p_b).__name__)}")
    if not p_b.dtype.is_floating_point:
        raise ValueError(f"{name}: p_b must be floating point, got {p_b.dtype}")
    try:
        batch = torch.broadcast_shapes(p_a.shape[:-1], p_b.shape[:-1])
    except RuntimeError:
        raise ValueError(f"{name}: batch dims of p_a {tuple(p_a.shape[:-1])} and p_b {tuple(p_b.shape[:-1])} "
                         f"do not broadcast") from None
    dtype = torch.promote_types(p_a.dtype, p_b.dtype)
    value_size = p_a.shape[-1]
    return p_a.to(dtype).expand(*batch, value_size), p_b.to(dtype).expand(*batch, value_size)


def _on_zero_one(p_false: torch.Tensor, p_true: torch.Tensor, value_size: int) -> torch.Tensor:
    """A distribution over [0, V) with mass p_false on 0 and p_true on 1 (both on 0 when V == 1, as 1 mod 1 == 0)."""
    if value_size == 1:
        return (p_false + p_true)[..., None]
    return F.pad(torch.stack([p_false, p_true], dim=-1), (0, value_size - 2))


def _cdf(p: torch.Tensor) -> torch.Tensor:
    """P(x <= c). Cumulative sums of a one-hot vector are exact, which keeps one-hot in, one-hot out exact."""
    return p.cumsum(-1)


def _cdf_strict(p: torch.Tensor) -> torch.Tensor:
    """P(x < c)."""
    return F.pad(p.cumsum(-1)[..., :-1], (1, 0))


def _survival(p: torch.Tensor) -> torch.Tensor:
    """P(x >= c)."""
    return p.flip(-1).cumsum(-1).flip(-1)


def _structured(name: str, p_a: torch.Tensor, p_b: Optional[torch.Tensor]) -> torch.Tensor:
    value_size = p_a.shape[-1]
    if name == "nop":
        return F.pad(p_a.sum(-1, keepdim=True), (0, value_size - 1))
    if name == "mov":
        return p_a.clone()
    if name == "inc":  # out[c] = p_a[c - 1]
        return p_a.roll(1, -1)
    if name == "dec":
        return p_a.roll(-1, -1)
    if name == "not":
        zero = p_a[..., 0]
        return _on_zero_one(p_a.sum(-1) - zero, zero, value_size)
    if name in ("add", "sub"):
        # Circular convolution (add) or correlation (sub). Computed in float64 whatever the input dtype: float32
        # FFTs leave errors of ~5e-7 at V ~ 1000 (growing with V) where the exact result is 0 or 1.
        work = torch.float64 if p_a.dtype != torch.float64 else p_a.dtype
        fa = torch.fft.rfft(p_a.to(work), dim=-1)
        fb = torch.fft.rfft(p_b.to(work), dim=-1)
        spectrum = fa * (fb if name == "add" else fb.conj())
        out = torch.fft.irfft(spectrum, n=value_size, dim=-1)
        # FFT round-off (~1e-16) is snapped to zero so that one-hot in gives exactly one-hot out: the soft machine
        # stays exactly on the hard machine's path instead of leaking mass to other lines.
        return out.masked_fill(out.abs() < 1e-12, 0.0).to(p_a.dtype)
    if name == "min":  # P(min = c) = P(min >= c) - P(min >= c + 1), P(min >= c) = S_a(c) S_b(c)
        at_least = _survival(p_a) * _survival(p_b)
        return at_least - F.pad(at_least[..., 1:], (0, 1))
    if name == "max":  # P(max = c) = P(max <= c) - P(max <= c - 1), P(max <= c) = F_a(c) F_b(c)
        at_most = _cdf(p_a) * _cdf(p_b)
        return at_most - F.pad(at_most[..., :-1], (1, 0))
    total = p_a.sum(-1) * p_b.sum(-1)
    if name in ("eq", "ne"):
        true = (p_a * p_b).sum(-1)
    elif name == "lt":
        true = (p_b * _cdf_strict(p_a)).sum(-1)  # sum_b P(b) P(a < b)
    elif name == "le":
        true = (p_b * _cdf(p_a)).sum(-1)
    elif name == "gt":
        true = (p_a * _cdf_strict(p_b)).sum(-1)  # sum_a P(a) P(b < a)
    elif name == "ge":
        true = (p_a * _cdf(p_b)).sum(-1)
    elif name == "and":
        true = (p_a.sum(-1) - p_a[..., 0]) * (p_b.sum(-1) - p_b[..., 0])
    elif name == "or":
        true = total - p_a[..., 0] * p_b[..., 0]
    else:
        raise ValueError(f"{name} has no structured kernel; ops that do: {', '.join(sorted(STRUCTURED))}")
    if name == "ne":
        true = total - true
    return _on_zero_one(total - true, true, value_size)


def _index(name: str, arity: int, p_a: torch.Tensor, p_b: Optional[torch.Tensor]) -> torch.Tensor:
    """Scatter-add the product measure by the index map of f: exact for any function, O(batch * V^2)."""
    value_size = p_a.shape[-1]
    batch = p_a.shape[:-1]
    table = _device_table(name, value_size, p_a.device).reshape(-1)
    a = p_a.reshape(-1, value_size)
    if arity < 2:
        return a.new_zeros(a.shape).index_add(1, table, a).view(*batch, value_size)
    b = p_b.reshape(-1, value_size)
    if a.shape[0] == 0:
        return a.new_zeros(*batch, value_size)
    rows = max(1, _INDEX_CHUNK // (value_size * value_size))
    chunks = [
        x.new_zeros(x.shape).index_add(1, table, (x[:, :, None] * y[:, None, :]).reshape(len(x), -1))
        for x, y in zip(a.split(rows), b.split(rows))
    ]
    return torch.cat(chunks).view(*batch, value_size)


def _topk(name: str, arity: int, p_a: torch.Tensor, p_b: Optional[torch.Tensor], top_k: int) -> torch.Tensor:
    """Pushforward of the k most likely values of each input, NOT renormalised.

    The result is the exact pushforward restricted to the kept values: elementwise a lower bound of the exact
    answer, exact when each input has at most k non-zero entries, and ``1 - out.sum(-1)`` is the probability mass
    that was dropped (renormalise with ``out / out.sum(-1, keepdim=True)`` if a proper distribution is needed).
    Not renormalising keeps the kernel multilinear like the other methods, so with k = V it equals them, gradients
    included. Cost O(batch * (V log k + k^2)).
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    value_size = p_a.shape[-1]
    k = min(top_k, value_size)
    table = _device_table(name, value_size, p_a.device)
    va, ia = p_a.topk(k, dim=-1)
    if arity < 2:
        index, mass = table[ia], va
    else:
        vb, ib = p_b.topk(k, dim=-1)
        index = table[ia[..., :, None], ib[..., None, :]].flatten(-2)
        mass = (va[..., :, None] * vb[..., None, :]).flatten(-2)
    return p_a.new_zeros(p_a.shape).scatter_add(-1, index, mass)


def pushforward(
    name: str,
    p_a: torch.Tensor,
    p_b: Optional[torch.Tensor] = None,
    *,
    method: str = "auto",
    top_k: int = 4,
) -> torch.Tensor:
    """Distribution of ``f(a, b) mod V`` for independent ``a ~ p_a``, ``b ~ p_b``; shape ``[..., V]``.

    Batch dims of p_a and p_b broadcast. Unary ops ignore p_b; "nop" puts all the mass of p_a on 0.
    Methods: "structured" (FFT for add/sub, roll for inc/dec, sums and cumulative sums for comparisons, logic and
    min/max; O(V log V) or O(V) per row), "index" (any op; scatter by a cached V x V index map; O(V^2) per row),
    "topk" (the ``top_k`` most likely values of each input; see ``_topk`` for its documented inexactness), "auto"
    (structured where the op has a kernel, else index). All are differentiable, and exact on one-hot inputs.
    """
    arity = _check_name(name)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    p_a, p_b = _validate(name, arity, p_a, p_b)
    if method == "auto":
        method = "structured" if name in STRUCTURED else "index"
    if method == "structured":
        if name not in STRUCTURED:
            raise ValueError(f"{name} has no structured kernel; ops that do: {', '.join(sorted(STRUCTURED))}")
        return _structured(name, p_a, p_b)
    if method == "index":
        return _index(name, arity, p_a, p_b)
    return _topk(name, arity, p_a, p_b, top_k)


def address_distribution(p_base: torch.Tensor, p_offset: torch.Tensor, memory_size: int) -> torch.Tensor:
    """Distribution of the memory address ``base + offset`` *without* wrap-around, over ``[0, memory_size]``: the
    last entry is the mass of addresses ``>= memory_size`` (a memory fault). A linear convolution, by FFT in float64
    with round-off snapped to zero, so one-hot in gives exactly one-hot out."""
    value_size = p_base.shape[-1]
    n = 2 * value_size
    spectrum = torch.fft.rfft(p_base.double(), n=n, dim=-1) * torch.fft.rfft(p_offset.double(), n=n, dim=-1)
    total = torch.fft.irfft(spectrum, n=n, dim=-1)
    total = total.masked_fill(total.abs() < 1e-12, 0.0).to(p_base.dtype)
    return torch.cat([total[..., :memory_size], total[..., memory_size:].sum(-1, keepdim=True)], dim=-1)
