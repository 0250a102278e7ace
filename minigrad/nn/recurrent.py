"""Recurrent layers: one set of parameters shared by every timestep.

Each cell's math is written once, as a plain function of Tensors (``lstm_step``, ``gru_step``,
``rnn_step``), with row-vector inputs as in Keras: ``x_t`` is (batch, input), weights map their
first axis to their last. Three things call it:

* the cell modules (``LSTMCell``...) for one step;
* the layers with ``unroll=True``: a Python loop over time that records T copies of the cell's
  ops, every one of them reading the same ``U``, ``W``, ``b`` Parameter objects, so the engine's
  ordinary accumulation sums every step's contribution into each parameter's ``.grad``;
* the layers with ``unroll=False`` (the default): ``mg.scan`` over the same function, one graph
  node whatever the length, compiled from the same primitives, with the same gradients. A layer
  keeps its last trace (``scan.TraceMemo``) while the cell function and the U, W, b objects stay
  the same: its body reads nothing else, and their values are read afresh at every call.

Truncated BPTT / stateful use: pass the previous chunk's final states, detached, as
``initial_state`` (``return_state=True`` gives them)::

    state = None
    for chunk in chunks:                                  # chunk: (batch, T_chunk, features)
        out, h, c = lstm(chunk, initial_state=state)      # lstm = LSTM(..., return_state=True)
        loss_fn(out).backward(); opt.step(); opt.zero_grad()
        state = (h.detach(), c.detach())                  # carry the values, cut the graph
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..engine import gc_paused, timestep
from ..scan import TraceMemo, _scan
from ..tensor import Tensor
from . import init
from .layers import as_input, float_dtype
from .module import Module, Parameter

__all__ = ["lstm_step", "gru_step", "rnn_step", "LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN"]


# ---------------------------------------------------------------- the cells' math, once

def lstm_step(x, state, U, W, b):
    """One LSTM step. ``U``: (input, 4H), ``W``: (H, 4H), ``b``: (4H,); gate blocks i, f, g, o
    (Keras's i, f, c, o). Returns the new ``(h, c)``."""
    h, c = state
    H = h.shape[-1]
    z = x @ U + b + h @ W             # x U + b does not depend on the carry: scan hoists it
    g = z[..., 2 * H:3 * H].tanh()     # before the sigmoid, so z is dead once that has read it
    s = z.sigmoid()                    # the i, f, o gates in one pass (the g block's value is unused)
    i, f, o = s[..., :H], s[..., H:2 * H], s[..., 3 * H:]
    c = f * c + i * g
    h = o * c.tanh()
    return h, c


def gru_step(x, state, U, W, b):
    """One GRU step with the reset gate applied after the recurrent product (PyTorch's GRU,
    Keras's ``reset_after=True``). ``U``: (input, 3H), ``W``: (H, 3H), ``b``: (2, 3H) = (input
    bias, recurrent bias); gate blocks in Keras's order z (update), r (reset), n (candidate).
    ``h' = z * h + (1 - z) * n``. Returns ``(h',)``."""
    (h,) = state
    H = h.shape[-1]
    xz = x @ U + b[0]
    hz = h @ W + b[1]
    zr = (xz[..., :2 * H] + hz[..., :2 * H]).sigmoid()
    z, r = zr[..., :H], zr[..., H:]
    n = (xz[..., 2 * H:] + r * hz[..., 2 * H:]).tanh()
    return (z * h + (1.0 - z) * n,)


def rnn_step(x, state, U, W, b):
    """One Elman step: ``h' = tanh(x U + b + h W)``. Returns ``(h',)``."""
    (h,) = state
    return ((x @ U + b + h @ W).tanh(),)


# ---------------------------------------------------------------- shapes and initialisation

def _lstm_params(input_size, hidden_size, dtype, unit_forget_bias):
    """Keras's defaults: Glorot-uniform U, orthogonal W, zero b with the forget block set to 1."""
    b = init.zeros((4 * hidden_size,), dtype)
    if unit_forget_bias:
        b[hidden_size:2 * hidden_size] = 1
    return (init.glorot_uniform((input_size, 4 * hidden_size), dtype=dtype),
            init.orthogonal((hidden_size, 4 * hidden_size), dtype=dtype), b)


def _gru_params(input_size, hidden_size, dtype, _):
    return (init.glorot_uniform((input_size, 3 * hidden_size), dtype=dtype),
            init.orthogonal((hidden_size, 3 * hidden_size), dtype=dtype),
            init.zeros((2, 3 * hidden_size), dtype))


def _rnn_params(input_size, hidden_size, dtype, _):
    return (init.glorot_uniform((input_size, hidden_size), dtype=dtype),
            init.orthogonal((hidden_size, hidden_size), dtype=dtype),
            init.zeros((hidden_size,), dtype))


def _check_mask(mask, batch, T, who):
    """The mask as booleans: booleans, or numbers that are all 0 or 1. Anything else (0.3, NaN,
    strings) would be read as True without a word."""
    m = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{who}: mask must hold booleans (or 0/1), got dtype {m.dtype}")
    if m.shape != (batch, T):
        raise ValueError(f"{who}: mask must have shape {(batch, T)} (batch, time); got {m.shape}")
    if m.dtype.kind != "b":
        bad = m[(m != 0) & (m != 1)]          # NaN is neither
        if bad.size:
            raise ValueError(f"{who}: mask must hold booleans or 0/1, got the value {bad.flat[0].item()!r}")
        m = m != 0
    return m


class _Recurrent(Module):
    """Shared by cells and layers: the Parameters ``U``, ``W``, ``b`` and Keras-style weights."""

    step = None          # the cell's math: (x, state, U, W, b) -> new state tuple (h first)
    make_params = None
    n_states = 1

    def __init__(self, input_size, hidden_size, dtype, unit_forget_bias=True):
        super().__init__()
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be positive, "
                             f"got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.dtype = float_dtype(dtype, type(self).__name__)
        U, W, b = type(self).make_params(self.input_size, self.hidden_size, self.dtype, unit_forget_bias)
        self.U, self.W, self.b = Parameter(U), Parameter(W), Parameter(b)

    def get_weights(self):
        """``[U, W, b]`` as numpy arrays (copies), in Keras's layout."""
        return [p.data.copy() for p in (self.U, self.W, self.b)]

    def set_weights(self, weights):
        """Set ``[U, W, b]`` from arrays in Keras's layout; every shape is checked before any
        parameter changes."""
        weights = [np.asarray(w) for w in weights]
        if len(weights) != 3:
            raise ValueError(f"{type(self).__name__}.set_weights: expected [U, W, b], got {len(weights)} arrays")
        for name, w, p in zip("UWb", weights, (self.U, self.W, self.b)):
            if w.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.set_weights: {name} must have shape {p.shape}, got {w.shape}")
        for w, p in zip(weights, (self.U, self.W, self.b)):
            p.data = w.astype(self.dtype, copy=True)

    def _zeros_state(self, batch):
        return tuple(Tensor(np.zeros((batch, self.hidden_size), self.dtype)) for _ in range(self.n_states))

    def _check_state(self, state, batch, who):
        state = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(state) != self.n_states:
            raise ValueError(f"{who}: expected {self.n_states} state tensor(s), got {len(state)}")
        out = []
        for s in state:
            s = as_input(s, self.dtype, who)
            if s.shape != (batch, self.hidden_size) or s.dtype != self.dtype:
                raise ValueError(f"{who}: a state must have shape {(batch, self.hidden_size)} and dtype "
                                 f"{self.dtype}; got {s.shape} {s.dtype}")
            out.append(s)
        return tuple(out)

    def _check_input(self, x, ndim, who):
        x = as_input(x, self.dtype, who)
        if x.ndim != ndim or x.shape[-1] != self.input_size:
            want = "(batch, time, features)" if ndim == 3 else "(batch, features)"
            raise ValueError(f"{who}: input must be {want} with features = {self.input_size}; got shape {x.shape}")
        return x

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, dtype={self.dtype.name}"


# ---------------------------------------------------------------- cells

class _Cell(_Recurrent):
    def forward(self, x, state=None):
        who = type(self).__name__
        x = self._check_input(x, 2, who)
        state = self._zeros_state(x.shape[0]) if state is None else self._check_state(state, x.shape[0], who)
        new = type(self).step(x, state, self.U, self.W, self.b)
        return new if self.n_states > 1 else new[0]


class LSTMCell(_Cell):
    """One LSTM step: ``cell(x_t, (h, c)) -> (h, c)``. Parameters ``U`` (input, 4H),
    ``W`` (H, 4H), ``b`` (4H,), gate order i, f, g, o. Initialised as Keras: Glorot-uniform U,
    orthogonal W, zero b with the forget-gate block set to 1 (``unit_forget_bias=False``: all 0)."""
    step, make_params, n_states = staticmethod(lstm_step), staticmethod(_lstm_params), 2

    def __init__(self, input_size, hidden_size, *, dtype=None, unit_forget_bias=True):
        super().__init__(input_size, hidden_size, dtype, unit_forget_bias)


class GRUCell(_Cell):
    """One GRU step: ``cell(x_t, h) -> h``. See ``gru_step`` for the layout."""
    step, make_params = staticmethod(gru_step), staticmethod(_gru_params)

    def __init__(self, input_size, hidden_size, *, dtype=None):
        super().__init__(input_size, hidden_size, dtype)


class RNNCell(_Cell):
    """One tanh RNN step: ``cell(x_t, h) -> h``. ``U`` (input, H), ``W`` (H, H), ``b`` (H,)."""
    step, make_params = staticmethod(rnn_step), staticmethod(_rnn_params)

    def __init__(self, input_size, hidden_size, *, dtype=None):
        super().__init__(input_size, hidden_size, dtype)


# ---------------------------------------------------------------- layers over time

class _Layer(_Recurrent):
    def __init__(self, input_size, hidden_size, return_sequences, return_state, unroll, dtype,
                 unit_forget_bias=True):
        super().__init__(input_size, hidden_size, dtype, unit_forget_bias)
        self.return_sequences, self.return_state, self.unroll = bool(return_sequences), bool(return_state), bool(unroll)
        self._memo = TraceMemo()     # the looped body reads only the cell and U, W, b: see TraceMemo

    def forward(self, x, initial_state=None, mask=None):
        """``x``: (batch, time, features). ``mask``: (batch, time) booleans, False where a step
        is padding: the state passes through unchanged and the sequence output is zero there.
        Returns the last output (batch, H), or every output (batch, time, H) with
        ``return_sequences``; with ``return_state``, ``(output, *final_states)``."""
        who = type(self).__name__
        x = self._check_input(x, 3, who)
        batch, T = x.shape[0], x.shape[1]
        if T < 1:
            raise ValueError(f"{who}: the input has no timesteps (shape {x.shape})")
        state = self._zeros_state(batch) if initial_state is None else self._check_state(initial_state, batch, who)
        step, params = type(self).step, (self.U, self.W, self.b)
        xs = x.transpose(1, 0, 2)                                   # time-major
        if mask is not None:
            xs = (xs, Tensor(np.ascontiguousarray(_check_mask(mask, batch, T, who).T[:, :, None])))
        want_ys = self.return_sequences

        def body(carry, inp):
            if mask is None:
                new = step(inp, carry, *params)
                return new, (new[0] if want_ys else None)
            x_t, m_t = inp
            new = step(x_t, carry, *params)
            new = tuple(F.where(m_t, n, old) for n, old in zip(new, carry))
            return new, (F.where(m_t, new[0], 0.0) if want_ys else None)

        if self.unroll:
            seq, m_seq = (xs, None) if mask is None else xs
            if not seq.requires_grad:        # data outside the graph: no getitem op per step
                seq = [Tensor(a) for a in seq._data]
                m_seq = None if mask is None else [Tensor(a) for a in m_seq._data]
            ys = []
            with gc_paused():                # T steps of nodes: no cycles for the collector to find
                for t in range(T):
                    with timestep(t):           # tags this step's ops for mg.record_contributions
                        state, y = body(state, seq[t] if m_seq is None else (seq[t], m_seq[t]))
                    ys.append(y)
            ys = F.stack(ys, 0) if want_ys else None
        else:
            state, ys = _scan(body, state, xs, None, self._memo, (step, mask is None, want_ys), params)
        out = ys.transpose(1, 0, 2) if want_ys else state[0]
        return (out, *state) if self.return_state else out

    def extra_repr(self):
        flags = [f for f in ("return_sequences", "return_state", "unroll") if getattr(self, f)]
        return super().extra_repr() + "".join(f", {f}=True" for f in flags)


class LSTM(_Layer):
    """An LSTM over time. ``lstm(x, initial_state=None, mask=None)`` with ``x`` (batch, time,
    features); parameters ``lstm.U`` (input, 4H), ``lstm.W`` (H, 4H), ``lstm.b`` (4H,), gate order
    i, f, g, o, the same objects at every step: 4 * (I*H + H*H + H) parameters.
    ``unroll=True`` records every step in the graph; ``unroll=False`` (default) one ``scan`` node.
    ``initial_state`` and the returned states are ``(h, c)``. Initialised as ``LSTMCell``."""
    step, make_params, n_states = staticmethod(lstm_step), staticmethod(_lstm_params), 2

    def __init__(self, input_size, hidden_size, *, return_sequences=False, return_state=False, unroll=False,
                 dtype=None, unit_forget_bias=True):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype, unit_forget_bias)


class GRU(_Layer):
    """A GRU over time (reset gate after the recurrent product: PyTorch's GRU, Keras's
    ``reset_after=True``). ``U`` (input, 3H), ``W`` (H, 3H), ``b`` (2, 3H): input and recurrent
    biases; gate order z, r, n (Keras's; PyTorch's is r, z, n: ``minigrad.interop`` converts).
    3 * (I*H + H*H + 2H) parameters. The state is ``h``."""
    step, make_params = staticmethod(gru_step), staticmethod(_gru_params)

    def __init__(self, input_size, hidden_size, *, return_sequences=False, return_state=False, unroll=False,
                 dtype=None):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype)


class RNN(_Layer):
    """A tanh RNN over time (Keras's SimpleRNN). ``U`` (input, H), ``W`` (H, H), ``b`` (H,)."""
    step, make_params = staticmethod(rnn_step), staticmethod(_rnn_params)

    def __init__(self, input_size, hidden_size, *, return_sequences=False, return_state=False, unroll=False,
                 dtype=None):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype)
