"""A hand-written numpy LSTM training step with its own backpropagation through time (BPTT).

This is the *floor* for any framework built on numpy: the fastest one LSTM training step we know
how to write with numpy calls alone, with a gradient derived by hand. A framework that records a
graph and differentiates it automatically can at best match it. It is also meant to be read: the
maths is written out below, and every numpy call in the hot loops says what it computes.

The model (the same as ``mg.nn.LSTM``; row-vector inputs, gate blocks in the order i, f, g, o)::

    z_t = x_t U + h_{t-1} W + b                 U: (I, 4H), W: (H, 4H), b: (4H,)
    i_t, f_t, g_t, o_t = split(z_t, 4)          pre-activations, each (B, H)
    c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
    h_t = sigmoid(o_t) * tanh(c_t)              h_0 = c_0 = 0 (written h_{-1}, c_{-1} in the code)
    loss = sum over t, batch and units of h_t

Backward, writing s_i = sigmoid(i_t), gt = tanh(g_t), tc = tanh(c_t), and using
sigmoid' = s (1 - s), tanh' = 1 - tanh^2. With dh_t = dloss/dh_t and dc_t = dloss/dc_t::

    dh_t  = 1 + dz_{t+1} W^T                    the loss reads h_t directly, and z_{t+1} reads it
    dc_t  = dc_{t+1} * s_f_{t+1}  +  dh_t * s_o * (1 - tc^2)
    dz_t  = [ dc_t * gt * s_i (1 - s_i),        i
              dc_t * c_{t-1} * s_f (1 - s_f),   f
              dc_t * s_i * (1 - gt^2),          g
              dh_t * tc * s_o (1 - s_o) ]       o
    dU = sum_t x_t^T dz_t    dW = sum_t h_{t-1}^T dz_t    db = sum_t sum_batch dz_t    dx_t = dz_t U^T

Only dh_t and dc_t are truly sequential. Everything else is batched over time:

* the input projection ``x_t U + b`` for all steps is one matrix product before the loop;
* ``dU``, ``dW``, ``db`` and every ``dx_t`` are single products over all steps after the loop;
* the factors multiplying dc_t and dh_t above (``K`` and ``M`` below) depend only on the forward
  pass, so they are computed for a block of steps at a time with few, large numpy calls.

Why it is fast (numpy's cost model: a ufunc call costs ~0.3 us before it touches any data, so at
small sizes the *number of calls per step* is what counts; at large sizes, the matrix products):

* 10 numpy calls per step forward and 7 backward. The four gates' nonlinearities are one ``tanh``
  over all 4H columns: sigmoid(z) = (1 + tanh(z / 2)) / 2, with the 1/2 folded into the columns of
  U, W and b for the i, f, o blocks, so the loop only does ``tanh`` and one multiply-add (tanh is
  also faster than exp in numpy).
* Every array is allocated once, in ``__init__``; the timed calls write with ``out=`` only, and
  constants are 0-d arrays of the compute dtype (a ufunc call with a Python float costs more).
* The backward's factors are prepared in blocks of steps sized to stay in cache.

``reference_lstm`` at the bottom is the same computation written plainly (allocating, step by step,
obviously correct); the tests check the fast version against it and against finite differences.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NumpyLSTM", "reference_lstm", "reference_forward", "sigmoid"]

# Bytes of per-step backward data to prepare in one block (see NumpyLSTM._prepare): large enough to
# amortise numpy's per-call cost over many steps at small sizes, small enough to stay in L2 cache.
BLOCK_BYTES = 256 * 1024


class NumpyLSTM:
    """An allocation-free LSTM training step for fixed (batch, time, input, hidden) and dtype.

    ``step(X, U, W, b)`` returns ``(loss, (dU, dW, db, dX))`` for ``loss = sum of all h_t``;
    ``forward(X, U, W, b)`` returns the loss alone (running the same forward, which also saves what
    the backward needs). ``X`` is batch-major ``(B, T, I)`` as ``mg.nn.LSTM`` takes it.

    The gradients returned are views of buffers owned by this object, overwritten by the next
    call: copy them to keep them. ``dX`` is a (B, T, I)-shaped view of a time-major buffer.
    """

    def __init__(self, batch: int, time: int, input_size: int, hidden: int, dtype=np.float32):
        B, T, I, H = batch, time, input_size, hidden
        dt = np.dtype(dtype)
        self.shape = (B, T, I, H)
        self.dtype = dt
        e = lambda *shape: np.empty(shape, dt)
        # --- the parameters as the forward uses them: the sigmoid gates' columns (i, f, o) halved,
        #     so that one tanh over all 4H columns gives tanh(z/2) there and tanh(g) in the g block;
        #     then sigmoid(z) = tanh(z/2) * 1/2 + 1/2 on i, f, o (scale and shift 1 and 0 on g).
        scale = np.full((4, H), 0.5, dt)
        scale[2] = 1
        self._col_scale = scale.reshape(4 * H)
        self._act_scale = np.tile(self._col_scale, (B, 1))     # full (B, 4H): a broadcast operand
        self._act_shift = np.where(self._act_scale == 1, 0, 0.5).astype(dt)   # costs 2x in a ufunc
        self._Us, self._Ws, self._bs = e(I, 4 * H), e(H, 4 * H), e(4 * H)
        # --- saved by the forward for the backward (the per-step state)
        self.Xt = e(T, B, I)            # the input, time-major (a copy: each step reads one block)
        self.XU = e(T, B, 4 * H)        # x_t U + b (scaled columns), all steps at once
        self.A = e(T, B, 4 * H)         # gate activations [s_i, s_f, gt, s_o]; becomes K, then dz
        self.Hs = np.zeros((T + 1, B, H), dt)   # Hs[t] = h_{t-1}; Hs[0] = h_{-1} = 0
        self.Cs = np.zeros((T + 1, B, H), dt)   # Cs[t] = c_{t-1}; Cs[0] = 0
        self.TC = e(T, B, H)            # tanh(c_t); becomes M = s_o (1 - tc^2)
        # --- scratch
        tmp, dh, dc = e(B, H), e(B, H), e(B, H)
        self._dh, self._dc = dh, dc
        k = max(1, min(T, BLOCK_BYTES // (B * 4 * H * dt.itemsize)))   # steps per backward block
        self._s1, self._s2, self._SF = e(k, B, H), e(k, B, H), e(k, B, H)
        # --- gradients (returned)
        self.dU, self.dW, self.db = e(I, 4 * H), e(H, 4 * H), e(4 * H)
        self._dXt = e(T, B, I)
        self.dX = self._dXt.transpose(1, 0, 2)
        self._one = np.array(1, dt)     # 0-d constants: cheaper in a ufunc call than Python floats
        # --- every view the loops use, made once: slicing costs ~0.2 us a view, as much as a
        #     small ufunc call. Forward step t reads h_{t-1}, c_{t-1} and writes h_t, c_t.
        A, Hs, Cs, TC, XU = self.A, self.Hs, self.Cs, self.TC, self.XU
        self._fwd = [(A[t], A[t, :, :H], A[t, :, H:2 * H], A[t, :, 2 * H:3 * H], A[t, :, 3 * H:],
                      XU[t], Hs[t], Cs[t], Cs[t + 1], TC[t], Hs[t + 1], tmp) for t in range(T)]
        # Backward step t (walking back): dz_{t+1} (already in A[t + 1]; None at the last step),
        # M_t, the i, f, g blocks and the o block of K_t (turned into dz_t in place), s_f_t; and,
        # at the last step of each block of k steps, the block (t0, t1) to prepare first.
        self._blocks = [(t0, min(t0 + k, T)) for t0 in range(0, T, k)]
        self._bwd = []
        for t in range(T - 1, -1, -1):
            t0 = t - t % k
            self._bwd.append((A[t + 1] if t < T - 1 else None, TC[t], A[t].reshape(B, 4, H)[:, :3],
                              A[t, :, 3 * H:], self._SF[t - t0], (t0, t + 1) if t == min(t0 + k, T) - 1 else None,
                              dh, dc, dc[:, None, :], tmp))

    @property
    def saved_nbytes(self) -> int:
        """Bytes the forward keeps for the backward (input copy, projection, gates, h, c, tanh c)."""
        return sum(a.nbytes for a in (self.Xt, self.XU, self.A, self.Hs, self.Cs, self.TC))

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer this object holds."""
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray) and a.base is None)

    # ------------------------------------------------------------------------------------ forward
    def forward(self, X, U, W, b):
        B, T, I, H = self.shape
        # Halve the sigmoid gates' columns (each call: the weights may change between calls).
        np.multiply(U, self._col_scale, out=self._Us)
        np.multiply(W, self._col_scale, out=self._Ws)
        np.multiply(b, self._col_scale, out=self._bs)
        # The input projection for every step in one product: XU[t] = x_t U + b (scaled columns).
        np.copyto(self.Xt, X.transpose(1, 0, 2))
        XU2 = self.XU.reshape(T * B, 4 * H)
        np.dot(self.Xt.reshape(T * B, I), self._Us, out=XU2)
        np.add(XU2, self._bs, out=XU2)
        Ws, scale, shift, dot = self._Ws, self._act_scale, self._act_shift, np.dot
        for a, i, f, g, o, xu, h_prev, c_prev, c, tc, h, tmp in self._fwd:
            dot(h_prev, Ws, out=a)                 # h_{t-1} W   (np.dot: less call overhead than matmul)
            np.add(a, xu, out=a)                   #   + x_t U + b
            np.tanh(a, out=a)                      # tanh(z/2) on i, f, o; tanh(g) on g
            np.multiply(a, scale, out=a)           # sigmoid = tanh(z/2)/2 + 1/2 on i, f, o;
            np.add(a, shift, out=a)                #   the g block stays tanh(g)
            np.multiply(f, c_prev, out=c)          # c_t = s_f c_{t-1}
            np.multiply(i, g, out=tmp)             #       + s_i gt
            np.add(c, tmp, out=c)
            np.tanh(c, out=tc)                     # tc = tanh(c_t)
            np.multiply(o, tc, out=h)              # h_t = s_o tc
        return self.Hs[1:].sum(dtype=self.dtype).item()

    # ----------------------------------------------------------------------------------- backward
    def _prepare(self, t0, t1):
        """For steps t0 <= t < t1, turn the saved activations into the factors of the backward:

            A[t]  = [s_i, s_f, gt, s_o]  ->  K = [gt s_i (1 - s_i), c_{t-1} s_f (1 - s_f),
                                                  s_i (1 - gt^2),    tc s_o (1 - s_o)]
            TC[t] = tc                   ->  M = s_o (1 - tc^2)
            SF[t - t0] = s_f                 (kept aside: the dc recurrence needs it)

        so that the backward step is dz = K * [dc, dc, dc, dh] and dc += dh * M. A block of steps
        per call: ~17 numpy calls per block rather than per step where the block holds many steps.
        """
        H = self.shape[3]
        k = t1 - t0
        a = self.A[t0:t1]
        si, sf, gt, so = a[..., :H], a[..., H:2 * H], a[..., 2 * H:3 * H], a[..., 3 * H:]
        cp, tc = self.Cs[t0:t1], self.TC[t0:t1]        # c_{t-1} and tanh(c_t)
        s1, s2, SF, one = self._s1[:k], self._s2[:k], self._SF[:k], self._one
        np.copyto(SF, sf)
        np.subtract(one, sf, out=s1)                   # K_f = c_{t-1} s_f (1 - s_f)
        np.multiply(sf, s1, out=sf)
        np.multiply(sf, cp, out=sf)
        np.multiply(gt, gt, out=s1)                    # s1 = s_i (1 - gt^2)  (K_g; gt still needed)
        np.subtract(one, s1, out=s1)
        np.multiply(s1, si, out=s1)
        np.subtract(one, si, out=s2)                   # K_i = gt s_i (1 - s_i)
        np.multiply(s2, si, out=s2)
        np.multiply(s2, gt, out=si)
        np.copyto(gt, s1)                              # K_g
        np.subtract(one, so, out=s1)                   # s1 = tc (1 - s_o)
        np.multiply(s1, tc, out=s1)
        np.multiply(tc, tc, out=tc)                    # M = s_o (1 - tc^2)
        np.subtract(one, tc, out=tc)
        np.multiply(tc, so, out=tc)
        np.multiply(so, s1, out=so)                    # K_o = tc s_o (1 - s_o)

    def step(self, X, U, W, b):
        """One training step: forward, loss = sum of all h_t, backward to U, W, b and X."""
        B, T, I, H = self.shape
        loss = self.forward(X, U, W, b)
        WT, one, dot = W.T, self._one, np.dot          # the unscaled weights: dz is w.r.t. z itself
        self._dh.fill(1)                               # dh_{T-1} = 1: only the loss reads h_{T-1}
        self._dc.fill(0)
        for dz_next, m, kz_ifg, kz_o, sf, block, dh, dc, dc_b, tmp in self._bwd:
            if block is not None:                      # entering a new block of steps: prepare it
                self._prepare(*block)
            if dz_next is not None:                    # dh_t = 1 + dz_{t+1} W^T
                dot(dz_next, WT, out=dh)
                np.add(dh, one, out=dh)
            np.multiply(dh, m, out=tmp)                # dc_t = dc_{t+1} s_f_{t+1} + dh_t s_o (1 - tc^2)
            np.add(dc, tmp, out=dc)
            np.multiply(kz_ifg, dc_b, out=kz_ifg)      # dz_t, in place of K_t: i, f, g blocks K * dc_t
            np.multiply(kz_o, dh, out=kz_o)            #                        o block     K * dh_t
            np.multiply(dc, sf, out=dc)                # carry dc_t s_f_t to step t - 1
        # Every step's dz is now in A: the parameter and input gradients are one product each.
        dZ = self.A.reshape(T * B, 4 * H)
        dot(self.Xt.reshape(T * B, I).T, dZ, out=self.dU)
        dot(self.Hs[:T].reshape(T * B, H).T, dZ, out=self.dW)
        np.sum(dZ, axis=0, out=self.db)
        dot(dZ, U.T, out=self._dXt.reshape(T * B, I))
        return loss, (self.dU, self.dW, self.db, self.dX)


# ----------------------------------------------------------------------------- plain reference

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_forward(X, U, W, b):
    """The LSTM forward written plainly. X: (B, T, I). Returns (hs (B, T, H), per-step caches)."""
    B, T, _ = X.shape
    H = W.shape[0]
    h = np.zeros((B, H), X.dtype)
    c = np.zeros((B, H), X.dtype)
    hs, caches = [], []
    for t in range(T):
        x = X[:, t]
        z = x @ U + h @ W + b
        i, f, g, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        caches.append((x, h_prev, c_prev, i, f, g, o, c))
        hs.append(h)
    return np.stack(hs, axis=1), caches


def reference_lstm(X, U, W, b):
    """Loss = sum of all h_t and its gradients (dU, dW, db, dX), step by step, allocating freely."""
    hs, caches = reference_forward(X, U, W, b)
    B, T, _ = X.shape
    H = W.shape[0]
    dU, dW, db = np.zeros_like(U), np.zeros_like(W), np.zeros_like(b)
    dX = np.zeros_like(X)
    dh_next = np.zeros((B, H), X.dtype)     # dloss/dh_t through z_{t+1}
    dc_next = np.zeros((B, H), X.dtype)     # dloss/dc_t through c_{t+1}
    for t in reversed(range(T)):
        x, h_prev, c_prev, i, f, g, o, c = caches[t]
        dh = 1.0 + dh_next                  # the loss reads h_t directly, plus the recurrence
        tc = np.tanh(c)
        do = dh * tc
        dc = dc_next + dh * o * (1.0 - tc ** 2)
        di, df, dg = dc * g, dc * c_prev, dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)], axis=1)
        dU += x.T @ dz
        dW += h_prev.T @ dz
        db += dz.sum(axis=0)
        dX[:, t] = dz @ U.T
        dh_next = dz @ W.T
        dc_next = dc * f
    return hs.sum(), (dU, dW, db, dX)
