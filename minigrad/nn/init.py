"""Weight initialisers. Each returns a new ndarray of the given shape and dtype.

Fans follow Keras's layout, where a weight maps its second-to-last axis to its last:
``fan_in = shape[-2] * receptive``, ``fan_out = shape[-1] * receptive`` (``receptive`` is the
product of any leading axes; a 1-D shape has ``fan_in = fan_out = shape[0]``). For a ``Linear``
weight of shape ``(in_features, out_features)`` that is ``fan_in = in_features``.

Defaults used by the layers (documented there too):

- ``Linear``: weight ``glorot_uniform``, bias ``zeros`` (Keras's ``Dense``; PyTorch instead draws
  both from ``U(-1/sqrt(in), 1/sqrt(in))``).
- ``Embedding``: ``uniform(-0.05, 0.05)`` (Keras; PyTorch uses ``N(0, 1)``).

Arrays have ``dtype``, by default ``mg.get_default_dtype()``. Random draws come from the shared
generator (``mg.seed``) unless ``rng`` is given.
"""
from __future__ import annotations

import numpy as np

from ..random import get_rng
from ..tensor import get_default_dtype

__all__ = ["compute_fans", "glorot_uniform", "he_uniform", "orthogonal", "uniform", "normal", "zeros", "ones",
           "constant"]


def compute_fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` in Keras's layout (see the module docstring)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2], dtype=np.int64))
    return shape[-2] * receptive, shape[-1] * receptive


def _rng(rng):
    return get_rng() if rng is None else rng


def _dtype(dtype):
    return get_default_dtype() if dtype is None else dtype


def uniform(shape, low=-0.05, high=0.05, dtype=None, rng=None) -> np.ndarray:
    """Draws from ``U(low, high)``."""
    return _rng(rng).uniform(low, high, size=tuple(shape)).astype(_dtype(dtype))


def normal(shape, mean=0.0, std=1.0, dtype=None, rng=None) -> np.ndarray:
    """Draws from ``N(mean, std**2)``."""
    return (mean + std * _rng(rng).standard_normal(tuple(shape))).astype(_dtype(dtype))


def glorot_uniform(shape, gain=1.0, dtype=None, rng=None) -> np.ndarray:
    """Glorot (Xavier) uniform: ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = compute_fans(shape)
    limit = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -limit, limit, dtype, rng)


def he_uniform(shape, dtype=None, rng=None) -> np.ndarray:
    """He (Kaiming) uniform for ReLU layers: ``U(-a, a)`` with ``a = sqrt(6 / fan_in)``."""
    fan_in, _ = compute_fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return uniform(shape, -limit, limit, dtype, rng)


def orthogonal(shape, gain=1.0, dtype=None, rng=None) -> np.ndarray:
    """A (semi-)orthogonal matrix, as Keras's ``Orthogonal``: the Q of the QR decomposition of a
    Gaussian matrix, sign-corrected so the draw is uniform over orthogonal matrices. Leading axes
    are flattened into rows; for ``rows < cols`` the rows are orthonormal, else the columns."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal: needs a shape with at least 2 axes, got {shape}")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    cols = shape[-1]
    a = _rng(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(_dtype(dtype))


def zeros(shape, dtype=None) -> np.ndarray:
    return np.zeros(tuple(shape), _dtype(dtype))


def ones(shape, dtype=None) -> np.ndarray:
    return np.ones(tuple(shape), _dtype(dtype))


def constant(shape, value, dtype=None) -> np.ndarray:
    return np.full(tuple(shape), value, _dtype(dtype))
