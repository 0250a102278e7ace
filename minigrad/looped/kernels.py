"""The product the compiled loops call (numba; imported only by the generated code).

A per-step product of a small RNN is a few hundred multiply-adds: a call into BLAS costs more
than the arithmetic, so the generator writes products up to ``jit.SMALL`` multiply-adds as loop
nests in place; larger ones call ``mm``, which hands them to BLAS. ``acc``: add into ``out``
instead of overwriting it.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def mm(a, b, out, acc):
    """out (+)= a @ b through BLAS; a (m, k), b (k, n), of any layout: the vjps pass transposed
    views (``g @ b.T``, ``a.T @ g``)."""
    r = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
    if acc:
        out += r
    else:
        out[:] = r
