"""Tracing: run a scan body once, on step 0, and record the primitives it applies as a Program.

The body runs eagerly under ``no_grad`` (no vjp closure is built: nothing is kept of the
step-0 arrays), while ``engine.apply`` reports every primitive it runs to the active
``Recorder``. Tensors the body reads from outside become ``read`` variables; numbers and arrays
passed to ops become ``Const`` operands. Which variables need a gradient is derived from the
program, not from the eager run. No source text is involved.
"""
from __future__ import annotations

import numpy as np

from ..engine import is_grad_enabled, no_grad
from ..tensor import Tensor, _state
from .program import Const, Eqn, Program, Var, _freeze

__all__ = ["Traced", "trace", "flatten", "unflatten"]


class Recorder:
    """The ``_state.trace`` of a running trace: maps Tensors to Vars and collects equations."""

    def __init__(self):
        self.var_of = {}          # id(tensor) -> Var; the tensors are kept alive in self.alive
        self.alive = []
        self.reads = []           # (Var, Tensor) for tensors read from outside the body
        self.eqns = []
        self.key = []             # the structure of each equation, as it is recorded

    def new(self, t, role):
        v = Var(len(self.alive), t._data.shape, t._data.dtype, role)
        self.var_of[id(t)] = v
        self.alive.append(t)
        return v

    def var(self, t):
        v = self.var_of.get(id(t))
        if v is None:
            v = self.new(t, "read")
            self.reads.append((v, t))
        return v

    def is_traced(self, t):
        v = self.var_of.get(id(t))
        return v is not None and v.role != "read"

    def record(self, prim, args, kwargs, out):
        inputs = tuple([self.var(a) if isinstance(a, Tensor) else Const(a) for a in args])
        static = tuple(sorted([(k, v) for k, v in kwargs.items() if k != "needs_grad"]))
        v = self.new(out, "local")
        self.key.append((prim, tuple([x.id if type(x) is Var else x.key() for x in inputs]), _freeze(static),
                         v.shape, v.dtype))
        self.eqns.append(Eqn(prim, inputs, static, v, origin=len(self.eqns)))


def flatten(tree, what):
    """A Tensor or a tuple/list of them -> (list of Tensors, structure)."""
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        return [_tensor(t, what) for t in tree], len(tree)
    return [_tensor(tree, what)], -1


def unflatten(flat, struct):
    if struct is None:
        return None
    return flat[0] if struct == -1 else tuple(flat)


def _tensor(t, what):
    if isinstance(t, Tensor):
        return t
    if isinstance(t, (np.ndarray, float, int, np.generic)):
        return Tensor(t)
    raise TypeError(f"scan: {what} must be Tensors (or a tuple of them); got {type(t).__name__}")


class Traced:
    """A trace's result: the program as recorded (no passes applied; which variables need a
    gradient is not marked yet: ``marked()``), the Tensors its ``read`` variables stand for (in
    order), the structure of the ys the body returns, and ``key``: the program's structure and
    what needs a gradient, equal for two traces exactly when one compiled program serves both."""

    __slots__ = ("program", "read_tensors", "ys_struct", "key", "seeds")

    def __init__(self, program, read_tensors, ys_struct, key, seeds):
        self.program, self.read_tensors, self.ys_struct, self.key, self.seeds = (program, read_tensors, ys_struct,
                                                                                  key, seeds)

    def marked(self):
        """The program with every variable's ``requires_grad``."""
        return _requires_grad(self.program, self.seeds)


def trace(fn, init, xs, carry_struct, xs_struct) -> Traced:
    """Trace ``fn(carry, x_t) -> (carry, y_t)`` on step 0 of ``xs`` (lists of Tensors)."""
    rec = Recorder()
    carry_in = [Tensor(c._data) for c in init]
    x_in = [Tensor(x._data[0]) for x in xs]
    carry_vars = [rec.new(t, "carry") for t in carry_in]
    x_vars = [rec.new(t, "x") for t in x_in]
    prev = _state.trace
    _state.trace = rec
    try:
        with no_grad():
            out = fn(unflatten(carry_in, carry_struct), unflatten(x_in, xs_struct))
    finally:
        _state.trace = prev
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"scan: fn must return a pair (carry, y); got {type(out).__name__}")
    new_carry, struct = flatten(out[0], "the carry fn returns")
    if struct != carry_struct:
        raise TypeError(f"scan: fn returned a carry of {len(new_carry)} tensors (structure {struct}), "
                        f"but init has {len(init)} (structure {carry_struct})")
    for j, (a, b) in enumerate(zip(init, new_carry)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise TypeError(f"scan: carry {j} must keep its shape and dtype: init is {a.shape} {a.dtype}, "
                            f"fn returned {b.shape} {b.dtype}")
    ys, ys_struct = flatten(out[1], "the ys fn returns")
    carry_out = [rec.var(t) for t in new_carry]
    ys_out = [rec.var(t) for t in ys]
    grad = is_grad_enabled()
    seeds = {v.id: grad and t.requires_grad for v, t in rec.reads}
    seeds.update({v.id: grad and t.requires_grad for v, t in zip(x_vars, xs)})
    seeds.update({v.id: grad and t.requires_grad for v, t in zip(carry_vars, init)})
    prog = Program(tuple(carry_vars), tuple(x_vars), tuple(v for v, _ in rec.reads), tuple(rec.eqns),
                   tuple(carry_out), tuple(ys_out))
    head = tuple([(v.role, v.shape, v.dtype, seeds[v.id]) for v in (*carry_vars, *x_vars, *prog.reads)])
    key = (head, tuple(rec.key), tuple([v.id for v in carry_out]), tuple([v.id for v in ys_out]))
    return Traced(prog, [t for _, t in rec.reads], ys_struct, key, seeds)


def _requires_grad(prog, seeds):
    """Mark which variables need a gradient: a float output of an op with such an input. A carry
    needs one if its initial value does or the step makes it so (a fixed point over the carry)."""
    rg = dict(seeds)
    while True:
        for e in prog.eqns:
            rg[e.out.id] = e.out.dtype.kind == "f" and any(rg[v.id] for v in e.vars_in())
        changed = False
        for c_in, c_out in zip(prog.carry_in, prog.carry_out):
            if rg.get(c_out.id) and not rg[c_in.id] and c_in.dtype.kind == "f":
                rg[c_in.id] = changed = True
        if not changed:
            break
    new = {}

    def mark(v):
        if isinstance(v, Const):
            return v
        if v.id not in new:
            new[v.id] = Var(v.id, v.shape, v.dtype, v.role, bool(rg.get(v.id)))
        return new[v.id]
    eqns = tuple(e.but(inputs=tuple(mark(x) for x in e.inputs), out=mark(e.out)) for e in prog.eqns)
    return Program(tuple(map(mark, prog.carry_in)), tuple(map(mark, prog.xs_in)), tuple(map(mark, prog.reads)),
                   eqns, tuple(map(mark, prog.carry_out)), tuple(map(mark, prog.ys_out)))
