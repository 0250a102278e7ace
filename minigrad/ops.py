"""The primitives: each op's forward beside its vector-Jacobian product, and nothing else.

Every function here receives ndarrays (and static keyword arguments) and returns
``(output, vjp)``. Gradients may come back in the broadcast shape: the engine reduces them.
Each is written as plain numpy: statements, then ``return out, lambda g: (...)`` (or a nested
``def vjp(g)``). ``batch`` says how the op behaves with an extra leading (time) axis on its
operands, which lets a looped program run it once for all steps.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from .engine import IndexedGrad, OuterGrad, primitive
from .gradients import broadcast

ELEMENTWISE = "elementwise"   # broadcasting op: a leading time axis on an operand just broadcasts
MATMUL = "matmul"
INDEX = "index"               # getitem with a basic index: prepend a full slice for a time axis


def _broadcast_explain(*operands, **_):
    shapes = [np.shape(x) for x in operands]     # two operands, or three for where
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        return f"shapes {' and '.join(str(s) for s in shapes)} cannot be broadcast together"
    return None


def _elementwise(fn):
    return primitive(fn, batch=ELEMENTWISE, explain=_broadcast_explain, _builtin=True)


def _unary(fn):
    return primitive(fn, batch=ELEMENTWISE, _builtin=True)


# ---------------------------------------------------------------- arithmetic

@_elementwise
def add(a, b):
    return a + b, lambda g: (g, g)


@_elementwise
def subtract(a, b):
    return a - b, lambda g: (g, -g)


@_elementwise
def multiply(a, b, *, needs_grad=(True, True)):
    na, nb = needs_grad
    return a * b, lambda g: (g * b if na else None, g * a if nb else None)


@_elementwise
def divide(a, b, *, needs_grad=(True, True)):
    na, nb = needs_grad
    out = a / b
    return out, lambda g: (g / b if na else None, -g * out / b if nb else None)


@_elementwise
def power(a, b, *, needs_grad=(True, True)):
    na, nb = needs_grad
    out = a ** b
    # PyTorch's conventions: d/da is 0 where b == 0 (x ** 0 is constant, even at x = 0, where
    # b * a ** (b - 1) would be 0 * inf); d/db = a ** b log a is 0 where a == 0 and b >= 0 (0 ** b
    # is constant there) and NaN for a < 0 (log of a negative number), not a silent 0
    return out, lambda g: (g * _pow_slope(a, b) if na else None,
                           g * _times_log(out, a, b) if nb else None)


def _pow_slope(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):      # 0 ** -1 is inf, as in PyTorch; masked where b == 0
        return np.where(b == 0, 0.0, b * a ** (b - 1))


def _times_log(out, a, b):
    with np.errstate(divide="ignore", invalid="ignore"):      # log(0) = -inf, log(-1) = NaN: masked or meant
        return np.where((a == 0) & (b >= 0), 0.0, out * np.log(a))


@_unary
def negative(x):
    return -x, lambda g: (-g,)


@_unary
def exp(x):
    y = np.exp(x)
    return y, lambda g: (g * y,)


@_unary
def log(x):
    return np.log(x), lambda g: (g / x,)


@_unary
def sqrt(x):
    y = np.sqrt(x)
    return y, lambda g: (g / (y + y),)


@_unary
def log1p(x):
    return np.log1p(x), lambda g: (g / (1 + x),)


@_unary
def expm1(x):
    y = np.expm1(x)
    return y, lambda g: (g * (y + 1),)


@_unary
def sin(x):
    return np.sin(x), lambda g: (g * np.cos(x),)


@_unary
def cos(x):
    return np.cos(x), lambda g: (-g * np.sin(x),)


_ERF = []           # the array erf in use, chosen at the first call


def _libm_erf(x):
    """libm's erf (math.erf), element by element."""
    return np.array(_LIBM_ERF(x), dtype=_float(x.dtype))


_LIBM_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf_values(x):
    """erf of an array. numpy has none: scipy's compiled one if scipy is installed (imported at
    the first call, as it takes ~0.4 s), else libm's element by element, ~7x slower at (32, 512).
    Both are exact to about an ulp; GELU's approximate="tanh" needs neither."""
    if not _ERF:
        try:
            from scipy.special import erf as compiled
            _ERF.append(lambda a: compiled(a).astype(_float(a.dtype), copy=False))
        except ImportError:
            _ERF.append(_libm_erf)
    return _ERF[0](x)


@_unary
def erf(x):
    return _erf_values(x), lambda g: (g * (2 / np.sqrt(np.pi)) * np.exp(-x * x),)


@_unary
def absolute(x):
    return np.abs(x), lambda g: (g * np.sign(x),)


@_unary
def tanh(x):
    y = np.tanh(x)
    return y, lambda g: (g * (1 - y * y),)


_EXP_FLOOR = {}
_FLOORS = {}         # (shape, dtype) -> a read-only array of the exp floor (views of one buffer per dtype)
_FLOOR_CAP = 1 << 18  # elements: larger inputs clip against a scalar rather than keep a constant that size


def _float(dtype):
    """The dtype sigmoid computes in: ``dtype`` if it is float32 or wider, float32 for float16
    (whose exp overflows from 11.1 on: clipping there would put sigmoid(-20) at 1.7e-5), else
    float64 (what numpy's exp would give)."""
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _is_half(dtype):
    return dtype == np.float16


def _exp_floor(dtype):
    """The most negative x whose exp(-x) is finite in ``dtype`` (-88 in float32, -709 in float64)."""
    floor = _EXP_FLOOR.get(dtype)
    if floor is None:
        floor = _EXP_FLOOR[dtype] = float(np.floor(-np.log(np.finfo(dtype).max))) + 1.0
    return floor


def _exp_floor_like(shape, dtype):
    """``_exp_floor(dtype)`` as an array of ``shape``: numpy's maximum against a scalar is not
    vectorised, against an array of the same shape it is (5.3 us against 1.3 us at (32, 512) in
    float32). One buffer per dtype, grown to the largest shape asked for, up to ``_FLOOR_CAP``."""
    key = (shape, dtype)
    floor = _FLOORS.get(key)
    if floor is None:
        n = int(np.prod(shape))
        if n > _FLOOR_CAP:
            return _exp_floor(dtype)
        buf = _FLOORS.get(dtype)
        if buf is None or buf.size < n:
            size = n if buf is None else builtins.max(n, 2 * buf.size)
            buf = _FLOORS[dtype] = np.full(size, _exp_floor(dtype), dtype)
            buf.flags.writeable = False
        if len(_FLOORS) > 64:                       # views of many shapes: start again (the buffers stay)
            _FLOORS.clear()
            _FLOORS[dtype] = buf
        floor = _FLOORS[key] = buf[:n].reshape(shape)
    return floor


@_unary
def sigmoid(x):
    # A primitive, so its vjp needs only y. 1 / (1 + exp(-x)) keeps its relative accuracy on both
    # sides (0.5 + 0.5 tanh(x / 2) is 0 below -37); clipping first keeps exp from overflowing
    # where the result is below the dtype's smallest normal number anyway. One buffer (an array
    # for a 0-d input too), every pass in place.
    y = np.maximum(x, _exp_floor_like(x.shape, _float(x.dtype)), out=np.empty(x.shape, _float(x.dtype)))
    np.negative(y, out=y)
    np.exp(y, out=y)
    y += 1
    np.reciprocal(y, out=y)
    if _is_half(x.dtype):           # computed in float32 (see _float), returned in x's dtype
        y = y.astype(np.float16)
    return y, lambda g: (g * (y - y * y),)


@_unary
def relu(x):
    return np.maximum(x, 0), lambda g: (g * (x > 0),)


@_elementwise
def maximum(a, b):
    # ties split the gradient evenly, which is what central differences see; a NaN (the result)
    # passes the gradient to both operands, as in PyTorch, rather than to the other one only
    tie = a == b
    return np.maximum(a, b), lambda g: (g * np.where(tie, 0.5, 1.0 - (a < b)), g * np.where(tie, 0.5, 1.0 - (a > b)))


@_elementwise
def minimum(a, b):
    tie = a == b
    return np.minimum(a, b), lambda g: (g * np.where(tie, 0.5, 1.0 - (a > b)), g * np.where(tie, 0.5, 1.0 - (a < b)))


@_unary
def clip(x, *, lo=None, hi=None):
    inside = np.ones(np.shape(x), bool)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return np.clip(x, lo, hi), lambda g: (g * inside,)


@_elementwise
def where(cond, a, b):
    cond = np.asarray(cond, dtype=bool)
    return np.where(cond, a, b), lambda g: (None, np.where(cond, g, 0), np.where(cond, 0, g))


_COMPARE = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
            "gt": np.greater, "ge": np.greater_equal}


@_elementwise
def compare(a, b, *, op):
    """Elementwise comparison (``op`` one of eq ne lt le gt ge): a boolean result, no gradient."""
    return _COMPARE[op](a, b), lambda g: (None, None)


@_unary
def stop_gradient(x):
    """The identity whose gradient is zero: ``Tensor.detach`` inside a traced scan body."""
    return x, lambda g: (None,)


@primitive(_builtin=True)
def astype(x, *, dtype):
    return x.astype(dtype), lambda g: (g.astype(x.dtype),)


# ---------------------------------------------------------------- reductions

def _expand(g, axis, keepdims, ndim):
    """Give a reduced gradient back the axes the reduction removed, so it broadcasts."""
    g = np.asarray(g)
    if axis is None or keepdims:
        return g if keepdims or g.ndim == ndim else g.reshape((1,) * ndim)
    return np.expand_dims(g, axis)


@primitive(_builtin=True)
def sum(x, *, axis=None, keepdims=False):
    x = np.asarray(x)
    shape = x.shape                 # np.add.reduce is ndarray.sum without its Python wrapper
    return (np.add.reduce(x, axis=axis, keepdims=keepdims),
            lambda g: (broadcast(_expand(g, axis, keepdims, len(shape)), shape),))


def _extreme(reduce):
    def fn(x, *, axis=None, keepdims=False):
        out = reduce(x, axis=axis, keepdims=True)
        # ties share the gradient evenly; where the result is NaN, the NaNs share it (as in PyTorch)
        # instead of every element getting 0 / 0
        hit = (x == out) | (np.isnan(x) & np.isnan(out)) if x.dtype.kind in "fc" else x == out
        share = hit / hit.sum(axis=axis, keepdims=True)
        return (out if keepdims else np.squeeze(out, axis=axis),
                lambda g: (_expand(g, axis, keepdims, x.ndim) * share,))
    return fn


max = primitive(_extreme(np.max), name="max", _builtin=True)
min = primitive(_extreme(np.min), name="min", _builtin=True)


@primitive(_builtin=True)
def argmax(x, *, axis=None, keepdims=False):
    """Indices: an integer result, so no gradient."""
    return np.argmax(x, axis=axis, keepdims=keepdims), lambda g: (None,)


@primitive(_builtin=True)
def argmin(x, *, axis=None, keepdims=False):
    return np.argmin(x, axis=axis, keepdims=keepdims), lambda g: (None,)


# ---------------------------------------------------------------- shapes and indexing

@primitive(_builtin=True)
def reshape(x, *, shape):
    old = x.shape                 # only the shape: the vjp does not keep x's data alive
    return np.reshape(x, shape), lambda g: (np.reshape(g, old),)


@primitive(_builtin=True)
def transpose(x, *, axes=None):
    out = np.asarray(x).transpose(axes)      # numpy checks the axes (negative ones too) before back reads them
    back = None if axes is None else _inverse_permutation(axes, out.ndim)
    return out, lambda g: (g.transpose(back),)


def _inverse_permutation(axes, n):
    """The axes that undo the transpose ``axes`` (negative ones counted from the end)."""
    back = [0] * n
    for i, a in enumerate(axes):
        back[a % n] = i
    return tuple(back)


def _is_basic(index):
    """Is ``index`` basic (ints, slices, None, Ellipsis): a view whose gradient writes a slice?"""
    for part in index if type(index) is tuple else (index,):
        if not (part is None or part is Ellipsis or type(part) is slice
                or (isinstance(part, (int, np.integer)) and type(part) is not bool)):
            return False
    return True


def _getitem_explain(x, *, index):
    return f"index {index!r} is invalid for shape {np.shape(x)}"


@primitive(batch=INDEX, explain=_getitem_explain, _builtin=True)
def getitem(x, *, index):
    if _is_basic(index):                 # a view: its gradient is added into x's buffer in place
        return x[index], lambda g: (IndexedGrad(index, g),)
    shape, dtype = x.shape, x.dtype

    def vjp(g):
        gx = np.zeros(shape, dtype)
        np.add.at(gx, index, g)          # repeated indices accumulate
        return (gx,)
    return x[index], vjp


def _setitem_explain(x, v, *, index):
    return f"cannot set index {index!r} of shape {np.shape(x)} to a value of shape {np.shape(v)}"


@primitive(explain=_setitem_explain, _builtin=True)
def setitem(x, v, *, index):
    """``x`` with ``x[index] = v``: what ``Tensor.__setitem__`` records."""
    out = x.copy()
    out[index] = v

    def vjp(g):
        gx = g.copy()
        gx[index] = 0
        return gx, g[index]
    return out, vjp


@primitive(_builtin=True)
def concatenate(*xs, axis=0):
    ends = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return np.concatenate(xs, axis=axis), lambda g: tuple(np.split(g, ends, axis=axis))


@primitive(_builtin=True)
def stack(*xs, axis=0):
    return np.stack(xs, axis=axis), lambda g: tuple(np.moveaxis(g, axis, 0))


# ---------------------------------------------------------------- linear algebra

def _matmul_explain(a, b, **_):
    sa, sb = np.shape(a), np.shape(b)
    if len(sa) == 0 or len(sb) == 0:
        return f"shapes {sa} and {sb}: both operands need at least one dimension"
    k_a, k_b = sa[-1], sb[-2] if len(sb) > 1 else sb[0]
    if k_a != k_b:
        return f"shapes {sa} and {sb} do not align ({k_a} != {k_b})"
    return None


def _memory_order(a):
    """The axes of ``a`` in the order its memory holds them (the last kept last), or None when
    that is already their order. A time-major view of batch-major data (an RNN's input) read
    in this order is contiguous, so its rows need no copy."""
    lead = a.ndim - 1
    order = sorted(range(lead), key=lambda i: -a.strides[i])      # stable: ties keep their order
    return None if order == list(range(lead)) else tuple(order) + (lead,)


def _rows(x):
    """``x`` as a matrix of its rows (a view when its leading axes are contiguous)."""
    return x.reshape(-1, x.shape[-1])


# bytes: the most _row_product copies at once. Small blocks make short products and slow strided
# copies: 256 KiB cost the large LSTM step 1.8 ms (its 3 MB input copied 3 steps at a time);
# 4 MiB copies it whole, while a 1000-step input still goes a few thousand rows at a time.
_BLOCK = 4 << 20


def _row_product(a, g):
    """``a.T @ g`` summed over all rows of two stacks with the same leading axes (the gradient of
    a weight shared by every row). Rows are taken in the memory order of the larger operand; if
    the other is laid out differently (an RNN's batch-major input against its time-major hidden
    states), it is copied a block of rows at a time, at most ``_BLOCK`` bytes."""
    order = _memory_order(a if a.nbytes >= g.nbytes else g)
    if order is not None:
        a, g = a.transpose(order), g.transpose(order)
    if (a.flags.c_contiguous and g.flags.c_contiguous) or a.shape[0] == 1:
        return _rows(a).T @ _rows(g)
    small = a.nbytes if a.nbytes < g.nbytes else g.nbytes     # (max and min are ops in this module)
    step = _BLOCK * a.shape[0] // small if small > _BLOCK else a.shape[0]
    step = step if step > 0 else 1
    out = None
    for s in range(0, a.shape[0], step):
        p = _rows(a[s:s + step]).T @ _rows(g[s:s + step])
        out = p if out is None else np.add(out, p, out=out)
    return out


def _mm(a, b):
    """a @ b; a stack of matrices times one matrix is one product on the stack's rows (numpy's
    batched matmul would do one product per matrix, about 2x slower). The result is contiguous
    in the logical order even for a transposed view (a time-major view of an RNN's batch-major
    input is copied first): the loop that reads it one step at a time runs ~10% faster on
    contiguous rows than on rows strided across the whole buffer."""
    if b.ndim == 2 and a.ndim > 2:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    return a @ b


def _mm_grads(g, a, b, na, nb):
    """Gradients of a @ b for any ranks. Two matrices, the common case, first: the weight's
    gradient stays an OuterGrad, which the engine multiplies out stacked over all its uses.
    A 2-D weight under a batched input gets one product over all batch rows, not a stack of
    products summed afterwards."""
    if a.ndim == 2 and b.ndim == 2:
        return g @ b.T if na else None, OuterGrad(a, g) if nb else None
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if b.ndim == 1:                      # first: for vector @ vector, g is 0-d
        g2 = np.expand_dims(g2, -1)
    if a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    ga = gb = None
    if na:
        ga = _mm(g2, np.swapaxes(b2, -1, -2))
        if a.ndim == 1:
            ga = ga.reshape(-1, a.shape[0]).sum(0) if ga.ndim > 2 else ga[0]
    if nb:
        if b2.ndim == 2 and a2.ndim > 2:
            gb = _row_product(a2, g2)
        else:
            gb = np.swapaxes(a2, -1, -2) @ g2
        if b.ndim == 1:
            gb = gb.reshape(-1, b.shape[0]).sum(0) if gb.ndim > 2 else gb[:, 0]
    return ga, gb


@primitive(batch=MATMUL, explain=_matmul_explain, _builtin=True)
def matmul(a, b, *, needs_grad=(True, True)):
    na, nb = needs_grad
    out = a @ b if a.ndim <= 2 else _mm(a, b)     # a stack of rows times a matrix: see _mm
    return out, lambda g: _mm_grads(g, a, b, na, nb)
