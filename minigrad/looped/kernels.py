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
    """out (+)= a @ b; a (m, k), b (k, n)."""
    m, k = a.shape
    n = b.shape[1]
    if m * k * n > SMALL:
        if acc:
            out += np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
        else:
            np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
        return
    if not acc:
        out[:] = 0
    for i in range(m):
        for p in range(k):
            aip = a[i, p]
            for j in range(n):
                out[i, j] += aip * b[p, j]


@njit(cache=True, nogil=True, error_model="numpy")
def mm_nt(g, b, out, acc):
    """out (+)= g @ b.T; g (m, n), b (k, n): the gradient of a in a @ b."""
    m, n = g.shape
    k = b.shape[0]
    if m * k * n > SMALL:
        r = np.dot(np.ascontiguousarray(g), np.ascontiguousarray(b).T)
        if acc:
            out += r
        else:
            out[:] = r
        return
    if not acc:
        out[:] = 0
    for i in range(m):
        for j in range(n):
            gij = g[i, j]
            for p in range(k):
                out[i, p] += gij * b[p, j]


@njit(cache=True, nogil=True, error_model="numpy")
def mm_tn(a, g, out, acc):
    """out (+)= a.T @ g; a (m, k), g (m, n): the gradient of b in a @ b."""
    m, k = a.shape
    n = g.shape[1]
    if m * k * n > SMALL:
        r = np.dot(np.ascontiguousarray(a).T, np.ascontiguousarray(g))
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
                out[p, j] += aip * g[i, j]
