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

import numpy as np

__all__ = ["Var", "Const", "Eqn", "Program"]

ROLES = ("carry", "x", "read", "local")
STAGES = ("once", "hoisted", "loop")


class Var:
    """One value of the step: per-step shape and dtype, role, and whether it needs a gradient."""

    __slots__ = ("id", "shape", "dtype", "role", "requires_grad")

    def __init__(self, id, shape, dtype, role, requires_grad=False):
        self.id, self.shape, self.dtype, self.role, self.requires_grad = id, shape, dtype, role, requires_grad

    def __repr__(self):
        return _name(self)


class Const:
    """A non-Tensor operand: its value is bound at every call (only its type, shape and dtype
    are part of the program's structure)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def key(self):
        v = self.value
        if isinstance(v, np.ndarray):
            return ("array", v.shape, v.dtype)
        if isinstance(v, np.generic):
            return ("scalar", v.dtype)
        return type(v)


class Eqn:
    """``out = prim(*inputs, **static)`` (``static``: sorted (name, value) pairs). ``stage`` (see
    ``passes.stage``); ``deferred``: the operand positions whose gradient is not taken per step but
    once after the loop (``passes.defer``); ``origin``: its position in the trace, where each
    call's constants and static values are read."""

    __slots__ = ("prim", "inputs", "static", "out", "stage", "deferred", "origin")

    def __init__(self, prim, inputs, static, out, stage="loop", deferred=(), origin=None):
        self.prim, self.inputs, self.static, self.out = prim, inputs, static, out
        self.stage, self.deferred, self.origin = stage, deferred, origin

    def but(self, **changes):
        """A copy with some fields changed."""
        return _changed(self, changes)

    @property
    def static_dict(self):
        return dict(self.static)

    def vars_in(self):
        return [v for v in self.inputs if isinstance(v, Var)]


class Program:
    """A traced step: inputs by role, equations, what the step returns, and the names of the
    passes applied to it, in order."""

    __slots__ = ("carry_in", "xs_in", "reads", "eqns", "carry_out", "ys_out", "passes")

    def __init__(self, carry_in, xs_in, reads, eqns, carry_out, ys_out, passes=()):
        self.carry_in, self.xs_in, self.reads, self.eqns = carry_in, xs_in, reads, eqns
        self.carry_out, self.ys_out, self.passes = carry_out, ys_out, passes

    def replace(self, **changes):
        """A copy with some fields changed."""
        return _changed(self, changes)

    def rebind(self, traced):
        """This program (a compiled template) with the constants and static values of ``traced``,
        a program of the same structure just traced (read through each equation's origin)."""
        eqns = []
        for e in self.eqns:
            now = traced.eqns[e.origin]
            if any(type(x) is Const for x in now.inputs) or _holds_array(now.static):
                e = e.but(inputs=tuple([n if type(n) is Const else x for x, n in zip(e.inputs, now.inputs)]),
                          static=now.static)
            eqns.append(e)
        return self.replace(eqns=tuple(eqns))

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

    def compile(self, backend="auto"):
        """Compile this program now, ahead of its first run (a compiled backend's first compile
        can take seconds); ``mg.scan`` then finds it compiled. Returns the backend that runs it
        (its ``.fallback``, if present, says why it is not the one asked for)."""
        from .backends import get
        return get(self, backend)

    def __str__(self):
        return format_program(self)


def _changed(obj, changes):
    """A copy of a slotted, immutable ``obj`` (an Eqn, a Program) with ``changes``."""
    fields = {k: getattr(obj, k) for k in obj.__slots__}
    fields.update(changes)
    return type(obj)(**fields)


_ATOMS = (bool, int, float, str, type(None), type(Ellipsis))


def _holds_array(static):
    """Does a static value hold an array (bound per call: only its shape and dtype are structure)?"""
    for v in static:
        if isinstance(v, np.ndarray) or (isinstance(v, tuple) and _holds_array(v)):
            return True
    return False


def _freeze(v):
    """A hashable stand-in for a static argument, equal exactly when code folding it in would be
    the same (arrays count by shape and dtype: their values are bound per call)."""
    t = type(v)
    if t in _ATOM_TYPES:
        return (t, v)
    if t is tuple:
        return tuple([_freeze(e) for e in v])
    if t is slice:
        return (slice, _freeze(v.start), _freeze(v.stop), _freeze(v.step))
    if t is np.ndarray:
        return ("array", v.shape, v.dtype)
    if isinstance(v, np.dtype):
        return (np.dtype, v)
    if isinstance(v, np.generic):
        return ("scalar", v.dtype, v.item())
    if isinstance(v, type):
        return ("type", v)
    return ("object", t, repr(v))


_ATOM_TYPES = frozenset(_ATOMS)


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


def _index_part(v):
    if v is Ellipsis:
        return "..."
    if isinstance(v, slice):
        text = ("" if v.start is None else str(v.start)) + ":" + ("" if v.stop is None else str(v.stop))
        return text + ("" if v.step is None else f":{v.step}")
    if isinstance(v, np.ndarray):
        return f"<{v.dtype.name}{list(v.shape)}>"
    return repr(v)


def _static(e):
    parts = []
    for k, v in e.static:
        if k == "index":
            v = v if isinstance(v, tuple) else (v,)
            parts.append(f"[{', '.join(_index_part(i) for i in v)}]")
        else:
            parts.append(f"{k}={v!r}")
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
