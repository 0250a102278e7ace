"""Recurrent layers: one set of parameters shared by every timestep.

Each cell's math is written once, as a plain function of Tensors (``lstm_step``, ``gru_step``,
``rnn_step``), with row-vector inputs as in Keras: ``x_t`` is (batch, input), weights map their
first axis to their last. Three things call it:

* the cell modules (``LSTMCell``...) for one step;
* the layers with ``unroll=True``: a Python loop over time that records T copies of the cell's
  ops, every one of them reading the same ``U``, ``W``, ``b`` Parameter objects, so the engine's
  ordinary accumulation sums every step's contribution into each parameter's ``.grad``;
* the layers with ``unroll=False`` (the default): ``mg.scan`` over the same function, one graph
  node whatever the length, compiled from the same primitives, with the same gradients. The
  library's own cells are pure, so a layer traces them once per structure and binds the
  parameters (and the recurrent-dropout mask) afresh at every call; a cell a subclass overrides
  is traced at every call, so a random draw in it is made afresh.

Stacked and bidirectional layers run one such loop per layer and direction (``_Layer._run``);
the backward direction is the same loop over the time-reversed sequence and mask.

Truncated BPTT / stateful use: pass the previous chunk's final states, detached, as
``initial_state`` (``return_state=True`` gives them)::

    state = None
    for chunk in chunks:                                  # chunk: (batch, T_chunk, features)
        out, h, c = lstm(chunk, initial_state=state)      # lstm = LSTM(..., return_state=True)
        loss_fn(out).backward(); opt.step(); opt.zero_grad()
        state = (h.detach(), c.detach())                  # carry the values, cut the graph
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import functional as F
from ..engine import active_trace, gc_paused, timestep
from ..looped.node import BACKENDS, Memo, _scan
from ..random import get_rng
from ..tensor import Tensor, _wrap
from . import init
from .functional import dropout as _dropout
from .layers import as_input, float_dtype
from .module import Module, Parameter

__all__ = ["lstm_step", "gru_step", "rnn_step", "LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN"]


# ---------------------------------------------------------------- the cells' math, once

def lstm_step(x, state, U, W, b, h_mask=None):
    """One LSTM step. ``U``: (input, 4H), ``W``: (H, 4H), ``b``: (4H,); gate blocks i, f, g, o
    (Keras's i, f, c, o). ``h_mask`` (batch, H), if given, multiplies ``h`` where it enters the
    recurrent product (recurrent dropout). Returns the new ``(h, c)``."""
    h, c = state
    H = h.shape[-1]
    z = x @ U + b + _masked(h, h_mask) @ W            # x U + b does not depend on the carry: scan hoists it
    g = z[..., 2 * H:3 * H].tanh()     # before the sigmoid, so z is dead once that has read it
    s = z.sigmoid()                    # the i, f, o gates in one pass (the g block's value is unused)
    i, f, o = s[..., :H], s[..., H:2 * H], s[..., 3 * H:]
    c = f * c + i * g
    h = o * c.tanh()
    return h, c


def gru_step(x, state, U, W, b, h_mask=None):
    """One GRU step with the reset gate applied after the recurrent product (PyTorch's GRU,
    Keras's ``reset_after=True``). ``U``: (input, 3H), ``W``: (H, 3H), ``b``: (2, 3H) = (input
    bias, recurrent bias); gate blocks in Keras's order z (update), r (reset), n (candidate).
    ``h' = z * h + (1 - z) * n``; ``h_mask`` as in ``lstm_step``: only the recurrent product
    ``h W`` sees it, not ``z * h`` (Keras's GRU). Returns ``(h',)``."""
    (h,) = state
    H = h.shape[-1]
    xz = x @ U + b[0]
    hz = _masked(h, h_mask) @ W + b[1]
    zr = (xz[..., :2 * H] + hz[..., :2 * H]).sigmoid()
    z, r = zr[..., :H], zr[..., H:]
    n = (xz[..., 2 * H:] + r * hz[..., 2 * H:]).tanh()
    return (z * h + (1.0 - z) * n,)


def rnn_step(x, state, U, W, b, h_mask=None):
    """One Elman step: ``h' = tanh(x U + b + h W)``; ``h_mask`` as in ``lstm_step``. Returns ``(h',)``."""
    (h,) = state
    return ((x @ U + b + _masked(h, h_mask) @ W).tanh(),)


def _masked(h, h_mask):
    return h if h_mask is None else h * h_mask


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
    """Shared by cells and layers: the Parameters and Keras-style weights. One layer in one
    direction has ``U``, ``W``, ``b``; a stacked or bidirectional layer has a set per layer and
    direction, named with PyTorch's suffixes: ``U_l0``, ``W_l0``, ``b_l0``, ``U_l0_reverse``, ...,
    ``U_l1`` (whose input is the previous layer's output, ``directions * H`` features)."""

    step = None          # the cell's math: (x, state, U, W, b[, h_mask]) -> new state tuple (h first)
    make_params = None
    n_states = 1

    def __init__(self, input_size, hidden_size, dtype, unit_forget_bias=True, num_layers=1, bidirectional=False):
        super().__init__()
        who = type(self).__name__
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"{who}: input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        if isinstance(num_layers, bool) or int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(f"{who}: num_layers must be a positive integer, got {num_layers!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bidirectional = int(num_layers), bool(bidirectional)
        self.dtype = float_dtype(dtype, who)
        D = self.directions
        if self.num_layers == 1 and D == 1:
            self._names = [("U", "W", "b")]
        else:
            self._names = [tuple(f"{p}_l{layer}{'_reverse' if d else ''}" for p in "UWb")
                           for layer in range(self.num_layers) for d in range(D)]
        for i, names in enumerate(self._names):       # initialised in this order: layer by layer, forward first
            size = self.input_size if i < D else D * self.hidden_size
            arrays = type(self).make_params(size, self.hidden_size, self.dtype, unit_forget_bias)
            for name, a in zip(names, arrays):
                setattr(self, name, Parameter(a))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weight_sets(self):
        """``(U, W, b)`` per layer and direction, in PyTorch's order (l0, l0_reverse, l1, ...)."""
        params = self._parameters
        return [tuple([params[n] for n in names]) for names in self._names]

    def get_weights(self):
        """``[U, W, b]`` as numpy arrays (copies), in Keras's layout; for a stacked or
        bidirectional layer, the sets one after another in PyTorch's order (l0, l0_reverse, l1...)."""
        return [p.data.copy() for ps in self._weight_sets() for p in ps]

    def set_weights(self, weights):
        """Set the weights from arrays in ``get_weights``'s order and Keras's layout; every shape
        is checked before any parameter changes."""
        weights = [np.asarray(w) for w in weights]
        names = [n for ns in self._names for n in ns]
        if len(weights) != len(names):
            raise ValueError(f"{type(self).__name__}.set_weights: expected {len(names)} arrays {names}, "
                             f"got {len(weights)}")
        params = [p for ps in self._weight_sets() for p in ps]
        for name, w, p in zip(names, weights, params):
            if w.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.set_weights: {name} must have shape {p.shape}, got {w.shape}")
        for w, p in zip(weights, params):
            p.data = w.astype(self.dtype, copy=True)

    def _zeros_state(self, batch, read_only=False):
        """Zero states; ``read_only`` where only a traced step reads them (looped mode), so no op
        pins them. (A custom step run eagerly may change its state in place.)"""
        out = []
        for _ in range(self.n_states):
            z = np.zeros((batch, self.hidden_size), self.dtype)
            if read_only:
                z.setflags(write=False)
            out.append(_wrap(z))
        return tuple(out)

    def _check_state(self, state, batch, who, shape=None):
        """The states as a tuple of Tensors, each of ``shape`` (default ``(batch, H)``)."""
        shape = (batch, self.hidden_size) if shape is None else shape
        state = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(state) != self.n_states:
            raise ValueError(f"{who}: expected {self.n_states} state tensor(s), got {len(state)}")
        out = []
        for s in state:
            s = as_input(s, self.dtype, who)
            if s.shape != shape or s.dtype != self.dtype:
                raise ValueError(f"{who}: a state must have shape {shape} and dtype {self.dtype}; "
                                 f"got {s.shape} {s.dtype}")
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


def _plain(x):
    """Is ``x`` data outside any graph: no gradient to record, and no scan tracing the body that
    reads it (a traced value's array holds step 0 only: read as data, it would be a constant)?"""
    return not x.requires_grad and active_trace() is None


def _time_major(x):
    """``x`` (batch, time, features) as (time, batch, features): a plain view for plain data (an
    op would only cost its call), else an op."""
    return _wrap(x._data.transpose(1, 0, 2)) if _plain(x) else x.transpose(1, 0, 2)


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
    def __init__(self, input_size, hidden_size, return_sequences, return_state, unroll, dtype, num_layers=1,
                 bidirectional=False, dropout=0.0, recurrent_dropout=0.0, unit_forget_bias=True, checkpoint=None,
                 backend="auto"):
        super().__init__(input_size, hidden_size, dtype, unit_forget_bias, num_layers, bidirectional)
        who = type(self).__name__
        if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(checkpoint, numbers.Integral)
                                       or checkpoint < 1):
            raise ValueError(f"{who}: checkpoint must be None or a positive int (steps a segment); got {checkpoint!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{who}: backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
        self.checkpoint, self.backend = checkpoint, backend
        self._memo = Memo()      # looped mode: the traces of the library's own cells, by structure
        for name, p in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
                raise ValueError(f"{who}: {name} must be a probability in [0, 1), got {p!r}")
        if dropout and self.num_layers == 1:
            warnings.warn(f"{who}: dropout={dropout} acts between stacked layers (PyTorch's meaning) and does "
                          f"nothing with num_layers=1; for dropout on the input (Keras's dropout=) put an "
                          f"mg.nn.Dropout before the layer; recurrent_dropout= is Keras's recurrent dropout",
                          UserWarning, stacklevel=3)
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.return_sequences, self.return_state, self.unroll = bool(return_sequences), bool(return_state), bool(unroll)

    def forward(self, x, initial_state=None, mask=None):
        """``x``: (batch, time, features). ``mask``: (batch, time) booleans, False where a step
        is padding: the state passes through unchanged and the sequence output is zero there (the
        backward direction visits each sequence's valid steps last to first). Returns the last
        output (batch, D*H), or every output (batch, time, D*H) with ``return_sequences``, the
        directions' features side by side (forward first); with ``return_state``,
        ``(output, *final_states)``: each (batch, H), or (layers * directions, batch, H) for a
        stacked or bidirectional layer."""
        who = type(self).__name__
        x = self._check_input(x, 3, who)
        batch, T = x.shape[0], x.shape[1]
        if T < 1:
            raise ValueError(f"{who}: the input has no timesteps (shape {x.shape})")
        states = self._initial_states(initial_state, batch, who)
        if mask is not None:
            mask = np.ascontiguousarray(_check_mask(mask, batch, T, who).T[:, :, None])   # time-major, (T, batch, 1)
        D, sets = self.directions, self._weight_sets()
        seq, finals = _time_major(x), []
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            want_ys, ys = self.return_sequences or not last, []
            batch_major = last and D == 1 and self.return_sequences      # the output itself: (batch, time, H)
            for d in range(D):
                i = layer * D + d
                state, y = self._run(seq, states[i], sets[i], mask, want_ys, d == 1,
                                     self._recurrent_mask(batch), batch_major)
                finals.append(state)
                ys.append(y)
            if want_ys:
                seq = ys[0] if D == 1 else F.concatenate(ys, axis=-1)
            if not last and self.training and self.dropout:
                seq = _dropout(seq, self.dropout)
        if self.return_sequences:
            out = seq if D == 1 else seq.transpose(1, 0, 2)
        else:       # each direction's final output: the backward one's is its state after time 0
            out = finals[-1][0] if D == 1 else F.concatenate([f[0] for f in finals[-D:]], axis=-1)
        if not self.return_state:
            return out
        if len(finals) == 1:
            return (out, *finals[0])
        return (out, *(F.stack([f[k] for f in finals], 0) for k in range(self.n_states)))

    def _initial_states(self, initial_state, batch, who):
        """One state tuple per layer and direction."""
        n = len(self._names)
        if initial_state is None:
            return [self._zeros_state(batch, not self.unroll) for _ in range(n)]
        if n == 1:
            return [self._check_state(initial_state, batch, who)]
        stacked = self._check_state(initial_state, batch, who, (n, batch, self.hidden_size))
        return [tuple(s[i] for s in stacked) for i in range(n)]

    def _recurrent_mask(self, batch):
        """Recurrent dropout: one inverted-dropout mask (batch, H) per call, layer and direction,
        shared by every step (Keras's meaning); None outside training or when p = 0."""
        p = self.recurrent_dropout
        if not (self.training and p):
            return None
        keep = get_rng().random((batch, self.hidden_size)) >= p
        return Tensor((keep * (1.0 / (1.0 - p))).astype(self.dtype))

    def _run(self, xs, state, params, mask, want_ys, reverse, h_mask, batch_major=False):
        """One layer in one direction over time-major ``xs``: (final state, ys or None), the ys
        time-major, or (batch, time, H) with ``batch_major`` (the loop's outputs laid out so,
        without a transpose op in the graph).
        The backward direction runs over the reversed sequence: with a mask, its padding steps
        pass the state through, so each sequence is read from its last valid step to its first.
        Its steps are numbered in its own order (step 0 reads time T-1) in both graph modes, as
        ``mg.record_contributions`` reports them."""
        step, T = type(self).step, xs.shape[0]
        if reverse:
            xs, mask = xs[::-1], None if mask is None else mask[::-1]
        if mask is not None:
            xs = (xs, Tensor(np.ascontiguousarray(mask)))
        extra = () if h_mask is None else (h_mask,)      # a custom step need not take h_mask

        def body(carry, inp):
            if mask is None:
                new = step(inp, carry, *params, *extra)
                return new, (new[0] if want_ys else None)
            x_t, m_t = inp
            new = step(x_t, carry, *params, *extra)
            new = tuple(F.where(m_t, n, old) for n, old in zip(new, carry))
            return new, (F.where(m_t, new[0], 0.0) if want_ys else None)

        if self.unroll:
            seq, m_seq = (xs, None) if mask is None else xs
            if _plain(seq):                  # data outside the graph: no getitem op per step
                seq = [Tensor(a) for a in seq._data]
                m_seq = None if mask is None else [Tensor(a) for a in m_seq._data]
            ys = []
            with gc_paused():                # T steps of nodes: no cycles for the collector to find
                for t in range(T):
                    with timestep(t):           # tags this step's ops for mg.record_contributions
                        state, y = body(state, seq[t] if m_seq is None else (seq[t], m_seq[t]))
                    ys.append(y)
            ys = F.stack(ys[::-1] if reverse else ys, 1 if batch_major else 0) if want_ys else None
        else:
            # the library's own cells are pure: one trace serves every call of the same structure
            pure = step in (lstm_step, gru_step, rnn_step)
            state, ys = _scan(body, state, xs, None, self.checkpoint, self.backend,
                              self._memo.setdefault((step, want_ys), {}) if pure else None, (*params, *extra),
                              1 if batch_major else 0)
            if reverse and want_ys:
                ys = ys[:, ::-1] if batch_major else ys[::-1]
        return state, ys

    def extra_repr(self):
        extra = [f"num_layers={self.num_layers}"] if self.num_layers > 1 else []
        extra += [f"{f}={getattr(self, f)}" for f in ("dropout", "recurrent_dropout") if getattr(self, f)]
        flags = [f for f in ("bidirectional", "return_sequences", "return_state", "unroll") if getattr(self, f)]
        return super().extra_repr() + "".join(f", {e}" for e in extra) + "".join(f", {f}=True" for f in flags)


_OPTIONS = """
    Stacking and directions, with PyTorch's meaning: ``num_layers`` layers, each reading the
    previous one's output sequence; ``bidirectional=True`` runs a second, backward direction in
    every layer and puts its features after the forward's; ``dropout`` (training only) is applied
    to every layer's output sequence except the last's. Parameters are then named per layer and
    direction with PyTorch's suffixes (``U_l0``, ``U_l0_reverse``, ``U_l1``...), and
    ``initial_state`` and the returned states are stacked: (layers * directions, batch, H), in
    PyTorch's order (l0, l0 reverse, l1, ...). ``recurrent_dropout`` (Keras's, training only):
    ``h_{t-1}`` is multiplied, where it enters the recurrent product, by an inverted-dropout mask
    drawn once per call (per layer and direction) and shared by every step.

    Looped mode (``unroll=False``) takes ``mg.scan``'s ``checkpoint=`` (keep the state every k
    steps and recompute each segment during backward: less memory, about one more forward of
    time) and ``backend=`` (``"auto"``, ``"numpy"``, ``"numba"``, ``"interpret"``: see ``mg.scan``)."""


class LSTM(_Layer):
    """An LSTM over time. ``lstm(x, initial_state=None, mask=None)`` with ``x`` (batch, time,
    features); parameters ``lstm.U`` (input, 4H), ``lstm.W`` (H, 4H), ``lstm.b`` (4H,), gate order
    i, f, g, o, the same objects at every step: 4 * (I*H + H*H + H) parameters per layer and
    direction (one bias: PyTorch's two are summed by ``minigrad.interop``).
    ``unroll=True`` records every step in the graph; ``unroll=False`` (default) one ``scan`` node.
    ``initial_state`` and the returned states are ``(h, c)``. Initialised as ``LSTMCell``.
    """
    step, make_params, n_states = staticmethod(lstm_step), staticmethod(_lstm_params), 2

    def __init__(self, input_size, hidden_size, *, num_layers=1, bidirectional=False, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, unroll=False,
                 dtype=None, unit_forget_bias=True, checkpoint=None, backend="auto"):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype, num_layers,
                         bidirectional, dropout, recurrent_dropout, unit_forget_bias, checkpoint, backend)


class GRU(_Layer):
    """A GRU over time (reset gate after the recurrent product: PyTorch's GRU, Keras's
    ``reset_after=True``). ``U`` (input, 3H), ``W`` (H, 3H), ``b`` (2, 3H): input and recurrent
    biases; gate order z, r, n (Keras's; PyTorch's is r, z, n: ``minigrad.interop`` converts).
    3 * (I*H + H*H + 2H) parameters per layer and direction. The state is ``h``.
    """
    step, make_params = staticmethod(gru_step), staticmethod(_gru_params)

    def __init__(self, input_size, hidden_size, *, num_layers=1, bidirectional=False, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, unroll=False,
                 dtype=None, checkpoint=None, backend="auto"):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype, num_layers,
                         bidirectional, dropout, recurrent_dropout, checkpoint=checkpoint, backend=backend)


class RNN(_Layer):
    """A tanh RNN over time (Keras's SimpleRNN). ``U`` (input, H), ``W`` (H, H), ``b`` (H,):
    I*H + H*H + H parameters per layer and direction. The state is ``h``.
    """
    step, make_params = staticmethod(rnn_step), staticmethod(_rnn_params)

    def __init__(self, input_size, hidden_size, *, num_layers=1, bidirectional=False, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, unroll=False,
                 dtype=None, checkpoint=None, backend="auto"):
        super().__init__(input_size, hidden_size, return_sequences, return_state, unroll, dtype, num_layers,
                         bidirectional, dropout, recurrent_dropout, checkpoint=checkpoint, backend=backend)


for _cls in (LSTM, GRU, RNN):     # the options all three share, said once
    _cls.__doc__ += _OPTIONS
