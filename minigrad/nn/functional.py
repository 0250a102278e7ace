"""Losses and dropout as functions, built from Tensor ops only (no hand-written gradients).

Every loss takes ``reduction``: ``'mean'`` (the default: the mean over all elements), ``'sum'``,
or ``'none'`` (the per-element losses, in the input's shape). Targets must have the input's
shape exactly (no broadcasting: a ``(n, 1)`` prediction against an ``(n,)`` target is almost
always a bug). A target of another dtype is cast to the input's, whether or not it requires
grad (the cast is recorded, so its gradient comes back in its own dtype), as the layers do.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..functional import log_softmax, logsumexp, softmax
from ..random import get_rng
from ..tensor import Tensor

__all__ = ["mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "dropout", "relu", "tanh", "sigmoid", "gelu", "leaky_relu", "layer_norm", "softmax", "log_softmax",
           "logsumexp", "REDUCTIONS"]

relu, tanh, sigmoid = ops.relu, ops.tanh, ops.sigmoid

_SQRT_HALF = 0.5 ** 0.5
_SQRT_2_OVER_PI = (2 / np.pi) ** 0.5


def gelu(x, approximate: str = "none") -> Tensor:
    """``x * Phi(x)``, Phi the standard normal CDF: ``0.5 x (1 + erf(x / sqrt 2))`` (PyTorch's
    default), or with ``approximate="tanh"`` ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if approximate == "none":
        return 0.5 * x * (1.0 + ops.erf(x * _SQRT_HALF))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + ops.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def leaky_relu(x, negative_slope: float = 0.01) -> Tensor:
    """``x`` where positive, ``negative_slope * x`` elsewhere (the gradient at 0 is the slope, as PyTorch's)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    return ops.where(ops.compare(x, 0.0, op="gt"), x, x * negative_slope)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` axes to mean 0 and (biased) variance 1,
    ``(x - mean) / sqrt(var + eps)``, then scale by ``weight`` and shift by ``bias`` if given."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    shape = tuple(normalized_shape)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end in normalized_shape {shape}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    centred = x - x.mean(axes, keepdims=True)
    y = centred / ((centred * centred).mean(axes, keepdims=True) + eps).sqrt()
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, where: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(loss, reduction, where):
    if reduction == "mean":
        if loss.size == 0:        # an empty batch: a NaN loss would poison every parameter
            raise ValueError(f"{where}: reduction='mean' of an empty batch (shape {loss.shape}) is undefined; "
                             f"skip empty batches, or use reduction='sum'")
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _float_input(x, where):
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{where}: input must have a floating-point dtype, got {x.dtype}")
    return x


def _float_target(target, input, where):
    """The target as a Tensor of the input's shape and dtype (cast by a recorded op if needed)."""
    if not isinstance(target, Tensor):
        target = Tensor(np.asarray(target))
    if target.dtype.kind not in "biuf":
        raise TypeError(f"{where}: target must be numeric, got dtype {target.dtype}")
    if target.dtype != input.dtype:
        target = ops.astype(target, dtype=input.dtype)
    if target.shape != input.shape:
        raise ValueError(f"{where}: input shape {input.shape} and target shape {target.shape} differ "
                         f"(losses do not broadcast; reshape one of them)")
    return target


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Squared error ``(input - target) ** 2``, reduced."""
    check_reduction(reduction, "mse_loss")
    input = _float_input(input, "mse_loss")
    target = _float_target(target, input, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def binary_cross_entropy(input, target, reduction: str = "mean", eps: float = 1e-12) -> Tensor:
    """``-(y log p + (1 - y) log(1 - p))`` for probabilities ``p = input`` in [0, 1].

    ``p`` and ``1 - p`` are clipped below at ``eps`` before the log, so a saturated prediction
    gives a finite loss (at most ``-log(eps)``, about 27.6) and a zero, not NaN, gradient where
    clipped. PyTorch instead clamps each log at -100. For logits prefer
    :func:`binary_cross_entropy_with_logits`, which needs no clipping.
    """
    where = "binary_cross_entropy"
    check_reduction(reduction, where)
    p = _float_input(input, where)
    y = _float_target(target, p, where)
    if p.size and not (p.data.min() >= 0 and p.data.max() <= 1):      # NaN fails both, as it should
        bad = "NaN" if np.isnan(p.data).any() else f"values in [{p.data.min()}, {p.data.max()}]"
        raise ValueError(f"{where}: input must be probabilities in [0, 1], got {bad} "
                         f"(for logits use binary_cross_entropy_with_logits)")
    loss = -(y * p.clip(lo=eps).log() + (1 - y) * (1 - p).clip(lo=eps).log())
    return _reduce(loss, reduction, where)


def binary_cross_entropy_with_logits(input, target, reduction: str = "mean") -> Tensor:
    """``binary_cross_entropy(sigmoid(x), y)`` computed from logits ``x`` without overflow.

    Mathematically ``max(x, 0) - x y + log(1 + exp(-|x|))``. It is written as
    ``softplus(x) - x y`` with ``softplus(x) = log(exp(-m) + exp(x - m)) + m``, ``m = max(x, 0)``
    held constant: the same value, exp never sees a positive argument (finite at x = +-1000), and
    the gradient is exactly ``sigmoid(x) - y`` everywhere, including x = 0, where the |x| form's
    subgradients (relu'(0) = sign(0) = 0) would give ``-y``.
    """
    where = "binary_cross_entropy_with_logits"
    check_reduction(reduction, where)
    x = _float_input(input, where)
    y = _float_target(target, x, where)
    m = np.maximum(x.data, 0)
    softplus = ((x - m).exp() + np.exp(-m)).log() + m
    return _reduce(softplus - x * y, reduction, where)


def cross_entropy(logits, target, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy with integer class targets: ``-log_softmax(logits)[..., target]``.

    ``logits`` has shape ``S + (C,)`` (classes on the last axis, as Keras's
    ``sparse_categorical_crossentropy``; PyTorch puts them on axis 1, which is the same for 2-D
    input), ``target`` integer class indices of shape ``S`` with values in ``[0, C)``.
    """
    where = "cross_entropy"
    check_reduction(reduction, where)
    z = _float_input(logits, where)
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{where}: target must hold integer class indices, got dtype {t.dtype} "
                        f"(for one-hot or soft targets, use -(y * log_softmax(logits)).sum(-1))")
    if z.ndim == 0 or t.shape != z.shape[:-1]:
        raise ValueError(f"{where}: logits of shape {z.shape} need a target of shape {z.shape[:-1]} "
                         f"(classes on the last axis), got {t.shape}")
    c = z.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"{where}: target values must be class indices in [0, {c}), got "
                         f"[{t.min()}, {t.max()}]")
    logp = log_softmax(z, axis=-1).reshape(-1, c)
    picked = logp[np.arange(t.size), t.reshape(-1)].reshape(t.shape)
    return _reduce(-picked, reduction, where)


def dropout(x, p: float = 0.5, training: bool = True, rng=None) -> Tensor:
    """Inverted dropout (see :class:`minigrad.nn.Dropout`): the identity unless ``training``."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be a probability in [0, 1), got {p!r}")
    x = x if isinstance(x, Tensor) else Tensor(x)
    if not training or p == 0:
        return x
    rng = get_rng() if rng is None else rng
    keep = rng.random(x.shape) >= p
    return x * (keep * (1.0 / (1.0 - p))).astype(x.dtype)
