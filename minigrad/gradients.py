"""Gradient bookkeeping, written once: how the gradients a vjp returns are summed per input.

A vjp returns, per operand, None, an ndarray (possibly in the broadcast shape), or one of three
lazy forms: ``IndexedGrad`` (nonzero only at a basic index: slicing), ``OuterGrad`` (``a.T @ g``
not yet multiplied out: a product's weight) and ``FreshGrad`` (an array the vjp allocated and
hands over). ``GradTable`` sums them per key, adding in place into arrays it owns, reducing
broadcast gradients in one place (``unbroadcast``), keeping a weight's outer products to
multiply out stacked (``_Outer``) and reporting each use's share to ``mg.record_contributions``.
``engine.backward`` keeps one table for the graph; the looped node keeps one per step and one
across steps. Nothing here knows about graphs or loops.
"""
from __future__ import annotations

import numpy as np

__all__ = ["unbroadcast", "IndexedGrad", "OuterGrad", "FreshGrad", "GradTable", "check_finite", "dense", "add_into"]


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if lead < 0 or grad.shape[lead:] != tuple(shape):
        # the same size in another shape (a vjp that forgot to transpose back) must not reshape silently
        raise ValueError(f"unbroadcast: a gradient of shape {grad.shape} does not broadcast to {shape}")
    return grad.reshape(shape)


def broadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """``g`` stretched to ``shape`` (numpy's rules, same rank) as a read-only view: a reduction's
    gradient. For a contiguous ``g`` the view is made directly, without ``np.broadcast_to``'s
    Python-level iterator (about 3 us, on every ``loss.sum()``'s backward)."""
    if g.ndim != len(shape) or not g.flags.c_contiguous:
        return np.broadcast_to(g, shape)
    strides = []
    for n, m, s in zip(g.shape, shape, g.strides):
        if n != m and n != 1:
            return np.broadcast_to(g, shape)          # numpy's error message
        strides.append(s if n == m else 0)
    out = np.ndarray(shape, g.dtype, g, 0, tuple(strides))
    out.setflags(write=False)
    return out


def check_finite(arr, what):
    """``detect_anomaly``'s test: raise FloatingPointError naming ``what`` on NaN or inf."""
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise FloatingPointError(f"detect_anomaly: {what} produced {bad} (shape {arr.shape})")


class IndexedGrad:
    """A gradient that is zero except at ``index`` (a basic index), where it is ``grad``.

    The vjp of slicing returns one instead of a mostly-zero array: it is added into the input's
    gradient buffer in place, so the slices of one tensor (the gates of an LSTM) share a single
    buffer instead of one full array each."""

    __slots__ = ("index", "grad")

    def __init__(self, index, grad):
        self.index, self.grad = index, grad

    def dense(self, shape, dtype):
        out = np.zeros(shape, dtype)
        out[self.index] += self.grad
        return out


class OuterGrad:
    """The gradient ``a.T @ g`` of a product's second operand, not yet multiplied out.

    matmul's vjp returns one for its weight. When the weight is a leaf (a parameter, or a tensor
    a scan body reads) its uses' factors are kept and multiplied out stacked, a few thousand
    rows at a time (``_Outer``): one large product instead of one small product and one
    accumulation per use (the T steps of a recurrent layer). Otherwise it is multiplied out."""

    __slots__ = ("a", "g")

    def __init__(self, a, g):
        self.a, self.g = a, g

    def dense(self):
        return self.a.T @ self.g


class FreshGrad:
    """A gradient array the vjp allocated itself and returns nowhere else: the table may add
    into it in place and hand it on without a copy."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


class _Outer:
    """The OuterGrads a key has received and not yet multiplied out, and the sum of those that
    were. They are multiplied out every ``ROWS`` rows, so a long sequence holds a bounded slice
    of its per-step factors (and the products stay cache-sized)."""

    ROWS = 4096
    __slots__ = ("As", "Gs", "rows", "total")

    def __init__(self):
        self.As, self.Gs, self.rows, self.total = [], [], 0, None

    def add(self, a, g, shared):
        self.As.append(a)
        self.Gs.append(g)
        self.rows += a.shape[0]
        if self.rows >= self.ROWS:
            self.flush(shared)

    def flush(self, shared):
        """Multiply out what was collected: sum_i a_i.T @ g_i as one product. ``shared`` holds the
        last concatenation of gradients, with the arrays it was made of (their ids are its key,
        and ids are unique only among live arrays): the same g_t reach U and W of an LSTM step."""
        As, Gs = self.As, self.Gs
        if not As:
            return
        if len(As) == 1:
            part = As[0].T @ Gs[0]
        else:
            key = tuple(map(id, Gs))
            if shared and shared[0] == key:
                G = shared[2]
            else:
                G = np.concatenate(Gs)
                shared[:] = [key, Gs, G]
            part = np.concatenate(As).T @ G
        self.As, self.Gs, self.rows = [], [], 0
        self.total = part if self.total is None else np.add(self.total, part, out=self.total)


class GradTable:
    """Per key, the sum of the gradients received so far.

    ``add`` takes any form a vjp returns; ``pop`` hands back the sum as one ndarray (or None),
    multiplying out pending outer products first. The table owns the arrays it allocated (and
    FreshGrads), and only those it adds into in place. ``recorder`` (an active
    ``mg.record_contributions``) is told every watched key's share as it arrives.

    Keys are anything hashed by identity: backward's Nodes and leaf Tensors, a program's
    variable ids. Ownership is kept per key (the key's current sum is the table's own), so
    no ``id()`` of an array is taken per use.
    """

    __slots__ = ("grads", "owned", "outer", "shared", "anomaly", "recorder", "plain")

    def __init__(self, anomaly=False, recorder=None):
        self.grads = {}
        self.owned = set()       # keys whose array in self.grads the table may add into in place
        self.outer = {}          # key -> _Outer, for keys that collect outer products
        self.shared = []         # the last concatenation of gradients (see _Outer.flush)
        self.anomaly, self.recorder = anomaly, recorder
        self.plain = not anomaly and recorder is None     # nothing to check or report on the way

    def add(self, key, g, shape, dtype, op="", step=None, outer=False, report=True):
        """Add ``g`` (a vjp's gradient for an input of ``shape`` and ``dtype``) under ``key``.
        ``outer``: the key may keep OuterGrads to multiply out stacked (a leaf's). ``report``:
        tell the recorder (False where the vjp reports its own shares: a scan's).

        Each form is handled in one place, without a further call in the common cases: this runs
        once per use of a tensor in backward (about ten times per step of an unrolled LSTM)."""
        grads, t = self.grads, type(g)
        if t is IndexedGrad:
            if not self.plain:
                self._check(key, op, step, report, g.grad, lambda: g.dense(shape, dtype))
            buf = grads.get(key)
            if buf is None or key not in self.owned:
                buf = grads[key] = np.zeros(shape, dtype) if buf is None else np.array(buf)
                self.owned.add(key)
            buf[g.index] += g.grad
            return
        if t is OuterGrad:
            if outer and g.a.ndim == 2 and g.g.ndim == 2 and not self.anomaly:
                if self.recorder is not None:
                    self._check(key, op, step, report, None, g.dense)
                acc = self.outer.get(key)
                if acc is None:
                    acc = self.outer[key] = _Outer()
                acc.add(g.a, g.g, self.shared)
                return
            g = g.dense()
            t = type(g)
        fresh = t is FreshGrad
        if fresh:
            g = g.array
        elif t is not np.ndarray:
            g = np.asarray(g)
        if g.shape != shape:
            try:
                g = unbroadcast(g, shape)
            except ValueError:
                raise RuntimeError(f"{op}: vjp returned a gradient of shape {g.shape} for an input of shape "
                                   f"{shape}") from None
        if g.dtype is not dtype and g.dtype != dtype:
            g = g.astype(dtype)
        if not self.plain:
            self._check(key, op, step, report, g, lambda: g)
        prev = grads.get(key)
        if prev is None:
            grads[key] = g
            if fresh:
                self.owned.add(key)
        elif key in self.owned:
            np.add(prev, g, out=prev)
        else:
            s = np.add(prev, g, dtype=prev.dtype)
            grads[key] = s if type(s) is np.ndarray else np.asarray(s)    # 0-d sums give a numpy scalar
            self.owned.add(key)

    def put(self, key, array, op="", step=None):
        """``add(key, FreshGrad(array), ...)`` for an ``array`` already of the key's shape and
        dtype: the first gradient of a key is kept without add's checks of form, shape and dtype
        (a compiled loop's gradients, twice per parameter and call)."""
        if self.plain and key not in self.grads:
            self.grads[key] = array
            self.owned.add(key)
        else:
            self.add(key, FreshGrad(array), array.shape, array.dtype, op, step, True)

    def _check(self, key, op, step, report, arr, dense):
        """What anomaly detection and a recorder want of one use: its gradient ``arr`` finite, and
        its share (``dense()``, made only for a watched key) told to the recorder."""
        if self.anomaly and arr is not None:
            check_finite(np.asarray(arr), f"backward of op '{op}'")
        rec = self.recorder
        if report and rec is not None and key in rec.watch:
            rec.add(rec.watch[key], op, step, dense())

    def pop(self, key):
        """The sum under ``key`` (None if nothing arrived), and whether the caller may keep it
        without a copy (the table allocated it). The key leaves the table."""
        g = self.grads.pop(key, None)
        owned = key in self.owned
        if owned:
            self.owned.discard(key)
        if not self.outer:
            return g, owned
        acc = self.outer.pop(key, None)
        if acc is not None:
            acc.flush(self.shared)
            if self.anomaly:
                check_finite(acc.total, "backward of the products using a tensor")
            g, owned = (acc.total, True) if g is None else (g + acc.total, True)
        return g, owned

    def __contains__(self, key):
        return key in self.grads or key in self.outer


def dense(g, shape, dtype):
    """Any form a vjp returns, as an ndarray of exactly ``shape`` and ``dtype`` (zeros for None).
    Generated code calls it where a gradient's form is only known at run time."""
    t = type(g)
    if g is None:
        return np.zeros(shape, dtype)
    if t is IndexedGrad:
        return g.dense(shape, dtype)
    if t is OuterGrad:
        g = g.dense()
    elif t is FreshGrad:
        g = g.array
    elif t is not np.ndarray:
        g = np.asarray(g)
    if g.shape != shape:
        g = unbroadcast(g, shape)
    return g if g.dtype == dtype else g.astype(dtype)


def add_into(total, g, shape, dtype):
    """Add a gradient of any form into ``total`` (an array of ``shape`` the caller owns); returns it."""
    if g is None:
        return total
    if type(g) is IndexedGrad:
        total[g.index] += g.grad
        return total
    return np.add(total, dense(g, shape, dtype), out=total)
