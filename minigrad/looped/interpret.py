"""The interpreter backend: run a Program by calling its primitives, step by step.

It handles every primitive (the user's included) and is the reference the other backends are
tested against. The forward keeps each step's vjp closures; the backward runs them in reverse,
summing gradients with the engine's own bookkeeping (``GradTable``): one table per step for
the step's values, one across steps for the values read from outside (whose outer products are
multiplied out stacked, as the engine does for a parameter's uses).

A backend runs a call in segments of steps (``checkpoint``): ``forward(run, t0, t1, ...)``
returns the carry after step t1 - 1 and, when asked, the segment's tape; ``backward`` consumes
a tape in reverse. ``LoopedNode`` (``node.py``) orders the segments.
"""
from __future__ import annotations

import numpy as np

from ..gradients import GradTable, IndexedGrad
from ..tensor import _state
from .passes import batched_static
from .program import Program, Var

__all__ = ["Run", "Interpreter"]


def _needs(e, need):
    return tuple(need and isinstance(x, Var) and x.requires_grad for x in e.inputs)


def _call(e, operands, static, needs):
    if e.prim.wants_needs:
        static = dict(static, needs_grad=needs)
    out, vjp = e.prim.fn(*operands, **static)
    return (out if type(out) is np.ndarray else np.asarray(out)), vjp


def _reverse(tape, table, cross, env, step, lead):
    """Run a tape's vjps in reverse: each output's summed gradient in, its inputs' gradients into
    ``table`` (shapes with the ``lead`` axes: () per step, (n,) stacked), or into ``cross`` for the
    values read from outside the loop (summed over every step, outer products kept)."""
    for e, vjp in reversed(tape):
        g, _ = table.pop(e.out.id)
        if g is None:
            continue
        for x, gi in zip(e.inputs, vjp(g)):
            if gi is None or not isinstance(x, Var) or not x.requires_grad:
                continue
            if x.id in env:
                cross.add(x.id, gi, x.shape, x.dtype, e.prim.name, step, True)
            else:
                table.add(x.id, gi, lead + x.shape, x.dtype, e.prim.name)


class _Watch:
    """The recorder's view of a call's cross-step table: its keys are read variables' ids."""

    def __init__(self, recorder, read_vars, read_tensors):
        self.recorder = recorder
        self.watch = {v.id: t for v, t in zip(read_vars, read_tensors) if t in recorder.watch}

    def add(self, tensor, op, step, grad):
        self.recorder.add(tensor, op, step, grad)


class Run:
    """One call's state: the values read from outside and computed once, the tables of the
    gradients that outlive a segment, and the once-stage tape."""

    def __init__(self, prog: Program, reads, xs, T, need, recorder=None, read_tensors=(), once=True):
        self.prog, self.xs, self.T, self.need = prog, xs, T, need
        self.env = {v.id: a for v, a in zip(prog.reads, reads)}
        anomaly = _state.anomaly
        watch = _Watch(recorder, prog.reads, read_tensors) if recorder is not None else None
        self.cross = GradTable(anomaly, watch)       # reads and once-values, summed over all steps
        self.xgrads = GradTable(anomaly)              # stacked gradients of the xs
        self.once_tape = []
        for e in prog.eqns if once else ():       # once=False: the caller knows there is no once stage
            if e.stage == "once":
                operands = [self.env[x.id] if isinstance(x, Var) else x.value for x in e.inputs]
                out, vjp = _call(e, operands, e.static_dict, _needs(e, need))
                self.env[e.out.id] = out
                if need and e.out.requires_grad:
                    self.once_tape.append((e, vjp))

    def finish(self, g_carry):
        """The gradients of init, of each xs and of each read tensor, once every segment is done."""
        prog, cross = self.prog, self.cross
        for e, vjp in reversed(self.once_tape):
            g, _ = cross.pop(e.out.id)
            if g is not None:
                for x, gi in zip(e.inputs, vjp(g)):
                    if gi is not None and isinstance(x, Var) and x.requires_grad:
                        cross.add(x.id, gi, x.shape, x.dtype, e.prim.name, None, True)
        g_xs = [self.xgrads.pop(x.id)[0] if x.requires_grad else None for x in prog.xs_in]
        g_reads = [cross.pop(v.id)[0] if v.requires_grad else None for v in prog.reads]
        return list(g_carry), g_xs, g_reads


class Interpreter:
    """Runs any program: each equation is a call of its primitive."""

    name = "interpret"
    owns_carry = False          # is the final carry always a fresh array of its own? (see node._own_carry)

    def __init__(self, prog: Program):
        # a call runs by positions, not these equations: its own program is this one rebound to
        # the call's constants and static values, with its equations at the same positions
        self._hoisted_at = [i for i, e in enumerate(prog.eqns) if e.stage == "hoisted"]
        self._loop_at = [i for i, e in enumerate(prog.eqns) if e.stage == "loop"]
        self.hoisted = [prog.eqns[i] for i in self._hoisted_at]
        self.loop = [prog.eqns[i] for i in self._loop_at]
        self.once = any(e.stage == "once" for e in prog.eqns)
        self.stacked = {e.out.id for e in self.hoisted} | {x.id for x in prog.xs_in}
        self.vars = {v.id: v for v in (*prog.xs_in, *(e.out for e in prog.eqns))}
        self.loop_reads_stacked = sorted({x.id for e in self.loop for x in e.vars_in() if x.id in self.stacked}
                                         | {v.id for v in (*prog.carry_out, *prog.ys_out) if v.id in self.stacked})

    def start(self, prog, reads, xs, T, need):
        return Run(prog, reads, xs, T, need, once=self.once)

    def fresh(self):
        """Whether this backend may still run its program (it captured nothing: always)."""
        return True

    def outputs(self, prog, T, carry):
        """The (T, ...) arrays the ys go into, and the carry to start from."""
        return [np.empty((T,) + v.shape, v.dtype) for v in prog.ys_out], carry

    def forward(self, run: Run, t0, t1, carry, keep, Y=None):
        """Steps t0 .. t1-1 from ``carry``; writes ys rows into ``Y`` (if given). Returns the new
        carry and, if ``keep``, the segment's tape."""
        need = run.need and keep
        H, htape = self._hoist(run, t0, t1, need)
        carry, steps = self._loop(run, H, t0, t1, carry, need, Y)
        return carry, ((H, htape, steps) if keep else None)

    def backward(self, run: Run, t0, t1, tape, g_carry, GY):
        """Reverse through steps t1-1 .. t0 of a kept segment; returns the carry's gradient
        entering step t0."""
        H, htape, steps = tape
        hgrads = GradTable(_state.anomaly)     # stacked gradients of hoisted values and xs, this segment
        g_carry = self._loop_backward(run, H, t0, t1, steps, g_carry, GY, hgrads)
        self._hoisted_backward(run, t0, t1, htape, hgrads)
        return g_carry

    def _hoist(self, run, t0, t1, need):
        """The hoisted equations, once on all steps of the segment stacked."""
        prog = run.prog
        H = {x.id: X[t0:t1] for x, X in zip(prog.xs_in, run.xs)}
        htape = []
        for i in self._hoisted_at:
            e = prog.eqns[i]
            stacked = [isinstance(x, Var) and x.id in H for x in e.inputs]
            operands = [(H[x.id] if s else run.env[x.id]) if isinstance(x, Var) else x.value
                        for x, s in zip(e.inputs, stacked)]
            out, vjp = _call(e, operands, batched_static(e, stacked), _needs(e, need))
            H[e.out.id] = out
            if need and e.out.requires_grad:
                htape.append((e, vjp))
        return H, htape

    def _loop(self, run, H, t0, t1, carry, need, Y):
        prog = run.prog
        loop = [prog.eqns[i] for i in self._loop_at]
        steps = []
        for t in range(t0, t1):
            vals = dict(run.env)
            for j, v in enumerate(prog.carry_in):
                vals[v.id] = carry[j]
            for k in self.loop_reads_stacked:
                vals[k] = H[k][t - t0]
            tape = []
            for e in loop:
                operands = [vals[x.id] if isinstance(x, Var) else x.value for x in e.inputs]
                out, vjp = _call(e, operands, e.static_dict, _needs(e, need))
                vals[e.out.id] = out
                if need and e.out.requires_grad:
                    tape.append((e, vjp))
            carry = [vals[v.id] for v in prog.carry_out]
            if Y is not None:
                for n, v in enumerate(prog.ys_out):
                    Y[n][t] = vals[v.id]
            steps.append(tape)
        return carry, steps

    def _loop_backward(self, run, H, t0, t1, steps, g_carry, GY, hgrads):
        prog, n = run.prog, t1 - t0
        anomaly = _state.anomaly
        for t in range(t1 - 1, t0 - 1, -1):
            step = GradTable(anomaly)
            for j, v in enumerate(prog.carry_out):
                if g_carry[j] is not None and v.requires_grad:
                    (run.cross if v.id in run.env else step).add(v.id, g_carry[j], v.shape, v.dtype, "scan", t, True)
            for k, v in enumerate(prog.ys_out):
                if GY[k] is not None and v.requires_grad:
                    (run.cross if v.id in run.env else step).add(v.id, GY[k][t], v.shape, v.dtype, "scan", t, True)
            _reverse(steps[t - t0], step, run.cross, run.env, t, ())
            for k in self.loop_reads_stacked:
                g, _ = step.pop(k)
                if g is not None:
                    v = self.vars[k]
                    hgrads.add(k, IndexedGrad(t - t0, g), (n,) + v.shape, v.dtype)
            g_carry = [step.pop(v.id)[0] for v in prog.carry_in]
        return g_carry

    def _hoisted_backward(self, run, t0, t1, htape, hgrads):
        prog, n = run.prog, t1 - t0
        _reverse(htape, hgrads, run.cross, run.env, None, (n,))
        for x in prog.xs_in:
            g, _ = hgrads.pop(x.id)
            if g is not None:
                run.xgrads.add(x.id, IndexedGrad(slice(t0, t1), g), (run.T,) + x.shape, x.dtype)
