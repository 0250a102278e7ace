"""Hypothesis strategies and a gradient assertion for testing minigrad code, yours or ours.

A property-based gradient test of your own op or model takes a few lines::

    import numpy as np
    import minigrad as mg
    from hypothesis import given
    from minigrad.testing import arrays, assert_grad_close

    @mg.primitive
    def softplus(x):
        return np.logaddexp(0, x), lambda g: (g / (1 + np.exp(-x)),)

    @given(arrays(elements=(-5.0, 5.0)))       # shapes drawn: scalars, size-1 dims, up to 3 dims of 1..4
    def test_softplus_gradient(x):
        assert_grad_close(softplus, x)

This module imports ``hypothesis`` (install the test extra: ``pip install minigrad[test]``);
``import minigrad`` alone never does.
"""
from __future__ import annotations

from typing import Any, Callable

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np

from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor

__all__ = ["floats", "float_dtypes", "shapes", "arrays", "tensors", "broadcastable_shapes", "valid_axes",
           "assert_grad_close"]

# Small by default: gradient checks cost one backward per output element and two forwards per
# input element, so a suite of many ops stays fast with at most 3 dims of 1..4.
MAX_DIMS = 3
MAX_SIDE = 4


def floats(min_value: float = -3.0, max_value: float = 3.0, *, width: int = 64) -> st.SearchStrategy[float]:
    """Finite floats in ``[min_value, max_value]``, without NaN, infinities or subnormals.

    Parameters
    ----------
    min_value, max_value : float
        The closed range of the values.
    width : {16, 32, 64}
        The float width the values must be exactly representable in (32 for float32 arrays);
        bounds that are not (0.1 in float32) are rounded inwards.
    """
    if width < 64:
        ftype = {16: np.float16, 32: np.float32}[width]
        lo, hi = ftype(min_value), ftype(max_value)
        if lo < min_value:
            lo = np.nextafter(lo, ftype(np.inf))
        if hi > max_value:
            hi = np.nextafter(hi, ftype(-np.inf))
        min_value, max_value = float(lo), float(hi)
    return st.floats(min_value, max_value, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                     width=width)


def float_dtypes() -> st.SearchStrategy[np.dtype]:
    """float32 or float64: the dtypes minigrad computes in."""
    return st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])


def shapes(*, min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1,
           max_side: int = MAX_SIDE) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes; ``min_dims=0`` includes scalars (shape ``()``), ``min_side=1`` excludes empty arrays."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def _shape_strategy(shape, min_dims, max_dims, min_side, max_side):
    if shape is None:
        return shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)
    if isinstance(shape, st.SearchStrategy):
        return shape
    return st.just((shape,) if isinstance(shape, (int, np.integer)) else tuple(shape))


def _elements_for(elements, dtype: np.dtype):
    if elements is None:
        elements = (-3.0, 3.0)
    if isinstance(elements, st.SearchStrategy):
        return elements
    lo, hi = elements
    if dtype.kind != "f":
        return st.integers(int(np.ceil(lo)), int(np.floor(hi)))
    return floats(lo, hi, width=8 * dtype.itemsize)


@st.composite
def _arrays(draw, shape, dtype, elements, unique, min_dims, max_dims, min_side, max_side):
    dt = np.dtype(draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype)
    sh = draw(_shape_strategy(shape, min_dims, max_dims, min_side, max_side))
    return draw(hnp.arrays(dt, sh, elements=_elements_for(elements, dt), unique=unique))


def arrays(shape: Any = None, dtype: Any = np.float64, elements: Any = None, *, unique: bool = False,
           min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1,
           max_side: int = MAX_SIDE) -> st.SearchStrategy[np.ndarray]:
    """Numpy arrays with a given or drawn shape and dtype and bounded, finite values.

    Parameters
    ----------
    shape : int, tuple of int, strategy of tuples, or None
        The shape; None draws one with :func:`shapes` and the ``min_*``/``max_*`` bounds.
    dtype : numpy dtype or strategy of dtypes
        float64 by default; e.g. ``float_dtypes()`` to draw float32 or float64.
    elements : strategy, ``(low, high)`` pair, or None
        The values. A pair gives finite floats in ``[low, high]`` exactly representable in the
        drawn dtype; None means ``(-3, 3)``. Keep values inside your op's domain (``(0.1, 5)``
        for log) and away from kinks: e.g. ``floats(-2, 2).filter(lambda v: abs(v) > 0.05)`` for
        abs or relu, or for max and min tie-free values on a grid exact in float32,
        ``st.integers(-400, 400).map(lambda k: k / 8)`` with ``unique=True``.
    unique : bool
        All elements distinct (e.g. tie-free inputs for max).
    min_dims, max_dims, min_side, max_side : int
        Bounds of a drawn shape; the defaults (up to 3 dims of 1..4) keep gradient checks cheap.

    Returns
    -------
    SearchStrategy of numpy.ndarray
    """
    return _arrays(shape, dtype, elements, unique, min_dims, max_dims, min_side, max_side)


def tensors(shape: Any = None, dtype: Any = np.float64, elements: Any = None, requires_grad: bool = False, *,
            unique: bool = False, min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1,
            max_side: int = MAX_SIDE) -> st.SearchStrategy[Tensor]:
    """:class:`~minigrad.Tensor` objects over :func:`arrays` (same parameters), optionally requiring grad.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(tensors(shape=(2, 3), elements=(0.1, 1.0), requires_grad=True))
    ... def test_log_is_negative(t):
    ...     assert (t.log().data <= 0).all()
    """
    return arrays(shape, dtype, elements, unique=unique, min_dims=min_dims, max_dims=max_dims,
                  min_side=min_side, max_side=max_side).map(lambda a: Tensor(a, requires_grad=requires_grad))


def broadcastable_shapes(num_shapes: int = 2, *, min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1,
                         max_side: int = MAX_SIDE) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    """Tuples of ``num_shapes`` shapes that broadcast together under numpy's rules.

    Built on ``hypothesis.extra.numpy.mutually_broadcastable_shapes``: the shapes differ in rank
    and have size-1 dimensions that stretch, which is where broadcast gradients go wrong.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(broadcastable_shapes())
    ... def test_add_shape(shapes):
    ...     a, b = (mg.ones(s) for s in shapes)
    ...     assert (a + b).shape == np.broadcast_shapes(*shapes)
    """
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=min_side, max_side=max_side).map(lambda r: r.input_shapes)


def valid_axes(ndim: int, *, allow_none: bool = True, allow_int: bool = True, min_size: int = 0,
               max_size: int | None = None) -> st.SearchStrategy[None | int | tuple[int, ...]]:
    """Every form of the ``axis`` argument of a reduction over an ``ndim``-dimensional array.

    None (all axes), a single int and tuples of distinct axes, negative ones included (via
    ``hypothesis.extra.numpy.valid_tuple_axes``). ``min_size``/``max_size`` bound the tuples.
    """
    options = [hnp.valid_tuple_axes(ndim, min_size=min_size, max_size=max_size)]
    if allow_int and ndim > 0 and min_size <= 1:
        options.append(st.integers(-ndim, ndim - 1))
    if allow_none:
        options.append(st.none())
    return st.one_of(*options)


def assert_grad_close(fn: Callable[..., Any], *arrays: Any, eps: float = 1e-6, atol: float = 1e-5,
                      rtol: float = 1e-3, fast_mode: bool = False) -> None:
    """Assert that the gradients of ``fn`` at ``arrays`` match central finite differences.

    Parameters
    ----------
    fn : callable
        Takes one Tensor per entry of ``arrays``, returns a Tensor or a tuple of Tensors.
    *arrays : array_like or Tensor
        Arrays and numbers become float64 Tensors requiring grad, so every one is checked. A
        Tensor is passed as it is: give one with ``requires_grad=False`` for an input that must
        not be differentiated (an index, a mask, a constant).
    eps, atol, rtol, fast_mode
        As in :func:`minigrad.gradcheck`.

    Raises
    ------
    AssertionError
        Naming the input shapes and, from ``gradcheck``, the output, input and element that
        disagree with their analytic and numeric values.
    """
    inputs = [a if isinstance(a, Tensor) else Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
              for a in arrays]
    try:
        gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol, fast_mode=fast_mode)
    except GradcheckError as err:
        described = ", ".join(f"{i}: {_describe(t)}" for i, t in enumerate(inputs))
        raise AssertionError(f"{err}\n  inputs: {described}") from None


def _describe(t: Tensor) -> str:
    grad = "" if t.requires_grad else ", no grad"
    values = f" = {np.array2string(t.data, precision=6, separator=', ')}" if t.size <= 8 else ""
    return f"shape {t.shape} {t.dtype}{grad}{values}"
