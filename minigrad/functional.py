"""Derived ops: built only from the primitives in ``ops``, so none has a gradient of its own."""
from __future__ import annotations

import warnings

import numpy as np

from . import ops
from .random import get_rng
from .tensor import LAST, Tensor, get_default_dtype

__all__ = ["sum", "max", "min", "argmax", "argmin", "reshape", "transpose",
           "mean", "var", "std", "softmax", "log_softmax", "logsumexp", "expand_dims", "unsqueeze", "squeeze",
           "split", "chunk", "stack", "concatenate", "cat", "where", "maximum", "minimum", "clip", "zeros", "ones",
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


def one_of(where: str, value, alias, names: tuple, default=None, unset=None):
    """One argument under two spellings, numpy's and PyTorch's (``axis``/``dim``,
    ``keepdims``/``keepdim``, ``ddof``/``correction``): whichever is given, else ``default``;
    both at once is a TypeError, even when they agree. ``value is unset`` means not given."""
    if alias is None:
        return default if value is unset else value
    if value is not unset:
        raise TypeError(f"{where}: got both {names[0]}= and {names[1]}=, numpy's and PyTorch's names for "
                        f"one argument; give one")
    return alias


def _reduce_args(where, axis, keepdims, dim, keepdim, default=None, unset=None):
    """``(axis, keepdims)`` from either spelling; a list of axes becomes a tuple."""
    axis = one_of(where, axis, dim, ("axis", "dim"), default, unset)
    keepdims = one_of(where, keepdims, keepdim, ("keepdims", "keepdim"), False)
    return (tuple(axis) if isinstance(axis, list) else axis), bool(keepdims)


def sum(x, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """Sum over ``axis`` (None, an int, or a tuple), as numpy.sum. ``dim``/``keepdim`` are
    PyTorch's names for ``axis``/``keepdims`` (here and in every op below)."""
    axis, keepdims = _reduce_args("sum", axis, keepdims, dim, keepdim)
    return ops.sum(_t(x), axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """Largest element along ``axis``; ties share the gradient evenly. Only the values, also
    with ``dim=`` (PyTorch would add the indices: use ``argmax`` for those)."""
    axis, keepdims = _reduce_args("max", axis, keepdims, dim, keepdim)
    return ops.max(_t(x), axis=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """Smallest element along ``axis``, as ``max``."""
    axis, keepdims = _reduce_args("min", axis, keepdims, dim, keepdim)
    return ops.min(_t(x), axis=axis, keepdims=keepdims)


def argmax(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """Index of the largest element along ``axis`` (an int; None: of the flattened tensor), as
    numpy.argmax and torch.argmax: an integer tensor, without gradient. Ties: the first."""
    axis, keepdims = _reduce_args("argmax", axis, keepdims, dim, keepdim)
    return ops.argmax(_t(x), axis=axis, keepdims=keepdims)


def argmin(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """Index of the smallest element along ``axis``, as ``argmax``."""
    axis, keepdims = _reduce_args("argmin", axis, keepdims, dim, keepdim)
    return ops.argmin(_t(x), axis=axis, keepdims=keepdims)


def reshape(x, shape):
    return _t(x).reshape(shape)


def transpose(x, axes=None):
    return _t(x).transpose(*(axes or ()))


def mean(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
    x = _t(x)
    axis, keepdims = _reduce_args("mean", axis, keepdims, dim, keepdim)
    n = _count(x, axis, "mean")
    return _scale(x.sum(axis, keepdims), n, "mean", x, axis)


def var(x, axis=None, keepdims=None, ddof=None, *, dim=None, keepdim=None, correction=None):
    """Variance about the mean, as numpy.var: ``ddof=0`` by default (numpy's and Keras's;
    PyTorch's default is ``correction=1``, the unbiased estimate: pass ``ddof=1`` for it).
    ``correction`` is PyTorch's name for ``ddof``."""
    x = _t(x)
    axis, keepdims = _reduce_args("var", axis, keepdims, dim, keepdim)
    ddof = one_of("var", ddof, correction, ("ddof", "correction"), 0)
    n = _count(x, axis, "var")
    if n == 0:
        return _scale(x.sum(axis, keepdims), 0, "mean", x, axis)
    d = x - x.mean(axis, keepdims=True)
    return _scale((d * d).sum(axis, keepdims), n - ddof, "var", x, axis)


def std(x, axis=None, keepdims=None, ddof=None, *, dim=None, keepdim=None, correction=None):
    """Standard deviation, ``sqrt(var(...))`` with the same arguments (``ddof=0`` by default, as
    numpy; PyTorch's default is ``correction=1``)."""
    return var(x, axis, keepdims, ddof, dim=dim, keepdim=keepdim, correction=correction).sqrt()


def logsumexp(x, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """log(sum(exp(x))), shifted by the (detached) max so it never overflows."""
    x = _t(x)
    axis, keepdims = _reduce_args("logsumexp", axis, keepdims, dim, keepdim)
    m = _shift(x, axis)
    out = (x - m).exp().sum(axis, keepdims=True).log() + m
    return out if keepdims else squeeze(out, axis if axis is not None else None)


def _shift(x, axis):
    """The max along ``axis`` as a constant (no gradient), to keep exp from overflowing;
    0 where it is infinite. Built from ops so it is traced inside scan bodies too."""
    m = ops.stop_gradient(ops.max(x, axis=axis, keepdims=True))
    return ops.where(ops.compare(ops.absolute(m), np.inf, op="lt"), m, 0.0)    # traced: |m| < inf


def log_softmax(x, axis=LAST, *, dim=None):
    """``x - logsumexp(x, axis, keepdims=True)``; ``axis`` (or ``dim``) -1 by default, None: all axes."""
    x = _t(x)
    axis, _ = _reduce_args("log_softmax", axis, None, dim, None, -1, LAST)
    return x - logsumexp(x, axis, keepdims=True)


def softmax(x, axis=LAST, *, dim=None):
    """``exp(x) / sum(exp(x))`` along ``axis`` (or ``dim``; -1 by default, None: all axes), without overflow."""
    x = _t(x)
    axis, _ = _reduce_args("softmax", axis, None, dim, None, -1, LAST)
    e = (x - _shift(x, axis)).exp()
    return e / e.sum(axis, keepdims=True)


def expand_dims(x, axis=None, *, dim=None):
    """A new axis of length 1 at ``axis`` (or ``dim``; an int or a tuple), as numpy.expand_dims."""
    x = _t(x)
    axis = one_of("expand_dims", axis, dim, ("axis", "dim"))
    if axis is None:
        raise TypeError("expand_dims: missing the axis (axis= or dim=) where the new axis goes")
    axes = axis if isinstance(axis, tuple) else (axis,)
    ndim = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a % ndim if -ndim <= a < ndim else _bad_axis(a, ndim) for a in axes):
        shape.insert(a, 1)
    return x.reshape(tuple(shape))


def _bad_axis(axis, ndim):
    raise np.exceptions.AxisError(f"expand_dims: axis {axis} is out of bounds for a result of {ndim} dimensions")


def unsqueeze(x, dim):
    """PyTorch's name for ``expand_dims``."""
    return expand_dims(x, dim)


def squeeze(x, axis=None, *, dim=None):
    """Drop the length-1 axes (all, or those in ``axis``/``dim``), as numpy.squeeze."""
    x = _t(x)
    axis = one_of("squeeze", axis, dim, ("axis", "dim"))
    return x.reshape(np.squeeze(x._data, axis).shape)


def split(x, sections, axis=None, *, dim=None):
    """Split into equal ``sections`` (an int) or at the given indices, as numpy.split (not
    torch.split, whose int is a piece's size: that is ``chunk``), along ``axis`` or ``dim``, 0 by default."""
    x = _t(x)
    axis = one_of("split", axis, dim, ("axis", "dim"), 0)
    n = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or n % sections:
            raise ValueError(f"split: axis {axis} of shape {x.shape} cannot be split into {sections} equal parts")
        bounds = list(range(0, n + 1, n // sections))
    else:
        bounds = [0, *sections, n]
    lead = (slice(None),) * (axis % x.ndim)
    return [x[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def chunk(x, chunks, axis=None, *, dim=None):
    """``chunks`` pieces of (nearly) equal size along ``axis`` (or ``dim``, 0 by default), as torch.chunk."""
    x = _t(x)
    axis = one_of("chunk", axis, dim, ("axis", "dim"), 0)
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)):
        raise TypeError(f"chunk: chunks must be an integer, got {type(chunks).__name__}")
    if chunks < 1:
        raise ValueError(f"chunk: chunks must be at least 1, got {chunks}")
    n = x.shape[axis]
    size = -(-n // chunks)
    return split(x, list(range(size, n, size)), axis)


def concatenate(tensors, axis=None, *, dim=None):
    """Join ``tensors`` along an existing axis (``axis`` or ``dim``, 0 by default); ``mg.cat`` is
    the same function under PyTorch's name."""
    return ops.concatenate(*tensors, axis=one_of("concatenate", axis, dim, ("axis", "dim"), 0))


cat = concatenate


def stack(tensors, axis=None, *, dim=None):
    """Join ``tensors`` of one shape along a new axis (``axis`` or ``dim``, 0 by default)."""
    return ops.stack(*tensors, axis=one_of("stack", axis, dim, ("axis", "dim"), 0))


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
