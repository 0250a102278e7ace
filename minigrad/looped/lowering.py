"""What the compiled (numba) backend knows of each primitive: its math on one element.

The numpy backends run a primitive's own code; a compiled loop cannot call numpy per element,
so for each built-in elementwise primitive this table writes the forward and the vjp as
expressions on scalars (syntax trees, built with operators on ``E``): ``y = fwd(a, b)`` and
``(g_a, g_b) = vjp(g, y, a, b)``. They mirror ``ops.py`` exactly, down to its conventions
(sigmoid's clipping, the ties of maximum, power's slopes at 0); the corpus tests hold them to the
numpy backend. A primitive absent here (a user's, a reduction over several axes...) makes the
compiled backend hand the program to the numpy backend.

``snapshot_current()`` tells whether ``ops`` still binds the functions this table mirrors: a
rebinding of one (a test, a monkeypatch) makes the compiled backend step aside, as the numpy
backend re-reads what it inlined.
"""
from __future__ import annotations

import ast
import math

import numpy as np

from .. import ops

__all__ = ["E", "RULES", "Rule", "snapshot_current"]


def _node(x):
    return x.node if isinstance(x, E) else ast.Constant(x)


class E:
    """A scalar expression as a syntax tree, built with Python's operators."""

    __slots__ = ("node",)

    def __init__(self, node):
        self.node = node

    def _bin(self, op, other, swap=False):
        a, b = (_node(other), self.node) if swap else (self.node, _node(other))
        return E(ast.BinOp(a, op, b))

    def __add__(self, o): return self._bin(ast.Add(), o)
    def __radd__(self, o): return self._bin(ast.Add(), o, True)
    def __sub__(self, o): return self._bin(ast.Sub(), o)
    def __rsub__(self, o): return self._bin(ast.Sub(), o, True)
    def __mul__(self, o): return self._bin(ast.Mult(), o)
    def __rmul__(self, o): return self._bin(ast.Mult(), o, True)
    def __truediv__(self, o): return self._bin(ast.Div(), o)
    def __rtruediv__(self, o): return self._bin(ast.Div(), o, True)
    def __pow__(self, o): return self._bin(ast.Pow(), o)
    def __neg__(self): return E(ast.UnaryOp(ast.USub(), self.node))

    def _cmp(self, op, o):
        return E(ast.Compare(self.node, [op], [_node(o)]))

    def lt(self, o): return self._cmp(ast.Lt(), o)
    def le(self, o): return self._cmp(ast.LtE(), o)
    def gt(self, o): return self._cmp(ast.Gt(), o)
    def ge(self, o): return self._cmp(ast.GtE(), o)
    def eq(self, o): return self._cmp(ast.Eq(), o)
    def ne(self, o): return self._cmp(ast.NotEq(), o)


def call(fn, *args):
    """``fn(*args)``, ``fn`` a name the generated module binds (``math``'s and ``np``'s functions)."""
    name = ast.Attribute(ast.Name(fn.split(".")[0], ast.Load()), fn.split(".")[1], ast.Load()) if "." in fn \
        else ast.Name(fn, ast.Load())
    return E(ast.Call(name, [_node(a) for a in args], []))


def pick(cond, a, b):
    """``a if cond else b``."""
    return E(ast.IfExp(_node(cond), _node(a), _node(b)))


def both(a, b):
    return E(ast.BoolOp(ast.And(), [_node(a), _node(b)]))


def either(a, b):
    return E(ast.BoolOp(ast.Or(), [_node(a), _node(b)]))


class Rule:
    """``fwd(k, *operands) -> E``; ``vjp(k, g, y, *operands) -> one E or None per operand``, where
    ``k(value)`` is a literal in the dtype the primitive computes in (``k.floor``: sigmoid's clipping
    floor in it; ``k.bits``: "32" or "64", naming the vectorised ``exp`` and ``tanh`` of
    ``kernels.py``). ``static``: the static
    arguments the rule understands (anything else: not expressible). ``grad``: False for
    primitives whose output never carries a gradient."""

    __slots__ = ("fwd", "vjp", "static", "grad")

    def __init__(self, fwd, vjp, static=(), grad=True):
        self.fwd, self.vjp, self.static, self.grad = fwd, vjp, static, grad


def _sigmoid(k, x):
    # ops.sigmoid: 1 / (1 + exp(-max(x, floor))), the floor the most negative x whose exp(-x) is
    # finite; a NaN stays NaN (numpy's maximum propagates it)
    z = pick(x.lt(k.floor), k.floor, x)
    return k(1.0) / (k(1.0) + call(f"exp{k.bits}", -z))


def _max_slopes(k, g, a, b, first):
    # ops.maximum / ops.minimum: ties split evenly; a NaN passes the gradient to both operands
    lose_a, lose_b = (a.lt(b), a.gt(b)) if first else (a.gt(b), a.lt(b))
    tie = a.eq(b)
    return (g * pick(tie, k(0.5), pick(lose_a, k(0.0), k(1.0))),
            g * pick(tie, k(0.5), pick(lose_b, k(0.0), k(1.0))))


def _pow_vjp(k, g, y, a, b):
    slope = pick(b.eq(k(0.0)), k(0.0), b * a ** (b - k(1.0)))
    times_log = pick(both(a.eq(k(0.0)), b.ge(k(0.0))), k(0.0), y * call("math.log", a))
    return g * slope, g * times_log


def _sign(k, x):
    return pick(x.gt(k(0.0)), k(1.0), pick(x.lt(k(0.0)), k(-1.0), pick(x.eq(k(0.0)), k(0.0), x)))


def _clip(k, x, lo, hi):
    if lo is not None:
        x = pick(x.lt(k(lo)), k(lo), x)
    if hi is not None:
        x = pick(x.gt(k(hi)), k(hi), x)
    return x


def _clip_vjp(k, g, y, x, lo, hi):
    inside = None
    for bound, test in ((lo, x.ge), (hi, x.le)):
        if bound is not None:
            t = test(k(bound))
            inside = t if inside is None else both(inside, t)
    return (g if inside is None else pick(inside, g, k(0.0)),)


_COMPARE = {"eq": E.eq, "ne": E.ne, "lt": E.lt, "le": E.le, "gt": E.gt, "ge": E.ge}

RULES = {
    ops.add.prim: Rule(lambda k, a, b: a + b, lambda k, g, y, a, b: (g, g)),
    ops.subtract.prim: Rule(lambda k, a, b: a - b, lambda k, g, y, a, b: (g, -g)),
    ops.multiply.prim: Rule(lambda k, a, b: a * b, lambda k, g, y, a, b: (g * b, g * a), ("needs_grad",)),
    ops.divide.prim: Rule(lambda k, a, b: a / b, lambda k, g, y, a, b: (g / b, -g * y / b), ("needs_grad",)),
    ops.power.prim: Rule(lambda k, a, b: a ** b, _pow_vjp, ("needs_grad",)),
    ops.negative.prim: Rule(lambda k, x: -x, lambda k, g, y, x: (-g,)),
    ops.exp.prim: Rule(lambda k, x: call(f"exp{k.bits}", x), lambda k, g, y, x: (g * y,)),
    ops.log.prim: Rule(lambda k, x: call("math.log", x), lambda k, g, y, x: (g / x,)),
    ops.sqrt.prim: Rule(lambda k, x: call("math.sqrt", x), lambda k, g, y, x: (g / (y + y),)),
    ops.log1p.prim: Rule(lambda k, x: call("math.log1p", x), lambda k, g, y, x: (g / (k(1.0) + x),)),
    ops.expm1.prim: Rule(lambda k, x: call("math.expm1", x), lambda k, g, y, x: (g * (y + k(1.0)),)),
    ops.sin.prim: Rule(lambda k, x: call("math.sin", x), lambda k, g, y, x: (g * call("math.cos", x),)),
    ops.cos.prim: Rule(lambda k, x: call("math.cos", x), lambda k, g, y, x: (-g * call("math.sin", x),)),
    ops.erf.prim: Rule(lambda k, x: call("math.erf", x),
                       lambda k, g, y, x: (g * k(2 / math.sqrt(math.pi)) * call(f"exp{k.bits}", -x * x),)),
    ops.absolute.prim: Rule(lambda k, x: call("abs", x), lambda k, g, y, x: (g * _sign(k, x),)),
    ops.tanh.prim: Rule(lambda k, x: call(f"tanh{k.bits}", x), lambda k, g, y, x: (g * (k(1.0) - y * y),)),
    ops.sigmoid.prim: Rule(_sigmoid, lambda k, g, y, x: (g * (y - y * y),)),
    ops.relu.prim: Rule(lambda k, x: pick(x.lt(k(0.0)), k(0.0), x),
                        lambda k, g, y, x: (pick(x.gt(k(0.0)), g, k(0.0)),)),
    ops.maximum.prim: Rule(lambda k, a, b: pick(either(a.gt(b), a.ne(a)), a, b),
                           lambda k, g, y, a, b: _max_slopes(k, g, a, b, True)),
    ops.minimum.prim: Rule(lambda k, a, b: pick(either(a.lt(b), a.ne(a)), a, b),
                           lambda k, g, y, a, b: _max_slopes(k, g, a, b, False)),
    ops.clip.prim: Rule(_clip, _clip_vjp, ("lo", "hi")),
    ops.where.prim: Rule(lambda k, c, a, b: pick(c, a, b),
                         lambda k, g, y, c, a, b: (None, pick(c, g, k(0.0)), pick(c, k(0.0), g))),
    ops.compare.prim: Rule(lambda k, a, b, op: _COMPARE[op](a, b), None, ("op",), grad=False),
    ops.stop_gradient.prim: Rule(lambda k, x: x, None, grad=False),
    # the operand is read in the output's dtype; the gradient is stored in the operand's
    ops.astype.prim: Rule(lambda k, x, dtype: x, lambda k, g, y, x, dtype: (g,), ("dtype",)),
}

# the ops globals whose behaviour the table above writes out again
_MIRRORED = [(name, getattr(ops, name)) for name in ("_exp_floor", "_exp_floor_like", "_float", "_is_half",
                                                     "_pow_slope", "_times_log", "_erf_values", "_COMPARE")]


def snapshot_current() -> bool:
    """Does ``ops`` still bind every helper the table above mirrors? (Each backend checks its own
    primitives' functions too.)"""
    d = vars(ops)
    for name, obj in _MIRRORED:
        if d.get(name) is not obj:
            return False
    return True


def sigmoid_floor(dtype):
    """The clipping floor ops.sigmoid applies in ``dtype``."""
    return ops._exp_floor(ops._float(np.dtype(dtype)))
