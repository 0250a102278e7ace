"""Gradient utilities."""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "zero_grads"]


def _params(params):
    if callable(getattr(params, "parameters", None)):
        params = params.parameters()
    return [params] if isinstance(params, Tensor) else list(params)


def zero_grads(params, set_to_none: bool = True) -> None:
    """Forget the gradients of ``params``: ``grad = None`` (PyTorch's default), or with
    ``set_to_none=False`` fill existing gradients with zeros in place (a None grad stays None).
    What ``Module.zero_grad`` and ``Optimizer.zero_grad`` do."""
    for p in _params(params):
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        elif isinstance(p.grad, np.ndarray) and p.grad.flags.writeable:
            p.grad.fill(0)
        else:
            p.grad = np.zeros_like(p.grad)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale the gradients of ``params`` in place so their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is taken over all gradients as if
    concatenated into one vector; when it exceeds ``max_norm`` every gradient is multiplied by
    ``max_norm / (total_norm + 1e-6)``. Parameters whose ``grad`` is None are skipped.

    Parameters
    ----------
    params : Tensor, iterable of Tensors, or a Module
    max_norm : float
    norm_type : float
        The p of the p-norm; ``float('inf')`` for the largest absolute value.
    error_if_nonfinite : bool
        Raise if the total norm is NaN or inf (otherwise the gradients become NaN, as in torch).

    Returns
    -------
    float
        The total norm of the gradients before clipping.
    """
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0, got {norm_type}")
    grads = [p for p in _params(params) if p.grad is not None]
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(p.grad), initial=0.0)) for p in grads)
    else:
        total = sum(float(np.sum(np.abs(p.grad.astype(np.float64)) ** norm_type)) for p in grads) ** (1 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise FloatingPointError(f"clip_grad_norm_: the total norm of the gradients is {total}")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1:          # NaN too, as in torch
        for p in grads:
            p.grad = p.grad * np.asarray(coef, dtype=p.grad.dtype)
    return total
