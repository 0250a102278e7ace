"""The looped program: what one step of a scan body does, as data.

A ``Program`` is a list of equations over typed variables, as ``jax.make_jaxpr`` shows a
function. Each ``Var`` has a shape and dtype (per step: a step input or a hoisted value has a
leading time axis at run time that its ``shape`` does not count) and a role:

* ``carry``: the carry entering the step;
* ``x``: the step's slice of an ``xs`` input;
* ``read``: a tensor the body reads from outside (a parameter), the same at every step;
* ``local``: an equation's output.

Each ``Eqn`` applies one primitive to variables and constants (a ``Const`` holds a number or an
array that is not a Tensor: its value is bound at every call, never compiled in) with static
keyword arguments, and has a ``stage``: ``once`` (reads only ``read`` values and constants: run
once per call), ``hoisted`` (reads no carry: run once on all steps stacked) or ``loop``.
Passes (``passes.py``) map a program to a new one; backends (``interpret.py``, ``codegen.py``)
run it. Programs are immutable: a compiled one can be shared by threads.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Var", "Const", "Eqn", "Program"]

ROLES = ("carry", "x", "read", "local")
STAGES = ("once", "hoisted", "loop")


@dataclass(frozen=True, eq=False)
class Var:
    """One value of the step: per-step shape and dtype, role, and whether it needs a gradient."""
    id: int
    shape: tuple
    dtype: np.dtype
    role: str
    requires_grad: bool = False

    def __repr__(self):
        return _name(self)


@dataclass(frozen=True, eq=False)
class Const:
    """A non-Tensor operand: its value is bound at every call (only its type, shape and dtype
    are part of the program's structure)."""
    value: object

    def key(self):
        v = self.value
        if isinstance(v, np.ndarray):
            return ("array", v.shape, v.dtype)
        if isinstance(v, np.generic):
            return ("scalar", v.dtype)
        return type(v)


@dataclass(frozen=True, eq=False)
class Eqn:
    """``out = prim(*inputs, **static)``. ``deferred``: the operand positions whose gradient is
    not taken per step but once after the loop (see ``passes.defer``)."""
    prim: object
    inputs: tuple
    static: tuple            # sorted (name, value) pairs
    out: Var
    stage: str = "loop"
    deferred: tuple = ()

    @property
    def static_dict(self):
        return dict(self.static)

    def vars_in(self):
        return [v for v in self.inputs if isinstance(v, Var)]


@dataclass(frozen=True, eq=False)
class Program:
    """A traced step: inputs by role, equations, and what the step returns."""
    carry_in: tuple
    xs_in: tuple
    reads: tuple
    eqns: tuple
    carry_out: tuple
    ys_out: tuple
    passes: tuple = field(default=())       # names of the passes applied, in order

    def replace(self, **changes):
        return replace(self, **changes)

    def consts(self):
        """Every Const operand, in equation order (the values a call binds)."""
        return [c for e in self.eqns for c in e.inputs if isinstance(c, Const)]

    def key(self):
        """The program's structure: equal for two traces exactly when the same code runs them."""
        ids = {}
        for v in (*self.carry_in, *self.xs_in, *self.reads):
            ids[v.id] = len(ids)

        def ref(x):
            if isinstance(x, Const):
                return ("const", x.key())
            return ids[x.id]
        head = tuple((v.role, v.shape, v.dtype, v.requires_grad) for v in (*self.carry_in, *self.xs_in, *self.reads))
        body = []
        for e in self.eqns:
            ins = tuple(ref(x) for x in e.inputs)
            ids[e.out.id] = len(ids)
            body.append((e.prim, ins, _freeze(e.static), e.out.shape, e.out.dtype, e.out.requires_grad,
                         e.stage, e.deferred))
        return (head, tuple(body), tuple(ref(v) for v in self.carry_out), tuple(ref(v) for v in self.ys_out))

    def __str__(self):
        return format_program(self)


_ATOMS = (bool, int, float, str, type(None), type(Ellipsis))


def _freeze(v):
    """A hashable stand-in for a static argument, equal exactly when code folding it in would be
    the same (arrays count by shape and dtype: their values are bound per call)."""
    if isinstance(v, _ATOMS) or isinstance(v, np.dtype):
        return (type(v), v)
    if isinstance(v, tuple):
        return tuple(_freeze(e) for e in v)
    if isinstance(v, slice):
        return (slice, _freeze(v.start), _freeze(v.stop), _freeze(v.step))
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype)
    if isinstance(v, np.generic):
        return ("scalar", v.dtype, v.item())
    if isinstance(v, type):
        return ("type", v)
    return ("object", type(v), repr(v))


# ---------------------------------------------------------------------------- the listing

def _name(v):
    prefix = {"carry": "c", "x": "x", "read": "w", "local": "v"}[v.role]
    return f"{prefix}{v.id}"


def _type(v, stacked=False):
    dims = ("T",) if stacked else ()
    dims += tuple(str(n) for n in v.shape)
    short = {"float32": "f32", "float64": "f64", "float16": "f16", "bool": "bool", "int64": "i64", "int32": "i32"}
    return f"{short.get(v.dtype.name, v.dtype.name)}[{','.join(dims)}]"


def _operand(x):
    if isinstance(x, Var):
        return _name(x)
    v = x.value
    if isinstance(v, np.ndarray):
        return f"const<{v.dtype.name}{list(v.shape)}>"
    return repr(v)


def _static(e):
    parts = [f"{k}={v!r}" for k, v in e.static]
    return (", " + ", ".join(parts)) if parts else ""


def _line(e, stacked):
    args = ", ".join(_operand(x) for x in e.inputs)
    return f"{_name(e.out)}: {_type(e.out, stacked)} = {e.prim.name}({args}{_static(e)})"


def format_program(p: Program) -> str:
    """A readable listing: the inputs, what runs once before the loop, the forward loop body,
    the reverse loop and what is deferred after it."""
    lines = ["scan program"]
    lines.append("  carry:  " + ", ".join(f"{_name(v)}: {_type(v)}" for v in p.carry_in))
    if p.xs_in:
        lines.append("  xs:     " + ", ".join(f"{_name(v)}: {_type(v, True)}" for v in p.xs_in))
    if p.reads:
        lines.append("  reads:  " + ", ".join(f"{_name(v)}: {_type(v)}" for v in p.reads))
    once = [e for e in p.eqns if e.stage == "once"]
    hoisted = [e for e in p.eqns if e.stage == "hoisted"]
    loop = [e for e in p.eqns if e.stage == "loop"]
    if once or hoisted:
        lines.append("before the loop (once per call; hoisted ops on all T steps at once):")
        lines += [f"  {_line(e, False)}" for e in once]
        lines += [f"  {_line(e, True)}" for e in hoisted]
    lines.append("forward loop, for t in 0 .. T-1:")
    lines += [f"  {_line(e, False)}" for e in loop] or ["  (nothing)"]
    lines.append("  carry <- (" + ", ".join(_name(v) for v in p.carry_out) + ")"
                 + ("   ys[t] <- (" + ", ".join(_name(v) for v in p.ys_out) + ")" if p.ys_out else ""))
    grads = [e for e in loop if e.out.requires_grad]
    if grads:
        lines.append("reverse loop, for t in T-1 .. 0:")
        for e in reversed(grads):
            wrt = [(i, x) for i, x in enumerate(e.inputs) if isinstance(x, Var) and x.requires_grad]
            now = [_name(x) for i, x in wrt if i not in e.deferred]
            later = [_name(x) for i, x in wrt if i in e.deferred]
            text = f"  vjp {e.prim.name}: d{_name(e.out)} -> " + (", ".join(f"d{n}" for n in now) or "nothing")
            if later:
                text += "   (d" + ", d".join(later) + " deferred)"
            lines.append(text)
    after = [(e, i) for e in loop for i in e.deferred]
    back = [e for e in (*hoisted, *once) if e.out.requires_grad]
    if after or back:
        lines.append("after the loop:")
        for e, i in after:
            other = _operand(e.inputs[1 - i])
            lines.append(f"  d{_name(e.inputs[i])} += one {e.prim.name} vjp over all steps "
                         f"(the stacked {other} and d{_name(e.out)})")
        for e in reversed(back):
            wrt = [_name(x) for x in e.inputs if isinstance(x, Var) and x.requires_grad]
            lines.append(f"  vjp {e.prim.name}{' (all steps)' if e.stage == 'hoisted' else ''}: "
                         f"d{_name(e.out)} -> " + ", ".join(f"d{n}" for n in wrt))
    return "\n".join(lines)
