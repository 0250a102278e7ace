"""``mg.scan``: trace the body, run the passes, run a backend, record one graph node.

The node holds no reference cycle: the hub's vjp keeps the call's state (what the backend saved
for backward) and a box for the outputs' gradients, never the outputs themselves; each output's
node hands its gradient to the box. A forward without backward frees everything by reference
counting alone.

``checkpoint=k`` runs the steps in segments of k and keeps only each segment's starting carry;
backward runs each segment's forward again, keeping its tape for just that segment.
"""
from __future__ import annotations

import numpy as np

from ..engine import _epoch, _pin_leaves, active_trace, is_grad_enabled
from ..gradients import FreshGrad
from ..tensor import Node, _state, _wrap
from . import backends
from .interpret import Interpreter, Run
from .passes import optimize
from .trace import flatten, trace, unflatten

__all__ = ["scan", "scan_program"]

BACKENDS = ("auto", "numpy", "numba", "interpret")


def _check_args(init, xs, length, checkpoint, backend):
    if active_trace() is not None:
        raise NotImplementedError("scan: a scan inside a scan body is not supported; unroll the inner loop")
    init_flat, carry_struct = flatten(init, "init")
    if carry_struct is None:
        raise TypeError("scan: init must be a Tensor or a tuple of Tensors")
    xs_flat, xs_struct = flatten(xs, "xs")
    if not xs_flat and length is None:
        raise ValueError("scan: pass xs (time on axis 0) or length= to say how many steps to run")
    lengths = {x._data.shape[0] if x._data.ndim else None for x in xs_flat}
    if None in lengths:
        raise ValueError("scan: every xs must have a time axis (axis 0)")
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise TypeError(f"scan: length must be an int; got {type(length).__name__}")
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ValueError(f"scan: xs (and length) disagree on the number of steps: {sorted(lengths)}")
    T = lengths.pop()
    if T < 1:
        raise ValueError("scan: needs at least one step")
    if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer))
                                   or checkpoint < 1):
        raise ValueError(f"scan: checkpoint must be None or a positive int (steps per segment); got {checkpoint!r}")
    if backend not in BACKENDS:
        raise ValueError(f"scan: backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return init_flat, carry_struct, xs_flat, xs_struct, T


def scan(fn, init, xs=None, length=None, *, checkpoint=None, backend="auto"):
    """Run ``fn(carry, x_t) -> (carry, y_t)`` over the steps of ``xs``, recorded as one graph node.

    Equivalent to this loop (JAX's ``lax.scan`` contract)::

        carry, ys = init, []
        for t in range(T):
            carry, y = fn(carry, xs[t])
            ys.append(y)
        return carry, stack(ys)

    Parameters
    ----------
    fn : callable
        The body, written with Tensor ops. It is traced (run once, on step 0) at every call.
    init : Tensor or tuple of Tensors
        The initial carry; ``fn`` must return a carry of the same structure, shapes and dtypes.
    xs : Tensor or tuple of Tensors, optional
        Step inputs, time on axis 0. ``None`` with ``length``: ``fn`` receives ``None``.
    length : int, optional
        The number of steps when there are no ``xs``.
    checkpoint : int, optional
        Keep the carry every ``checkpoint`` steps and recompute each segment's forward during
        backward: memory for about T / k carries plus k steps, about one extra forward of time.
    backend : {"auto", "numpy", "numba", "interpret"}
        ``"numpy"``: generated straight-line numpy; ``"numba"``: the loops compiled with numba
        (``pip install minigrad[fast]``; compiled once per program and cached on disk, a program
        it cannot express runs on numpy); ``"interpret"``: each primitive called step by step
        (the reference). ``"auto"``: numba where it is installed and the step is small (see
        ``minigrad.looped.backends``), else numpy.

    Returns
    -------
    (final_carry, ys): the carry's structure, and ``fn``'s ys stacked on a new axis 0.
    """
    return _scan(fn, init, xs, length, checkpoint, backend)


class Memo(dict):
    """A recurrent layer's traces of its own cells, by structure (see ``_scan``). A copy of the
    layer starts with none of them: they hold compiled programs, not state."""

    def __copy__(self):
        return Memo()

    def __deepcopy__(self, memo):
        return Memo()

    def __reduce__(self):
        return (Memo, ())


def _scan(fn, init, xs, length, checkpoint, backend, memo=None, reads=(), ys_axis=0):
    """``scan``, and for the recurrent layers a ``memo``: their own cells are pure functions of
    the carry, the step's inputs and ``reads`` (the parameters), so one trace serves every call
    of the same structure, the values read by position at each call. ``ys_axis=1``: the ys come
    out with time on axis 1 (views of the loop's arrays; their gradients are swapped back)."""
    init_flat, carry_struct, xs_flat, xs_struct, T = _check_args(init, xs, length, checkpoint, backend)
    grad = is_grad_enabled()
    key = entry = None
    if memo is not None:
        key = (carry_struct, xs_struct, grad, backend,
               tuple([(t._data.shape, t._data.dtype, t.requires_grad) for t in init_flat]),
               tuple([(t._data.shape[1:], t._data.dtype, t.requires_grad) for t in xs_flat]),
               tuple([(t._data.shape, t._data.dtype, t.requires_grad) for t in reads]))
        entry = memo.get(key)
        if entry is not None and not entry[1].fresh():
            entry = None                              # a global its inlined code read was rebound
    if entry is None:
        traced = trace(fn, init_flat, xs_flat, carry_struct, xs_struct)
        prog, runner = backends.lookup(traced, backend)
        read_tensors, ys_struct, program = traced.read_tensors, traced.ys_struct, traced.marked
        positions = [next((i for i, r in enumerate(reads) if r is t), None) for t in read_tensors]
        constants = [c.value for c in prog.consts() if type(c.value) is np.ndarray]
        if memo is not None and None not in positions:
            memo[key] = (prog, runner, positions, ys_struct, program, constants)
    else:
        prog, runner, positions, ys_struct, program, constants = entry
        read_tensors = [reads[i] for i in positions]
    inputs = init_flat + xs_flat + read_tensors
    need = grad and any([t.requires_grad for t in inputs])
    arrays = ([t._data for t in read_tensors], [x._data for x in xs_flat], [c._data for c in init_flat])
    run = runner.start(prog, arrays[0], arrays[1], T, need)
    Y, carry = runner.outputs(prog, T, list(arrays[2]))
    carry, segments = _forward(runner, run, T, carry, need, checkpoint, Y)
    Ys = Y if ys_axis == 0 else [y.swapaxes(0, ys_axis) for y in Y]
    outs = [_wrap(a) for a in (*(carry if runner.owns_carry else _own_carry(carry, Y, arrays)), *Ys)]
    if need:
        vjp = LoopedVJP(runner, run, segments, T, checkpoint, len(carry),
                        (program, read_tensors, arrays, init_flat + xs_flat))
        _record(vjp, inputs, outs, constants, len(carry), ys_axis)
    n = len(carry)
    return unflatten(outs[:n], carry_struct), unflatten(outs[n:], ys_struct)


def _own_carry(carry, Y, arrays):
    """The final carry as arrays of its own: a carry that is a row of the ys (the numpy backend
    lays them out so), an input passed through, or a tensor the body reads is copied, so an
    in-place change of one output never changes another output, an input or a parameter."""
    others = [*Y, *arrays[0], *arrays[1], *arrays[2]]
    out = []
    for c in carry:
        c = np.asarray(c)
        if any(np.may_share_memory(c, o) for o in others) or any(c is o for o in out):
            c = c.copy()
        out.append(c)
    return out


def _forward(runner, run, T, carry, need, checkpoint, Y):
    """Run all segments; returns the final carry and, per segment, (t0, t1, carry at t0, tape)."""
    k = T if checkpoint is None else int(checkpoint)
    keep = need and k >= T
    segments = []
    for t0 in range(0, T, k):
        t1 = min(t0 + k, T)
        start = carry
        carry, tape = runner.forward(run, t0, t1, carry, keep, Y)
        if need:
            segments.append((t0, t1, None if keep else start, tape))
    return carry, segments


class LoopedVJP:
    """The hub's vjp: the backward of the whole loop. Holds the call's saved state and the box
    its outputs' nodes put their gradients in; never the outputs."""

    reports_contributions = True
    __slots__ = ("runner", "run", "segments", "T", "checkpoint", "n_carry", "box", "replay")

    def __init__(self, runner, run, segments, T, checkpoint, n_carry, replay):
        self.runner, self.run, self.segments, self.T = runner, run, segments, T
        self.checkpoint, self.n_carry, self.replay = checkpoint, n_carry, replay
        self.box = [None] * (n_carry + len(run.prog.ys_out))

    def __call__(self, _):
        box, n = self.box, self.n_carry
        g_carry, GY = box[:n], box[n:]
        self.box = [None] * len(box)
        recorder = _state.recorder
        _, read_tensors, _, tensors = self.replay
        if recorder is not None and any(t in recorder.watch for t in (*tensors, *read_tensors)):
            grads = self._recording(recorder, g_carry, GY)
        else:
            runner, run = self.runner, self.run
            for t0, t1, start, tape in reversed(self.segments):
                if tape is None:                       # checkpointed: run the segment again, keeping it
                    _, tape = runner.forward(run, t0, t1, start, True)
                g_carry = runner.backward(run, t0, t1, tape, g_carry, GY)
            grads = _grads(run.finish(g_carry))
        if not _state.retain_graph:                    # release the saved state now
            self.run = self.segments = self.replay = None
        return grads

    def saved_arrays(self):
        """What backward reads (for ``engine``'s check of in-place changes made before it): the
        values the call computed once, the segments' saved lists and carries, and the outputs."""
        found = [] if self.run is None else [*self.run.env.values(), *self.run.xs]
        stack = list(self.segments or ())
        while stack:                          # lists, tuples and dicts of arrays, and vjp closures
            item = stack.pop()
            if isinstance(item, np.ndarray):
                found.append(item)
            elif isinstance(item, (tuple, list)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif callable(item) and getattr(item, "__closure__", None):
                stack.extend(c.cell_contents for c in item.__closure__
                             if isinstance(c.cell_contents, np.ndarray))
        return found

    def _recording(self, recorder, g_carry, GY):
        """Backward while contributions are recorded: run the loop again through the interpreter,
        nothing hoisted, so each step reports its share of every read tensor's gradient."""
        program, read_tensors, (reads, xs, init), tensors = self.replay
        prog = optimize(program(), hoist=False)
        interp = Interpreter(prog)
        run = Run(prog, reads, xs, self.T, True, recorder, read_tensors)
        _, tape = interp.forward(run, 0, self.T, list(init), True)
        g_carry = interp.backward(run, 0, self.T, tape, g_carry, GY)
        grads = _grads(run.finish(g_carry))
        for i, (x, g) in enumerate(zip(tensors, grads)):
            if g is not None and x in recorder.watch:
                recorder.add(x, "scan", None if i < len(init) else "all", g)
        return grads


def _grads(result):
    """One gradient per input of the hub: init's, each xs's, each read tensor's (buffers the
    backend allocated: the engine may keep them without a copy)."""
    g_init, g_xs, g_reads = result
    return (*g_init, *g_xs, *[g if g is None else FreshGrad(g) for g in g_reads])


class _Take:
    """An output's vjp: put its gradient in the hub's box (summing if it arrives twice), with
    ``axis`` and 0 swapped back for a ys laid out with time on ``axis``."""

    __slots__ = ("vjp", "n", "axis")
    _empty = np.empty(0)

    def __init__(self, vjp, n, axis=0):
        self.vjp, self.n, self.axis = vjp, n, axis

    def __call__(self, g):
        if self.axis:
            g = np.asarray(g).swapaxes(0, self.axis)
        box = self.vjp.box
        box[self.n] = g if box[self.n] is None else box[self.n] + g
        return (self._empty,)


def _record(vjp, inputs, outs, constants=(), n_carry=0, ys_axis=0):
    # the leaves' arrays, and the arrays the body took as constants, stay read-only while the hub lives
    pins = _pin_leaves([*inputs, *constants])
    hub = Node([(t._node or t) if t.requires_grad else None for t in inputs], vjp, "scan", _epoch[0],
               _state.step, (0,), np.dtype(np.float64), pins)
    for n, t in enumerate(outs):
        a = t._data
        if a.dtype.kind != "f":                   # integer and boolean outputs carry no gradient
            continue
        t.requires_grad = True
        take = _Take(vjp, n, ys_axis if n >= n_carry else 0)
        t._node = Node((hub,), take, "scan.output", hub._epoch, hub._step, a.shape, a.dtype)


def scan_program(fn, init, xs=None, length=None):
    """The program ``mg.scan(fn, init, xs, length)`` runs, after its passes: ``print()`` it to see
    the forward loop body, what is hoisted before the loop, the reverse loop and what is deferred."""
    init_flat, carry_struct, xs_flat, xs_struct, _ = _check_args(init, xs, length, None, "auto")
    return optimize(trace(fn, init_flat, xs_flat, carry_struct, xs_struct).marked())
