"""Compare analytic gradients with central finite differences."""
from __future__ import annotations

import warnings

import numpy as np

from .engine import no_grad
from .tensor import Tensor

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference one."""


def _outputs(fn, inputs):
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for j, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: output {j} of fn is a {type(o).__name__}, not a Tensor")
    return outs


def _numeric(fn, leaves, i, direction, eps):
    """d outputs / d inputs[i] along ``direction`` by central differences (one pair of forwards)."""
    x = leaves[i]
    base = x._data
    try:
        with no_grad():           # perturbed in the input's own dtype: a float32 layer refuses float64 input
            x._data = (base + eps * direction).astype(base.dtype, copy=False)
            plus = [o.data.astype(np.float64) for o in _outputs(fn, leaves)]
            x._data = (base - eps * direction).astype(base.dtype, copy=False)
            minus = [o.data.astype(np.float64) for o in _outputs(fn, leaves)]
    finally:
        x._data = base
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def _analytic_vjp(fn, leaves, j, cotangent):
    """cotangent^T d outputs[j] / d inputs, one array per input (zeros where no path)."""
    for x in leaves:
        x.grad = None
    outs = _outputs(fn, leaves)
    o = outs[j]
    if o.requires_grad:
        o.backward(np.asarray(cotangent, dtype=o.dtype).reshape(o.shape))
    return [np.zeros(x.shape) if x.grad is None else x.grad.astype(np.float64) for x in leaves]


def _index(flat, shape):
    return list(int(v) for v in np.unravel_index(flat, shape)) if shape else "[]"


# Defaults by the lowest precision checked: (eps, atol, rtol). The float32 step is near the cube
# root of its machine epsilon, the best a central difference can do; its tolerances are what
# that leaves of a check (about 3 significant digits).
_DEFAULTS = {np.dtype(np.float64): (1e-6, 1e-5, 1e-3), np.dtype(np.float32): (1e-3, 1e-3, 1e-2),
             np.dtype(np.float16): (1e-1, 1e-1, 1e-1)}


def gradcheck(fn, inputs, eps=None, atol=None, rtol=None, fast_mode=False, raise_exception=True) -> bool:
    """Check the gradients of ``fn`` at ``inputs`` against central finite differences.

    Parameters
    ----------
    fn : callable
        Takes Tensors, returns a Tensor or a tuple of Tensors.
    inputs : Tensor or sequence
        The inputs; those with ``requires_grad`` are checked. They are not modified: ``fn`` runs
        on fresh leaves holding the same data.
    eps, atol, rtol : float, optional
        Step of the central difference; ``|analytic - numeric| <= atol + rtol * |numeric|``. By
        default 1e-6, 1e-5 and 1e-3 in float64; 1e-3, 1e-3 and 1e-2 when an input is float32.
    fast_mode : bool
        Compare random projections ``u^T J v`` instead of full Jacobians: one backward and one
        pair of forwards per (output, input), however large they are.
    raise_exception : bool
        Raise :class:`GradcheckError` on a mismatch (naming output, input, element, analytic and
        numeric values); otherwise return False.

    Meant for float64. Lower-precision inputs (a float32 model) are checked in their own dtype,
    with a larger step and looser tolerances, and a warning that such a check is weak: rounding
    hides any error below about 1e-3 (as PyTorch's gradcheck warns).
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    leaves = [Tensor(x.data.copy(), requires_grad=x.requires_grad) if isinstance(x, Tensor) else x for x in inputs]
    checked = [i for i, x in enumerate(leaves) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    low = min((leaves[i].dtype for i in checked), key=lambda d: d.itemsize)
    defaults = _DEFAULTS.get(low, _DEFAULTS[np.dtype(np.float64)])
    eps, atol, rtol = (d if v is None else v for v, d in zip((eps, atol, rtol), defaults))
    if low.itemsize < 8:
        warnings.warn(f"gradcheck: checking in {low} (the inputs' dtype) with eps={eps}, atol={atol}, rtol={rtol}: "
                      f"a weak check, since rounding hides errors below about {atol}. Check in float64 for a "
                      f"strong one.", stacklevel=2)
    outs = _outputs(fn, leaves)
    rng = np.random.default_rng(0)

    for j, o in enumerate(outs):
        if o.dtype.kind != "f":
            continue
        for i in checked:
            x = leaves[i]
            if fast_mode:
                u = rng.standard_normal(o.shape)
                v = rng.standard_normal(x.shape)
                ana = np.array([np.sum(_analytic_vjp(fn, leaves, j, u)[i] * v)])
                num = np.array([np.sum(_numeric(fn, leaves, i, v, eps)[j] * u)])
                where = "projection u^T J v"
            else:
                num = np.empty((o.size, x.size))
                for c in range(x.size):
                    e = np.zeros(x.size)
                    e[c] = 1
                    num[:, c] = _numeric(fn, leaves, i, e.reshape(x.shape), eps)[j].ravel()
                ana = np.empty_like(num)
                for r in range(o.size):
                    e = np.zeros(o.size)
                    e[r] = 1
                    ana[r] = _analytic_vjp(fn, leaves, j, e)[i].ravel()
                where = None
            err = np.abs(ana - num) - (atol + rtol * np.abs(num))
            finite = np.isfinite(ana) & np.isfinite(num)     # NaN compares false: count it as a mismatch
            if np.any(err > 0) or not finite.all():
                k = int(np.argmax(np.where(finite, err, np.inf)))
                if where is None:
                    r, c = np.unravel_index(k, ana.shape)
                    where = f"d output{_index(r, o.shape)} / d input{_index(c, x.shape)}"
                a, n = ana.flat[k], num.flat[k]
                msg = (f"gradcheck: Jacobian mismatch for output {j} with respect to input {i}, at {where}: "
                       f"analytic {a:.10g}, numeric {n:.10g}, error {abs(a - n):.3g} "
                       f"(atol {atol}, rtol {rtol})")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    return True
