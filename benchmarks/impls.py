"""The implementations the benchmark compares: one factory each, all computing the same thing.

Every factory takes ``(X, U, W, b)`` -- X batch-major ``(B, T, I)`` as ``mg.nn.LSTM`` takes it,
U ``(I, 4H)``, W ``(H, 4H)``, b ``(4H,)``, gate blocks i, f, g, o -- and returns a ``Bench``:

* ``step()`` runs one training step (forward over T steps, loss = sum of every h_t, backward) and
  returns ``(loss, (dU, dW, db, dX))`` as array-likes in the layouts above (converted from the
  library's own where needed, outside the timed work when that is free);
* ``forward()`` runs the forward alone, *as in training*: recording the graph or saving what the
  backward needs, and returns an object that keeps that alive (so its memory can be measured);
* optional: ``graph_nodes(out)`` for a ``forward()`` result, ``saved_nbytes`` (buffers kept for the
  backward when they are preallocated), ``clear()`` to drop gradients a previous step left behind,
  ``info`` (versions, compile time), ``memory``: "tracemalloc" when the library allocates through
  numpy (which tracemalloc sees), "rss" when it has its own allocator (torch, XLA).

A missing optional library raises ImportError from its factory; the runner reports it in its row.
"""
from __future__ import annotations

import dataclasses
import time
from importlib import metadata
from typing import Any, Callable

import numpy as np

from benchmarks.numpy_lstm import NumpyLSTM, reference_forward, reference_lstm

SIZES = {"tiny": (1, 8, 16), "medium": (32, 100, 128), "large": (64, 256, 512)}   # (batch, input, hidden)


def make_inputs(batch, time_steps, input_size, hidden, dtype=np.float32, seed=0):
    """The same X, U, W, b in every process: uniform(-1, 1) inputs, uniform(+-1/sqrt(H)) weights
    (drawn in float64, then cast, so float32 and float64 runs see the same values, rounded)."""
    r = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)
    X = r.uniform(-1, 1, (batch, time_steps, input_size))
    U = r.uniform(-s, s, (input_size, 4 * hidden))
    W = r.uniform(-s, s, (hidden, 4 * hidden))
    b = r.uniform(-s, s, (4 * hidden,))
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (X, U, W, b))


@dataclasses.dataclass
class Bench:
    step: Callable[[], tuple]
    forward: Callable[[], Any]
    memory: str = "tracemalloc"
    graph_nodes: Callable[[Any], int] | None = None
    saved_nbytes: int | None = None
    clear: Callable[[], None] | None = None
    info: dict = dataclasses.field(default_factory=dict)


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------- numpy

def numpy_floor(X, U, W, b):
    B, T, I = X.shape
    f = NumpyLSTM(B, T, I, W.shape[0], X.dtype)
    return Bench(step=lambda: f.step(X, U, W, b), forward=lambda: f.forward(X, U, W, b),
                 saved_nbytes=f.saved_nbytes, info={"numpy": np.__version__, "buffers_bytes": f.nbytes})


def numpy_plain(X, U, W, b):
    """The plain reference (allocating, step by step): what a straightforward numpy BPTT costs."""
    return Bench(step=lambda: reference_lstm(X, U, W, b), forward=lambda: reference_forward(X, U, W, b),
                 info={"numpy": np.__version__})


# ---------------------------------------------------------------------------------- minigrad

def _minigrad(X, U, W, b, unroll, backend="auto"):
    import minigrad as mg
    if not (hasattr(mg, "nn") and hasattr(mg.nn, "LSTM")):
        raise NotImplementedError("minigrad has no mg.nn.LSTM yet")
    B, T, I = X.shape
    kw = {} if unroll else {"backend": backend}
    lstm = mg.nn.LSTM(I, W.shape[0], return_sequences=True, unroll=unroll, dtype=X.dtype, **kw)
    lstm.set_weights([U.copy(), W.copy(), b.copy()])
    params = (lstm.U, lstm.W, lstm.b)

    def clear():
        for p in params:
            p.grad = None

    def forward():
        return lstm(mg.Tensor(X, requires_grad=True)).sum()

    def step():
        clear()
        x = mg.Tensor(X, requires_grad=True)
        loss = lstm(x).sum()
        loss.backward()
        return float(loss.data), (lstm.U.grad, lstm.W.grad, lstm.b.grad, x.grad)

    return Bench(step=step, forward=forward, clear=clear, graph_nodes=mg.graph_size,
                 info={"minigrad": getattr(mg, "__version__", None), "module": mg.__file__})


def minigrad_looped(X, U, W, b):
    return _minigrad(X, U, W, b, unroll=False)


def minigrad_looped_numpy(X, U, W, b):
    return _minigrad(X, U, W, b, unroll=False, backend="numpy")


def minigrad_looped_numba(X, U, W, b):
    from minigrad.looped import jit
    if jit.available() is None:
        raise NotImplementedError("numba is not installed (pip install minigrad[fast])")
    return _minigrad(X, U, W, b, unroll=False, backend="numba")


def minigrad_unrolled(X, U, W, b):
    return _minigrad(X, U, W, b, unroll=True)


# ------------------------------------------------------------------------------------- torch

def _torch_graph_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return sum(1 for fn in seen if type(fn).__name__ != "AccumulateGrad")   # ops, not leaves


def torch_fused(X, U, W, b):
    """torch.nn.LSTM: the whole recurrence in torch's fused C++ kernel (batch_first, our weights:
    weight_ih = U^T, weight_hh = W^T, bias_ih = b, bias_hh = 0; same gate order i, f, g, o)."""
    import torch
    I, H = U.shape[0], W.shape[0]
    dtype = torch.from_numpy(X[:0]).dtype
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(U.T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(W.T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()
    Xt = torch.from_numpy(X)

    def forward():
        return lstm(Xt.detach().requires_grad_(True))[0].sum()

    def step():
        lstm.zero_grad(set_to_none=True)
        x = Xt.detach().requires_grad_(True)
        loss = lstm(x)[0].sum()
        loss.backward()
        return loss.item(), (lstm.weight_ih_l0.grad.numpy().T, lstm.weight_hh_l0.grad.numpy().T,
                             lstm.bias_ih_l0.grad.numpy(), x.grad.numpy())

    return Bench(step=step, forward=forward, memory="rss", graph_nodes=_torch_graph_nodes,
                 clear=lambda: lstm.zero_grad(set_to_none=True),
                 info={"torch": torch.__version__, "torch_threads": torch.get_num_threads()})


def torch_eager(X, U, W, b):
    """A PyTorch eager loop over LSTMCell-style ops: an unrolled graph, one op node per op per step."""
    import torch
    Ut, Wt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (U, W, b))
    Xt = torch.from_numpy(X)
    B, T, _ = X.shape
    H = W.shape[0]

    def run(x):
        h = c = torch.zeros(B, H, dtype=x.dtype)
        hs = []
        for t in range(T):
            z = x[:, t] @ Ut + h @ Wt + bt
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs, dim=1).sum()

    def clear():
        for p in (Ut, Wt, bt):
            p.grad = None

    def step():
        clear()
        x = Xt.detach().requires_grad_(True)
        loss = run(x)
        loss.backward()
        return loss.item(), (Ut.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy(), x.grad.numpy())

    return Bench(step=step, forward=lambda: run(Xt.detach().requires_grad_(True)), memory="rss",
                 graph_nodes=_torch_graph_nodes, clear=clear,
                 info={"torch": torch.__version__, "torch_threads": torch.get_num_threads()})


# --------------------------------------------------------------------------------------- jax

def jax_scan(X, U, W, b):
    """jax.jit of lax.scan over time, the input projection for all steps hoisted out of the scan
    (as idiomatic JAX does). Compile time (first call of each jitted function) is reported apart."""
    import jax
    jax.config.update("jax_enable_x64", True)   # let float64 runs be float64; float32 stays float32
    import jax.numpy as jnp
    from jax import lax
    H = W.shape[0]

    def loss_fn(U, W, b, X):
        zx = jnp.einsum("bti,ig->tbg", X, U) + b                 # (T, B, 4H), all steps at once
        h0 = jnp.zeros((X.shape[0], H), X.dtype)

        def cell(carry, zx_t):
            h, c = carry
            z = zx_t + h @ W
            i, f, g, o = jnp.split(z, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        _, hs = lax.scan(cell, (h0, h0), zx)
        return hs.sum()

    args = tuple(jnp.asarray(a) for a in (U, W, b, X))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))
    fwd_fn = jax.jit(loss_fn)

    def step():
        loss, grads = grad_fn(*args)
        jax.block_until_ready(grads)
        return loss, grads

    def forward():
        return jax.block_until_ready(fwd_fn(*args))

    t0 = time.perf_counter()
    step()
    compile_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    forward()
    compile_fwd = time.perf_counter() - t0
    return Bench(step=step, forward=forward, memory="rss",
                 info={"jax": jax.__version__, "compile_s": compile_step, "compile_forward_s": compile_fwd})


# ---------------------------------------------------------------------------- MyGrad, autograd

def mygrad_unrolled(X, U, W, b):
    import mygrad as mgr
    Um, Wm, bm = mgr.Tensor(U), mgr.Tensor(W), mgr.Tensor(b)
    B, T, _ = X.shape
    H = W.shape[0]

    def run(x):
        h = c = mgr.zeros((B, H), dtype=X.dtype)
        hs = []
        for t in range(T):
            z = mgr.matmul(x[:, t], Um) + mgr.matmul(h, Wm) + bm
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = mgr.nnet.sigmoid(f) * c + mgr.nnet.sigmoid(i) * mgr.tanh(g)
            h = mgr.nnet.sigmoid(o) * mgr.tanh(c)
            hs.append(h)
        return mgr.stack(hs, axis=1).sum()

    def step():
        x = mgr.Tensor(X)
        loss = run(x)
        loss.backward()
        return float(loss.item()), (Um.grad, Wm.grad, bm.grad, x.grad)

    def clear():
        for p in (Um, Wm, bm):
            p.null_grad()

    return Bench(step=step, forward=lambda: run(mgr.Tensor(X)), clear=clear, info={"mygrad": _version("mygrad")})


def autograd_unrolled(X, U, W, b):
    import autograd.numpy as anp
    from autograd import make_vjp, value_and_grad
    B, T, _ = X.shape
    H = W.shape[0]
    dtype = X.dtype

    def sigmoid(v):
        return 1 / (1 + anp.exp(-v))

    def loss_fn(params):
        U, W, b, X = params
        h = c = anp.zeros((B, H), dtype)
        hs = []
        for t in range(T):
            z = anp.dot(X[:, t], U) + anp.dot(h, W) + b
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = sigmoid(f) * c + sigmoid(i) * anp.tanh(g)
            h = sigmoid(o) * anp.tanh(c)
            hs.append(h)
        return anp.sum(anp.stack(hs, axis=1))

    vg = value_and_grad(loss_fn)
    vjp_of = make_vjp(loss_fn)
    params = (U, W, b, X)

    def step():
        loss, grads = vg(params)
        return float(loss), tuple(grads)

    return Bench(step=step, forward=lambda: vjp_of(params), info={"autograd": _version("autograd")})


# ---------------------------------------------------------------------------------- registry

@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    factory: Callable[..., Bench]
    unrolled_peer: bool = False     # a per-step-graph peer: skipped at long T by default
    doc: str = ""


IMPLS = {s.name: s for s in (
    Spec("numpy floor", numpy_floor, doc="hand-written numpy BPTT, allocation-free (benchmarks/numpy_lstm.py)"),
    Spec("minigrad looped", minigrad_looped, doc="mg.nn.LSTM(unroll=False): the recurrence is one graph node, "
                                                 "backend='auto'"),
    Spec("minigrad looped numpy", minigrad_looped_numpy, doc="the same, backend='numpy': generated numpy loops"),
    Spec("minigrad looped numba", minigrad_looped_numba, doc="the same, backend='numba': compiled loops"),
    Spec("minigrad unrolled", minigrad_unrolled, doc="mg.nn.LSTM(unroll=True): T copies of the cell's ops"),
    Spec("torch fused", torch_fused, doc="torch.nn.LSTM, fused C++ kernel"),
    Spec("jax scan", jax_scan, doc="jax.jit(value_and_grad) of lax.scan, input projection hoisted"),
    Spec("torch eager", torch_eager, unrolled_peer=True, doc="PyTorch eager loop over LSTMCell-style ops"),
    Spec("MyGrad", mygrad_unrolled, unrolled_peer=True, doc="MyGrad, unrolled Python loop"),
    Spec("HIPS autograd", autograd_unrolled, unrolled_peer=True, doc="HIPS autograd, unrolled Python loop"),
    Spec("numpy plain", numpy_plain, doc="the plain allocating numpy reference, step by step"),
)}


def build(name, X, U, W, b) -> Bench:
    return IMPLS[name].factory(X, U, W, b)


# ------------------------------------------------------------------------------------- check

def tolerance(dtype):
    return 1e-3 if np.dtype(dtype) == np.float32 else 1e-9


def compare(result, reference, dtype):
    """Relative errors of ``(loss, grads)`` against ``reference``; each gradient's error is
    max |a - r| / max |r|. Returns ``(ok, errors)`` with errors a dict: loss, dU, dW, db, dX."""
    loss, grads = result
    ref_loss, ref_grads = reference
    errs = {"loss": abs(float(loss) - float(ref_loss)) / max(abs(float(ref_loss)), 1.0)}
    for key, g, r in zip(("dU", "dW", "db", "dX"), grads, ref_grads):
        g = np.asarray(g, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        if g.shape != r.shape:
            errs[key] = float("inf")
            continue
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        diff = float(np.max(np.abs(g - r))) if r.size else 0.0
        errs[key] = diff / scale if scale > 0 else diff
    ok = all(np.isfinite(e) and e <= tolerance(dtype) for e in errs.values())
    return ok, errs
