"""The autodiff engine: grad mode, primitives, the graph, and backward.

A primitive is a function on ndarrays that returns its output and a vector-Jacobian
product (vjp) closure. ``apply`` runs it on Tensors and, when a gradient is needed,
gives the output Tensor a ``Node``: its parents (Nodes, or leaf Tensors), its vjp, its
shape and dtype, not its data. ``backward`` walks the Nodes in Kahn order (iteratively,
so depth is only bounded by memory), sums every use's gradient, and reduces broadcast
gradients back to each input's shape in one place: ``unbroadcast``.

What a vjp reads must not change unseen. Arrays a user can reach (leaf operands, ndarray
operands, results once read through ``.data``) are read-only while a node that may read them
lives (``_Hold``); the library's own in-place changes lift that for the write and advance a
global clock (``_epoch``), and backward checks a node recorded before such a change
(``_check_versions``), as PyTorch's version counters do.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import threading
import weakref
from collections import namedtuple

import numpy as np

from .gradients import FreshGrad, GradTable, IndexedGrad, OuterGrad, _Outer, unbroadcast  # noqa: F401
from .gradients import check_finite as _check_finite
from .tensor import Node, Tensor, _state

__all__ = ["primitive", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
           "detect_anomaly", "backward", "unbroadcast", "graph_size"]


def is_grad_enabled() -> bool:
    return _state.grad


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager and decorator that sets grad mode for the current thread."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)

    def __enter__(self):
        self.prev = is_grad_enabled()
        _state.grad = self.mode

    def __exit__(self, *exc):
        _state.grad = self.prev


class no_grad(set_grad_enabled):
    """Record nothing inside: results do not require grad. Context manager and decorator."""

    def __init__(self):
        super().__init__(False)


class enable_grad(set_grad_enabled):
    def __init__(self):
        super().__init__(True)


class detect_anomaly(contextlib.ContextDecorator):
    """Raise ``FloatingPointError`` at the first op whose forward or backward gives NaN or inf."""

    def __enter__(self):
        self.prev = _state.anomaly
        _state.anomaly = True

    def __exit__(self, *exc):
        _state.anomaly = self.prev


class timestep(contextlib.ContextDecorator):
    """Tag the ops recorded inside with timestep ``t``: ``record_contributions`` reports it.
    The recurrent layers' unrolled loops use it; a hand-written loop can too."""

    def __init__(self, t):
        self.t = t

    def __enter__(self):
        self.prev = _state.step
        _state.step = self.t

    def __exit__(self, *exc):
        _state.step = self.prev


class Contribution(namedtuple("Contribution", "tensor op step grad")):
    """One use's share of a tensor's gradient: the op that used it, the timestep of that use
    (None outside a recurrent step) and the gradient it sent back."""

    def __repr__(self):
        return (f"Contribution(op={self.op!r}, step={self.step}, shape={self.grad.shape}, "
                f"norm={float(np.linalg.norm(self.grad)):.6g})")


class record_contributions(contextlib.ContextDecorator):
    """Collect, during the backward passes inside, every use's gradient contribution to the
    given tensors, in the order backward produces them::

        with mg.record_contributions(lstm.U, lstm.W) as rec:
            loss.backward()
        rec.of(lstm.W)          # [Contribution(op='matmul', step=2, ...), ... step=1 ..., step=0 ...]

    They sum to what backward added to each tensor's ``.grad``. Works for unrolled graphs
    (ops tagged by ``mg.timestep``) and for ``scan`` nodes, whose loop is then replayed step
    by step to attribute each step's share.
    """

    def __init__(self, *tensors):
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("record_contributions: pass the Tensors (e.g. parameters) to watch")
        self.watch = {}       # a watched Tensor, and its Node if it has one -> the Tensor (backward's keys)
        for t in tensors:
            self.watch[t] = t
            if t._node is not None:
                self.watch[t._node] = t
        self.contributions = []

    def add(self, tensor, op, step, grad):
        self.contributions.append(Contribution(tensor, op, step, np.array(grad, dtype=tensor.dtype)))

    def of(self, tensor):
        """The contributions to ``tensor``, in backward order."""
        return [c for c in self.contributions if c.tensor is tensor]

    def total(self, tensor):
        """Their sum (what backward added to ``tensor.grad``)."""
        return np.sum([c.grad for c in self.of(tensor)], axis=0)

    def __enter__(self):
        self.prev = _state.recorder
        _state.recorder = self
        return self

    def __exit__(self, *exc):
        _state.recorder = self.prev


# ---------------------------------------------------------------------------- primitives

class Primitive:
    """What ``apply`` needs to know about one primitive. ``fn(*arrays, **static)`` returns
    ``(out, vjp)``; ``batch`` names how the op behaves with an extra leading (time) axis on
    its inputs, which lets ``scan`` hoist or defer it (None: it cannot)."""

    __slots__ = ("fn", "name", "batch", "wants_needs", "explain", "builtin")

    def __init__(self, fn, name, batch, explain, builtin):
        self.fn, self.name, self.batch, self.explain, self.builtin = fn, name, batch, explain, builtin
        self.wants_needs = "needs_grad" in inspect.signature(fn).parameters


def primitive(fn=None, *, name=None, batch=None, explain=None, _builtin=False):
    """Turn ``fn(*arrays, **static) -> (out, vjp)`` into an op on Tensors.

    ``vjp(g)`` returns one gradient per positional input (None where there is none); gradients
    may have the broadcast shape, the engine sums them back to each input's shape. Positional
    arguments are operands (Tensors, arrays or numbers); keyword arguments are static. A
    primitive that declares a ``needs_grad`` keyword receives a tuple of booleans saying which
    operands need a gradient, so its vjp can skip the others.
    """
    def wrap(f):
        prim = Primitive(f, name or f.__name__, batch, explain, _builtin)

        @functools.wraps(f)
        def op(*args, **kwargs):
            return apply(prim, args, kwargs)
        op.prim = prim
        return op
    return wrap(fn) if fn is not None else wrap


def _describe(prim, arrays, kwargs, err):
    shapes = [np.shape(a) for a in arrays]
    if prim.explain is not None:
        msg = prim.explain(*arrays, **kwargs)
        if msg:
            return f"{prim.name}: {msg}"
    dtypes = ", ".join(str(np.asarray(a).dtype) for a in arrays)
    shown = " and ".join(str(s) for s in shapes)
    return f"{prim.name}: invalid input (shapes {shown}; dtypes {dtypes}): {err}"


def _restated(err, msg):
    """``err``'s kind of exception with ``msg``. Some exception classes take other arguments
    (numpy's _UFuncNoLoopError): those become the builtin class they derive from."""
    try:
        new = type(err)(msg)
        if str(new) == msg:
            return new
    except Exception:
        pass
    return next(base(msg) for base in (ValueError, TypeError, IndexError) if isinstance(err, base))


def _operand(prim, a):
    """A constant operand as primitives expect it: numbers stay numbers, lists become arrays;
    anything else (a string, a dict) is refused here, naming the op."""
    if isinstance(a, (int, float, complex, np.generic, np.ndarray)) or a is None:
        return a
    arr = np.asarray(a) if isinstance(a, (list, tuple)) else None
    if arr is None or arr.dtype.kind not in "biufc":
        raise TypeError(f"{prim.name}: an operand of type {type(a).__name__} is not a number, array or Tensor")
    return arr


_epoch = [0]   # a global clock, advanced by every in-place change to a Tensor's data (Tensor._bump)
_modified = {}  # id(array) -> (epoch of its last in-place change, weakref): arrays changed in place


def _note_inplace(arr, epoch):
    """Remember, while ``arr`` lives, that it changed in place at ``epoch``. By array, not by tensor:
    a vjp may have saved a view of it (``W.T``) or it may belong to a tensor outside the graph."""
    key = id(arr)
    _modified[key] = (epoch, weakref.ref(arr, lambda _, key=key: _modified.pop(key, None)))


# ---------------------------------------------------------------------------- read-only while a graph reads

# id(an array that owns its memory) -> its _Pinned record, while the array is pinned and, idle,
# among the last IDLE_RECORDS pinned (a parameter pinned by every step's graph keeps its record;
# a dataset of arrays each pinned once does not keep one per array). The array weakrefs are held
# here, outside any graph, so that they stay reachable: when a node dies in a garbage cycle (a
# graph a cycle holds), CPython clears the weakrefs inside that cycle before it runs __del__,
# which then found no array to make writable again.
_pinned = {}
_idle = {}              # key -> record whose count is 0, oldest first
IDLE_RECORDS = 256
# Counts change under one lock: threads may share a parameter. Re-entrant: the collector may free
# a graph (and release its holds) inside an allocation made while the lock is held.
_pin_lock = threading.RLock()


def _forget(ref, key):
    """The owner of record ``key`` died: drop the record (unless the id is another array's now)."""
    for table in (_idle, _pinned):
        p = table.get(key)
        if p is not None and p.owner is ref:
            del table[key]


class _Pinned:
    """One array (with the views of it given to ops) and how many node holds keep it read-only.
    Idle (count 0), it stays a while: a parameter pinned by every step's graph gets its record
    once, and then a pin is a count and a flag. It refers to the arrays weakly: a pin keeps
    nothing alive that no vjp keeps."""

    __slots__ = ("key", "count", "owner", "views", "prune_at")

    def __init__(self, owner):
        key = self.key = id(owner)
        self.count, self.views, self.prune_at = 0, [], 32
        self.owner = weakref.ref(owner, lambda ref: _forget(ref, key))
        _pinned[key] = self

    def add_view(self, arr):
        arr.setflags(write=False)
        views = self.views
        if len(views) >= self.prune_at:       # graphs that overlap never reach count 0: drop dead views,
            views[:] = [r for r in views if r() is not None]
            self.prune_at = max(32, 2 * len(views))     # at most as often as the live ones double
        views.append(weakref.ref(arr))

    def release(self):
        self.count -= 1
        if self.count:
            return
        for ref in (self.owner, *self.views):
            a = ref()
            if a is not None:
                a.setflags(write=True)     # setflags: half the cost of assigning flags.writeable
        self.views, self.prune_at = [], 32
        _idle[self.key] = self
        if len(_idle) > IDLE_RECORDS:
            key, old = next(iter(_idle.items()))
            del _idle[key]
            if _pinned.get(key) is old:
                del _pinned[key]


class _Hold:
    """A node's hold on the arrays its vjp may read that a user can reach: while any node holding
    an array lives (until backward frees it, or the graph is collected), the array is read-only,
    so a write through it (``x.data[...] = v``, ``np.copyto``, ``out=``) raises instead of
    changing what a vjp reads; the library's own in-place changes lift it for the write
    (``writable``) and bump the version. One object per node, released once."""

    __slots__ = ("pinned",)

    def __init__(self):
        self.pinned = []

    def add(self, arr):
        """Hold ``arr`` (and the array owning its memory) read-only; False if there is nothing
        to hold (it was read-only to begin with). The caller holds ``_pin_lock``."""
        owner = _owner(arr)
        p = _pinned.get(id(owner))
        if p is None or p.owner() is not owner:       # ids are unique only among live arrays
            if not owner.flags.writeable:
                return False
            p = _Pinned(owner)
        if p not in self.pinned:
            # counted before anything below allocates: an allocation may run the collector, which
            # may free the record's other holds (a graph in a cycle) and release it
            if not p.count:
                if not owner.flags.writeable:
                    return False
                owner.setflags(write=False)
                _idle.pop(p.key, None)
            p.count += 1
            self.pinned.append(p)
        if arr is not owner and arr.flags.writeable:
            p.add_view(arr)
        return True

    def __del__(self):
        try:
            with _pin_lock:
                for p in self.pinned:
                    p.release()
        except Exception:        # interpreter shutdown, or a view numpy will not make writable again
            pass


def _pinned_now(owner):
    """The record keeping ``owner`` read-only now, or None (ids are unique only among live arrays)."""
    p = _pinned.get(id(owner))
    return p if p is not None and p.count > 0 and p.owner() is owner else None


def _owner(arr):
    base = arr.base
    return arr if base is None or not isinstance(base, np.ndarray) else base


def _pin_leaves(args):
    """A hold on the arrays of the leaf Tensors and plain arrays among an op's operands: the data
    a user can reach and write (results of ops are changed only by in-place operators: versions);
    None if there is nothing to hold."""
    arrays = []
    for a in args:
        if type(a) is np.ndarray:
            arrays.append(a)
        elif isinstance(a, Tensor) and a._node is None:
            arrays.append(a._data)
    if not arrays:
        return None
    hold = _Hold()
    with _pin_lock:
        for arr in arrays:
            hold.add(arr)
    return hold if hold.pinned else None


def _pin_result(t):
    """Pin the array of an op's result that the user reaches (``.data``, ``.numpy()``): its own
    op's vjp may read it (exp, tanh, sigmoid keep their output), and so may a later op's. The pin
    goes with its op's node, which lives as long as any graph built on the result. A leaf's array
    that is a view of an array a graph holds (``Tensor(X[:2])``, X pinned through another view of
    it) is made read-only with it: a write through it would change what that graph reads."""
    node = t._node
    with _pin_lock:
        if node is None:
            arr = t._data
            if arr.base is not None and arr.flags.writeable:
                p = _pinned_now(_owner(arr))
                if p is not None:
                    p.add_view(arr)
            return
        if node._vjp is _freed or _state.trace is not None:
            return
        hold = node._pins
        if hold is None:
            hold = _Hold()
            if hold.add(t._data):
                node._pins = hold
        else:
            hold.add(t._data)


@contextlib.contextmanager
def writable(arr):
    """Lift the pins on ``arr`` for an in-place change the library tracks (an optimizer step, a
    load, an in-place operator): the caller bumps the version, which backward checks."""
    owner = _owner(arr)
    lifted = []
    if _pinned_now(owner) is not None:
        for a in (owner, arr) if arr is not owner else (owner,):
            if not a.flags.writeable:
                a.flags.writeable = True
                lifted.append(a)
    try:
        yield arr
    finally:
        for a in reversed(lifted):
            a.flags.writeable = False


def apply(prim: Primitive, args, kwargs):
    """Run a primitive on Tensors (and constants); record it when a gradient is needed."""
    arrays, parents = [], []
    need = leaf = False                 # leaf: an operand's array is a user's (a leaf's, or an ndarray)
    for a in args:                      # one plain loop: cheaper than comprehensions for 1-3 operands
        if type(a) is Tensor or isinstance(a, Tensor):
            arrays.append(a._data)
            node = a._node
            if node is None:
                leaf = True
            if a.requires_grad:
                need = True
                parents.append(node or a)       # a leaf is its own graph entry
                continue
        else:
            if type(a) is not float:
                if type(a) is np.ndarray:
                    leaf = True
                else:
                    a = _operand(prim, a)
            arrays.append(a)
        parents.append(None)
    state = _state
    if need and not state.grad:
        need = False
    # before the forward, so a view it returns of a leaf (x.T) is read-only too
    pins = _pin_leaves(args) if leaf and need and state.trace is None else None
    if prim.wants_needs:
        if not need:
            kwargs["needs_grad"] = (False,) * len(args)
        elif len(parents) == 2:         # the common case, without a comprehension's frame
            kwargs["needs_grad"] = (parents[0] is not None, parents[1] is not None)
        else:
            kwargs["needs_grad"] = tuple([p is not None for p in parents])
    try:
        out, vjp = prim.fn(*arrays, **kwargs)
    except (ValueError, TypeError, IndexError) as err:
        raise _restated(err, _describe(prim, arrays, kwargs, err)) from err
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    t = Tensor.__new__(Tensor)
    t._data = out
    t._grad = None
    if need and out.dtype.kind == "f":      # comparisons, integer results: nothing to differentiate
        t.requires_grad = True
        t._node = node = Node.__new__(Node)     # Node(...) spelled out: see Node.__init__
        node._parents = tuple(parents)
        node._vjp = vjp
        node._op = prim.name
        node._epoch = _epoch[0]
        node._step = state.step
        node.shape = out.shape
        node.dtype = out.dtype
        node._pins = pins
    else:
        t.requires_grad = False
        t._node = None
    trace = state.trace
    if trace is not None:
        trace.record(prim, args, kwargs, t)
    if state.anomaly:
        _check_finite(out, f"forward of op '{prim.name}'")
    return t


# ---------------------------------------------------------------------------- backward

def _freed(g):
    raise AssertionError("unreachable")   # identity marks a node whose saved arrays were released


def _check_versions(t):
    """Raise if an input the vjp of ``t`` reads was modified in place after the forward."""
    saved = getattr(t._vjp, "saved_arrays", None)       # a vjp that is an object says what it reads
    cells = saved() if saved is not None else [c.cell_contents for c in (getattr(t._vjp, "__closure__", None) or ())]
    cells += [a for c in cells if isinstance(c, (tuple, list)) for a in c]
    arrays = [c for c in cells if isinstance(c, np.ndarray)]
    # An array changed in place at an epoch later than t's own changed after t was recorded; the
    # vjp reads it if it saved that array, a view of it, or an array it views.
    changed = [ref() for epoch, ref in list(_modified.values()) if epoch > t._epoch]
    for p in changed:
        if p is not None and any(np.may_share_memory(a, p) for a in arrays):
            raise RuntimeError(
                f"backward: an input of op '{t._op}' (shape {p.shape}, dtype {p.dtype}) was modified in place "
                f"after the forward pass and before backward; its gradient would be wrong. Do the in-place "
                f"change (e.g. an optimizer step) after backward, or compute on a copy.")


class gc_paused:
    """Pause Python's cyclic garbage collector while a graph is built or walked. A graph holds
    no reference cycles (parents point back in time, vjps hold arrays), yet every few hundred
    nodes the collector traverses all of it: an unrolled LSTM's per-step cost grew 1.9x from
    T = 10 to T = 1000 in backward and 1.2x in forward. Reference counting still frees it.
    (A class, not a generator: backward enters it on every call.) The collector's switch is the
    process's: pauses in several threads are counted under a lock, and the setting found by the
    first is restored by the last (each restoring its own left it off for good when they overlapped)."""

    __slots__ = ()
    _lock = threading.Lock()
    _depth = 0
    _was_enabled = False

    def __enter__(self):
        with gc_paused._lock:
            if gc_paused._depth == 0:
                gc_paused._was_enabled = gc.isenabled()
                gc.disable()
            gc_paused._depth += 1

    def __exit__(self, *exc):
        with gc_paused._lock:
            gc_paused._depth -= 1
            if gc_paused._depth == 0 and gc_paused._was_enabled:
                gc.enable()


def backward(root: Tensor, grad=None, retain_graph: bool = False) -> None:
    start, grad = _seed(root, grad)
    pending = _consumers(start)
    _state.retain_graph = retain_graph    # read by multi-output nodes (scan) that free their own state
    recorder = _state.recorder
    table = GradTable(_state.anomaly, recorder)      # keyed by the graph's entries themselves (see _consumers)
    table.add(start, grad, root.shape, root.dtype)
    grads, owned_keys, plain = table.grads, table.owned, table.plain
    epoch = _epoch[0]
    ready = [start]
    with gc_paused():
        while ready:
            t = ready.pop()
            if type(t) is not Node:                   # a leaf Tensor: keep its gradient
                g, owned = table.pop(t)               # (its outer products multiplied out)
                if g is not None:
                    _accumulate_leaf(t, g, owned)
                continue
            g = grads.pop(t, None)                    # GradTable.pop of a node (no outer products), spelled out
            owned = t in owned_keys
            if owned:
                owned_keys.discard(t)
            vjp = t._vjp
            if vjp is _freed:
                raise RuntimeError(
                    f"backward: trying to backward through the graph a second time (op '{t._op}'); its saved "
                    f"arrays were freed by the first backward. Pass retain_graph=True to the first backward "
                    f"to backward twice.")
            parents = t._parents
            if g is not None:
                if t._epoch != epoch:
                    _check_versions(t)
                in_grads = vjp(g)
                if len(in_grads) != len(parents):
                    raise RuntimeError(f"{t._op}: vjp returned {len(in_grads)} gradients for {len(parents)} inputs")
            else:
                in_grads = (None,) * len(parents)
            report = recorder is None or not getattr(vjp, "reports_contributions", False)   # scan reports its steps
            if not retain_graph:
                t._vjp = _freed
                t._pins = None        # its arrays are writable again unless another graph reads them
            for p, gi in zip(parents, in_grads):
                if p is None:
                    continue
                if gi is not None:
                    if type(p) is not Node:           # a leaf: its OuterGrads may be kept to multiply out stacked
                        a = p._data
                        if plain and type(gi) is FreshGrad and gi.array.shape == a.shape and gi.array.dtype is a.dtype:
                            table.put(p, gi.array)        # a scan's parameter gradient, as the loop made it
                        else:
                            table.add(p, gi, a.shape, a.dtype, t._op, t._step, True, report)
                    elif plain and type(gi) is np.ndarray and p not in grads and gi.shape == p.shape \
                            and gi.dtype is p.dtype:
                        grads[p] = gi                 # GradTable.add's first use of a node, spelled out
                    else:
                        table.add(p, gi, p.shape, p.dtype, t._op, t._step, False, report)
                left = pending[p] - 1
                pending[p] = left
                if not left:
                    ready.append(p)


def _seed(root, grad):
    """The graph entry of ``root`` and the gradient backward starts from, checked."""
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad and has no graph "
                           "(did any input have requires_grad=True, outside no_grad()?)")
    if grad is None:
        if root._data.size != 1:
            raise RuntimeError(f"backward: grad can be created implicitly only for a single-element "
                               f"output; this one has shape {root.shape}. Pass grad= of that shape.")
        grad = np.empty(root._data.shape, root._data.dtype)
        grad.fill(1)                        # np.ones is a Python function: 0.5 us more
    else:
        grad = np.asarray(grad._data if isinstance(grad, Tensor) else grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"backward: grad has shape {grad.shape} but the tensor has shape {root.shape}")
    return (root if root._node is None else root._node), grad


def _consumers(start):
    """How many uses each node reachable from ``start`` has, so backward processes a node only
    once all its uses' gradients are summed (Kahn's order). Leaf Tensors are nodes without parents.

    Keyed by the Nodes and Tensors themselves, as backward's GradTable is: both hash by identity
    (Tensor's ``==`` is elementwise, but a dict compares keys with equal hashes only, and the
    identity hashes of live objects differ): the ``id()`` per use they replace cost ~5% of a tiny
    unrolled LSTM step."""
    pending = {}
    stack = [start]
    while stack:
        u = stack.pop()
        if type(u) is not Node:
            continue
        for p in u._parents:
            if p is not None:
                if p in pending:
                    pending[p] += 1
                else:
                    pending[p] = 1
                    stack.append(p)
    return pending


def active_trace():
    """The trace being recorded by ``scan`` on this thread, or None."""
    return _state.trace


def _accumulate_leaf(t, g, owned):
    if t._grad is None:
        t._grad = g if owned and g.flags.writeable else np.array(g, dtype=t._data.dtype)
    else:
        t._grad = t._grad + g


def graph_size(t: Tensor) -> int:
    """The number of op nodes reachable from ``t`` (leaves do not count)."""
    start = t if t._node is None else t._node
    seen = {id(start)}
    stack = [start]
    n = 0
    while stack:
        u = stack.pop()
        if type(u) is not Node:
            continue
        n += 1
        for p in u._parents:
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return n
