"""What the generated loops call (numba; imported only by the generated code).

* ``mm``: a product above ``jit.SMALL`` multiply-adds, through BLAS. (Smaller ones are loop
  nests the generator writes in place: a call into BLAS costs more than their arithmetic.)
* ``exp32``, ``exp64``, ``tanh32``, ``tanh64``: ``exp`` and ``tanh`` as arithmetic LLVM can
  vectorise, inlined into the nests. numba's ``math.exp`` and ``math.tanh`` call the C library's
  scalar functions, about 4-10 ns an element (its LLVM has no vector math library here): 70% of
  a small LSTM step's forward. Accuracy against exactly rounded values (held to numpy by the tests):
  exp32 0.97 ulp (numpy's float32 exp: 2.4), tanh32 1.3 (numpy's 1.4), exp64 1.1 (numpy's
  0.7), tanh64 1.3 (numpy's 1.2); inf, NaN, -0.0, overflow and gradual underflow as numpy's.

``exp(x) = 2**k exp(r)``, ``k = round(x / ln 2)``, ``r = x - k ln 2`` with ln 2 in two parts (the
first exact times any k), ``|r| <= ln2 / 2``; ``exp(r)`` a polynomial (Cephes' for float32, Taylor
to degree 13 for float64); ``2**k`` from its exponent bits (``_pow2``), in two halves so that
results down to the subnormals are reached. ``tanh``: an odd polynomial (float32) or rational
function (float64), both Cephes', below |x| = 0.625; ``1 - 2 / (exp(2|x|) + 1)`` above. Every
branch is a select, so a nest of them stays one vector loop.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .diskcache import OPTIONS

_JIT = dict(cache=True, **OPTIONS)      # the generated loops' options: their error model is these functions'


@njit(**_JIT)
def mm(a, b, out, acc):
    """out (+)= a @ b through BLAS; a (m, k), b (k, n), of any layout: the vjps pass transposed
    views (``g @ b.T``, ``a.T @ g``)."""
    r = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
    if acc:
        out += r
    else:
        out[:] = r


def _pow2(bits, float_type, bias, mantissa):
    @intrinsic
    def pow2(typingctx, k):
        """``2.0 ** k`` for an integer ``k`` in the normal exponent range, from its bits."""
        width = types.int32 if bits == 32 else types.int64

        def codegen(context, builder, signature, args):
            exponent = builder.add(context.cast(builder, args[0], signature.args[0], width),
                                   ir.Constant(ir.IntType(bits), bias))
            return builder.bitcast(builder.shl(exponent, ir.Constant(ir.IntType(bits), mantissa)), float_type)
        return (types.float32 if bits == 32 else types.float64)(k), codegen
    return pow2


_pow2_32 = _pow2(32, ir.FloatType(), 127, 23)
_pow2_64 = _pow2(64, ir.DoubleType(), 1023, 52)
f32, f64 = np.float32, np.float64


@njit(inline="always", **_JIT)
def exp32(x):
    xc = min(max(x, f32(-104.0)), f32(89.0))          # beyond: 0 and inf, from the scaling
    ki = math.floor(xc * f32(1.44269504088896341) + f32(0.5))     # an int: llvm.floor, vectorised
    k = f32(ki)
    r = (xc - k * f32(0.693359375)) + k * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    p = (p * r * r + r) + f32(1.0)
    half = ki >> 1
    y = p * _pow2_32(half) * _pow2_32(ki - half)
    y = f32(np.inf) if x > f32(88.72283935546875) else y
    return x if x != x else y


@njit(inline="always", **_JIT)
def exp64(x):
    xc = min(max(x, -746.0), 710.0)
    ki = math.floor(xc * 1.4426950408889634 + 0.5)
    k = f64(ki)
    r = (xc - k * 0.6931467056274414) - k * 4.7493250390316726e-07
    p = 1.6059043836821613e-10                        # 1/13!, then Horner down to 1/0!
    p = p * r + 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    half = ki >> 1
    y = p * _pow2_64(half) * _pow2_64(ki - half)
    y = np.inf if x > 709.782712893384 else y
    return x if x != x else y


@njit(inline="always", **_JIT)
def tanh32(x):
    ax = abs(x)
    z = x * x
    small = ((((f32(-5.70498872745e-3) * z + f32(2.06390887954e-2)) * z - f32(5.37397155531e-2)) * z
              + f32(1.33314422036e-1)) * z - f32(3.33332819422e-1)) * z * ax + ax
    big = f32(1.0) - f32(2.0) / (exp32(ax + ax) + f32(1.0))
    r = small if ax < f32(0.625) else big
    return r if x > f32(0.0) else (-r if x < f32(0.0) else x)   # +-0 and NaN: x itself


@njit(inline="always", **_JIT)
def tanh64(x):
    ax = abs(x)
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3
    small = ax + ax * z * (p / q)
    big = 1.0 - 2.0 / (exp64(ax + ax) + 1.0)
    r = small if ax < 0.625 else big
    return r if x > 0.0 else (-r if x < 0.0 else x)   # +-0 and NaN: x itself
