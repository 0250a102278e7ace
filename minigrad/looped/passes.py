"""Passes: each maps a Program to a new Program (or reads one), in one sweep over its equations.

* ``dce``: drop equations nothing the step returns depends on;
* ``stage``: which equations depend on the carry (``loop``), which read only step inputs and can
  run once on all steps stacked (``hoisted``, through the primitive's ``batch`` rule) and which
  read only loop invariants (``once``);
* ``defer``: mark the loop-invariant weight of a per-step product whose gradient is one product
  over all steps after the loop instead of one per step.

Liveness and buffer reuse are not passes on the program: they belong to the code a backend
generates (the numpy generator's ``buffers.py``), whose statements name what the program has no
variable for (an inlined primitive's temporaries, the reverse loop's gradients).

``optimize`` runs them in order. Primitives carry their batch rule (``mg.primitive(batch=...)``):
``"elementwise"`` (a leading time axis on an operand broadcasts), ``"matmul"`` or ``"index"``
(a basic index gets a leading full slice); a user primitive may declare any of them, or a
function ``rule(eqn, stacked) -> static kwargs for the stacked call, or None``.
"""
from __future__ import annotations

import numpy as np

from ..ops import ELEMENTWISE, INDEX, MATMUL, _is_basic
from .program import Eqn, Program, Var  # noqa: F401  (Eqn: the passes' unit)

__all__ = ["dce", "stage", "defer", "optimize", "batched_static"]


def dce(prog: Program) -> Program:
    """Keep only equations that what the step returns (carry and ys) depends on."""
    live = {v.id for v in (*prog.carry_out, *prog.ys_out)}
    kept = []
    for e in reversed(prog.eqns):
        if e.out.id in live:
            kept.append(e)
            live.update(v.id for v in e.vars_in())
    return prog.replace(eqns=tuple(reversed(kept)), passes=prog.passes + ("dce",))


def batched_static(e: Eqn, stacked: list):
    """The static kwargs to run ``e`` on operands with a leading time axis (``stacked[i]``: does
    operand i have one?), or None when its primitive's batch rule does not allow it."""
    rule = e.prim.batch
    ranks = [len(x.shape) if isinstance(x, Var) else np.ndim(x.value) for x in e.inputs]
    if callable(rule):
        return rule(e, stacked)
    if rule == ELEMENTWISE:
        ok = all(r == len(e.out.shape) for r, s in zip(ranks, stacked) if s)
        return dict(e.static) if ok else None
    if rule == MATMUL:
        return dict(e.static) if all(r >= 2 for r in ranks) else None
    if rule == INDEX:
        static = dict(e.static)
        index = static["index"]
        if not _is_basic(index):
            return None
        static["index"] = (slice(None),) + (index if isinstance(index, tuple) else (index,))
        return static
    return None


def stage(prog: Program, hoist: bool = True) -> Program:
    """Give each equation its stage: ``loop`` if it reads the carry or a loop value, else
    ``hoisted`` if it reads a step input or hoisted value and its batch rule allows a time axis,
    else ``once`` (only loop invariants and constants). Without ``hoist`` every equation is in
    the loop (to attribute each step's share of a gradient)."""
    where = {v.id: "loop" for v in prog.carry_in}
    where.update({v.id: "hoisted" for v in prog.xs_in})
    where.update({v.id: "once" for v in prog.reads})
    eqns = []
    for e in prog.eqns:
        ins = {where[v.id] for v in e.vars_in()}
        if "loop" in ins or not hoist:
            s = "loop"
        elif "hoisted" in ins:
            stacked = [isinstance(x, Var) and where[x.id] == "hoisted" for x in e.inputs]
            s = "hoisted" if hoist and batched_static(e, stacked) is not None else "loop"
        else:
            s = "once"
        where[e.out.id] = s
        eqns.append(e.but(stage=s))
    return prog.replace(eqns=tuple(eqns), passes=prog.passes + ("stage",))


def defer(prog: Program) -> Program:
    """In a per-step product ``a @ W`` with ``W`` read from outside (2-D, needing a gradient) and
    ``a`` at least 2-D, take W's gradient once after the loop: ``sum_t a_t.T @ g_t`` as one
    product of the stacked ``a`` and ``g``, not T products and T additions."""
    eqns = []
    for e in prog.eqns:
        deferred = ()
        if e.stage == "loop" and e.prim.batch == MATMUL and len(e.inputs) == 2:
            a, w = e.inputs
            if (isinstance(w, Var) and w.role == "read" and w.requires_grad and len(w.shape) == 2
                    and isinstance(a, Var) and len(a.shape) >= 2):
                deferred = (1,)
        eqns.append(e.but(deferred=deferred) if deferred != e.deferred else e)
    return prog.replace(eqns=tuple(eqns), passes=prog.passes + ("defer",))


def optimize(prog: Program, hoist: bool = True) -> Program:
    """The passes every backend runs: dead code out, stages, deferred weight gradients."""
    return defer(stage(dce(prog), hoist=hoist))
