"""Every op, driven by one table.

Each row names an op, its minigrad function, a numpy reference and the domain of its values;
hypothesis draws the shapes (broadcasting pairs, size-1 dims, scalars) and any static arguments
(axes, indices, sections). Every row feeds two tests: the forward equals the numpy expression
(in float32 and float64, with the dtype kept and gradients of each input's dtype and shape), and
the float64 gradient equals central finite differences.
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Callable

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import minigrad as mg
from minigrad import ops
from minigrad.testing import assert_grad_close, broadcastable_shapes, float_dtypes, floats, shapes, valid_axes

MAX_SIDE = 4          # up to 64 elements: a full-Jacobian gradient check stays cheap

# ---------------------------------------------------------------- value domains

ANY = floats(-3, 3)
SMALL = floats(-2, 2)
POSITIVE = floats(0.1, 5)                                   # log, sqrt, divisors
BASE = floats(0.5, 2)                                       # bases of powers with real exponents
NONZERO = st.one_of(floats(-3, -0.1), floats(0.1, 3))       # away from the kink of abs and relu
GRID = st.integers(-400, 400).map(lambda k: k / 8)          # exact in float32; with unique=True, tie-free
OFF_GRID = GRID.map(lambda v: v + 1 / 16)                   # never equal to a GRID value


def away_from(*points, lo=-2.0, hi=2.0, gap=0.05):
    """Values in [lo, hi] at least ``gap`` from every kink (far more than a finite-difference step)."""
    return floats(lo, hi).filter(lambda v: all(abs(v - p) > gap for p in points))


# ---------------------------------------------------------------- shapes and static arguments
# Each of these draws ``(input_shapes, params)``: params are keyword arguments for both fn and ref.

def _shapes(**kw):
    return shapes(**{"max_side": MAX_SIDE, **kw})


UNARY = st.tuples(_shapes().map(lambda s: (s,)), st.just({}))
BINARY = st.tuples(broadcastable_shapes(2, max_side=MAX_SIDE), st.just({}))
TERNARY = st.tuples(broadcastable_shapes(3, max_side=MAX_SIDE), st.just({}))
# numpy's own signature for matmul: 1-D operands on either side and broadcast batch dimensions
MATMUL = st.tuples(hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2, max_side=MAX_SIDE)
                   .map(lambda r: r.input_shapes), st.just({}))


@st.composite
def REDUCE(draw, min_dims=0, min_side=1, min_axes=0):
    shape = draw(_shapes(min_dims=min_dims, min_side=min_side))
    axis = draw(valid_axes(len(shape), min_size=min_axes))
    return (shape,), {"axis": axis, "keepdims": draw(st.booleans())}


@st.composite
def AXIS(draw, allow_none=True):
    shape = draw(_shapes())
    return (shape,), {"axis": draw(valid_axes(len(shape), allow_none=allow_none))}


@st.composite
def INT_AXIS(draw, allow_none=True):
    """One axis (an int) or None, and keepdims: argmax's and argmin's arguments."""
    shape = draw(_shapes(min_dims=1))
    axis = draw(st.one_of(st.integers(-len(shape), len(shape) - 1), *([st.none()] if allow_none else [])))
    return (shape,), {"axis": axis, "keepdims": draw(st.booleans())}


@st.composite
def RESHAPE(draw):
    shape = draw(_shapes())
    n = int(np.prod(shape))
    target = draw(st.sampled_from([(-1,), (n,), shape[::-1], (1, n), (n, 1, 1), (), (1,) * 3]).filter(
        lambda s: int(np.prod(s)) == n or -1 in s))
    return (shape,), {"shape": target}


@st.composite
def PERMUTATION(draw):
    shape = draw(_shapes())
    nd = len(shape)
    if draw(st.booleans()):
        return (shape,), {"axes": None}
    perm = draw(st.permutations(range(nd)))
    negate = draw(st.lists(st.booleans(), min_size=nd, max_size=nd))
    return (shape,), {"axes": tuple(a - nd if neg else a for a, neg in zip(perm, negate, strict=True))}


@st.composite
def NEW_AXIS(draw):
    shape = draw(_shapes())
    return (shape,), {"axis": draw(st.integers(-len(shape) - 1, len(shape)))}


@st.composite
def SIZE_ONE_AXES(draw):
    shape = draw(_shapes(max_side=2))
    ones = [i for i, n in enumerate(shape) if n == 1]
    choices = [st.none()]
    if ones:
        one = st.sampled_from(ones).flatmap(lambda i: st.sampled_from([i, i - len(shape)]))
        choices += [one, st.lists(one, unique_by=lambda i: i % len(shape), min_size=1).map(tuple)]
    return (shape,), {"axis": draw(st.one_of(*choices))}


@st.composite
def BASIC_INDEX(draw):
    shape = draw(_shapes())
    return (shape,), {"index": draw(hnp.basic_indices(shape, allow_newaxis=True))}


@st.composite
def INT_ARRAY_INDEX(draw):
    """A tuple of integer arrays, one per dimension; small ranges make repeated indices common."""
    shape = draw(_shapes(min_dims=1))
    index = draw(hnp.integer_array_indices(shape, result_shape=shapes(min_dims=1, max_dims=2, max_side=4)))
    return (shape,), {"index": index}


@st.composite
def MIXED_INDEX(draw):
    """Slices, then an integer list (repeats and negatives allowed) on one axis: x[:, [1, 1, -1]]."""
    shape = draw(_shapes(min_dims=1))
    axis = draw(st.integers(0, len(shape) - 1))
    n = shape[axis]
    picks = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=5))
    return (shape,), {"index": (slice(None),) * axis + (picks,)}


@st.composite
def BOOL_MASK(draw):
    """A boolean mask over the leading dimensions."""
    shape = draw(_shapes(min_dims=1))
    k = draw(st.integers(1, len(shape)))
    return (shape,), {"index": draw(hnp.arrays(bool, shape[:k]))}


@st.composite
def JOIN(draw, new_axis):
    """Shapes for concatenate (equal except along axis) or stack (equal), 1 to 3 of them."""
    base = draw(_shapes(min_dims=0 if new_axis else 1))
    nd = len(base)
    count = draw(st.integers(1, 3))
    if new_axis:
        return (base,) * count, {"axis": draw(st.integers(-nd - 1, nd))}
    axis = draw(st.integers(-nd, nd - 1))
    sizes = draw(st.lists(st.integers(1, MAX_SIDE), min_size=count, max_size=count))
    return tuple(base[:axis % nd] + (s,) + base[axis % nd + 1:] for s in sizes), {"axis": axis}


@st.composite
def SECTIONS(draw):
    shape = draw(_shapes(min_dims=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    equal = st.sampled_from([k for k in range(1, n + 1) if n % k == 0])
    at = st.lists(st.integers(0, n), max_size=3).map(sorted)
    return (shape,), {"sections": draw(st.one_of(equal, at)), "axis": axis}


@st.composite
def CHUNKS(draw):
    shape = draw(_shapes(min_dims=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return (shape,), {"chunks": draw(st.integers(1, shape[axis] + 1)), "axis": axis}


# ---------------------------------------------------------------- numpy references

def _softmax(x, axis):
    e = np.exp(x)                        # values stay in [-3, 3]: the naive formula is exact enough
    return e / e.sum(axis=axis, keepdims=True)


def _erf_series(x):
    """erf by its Maclaurin series, summed exactly (math.fsum): independent of libm's erf. For
    |x| <= 2 the largest term is about 3, so the sum keeps ~15 digits."""
    def one(v):
        return 2 / math.sqrt(math.pi) * math.fsum((-1) ** n * v ** (2 * n + 1) / (math.factorial(n) * (2 * n + 1))
                                                  for n in range(60))
    return np.vectorize(one, otypes=[np.float64])(x)


def _chunk(x, chunks, axis):
    """torch.chunk: pieces of ceil(n / chunks) along axis, the last one smaller."""
    n = x.shape[axis]
    size = -(-n // chunks)
    return tuple(np.take(x, np.arange(lo, min(lo + size, n)), axis=axis) for lo in range(0, n, size))


# ---------------------------------------------------------------- the table

class Op:
    """One row: ``fn`` (minigrad) takes Tensors, or ndarrays at the ``consts`` positions, then the drawn
    params; ``ref`` (numpy) takes ndarrays and the same params. ``domain`` gives the elements of every
    input, or is a tuple with one per input; ``draw`` is a strategy of (input shapes, params);
    ``unique`` makes all values distinct, so max and min have no ties."""

    def __init__(self, name: str, fn: Callable[..., Any], ref: Callable[..., Any], domain: Any = ANY,
                 draw: Any = UNARY, consts: tuple = (), unique: bool = False):
        self.name, self.fn, self.ref, self.domain, self.draw = name, fn, ref, domain, draw
        self.consts, self.unique = consts, unique

    def __repr__(self):                  # hypothesis prints this in a falsifying example
        return f"<op {self.name}>"


OPS = [
    # arithmetic, broadcasting both ways
    Op("add", lambda a, b: a + b, np.add, draw=BINARY),
    Op("subtract", lambda a, b: a - b, np.subtract, draw=BINARY),
    Op("multiply", lambda a, b: a * b, np.multiply, draw=BINARY),
    Op("divide", lambda a, b: a / b, np.divide, (ANY, NONZERO), BINARY),
    Op("power", lambda a, b: a ** b, np.power, (BASE, SMALL), BINARY),
    Op("negative", lambda x: -x, np.negative),
    Op("matmul", lambda a, b: a @ b, np.matmul, draw=MATMUL),
    Op("mg.matmul", mg.matmul, np.matmul, draw=MATMUL),
    # Python numbers on either side
    Op("add_number", lambda x: x + 2.5, lambda x: x + 2.5),
    Op("radd_number", lambda x: 2.5 + x, lambda x: 2.5 + x),
    Op("sub_number", lambda x: x - 2.5, lambda x: x - 2.5),
    Op("rsub_number", lambda x: 2.5 - x, lambda x: 2.5 - x),
    Op("mul_number", lambda x: x * -1.5, lambda x: x * -1.5),
    Op("rmul_number", lambda x: 3 * x, lambda x: 3 * x),
    Op("div_number", lambda x: x / 2.5, lambda x: x / 2.5),
    Op("rdiv_number", lambda x: 2.5 / x, lambda x: 2.5 / x, NONZERO),
    Op("square", lambda x: x ** 2, lambda x: x ** 2),
    Op("cube", lambda x: x ** 3, lambda x: x ** 3),
    Op("pow_half", lambda x: x ** 0.5, np.sqrt, POSITIVE),
    Op("pow_negative", lambda x: x ** -1.5, lambda x: x ** -1.5, POSITIVE),
    Op("rpow_number", lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    # ndarrays on either side (the ndarray is a constant)
    Op("radd_array", lambda c, x: c + x, np.add, draw=BINARY, consts=(0,)),
    Op("rsub_array", lambda c, x: c - x, np.subtract, draw=BINARY, consts=(0,)),
    Op("rmul_array", lambda c, x: c * x, np.multiply, draw=BINARY, consts=(0,)),
    Op("rdiv_array", lambda c, x: c / x, np.divide, (ANY, NONZERO), BINARY, consts=(0,)),
    Op("rpow_array", lambda c, x: c ** x, np.power, (BASE, SMALL), BINARY, consts=(0,)),
    Op("rmatmul_array", lambda c, x: c @ x, np.matmul, draw=MATMUL, consts=(0,)),
    Op("sub_array", lambda x, c: x - c, np.subtract, draw=BINARY, consts=(1,)),
    Op("div_array", lambda x, c: x / c, np.divide, (ANY, NONZERO), BINARY, consts=(1,)),
    Op("pow_array", lambda x, c: x ** c, np.power, (BASE, SMALL), BINARY, consts=(1,)),
    Op("matmul_array", lambda x, c: x @ c, np.matmul, draw=MATMUL, consts=(1,)),
    Op("pow_method", lambda a, b: a.pow(b), np.power, (BASE, SMALL), BINARY),
    Op("pow_method_number", lambda x: x.pow(3), lambda x: x ** 3),
    Op("square_method", lambda x: x.square(), np.square),
    # elementwise math
    Op("exp", mg.exp, np.exp),
    Op("log1p", mg.log1p, np.log1p, floats(-0.9, 3)),
    Op("log1p_method", lambda x: x.log1p(), np.log1p, floats(-0.9, 3)),
    Op("expm1", mg.expm1, np.expm1),
    Op("expm1_method", lambda x: x.expm1(), np.expm1),
    Op("erf", mg.erf, lambda x: _erf_series(x), floats(-2, 2)),
    Op("sin", mg.sin, np.sin),
    Op("sin_method", lambda x: x.sin(), np.sin, floats(-7, 7)),
    Op("cos", mg.cos, np.cos),
    Op("cos_method", lambda x: x.cos(), np.cos, floats(-7, 7)),
    Op("log", mg.log, np.log, POSITIVE),
    Op("sqrt", mg.sqrt, np.sqrt, POSITIVE),
    Op("abs", mg.abs, np.abs, NONZERO),
    Op("tanh", mg.tanh, np.tanh),
    Op("sigmoid", mg.sigmoid, lambda x: 1 / (1 + np.exp(-x)), floats(-6, 6)),
    Op("relu", mg.relu, lambda x: np.maximum(x, 0), NONZERO),
    Op("clip", lambda x: x.clip(-1.0, 1.0), lambda x: np.clip(x, -1, 1), away_from(-1, 1)),
    Op("clip_lo", lambda x: x.clip(lo=-0.5), lambda x: np.maximum(x, -0.5), away_from(-0.5)),
    Op("clip_hi", lambda x: mg.clip(x, hi=0.5), lambda x: np.minimum(x, 0.5), away_from(0.5)),
    Op("maximum", mg.maximum, np.maximum, (GRID, OFF_GRID), BINARY),
    Op("minimum", lambda a, b: a.minimum(b), np.minimum, (GRID, OFF_GRID), BINARY),
    Op("maximum_number", lambda x: x.maximum(0.3), lambda x: np.maximum(x, 0.3), away_from(0.3)),
    Op("minimum_array", lambda x, c: mg.minimum(x, c), np.minimum, (GRID, OFF_GRID), BINARY, consts=(1,)),
    Op("where", lambda c, a, b: mg.where(c > 0, a, b), lambda c, a, b: np.where(c > 0, a, b),
       draw=TERNARY, consts=(0,)),
    Op("where_tensor_cond", lambda c, a, b: mg.where(mg.Tensor(c) > 0, a, b), lambda c, a, b: np.where(c > 0, a, b),
       draw=TERNARY, consts=(0,)),
    # reductions: every axis form (None, int, tuple, negative) and keepdims
    Op("sum", lambda x, axis, keepdims: x.sum(axis, keepdims), np.sum, draw=REDUCE()),
    Op("mg.sum", lambda x, **kw: mg.sum(x, **kw), np.sum, draw=REDUCE()),
    Op("mean", lambda x, axis, keepdims: x.mean(axis=axis, keepdims=keepdims), np.mean, draw=REDUCE()),
    Op("var", lambda x, axis, keepdims: x.var(axis=axis, keepdims=keepdims), np.var, draw=REDUCE()),
    Op("var_ddof1", lambda x, **kw: mg.var(x, ddof=1, **kw), lambda x, **kw: np.var(x, ddof=1, **kw),
       draw=REDUCE(min_dims=1, min_side=2, min_axes=1)),
    Op("max", lambda x, axis, keepdims: x.max(axis=axis, keepdims=keepdims), np.max, GRID, REDUCE(), unique=True),
    Op("min", lambda x, **kw: mg.min(x, **kw), np.min, GRID, REDUCE(), unique=True),
    Op("logsumexp", lambda x, **kw: mg.logsumexp(x, **kw), lambda x, **kw: np.log(np.sum(np.exp(x), **kw)),
       draw=REDUCE()),
    # std: at least 2 values 1/8 apart or more along every axis, so it is never 0 (where sqrt has no derivative)
    Op("std", lambda x, axis, keepdims: x.std(axis, keepdims), np.std, GRID,
       REDUCE(min_dims=1, min_side=2, min_axes=1), unique=True),
    Op("mg.std_ddof1", lambda x, **kw: mg.std(x, ddof=1, **kw), lambda x, **kw: np.std(x, ddof=1, **kw),
       GRID, REDUCE(min_dims=1, min_side=2, min_axes=1), unique=True),
    # PyTorch's spellings of the same arguments: dim= for axis=, keepdim= for keepdims=, correction= for ddof=
    Op("sum_dim", lambda x, axis, keepdims: x.sum(dim=axis, keepdim=keepdims), np.sum, draw=REDUCE()),
    Op("mg.sum_dim", lambda x, axis, keepdims: mg.sum(x, dim=axis, keepdim=keepdims), np.sum, draw=REDUCE()),
    Op("mean_dim", lambda x, axis, keepdims: x.mean(dim=axis, keepdim=keepdims), np.mean, draw=REDUCE()),
    Op("mg.mean_dim", lambda x, axis, keepdims: mg.mean(x, dim=axis, keepdim=keepdims), np.mean, draw=REDUCE()),
    Op("max_dim", lambda x, axis, keepdims: x.max(dim=axis, keepdim=keepdims), np.max, GRID, REDUCE(), unique=True),
    Op("mg.min_dim", lambda x, axis, keepdims: mg.min(x, dim=axis, keepdim=keepdims), np.min, GRID, REDUCE(),
       unique=True),
    Op("var_dim_correction", lambda x, axis, keepdims: x.var(dim=axis, keepdim=keepdims, correction=1),
       lambda x, **kw: np.var(x, ddof=1, **kw), draw=REDUCE(min_dims=1, min_side=2, min_axes=1)),
    Op("std_dim", lambda x, axis, keepdims: x.std(dim=axis, keepdim=keepdims), np.std,
       GRID, REDUCE(min_dims=1, min_side=2, min_axes=1), unique=True),
    Op("mg.std_dim_correction", lambda x, axis, keepdims: mg.std(x, dim=axis, keepdim=keepdims, correction=1),
       lambda x, **kw: np.std(x, ddof=1, **kw), GRID, REDUCE(min_dims=1, min_side=2, min_axes=1), unique=True),
    Op("logsumexp_dim", lambda x, axis, keepdims: x.logsumexp(dim=axis, keepdim=keepdims),
       lambda x, **kw: np.log(np.sum(np.exp(x), **kw)), draw=REDUCE()),
    Op("softmax_dim", lambda x, axis: x.softmax(dim=axis), _softmax, draw=AXIS(allow_none=False)),
    Op("mg.softmax_dim", lambda x, axis: mg.softmax(x, dim=axis), _softmax, draw=AXIS(allow_none=False)),
    Op("log_softmax_dim", lambda x, axis: x.log_softmax(dim=axis), lambda x, axis: np.log(_softmax(x, axis)),
       draw=AXIS(allow_none=False)),
    Op("softmax", lambda x, axis: x.softmax(axis), _softmax, draw=AXIS()),
    Op("log_softmax", lambda x, axis: mg.log_softmax(x, axis), lambda x, axis: np.log(_softmax(x, axis)),
       draw=AXIS()),
    # shapes
    Op("reshape", lambda x, shape: x.reshape(shape), np.reshape, draw=RESHAPE()),
    Op("reshape_varargs", lambda x, shape: x.reshape(*shape), np.reshape, draw=RESHAPE()),
    Op("transpose", lambda x, axes: x.transpose(*axes) if axes is not None else x.transpose(), np.transpose,
       draw=PERMUTATION()),
    Op("mg.transpose", lambda x, axes: mg.transpose(x, axes=axes), np.transpose, draw=PERMUTATION()),
    Op("T", lambda x: x.T, np.transpose),
    Op("expand_dims", lambda x, axis: x.expand_dims(axis), np.expand_dims, draw=NEW_AXIS()),
    Op("squeeze", lambda x, axis: mg.squeeze(x, axis), np.squeeze, draw=SIZE_ONE_AXES()),
    Op("squeeze_dim", lambda x, axis: x.squeeze(dim=axis), np.squeeze, draw=SIZE_ONE_AXES()),
    Op("unsqueeze", lambda x, axis: x.unsqueeze(axis), np.expand_dims, draw=NEW_AXIS()),
    Op("mg.unsqueeze", lambda x, axis: mg.unsqueeze(x, axis), np.expand_dims, draw=NEW_AXIS()),
    Op("expand_dims_dim", lambda x, axis: mg.expand_dims(x, dim=axis), np.expand_dims, draw=NEW_AXIS()),
    Op("view", lambda x, shape: x.view(*shape), np.reshape, draw=RESHAPE()),
    Op("view_tuple", lambda x, shape: x.view(shape), np.reshape, draw=RESHAPE()),
    Op("permute", lambda x, axes: x.permute(*(reversed(range(x.ndim)) if axes is None else axes)), np.transpose,
       draw=PERMUTATION()),
    Op("clone", lambda x: x.clone(), np.copy),
    Op("to_own_dtype", lambda x: x.to(x.dtype), lambda x: x),
    Op("double_and_back", lambda x: x.double().to(x.dtype), lambda x: x),   # float32 -> float64 -> float32: exact
    # indexing
    Op("getitem_basic", lambda x, index: x[index], lambda x, index: x[index], draw=BASIC_INDEX()),
    Op("getitem_int_arrays", lambda x, index: x[index], lambda x, index: x[index], draw=INT_ARRAY_INDEX()),
    Op("getitem_mixed", lambda x, index: x[index], lambda x, index: x[index], draw=MIXED_INDEX()),
    Op("getitem_bool_mask", lambda x, index: x[index], lambda x, index: x[index], draw=BOOL_MASK()),
    Op("getitem_tensor_index", lambda x, index: x[mg.Tensor(np.asarray(index[0]))], lambda x, index: x[index[0]],
       draw=INT_ARRAY_INDEX()),
    # joining and splitting
    Op("concatenate", lambda *xs, axis: mg.concatenate(xs, axis), lambda *xs, axis: np.concatenate(xs, axis),
       draw=JOIN(new_axis=False)),
    Op("stack", lambda *xs, axis: mg.stack(xs, axis), lambda *xs, axis: np.stack(xs, axis), draw=JOIN(new_axis=True)),
    Op("cat_dim", lambda *xs, axis: mg.cat(xs, dim=axis), lambda *xs, axis: np.concatenate(xs, axis),
       draw=JOIN(new_axis=False)),
    Op("concatenate_dim", lambda *xs, axis: mg.concatenate(xs, dim=axis), lambda *xs, axis: np.concatenate(xs, axis),
       draw=JOIN(new_axis=False)),
    Op("stack_dim", lambda *xs, axis: mg.stack(xs, dim=axis), lambda *xs, axis: np.stack(xs, axis),
       draw=JOIN(new_axis=True)),
    Op("split_dim", lambda x, sections, axis: tuple(x.split(sections, dim=axis)),
       lambda x, sections, axis: tuple(np.split(x, sections, axis)), draw=SECTIONS()),
    Op("chunk_dim", lambda x, chunks, axis: tuple(x.chunk(chunks, dim=axis)), _chunk, draw=CHUNKS()),
    Op("split", lambda x, sections, axis: tuple(mg.split(x, sections, axis)),
       lambda x, sections, axis: tuple(np.split(x, sections, axis)), draw=SECTIONS()),
    Op("split_method", lambda x, sections, axis: tuple(x.split(sections, axis)),
       lambda x, sections, axis: tuple(np.split(x, sections, axis)), draw=SECTIONS()),
    Op("chunk", lambda x, chunks, axis: tuple(mg.chunk(x, chunks, axis)), _chunk, draw=CHUNKS()),
]


@st.composite
def cases(draw, op: Op):
    """Float64 input arrays inside the op's domain, and its static params."""
    input_shapes, params = draw(op.draw)
    domains = op.domain if isinstance(op.domain, tuple) else (op.domain,) * len(input_shapes)
    return [draw(hnp.arrays(np.float64, s, elements=d, unique=op.unique))
            for s, d in zip(input_shapes, domains, strict=True)], params


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@given(data=st.data(), dtype=float_dtypes())
def test_forward_matches_numpy(op, data, dtype):
    xs, params = data.draw(cases(op))
    xs = [x.astype(dtype) for x in xs]
    args = [x if i in op.consts else mg.Tensor(x, requires_grad=True) for i, x in enumerate(xs)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)        # no overflow or invalid value inside the domain
        out = op.fn(*args, **params)
    expected = _outputs(op.ref(*[x.astype(np.float64) for x in xs], **params))
    outs = _outputs(out)
    assert len(outs) == len(expected)
    for o, e in zip(outs, expected, strict=True):
        assert isinstance(o, mg.Tensor)
        assert o.shape == np.shape(e)
        assert o.dtype == dtype, f"{op.name} turned {dtype} into {o.dtype}"
        np.testing.assert_allclose(o.data, e, **TOLERANCE[dtype.type])

    # Backward gives every input a gradient of its own dtype and shape.
    rng = np.random.default_rng(0)
    loss = sum((o * rng.standard_normal(o.shape).astype(dtype)).sum() for o in outs)
    loss.backward()
    for a in args:
        if isinstance(a, mg.Tensor):
            assert a.grad is not None
            assert a.grad.shape == a.shape
            assert a.grad.dtype == dtype


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@given(data=st.data())
def test_gradient_matches_finite_differences(op, data):
    xs, params = data.draw(cases(op))
    consts = {i: xs[i] for i in op.consts}
    free = [x for i, x in enumerate(xs) if i not in consts]

    def fn(*tensors):
        it = iter(tensors)
        return op.fn(*[consts[i] if i in consts else next(it) for i in range(len(xs))], **params)
    assert_grad_close(fn, *free)


# ---------------------------------------------------------------- numerical stability

def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_sigmoid_of_huge_inputs_is_finite_and_silent():
    x = mg.Tensor([-1000.0, -20.0, 0.0, 20.0, 1000.0], requires_grad=True, dtype=np.float64)
    y = _no_warnings(lambda: x.sigmoid())
    _no_warnings(lambda: y.sum().backward())
    # below exp's overflow point the result is clipped to sigmoid(-709), itself under the smallest
    # normal float64: as good as 0, and no overflow warning
    assert 0 <= y.data[0] < np.finfo(np.float64).tiny
    np.testing.assert_allclose(y.data[1:], [2.0611536181902037e-09, 0.5, 1 - 2.0611536181902037e-09, 1.0],
                               rtol=1e-6, atol=0)
    assert np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.grad[[0, 2, 4]], [0.0, 0.25, 0.0], atol=1e-300)


@pytest.mark.parametrize("dtype, xs, rtol", [(np.float64, [-10.0, -30.0, -37.0, -45.0, -700.0], 1e-12),
                                             (np.float32, [-10.0, -17.0, -30.0, -80.0], 1e-5)])
def test_sigmoid_keeps_relative_accuracy_in_the_negative_tail(dtype, xs, rtol):
    # exact: sigmoid(x) = exp(x) / (1 + exp(x)), computed in float64 from the same inputs
    x = np.array(xs, dtype)
    exact = np.exp(x.astype(np.float64)) / (1 + np.exp(x.astype(np.float64)))
    np.testing.assert_allclose(mg.Tensor(x).sigmoid().data, exact, rtol=rtol, atol=0)


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4), (1 << 19,)])   # the last is over the cap
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_clip_constant_serves_every_shape_and_dtype(shape, dtype):
    # the clip reads a cached constant per (shape, dtype); the largest shape clips against a scalar
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 300).astype(dtype)
    for _ in range(2):                                  # the second call reads the cached constant
        y = _no_warnings(lambda: mg.Tensor(x).sigmoid().data)
        assert y.shape == x.shape and y.dtype == dtype
        exact = np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))
        floor = np.finfo(dtype).tiny                    # below exp's overflow: clipped, as good as 0
        np.testing.assert_allclose(np.where(exact < floor, 0, y), np.where(exact < floor, 0, exact), rtol=1e-5)
        assert np.all(y[exact < floor] < floor)


@pytest.mark.parametrize("shift", [1000.0, -1000.0])
def test_logsumexp_softmax_log_softmax_are_stable_for_large_inputs(shift):
    base = np.array([[0.0, 1.0, -2.0], [3.0, 3.0, 0.5]])
    x = mg.Tensor(base + shift, requires_grad=True)
    lse = _no_warnings(lambda: mg.logsumexp(x, axis=1))
    np.testing.assert_allclose(lse.data, np.log(np.exp(base).sum(axis=1)) + shift, rtol=1e-12)
    np.testing.assert_allclose(_no_warnings(lambda: x.softmax(axis=1)).data,
                               np.exp(base) / np.exp(base).sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(_no_warnings(lambda: mg.log_softmax(x, axis=1)).data,
                               base - np.log(np.exp(base).sum(axis=1, keepdims=True)), rtol=1e-12, atol=1e-12)
    _no_warnings(lambda: lse.sum().backward())
    np.testing.assert_allclose(x.grad, np.exp(base) / np.exp(base).sum(axis=1, keepdims=True), rtol=1e-12)
    assert float(mg.logsumexp(mg.Tensor(np.array([shift, shift])))) == pytest.approx(shift + np.log(2), rel=1e-15)


# ---------------------------------------------------------------- comparisons

COMPARISONS = [(operator.eq, np.equal), (operator.ne, np.not_equal), (operator.lt, np.less),
               (operator.le, np.less_equal), (operator.gt, np.greater), (operator.ge, np.greater_equal)]


@pytest.mark.parametrize("compare, ref", COMPARISONS, ids=[c[0].__name__ for c in COMPARISONS])
def test_comparisons_give_bool_tensors_without_grad(compare, ref):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    t = mg.Tensor(a, requires_grad=True)
    for out, expected in [(compare(t, mg.Tensor(b, requires_grad=True)), ref(a, b)),
                          (compare(t, 2.0), ref(a, 2.0)),
                          (compare(b, t), ref(b, a)),        # ndarray on the left: reflected on the Tensor
                          (compare(2.0, t), ref(2.0, a))]:
        assert isinstance(out, mg.Tensor)
        assert out.dtype == np.bool_ and not out.requires_grad and mg.graph_size(out) == 0
        np.testing.assert_array_equal(out.data, expected)


def test_a_comparison_can_select_with_where():
    x = mg.Tensor([-1.0, 2.0, -3.0], requires_grad=True)
    y = mg.where(x > 0, x, x * 0.1)                       # leaky relu
    y.sum().backward()
    np.testing.assert_allclose(y.data, [-0.1, 2.0, -0.3])
    np.testing.assert_allclose(x.grad, [0.1, 1.0, 0.1])


# ---------------------------------------------------------------- dtypes

def test_construction_dtypes():
    assert mg.Tensor(np.ones(2, np.float32)).dtype == np.float32      # a float ndarray keeps its dtype
    assert mg.Tensor(np.ones(2, np.float64)).dtype == np.float64
    assert mg.Tensor([1, 2]).dtype == np.float32                      # lists and numbers: the default dtype
    assert mg.Tensor([1.5, 2.0]).dtype == np.float32
    assert mg.Tensor(3).dtype == np.float32 and mg.Tensor(3).shape == ()
    assert mg.Tensor(2.5).dtype == np.float32
    assert mg.Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert mg.Tensor(np.arange(3)).dtype == np.arange(3).dtype       # an integer array stays integer


def test_float32_with_python_and_numpy_scalars_stays_float32():
    x = mg.Tensor(np.array([0.5, 1.5], np.float32), requires_grad=True)
    y = (2.0 * x + 1) / 3.0 - np.float64(0.25)
    y = (y ** 2 + 2.0 ** y + x.maximum(1.0) + x.clip(0.0, 1.0) + np.array(1.5) * x).exp().mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32 and x.grad.shape == (2,)


def test_gradients_have_their_tensors_dtype_and_shape_when_dtypes_mix():
    a = mg.Tensor(np.ones((2, 1), np.float32), requires_grad=True)
    b = mg.Tensor(np.ones(3, np.float64), requires_grad=True)
    y = a * b                                             # numpy promotion: float64 result
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and a.grad.shape == (2, 1)
    assert b.grad.dtype == np.float64 and b.grad.shape == (3,)
    np.testing.assert_array_equal(a.grad, [[3.0], [3.0]])
    np.testing.assert_array_equal(b.grad, [2.0, 2.0, 2.0])


# ---------------------------------------------------------------- indexing and ties, by hand

def test_integer_indexing_with_repeats_accumulates():
    x = mg.Tensor([10.0, 20.0, 30.0], requires_grad=True)
    (x[[0, 0, 2, 0]] * mg.Tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(x.grad, [7.0, 0.0, 3.0])


def test_boolean_mask_gradient():
    x = mg.Tensor([[1.0, -2.0], [-3.0, 4.0]], requires_grad=True)
    picked = x[x.data > 0]
    np.testing.assert_array_equal(picked.data, [1.0, 4.0])
    (picked * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [[5.0, 0.0], [0.0, 5.0]])


def test_max_tie_splits_the_gradient_as_central_differences_do():
    x = mg.Tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5])
    assert mg.gradcheck(lambda t: t.max(), [mg.Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)])
    a, b = mg.Tensor(2.0, requires_grad=True), mg.Tensor(2.0, requires_grad=True)
    mg.maximum(a, b).backward()
    assert a.grad == 0.5 and b.grad == 0.5


@pytest.mark.parametrize("name", ["sum", "max", "min", "mean", "var", "logsumexp", "softmax", "log_softmax"])
def test_reductions_accept_a_list_of_axes(name):
    a = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    as_list, as_tuple = getattr(mg.Tensor(a), name)(axis=[0, -1]), getattr(mg.Tensor(a), name)(axis=(0, -1))
    np.testing.assert_array_equal(as_list.data, as_tuple.data)


def test_astype_sends_the_gradient_back_in_the_source_dtype():
    x = mg.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = x.astype(np.float64) * mg.Tensor([3.0, 4.0])
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_constructors():
    assert mg.zeros(2, 3).shape == (2, 3) and mg.zeros((2, 3)).dtype == np.float32
    assert mg.ones(4, dtype=np.float32).dtype == np.float32 and np.all(mg.ones(4).data == 1)
    np.testing.assert_array_equal(mg.arange(4).data, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(mg.full((2,), 3.5).data, [3.5, 3.5])
    r = mg.randn(3, 2, rng=np.random.default_rng(0), requires_grad=True)
    assert r.shape == (3, 2) and r.requires_grad
    np.testing.assert_array_equal(r.data, np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32))
    assert mg.zeros_like(mg.Tensor(np.ones(2, np.float32))).dtype == np.float32


# ---------------------------------------------------------------- PyTorch's names for the same things

ARGS = {"argmax": (np.argmax, lambda x, **kw: x.argmax(**kw), lambda x, **kw: mg.argmax(x, **kw)),
        "argmin": (np.argmin, lambda x, **kw: x.argmin(**kw), lambda x, **kw: mg.argmin(x, **kw))}


@pytest.mark.parametrize("name", ARGS)
@given(data=st.data())
def test_argmax_and_argmin_match_numpy_under_both_spellings_without_gradient(name, data):
    (shape,), params = data.draw(INT_AXIS())
    x = data.draw(hnp.arrays(np.float64, shape, elements=GRID))     # ties allowed: the first wins, as numpy
    ref, method, function = ARGS[name]
    expected = ref(x, **params)
    t = mg.Tensor(x, requires_grad=True)
    torch_style = {"dim": params["axis"], "keepdim": params["keepdims"]}
    for out in (method(t, **params), function(t, **params), method(t, **torch_style), function(x, **torch_style)):
        assert out.dtype.kind == "i" and not out.requires_grad and mg.graph_size(out) == 0
        np.testing.assert_array_equal(out.data, expected)
        assert out.shape == np.shape(expected)


@pytest.mark.parametrize("call", [
    lambda x: x.sum(axis=0, dim=0), lambda x: x.mean(keepdims=True, keepdim=True), lambda x: mg.max(x, 0, dim=1),
    lambda x: x.var(ddof=1, correction=1), lambda x: mg.std(x, axis=1, dim=1), lambda x: x.softmax(-1, dim=1),
    lambda x: mg.log_softmax(x, axis=0, dim=0), lambda x: x.logsumexp(axis=1, dim=1), lambda x: x.argmax(0, dim=0),
    lambda x: mg.cat([x, x], axis=0, dim=0), lambda x: mg.stack([x], 0, dim=0), lambda x: x.split(2, 1, dim=1),
    lambda x: x.chunk(2, axis=0, dim=0), lambda x: x.squeeze(axis=0, dim=0), lambda x: x.expand_dims(0, dim=0)])
def test_both_spellings_at_once_is_a_clear_error(call):
    with pytest.raises(TypeError, match=r"got both (axis= and dim=|keepdims= and keepdim=|ddof= and correction=)"):
        call(mg.Tensor(np.ones((2, 2))))


def test_softmax_axis_none_still_means_every_axis_and_the_default_is_the_last():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(mg.softmax(x, axis=None).data, np.exp(x) / np.exp(x).sum(), rtol=1e-12)
    np.testing.assert_allclose(mg.Tensor(x).softmax().data, mg.Tensor(x).softmax(dim=-1).data, rtol=0)
    np.testing.assert_allclose(mg.Tensor(x).softmax(dim=0).data, np.exp(x) / np.exp(x).sum(0), rtol=1e-12)


def test_size_is_numpys_count_and_pytorchs_method():
    t = mg.zeros(2, 3, 4)
    assert t.size == 24 and t.size * 2 == 48 and t.numel() == 24      # numpy's attribute
    assert t.size() == (2, 3, 4) and t.size(1) == 3 and t.size(-1) == 4   # PyTorch's method
    with pytest.raises(IndexError, match=r"size: dim 3 is out of range for shape \(2, 3, 4\)"):
        t.size(3)


def test_float_double_and_to_cast_with_a_gradient_in_the_source_dtype():
    x = mg.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    assert x.float() is x and x.to(np.float32) is x and x.to("cpu") is x and x.to("cpu:0") is x
    d = x.double()
    assert d.dtype == np.float64 and x.to("float64").dtype == np.float64 and d.float().dtype == np.float32
    (d * mg.Tensor(np.array([3.0, 4.0]))).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    with pytest.raises(ValueError, match="minigrad runs on the CPU with numpy; there is no device 'cuda'"):
        x.to("cuda")


def test_clone_copies_the_data_and_keeps_the_gradient_path():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.clone()
    assert y.data is not x.data and not np.shares_memory(y.data, x.data) and y.dtype == x.dtype
    with mg.no_grad():
        y[0] = 5.0              # y's array is read-only while its graph lives: the in-place operator
    assert x.data[0] == 1.0
    (y * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_permute_names_every_axis():
    with pytest.raises(ValueError, match=r"permute: dims \(1, 0\) must name each of the 3 axes of shape \(2, 3, 4\)"):
        mg.zeros(2, 3, 4).permute(1, 0)


def test_manual_seed_is_seed():
    mg.manual_seed(3)
    a = mg.randn(4).data
    mg.seed(3)
    np.testing.assert_array_equal(a, mg.randn(4).data)
    assert mg.cat is mg.concatenate


@pytest.mark.parametrize("path", ["libm", "in use"])
def test_erf_matches_its_series_on_either_path(path, monkeypatch):
    """erf runs on scipy's compiled erf when scipy is installed, else on libm's: both are checked
    against the independent series (and the op table runs whichever is in use)."""
    if path == "libm":
        monkeypatch.setattr(ops, "_ERF", [ops._libm_erf])
    x = np.concatenate([np.linspace(-2, 2, 41), [0.0, 1e-12, -1e-300]])
    for dtype in (np.float64, np.float32):
        y = mg.erf(mg.Tensor(x.astype(dtype))).data
        assert y.dtype == dtype
        np.testing.assert_allclose(y, _erf_series(x.astype(dtype).astype(np.float64)),
                                   rtol=1e-15 if dtype == np.float64 else 1e-6, atol=0)
    assert mg.erf(mg.Tensor(np.array([-30.0, 30.0]))).data.tolist() == [-1.0, 1.0]


def test_transpose_of_a_python_number():
    """ops take numbers as operands: transposing one is the number (numpy's behaviour)."""
    for v in (2.0, 3):
        out = mg.ops.transpose(v)
        assert out.shape == () and out.item() == v
    np.testing.assert_array_equal(mg.ops.transpose(np.arange(6.0).reshape(2, 3), axes=(-1, 0)).data,
                                  np.arange(6.0).reshape(2, 3).T)


def test_sum_of_a_python_number_and_of_integers_as_numpy():
    """ops take numbers as operands: summing one is the number (mg.ops.sum(2.0) raised
    AttributeError); integer and boolean sums promote as numpy's do."""
    for v in (2.0, 3):
        out = mg.ops.sum(v)
        assert out.shape == () and out.item() == v
    for a in (np.ones((2, 3), bool), np.arange(6, dtype=np.int8).reshape(2, 3), np.ones(4, np.uint8)):
        for kw in ({}, {"axis": 0}, {"axis": -1, "keepdims": True}):
            got, want = mg.Tensor(a).sum(**kw).data, a.sum(**kw)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
