"""Matrix products for the compiled loops (numba; imported only by the numba backend).

A per-step product of a small RNN is a few hundred multiply-adds: a call into BLAS costs more
than the arithmetic, so below ``SMALL`` multiply-adds the product is a loop nest (the innermost
loop over contiguous memory, which LLVM vectorises); above it, BLAS through ``np.dot``. ``acc``:
add into ``out`` instead of overwriting it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

SMALL = 1 << 12      # multiply-adds: above it BLAS is faster (measured in numba: 1x16x64 loop 0.08 us, BLAS 0.17;
#                      1x64x256 loop 1.17, BLAS 0.87; 4x32x128 loop 1.16, BLAS 0.44)


@njit(cache=True, nogil=True, error_model="numpy")
def mm(a, b, out, acc):
    """out (+)= a @ b; a (m, k), b (k, n), of any layout: the vjps pass transposed views
    (``g @ b.T``, ``a.T @ g``)."""
    m, k = a.shape
    n = b.shape[1]
    if m * k * n > SMALL:
        r = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
        if acc:
            out += r
        else:
            out[:] = r
        return
    if not acc:
        out[:] = 0
    for i in range(m):
        for p in range(k):
            aip = a[i, p]
            for j in range(n):
                out[i, j] += aip * b[p, j]
