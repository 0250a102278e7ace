"""Derived ops: built only from the primitives in ``ops``, so none has a gradient of its own."""
from __future__ import annotations

import warnings

import numpy as np

from . import ops
from .random import get_rng
from .tensor import Tensor, get_default_dtype

__all__ = ["sum", "max", "min", "reshape", "transpose",
           "mean", "var", "softmax", "log_softmax", "logsumexp", "expand_dims", "squeeze", "split",
           "chunk", "stack", "concatenate", "where", "maximum", "minimum", "clip", "zeros", "ones",
           "zeros_like", "ones_like", "full", "randn", "rand", "arange", "tensor"]


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _normalize_axis(axis, ndim, op="reduce", shape=None):
    axes = tuple(range(ndim)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    for a in axes:
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(f"{op}: axis {a} is out of bounds for a tensor of shape {shape}")
    return tuple(a % ndim for a in axes)


def _count(x, axis, op):
    return int(np.prod([x.shape[a] for a in _normalize_axis(axis, x.ndim, op, x.shape)], dtype=np.int64))


def _scale(total, count, op, x, axis):
    """``total / count`` as numpy gives it: NaN (or inf) with a RuntimeWarning when count <= 0."""
    if count > 0:
        return total * (1.0 / count)
    warnings.warn(f"{op}: {'degrees of freedom <= 0' if op == 'var' else 'empty slice'} for shape {x.shape} "
                  f"and axis {axis}; the result is NaN or inf, as numpy's", RuntimeWarning, stacklevel=3)
    return total * np.inf          # 0 * inf is NaN, like numpy's 0 / 0


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (None, an int, or a tuple), as numpy.sum."""
    return _t(x).sum(axis, keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Largest element along ``axis``; ties share the gradient evenly."""
    return _t(x).max(axis, keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001
    return _t(x).min(axis, keepdims)


def reshape(x, shape):
    return _t(x).reshape(shape)


def transpose(x, axes=None):
    return _t(x).transpose(*(axes or ()))


def mean(x, axis=None, keepdims=False):
    x = _t(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    n = _count(x, axis, "mean")
    return _scale(x.sum(axis, keepdims), n, "mean", x, axis)


def var(x, axis=None, keepdims=False, ddof=0):
    """Variance about the mean (``ddof=1`` for the unbiased estimate), as numpy.var."""
    x = _t(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    n = _count(x, axis, "var")
    if n == 0:
        return _scale(x.sum(axis, keepdims), 0, "mean", x, axis)
    d = x - x.mean(axis, keepdims=True)
    return _scale((d * d).sum(axis, keepdims), n - ddof, "var", x, axis)


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))), shifted by the (detached) max so it never overflows."""
    x = _t(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    m = _shift(x, axis)
    out = (x - m).exp().sum(axis, keepdims=True).log() + m
    return out if keepdims else squeeze(out, axis if axis is not None else None)


def _shift(x, axis):
    """The max along ``axis`` as a constant (no gradient), to keep exp from overflowing;
    0 where it is infinite. Built from ops so it is traced inside scan bodies too."""
    m = ops.stop_gradient(ops.max(x, axis=axis, keepdims=True))
    return ops.where(ops.compare(ops.absolute(m), np.inf, op="lt"), m, 0.0)    # traced: |m| < inf


def log_softmax(x, axis=-1):
    x = _t(x)
    return x - logsumexp(x, axis, keepdims=True)


def softmax(x, axis=-1):
    x = _t(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    e = (x - _shift(x, axis)).exp()
    return e / e.sum(axis, keepdims=True)


def expand_dims(x, axis):
    x = _t(x)
    axes = axis if isinstance(axis, tuple) else (axis,)
    ndim = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a % ndim if -ndim <= a < ndim else _bad_axis(a, ndim) for a in axes):
        shape.insert(a, 1)
    return x.reshape(tuple(shape))


def _bad_axis(axis, ndim):
    raise np.exceptions.AxisError(f"expand_dims: axis {axis} is out of bounds for a result of {ndim} dimensions")


def squeeze(x, axis=None):
    x = _t(x)
    return x.reshape(np.squeeze(x._data, axis).shape)


def split(x, sections, axis=0):
    """Split into equal ``sections`` (an int) or at the given indices, as numpy.split."""
    x = _t(x)
    n = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or n % sections:
            raise ValueError(f"split: axis {axis} of shape {x.shape} cannot be split into {sections} equal parts")
        bounds = list(range(0, n + 1, n // sections))
    else:
        bounds = [0, *sections, n]
    lead = (slice(None),) * (axis % x.ndim)
    return [x[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def chunk(x, chunks, axis=0):
    """``chunks`` pieces of (nearly) equal size along ``axis``, as torch.chunk."""
    x = _t(x)
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)):
        raise TypeError(f"chunk: chunks must be an integer, got {type(chunks).__name__}")
    if chunks < 1:
        raise ValueError(f"chunk: chunks must be at least 1, got {chunks}")
    n = x.shape[axis]
    size = -(-n // chunks)
    return split(x, list(range(size, n, size)), axis)


def concatenate(tensors, axis=0):
    return ops.concatenate(*tensors, axis=axis)


def stack(tensors, axis=0):
    return ops.stack(*tensors, axis=axis)


def where(cond, a, b):
    if not isinstance(cond, Tensor):
        cond = np.asarray(cond, dtype=bool)
    return ops.where(cond, a, b)


def maximum(a, b):
    return ops.maximum(a, b)


def minimum(a, b):
    return ops.minimum(a, b)


def clip(x, lo=None, hi=None):
    return ops.clip(x, lo=lo, hi=hi)


# ---------------------------------------------------------------- constructors

def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def zeros(*shape, dtype=None, requires_grad=False):
    """Zeros of ``shape`` in ``dtype`` (by default ``mg.get_default_dtype()``)."""
    return Tensor(np.zeros(_shape(shape), _dtype(dtype)), requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    return Tensor(np.ones(_shape(shape), _dtype(dtype)), requires_grad)


def full(shape, value, dtype=None, requires_grad=False):
    return Tensor(np.full(_shape((shape,)), value, _dtype(dtype)), requires_grad)


def zeros_like(t, requires_grad=False):
    """Zeros of ``t``'s shape and dtype."""
    return Tensor(np.zeros_like(t.data if isinstance(t, Tensor) else t), requires_grad)


def ones_like(t, requires_grad=False):
    return Tensor(np.ones_like(t.data if isinstance(t, Tensor) else t), requires_grad)


def randn(*shape, dtype=None, requires_grad=False, rng=None):
    """Standard normal draws from the shared generator (``mg.seed``) unless ``rng`` is given."""
    rng = get_rng() if rng is None else rng
    return Tensor(rng.standard_normal(_shape(shape)).astype(_dtype(dtype)), requires_grad)


def rand(*shape, dtype=None, requires_grad=False, rng=None):
    """Uniform draws in [0, 1), as ``randn``."""
    rng = get_rng() if rng is None else rng
    return Tensor(rng.random(_shape(shape)).astype(_dtype(dtype)), requires_grad)


def arange(*args, dtype=None, requires_grad=False):
    return Tensor(np.arange(*args, dtype=_dtype(dtype)), requires_grad)


def _dtype(dtype):
    return get_default_dtype() if dtype is None else dtype


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)
