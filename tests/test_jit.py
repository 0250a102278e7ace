"""The numba backend (issue 17): the issue-13 corpus through compiled loops, the disk cache,
``auto``'s choice and its fallbacks. Skipped where numba is not installed (CI installs it).

The corpus runs on one set of sizes per body (each new broadcasting pattern is a new compile of
a few seconds), values and lengths drawn by hypothesis: forward and every gradient equal to the
numpy backend to 1e-12 in float64.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

import test_looped as corpus  # noqa: E402

import minigrad as mg  # noqa: E402
from minigrad import nn  # noqa: E402
from minigrad.looped import backends, diskcache  # noqa: E402
from minigrad.looped.codegen import Compiled  # noqa: E402
from minigrad.looped.jit import JitRunner  # noqa: E402

# bodies with a primitive the compiled loops do not express: run by the numpy backend instead
FALLS_BACK = {"user primitive, inlinable", "user primitive, closure", "user primitive, decorated",
              "user primitive, no source", "user primitive reading a global", "advanced indexing",
              "boolean mask index", "reductions", "softmax and logsumexp", "reshape and transpose",
              "concatenate and stack", "split and chunk", "matrix times vector", "scalar carry"}
DIMS = (2, 3, 2)


def _program(name, dims=DIMS, T=4):
    factory, init_spec, xs_spec, reads = corpus.CORPUS[name]
    rng = np.random.default_rng(0)
    mixed = name == "several carries of different dtypes"
    init = corpus.make(init_spec, dims, rng, dtype="mixed" if mixed else np.float64)
    to_t = lambda a: tuple(mg.Tensor(v) for v in a) if isinstance(a, tuple) else mg.Tensor(a)
    xs = None if xs_spec is None else to_t(corpus.make(xs_spec, dims, rng, T))
    P = {k: mg.Tensor(rng.uniform(-1, 1, s(dims)), requires_grad=True) for k, s in reads.items()}
    return mg.scan_program(factory(P, dims), to_t(init), xs, length=T if xs is None else None)


@settings(max_examples=3, deadline=None)
@given(T=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
@pytest.mark.parametrize("name", corpus.CORPUS)
def test_the_compiled_loops_equal_the_numpy_backend(name, T, seed):
    ref = corpus.run(name, DIMS, T, seed, "numpy")
    got = corpus.run(name, DIMS, T, seed, "numba")
    # float32 math (libm's tanh against numpy's own) may differ in the last place: 1e-5 wherever
    # a float32 value is computed, 1e-12 for a body all in float64
    tol = 1e-5 if name == "several carries of different dtypes" else 1e-12
    for p, q in zip(got[0] + got[1], ref[0] + ref[1]):
        if p is None or q is None:
            assert p is None and q is None
            continue
        assert p.shape == q.shape and p.dtype == q.dtype
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol)
    assert [len(g) for g in got] == [len(r) for r in ref]


@pytest.mark.parametrize("name", corpus.CORPUS)
def test_every_body_compiles_or_says_why_it_falls_back(name):
    runner = backends.get(_program(name), "numba")
    if name in FALLS_BACK:
        assert isinstance(runner, Compiled) and runner.fallback.startswith("numba: ")
    else:
        assert isinstance(runner, JitRunner)


def _layer_grads(kind, backend, dtype, B, T, checkpoint=None, mask=False):
    mg.manual_seed(3)
    layer = getattr(nn, kind)(5, 4, return_sequences=True, dtype=dtype, backend=backend, checkpoint=checkpoint)
    rng = np.random.default_rng(1)
    x = mg.Tensor(rng.standard_normal((B, T, 5)).astype(dtype), requires_grad=True)
    m = None
    if mask:
        m = np.ones((B, T), bool)
        m[0, T // 2:] = False
    out = layer(x, mask=m) if mask else layer(x)
    (out * mg.Tensor(rng.standard_normal(out.shape).astype(dtype))).sum().backward()
    return [out.numpy(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_recurrent_layers_on_the_compiled_loops(kind, dtype, tol):
    for B, T, extra in ((3, 7, {}), (1, 4, {"mask": True}), (3, 9, {"checkpoint": 4})):
        ref = _layer_grads(kind, "numpy", dtype, B, T, **extra)
        got = _layer_grads(kind, "numba", dtype, B, T, **extra)
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_one_compiled_function_serves_every_batch_size_and_length():
    """The generated source holds no sizes: a new batch size or length is a new program with the
    same text, so it loads the same machine code."""
    texts = set()
    for B, T in ((2, 3), (5, 8)):
        xs = mg.Tensor(np.ones((T, B, 3)))
        W = mg.Tensor(np.ones((3, 3)) * 0.1, requires_grad=True)
        prog = mg.scan_program(lambda h, x: ((h @ W + x).tanh(), h), mg.Tensor(np.zeros((B, 3))), xs)
        texts.add(JitRunner(prog).source)
    assert len(texts) == 1


@pytest.mark.parametrize("B, H", [(1, 8), (3, 16), (64, 64)])
def test_products_small_in_place_and_large_through_blas_equal_the_numpy_backend(B, H):
    """Products up to SMALL multiply-adds are loop nests in the generated code, larger ones call
    BLAS (``mm``): both, forward and both vjps (h @ W with W read and h carried), equal numpy's."""
    from minigrad.looped.jit import SMALL
    rng = np.random.default_rng(B)
    W = mg.Tensor(rng.uniform(-0.3, 0.3, (H, H)), requires_grad=True)
    V = mg.Tensor(rng.uniform(-0.3, 0.3, (H, H)), requires_grad=True)
    h0 = mg.Tensor(rng.uniform(-1, 1, (B, H)), requires_grad=True)
    xs = mg.Tensor(rng.uniform(-1, 1, (5, B, H)), requires_grad=True)
    body = lambda h, x: (((h @ W) * x + (x @ V)).tanh(), h @ V)     # x @ V: a product of a stacked input
    source = JitRunner(mg.scan_program(body, h0, xs)).source
    assert ("mm(" in source.split("def forward")[1]) == (B * H * H > SMALL)
    grads = []
    for backend in ("numpy", "numba"):
        for t in (W, V, h0, xs):
            t.grad = None
        h, ys = mg.scan(body, h0, xs, backend=backend)
        (h.sum() + (ys * ys).sum()).backward()
        grads.append([h.data, ys.data] + [t.grad for t in (W, V, h0, xs)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, numpy_fn, dtype, lo, hi", [
    ("exp32", np.exp, np.float32, -110, 95), ("exp64", np.exp, np.float64, -760, 720),
    ("tanh32", np.tanh, np.float32, -12, 12), ("tanh64", np.tanh, np.float64, -25, 25)])
def test_the_vectorised_exp_and_tanh_agree_with_numpy(name, numpy_fn, dtype, lo, hi):
    """kernels.py's exp and tanh (arithmetic LLVM vectorises, in place of libm's scalar calls):
    within 3 units in the last place of numpy's values, the same inf, NaN and signed zeros, and
    the subnormals within two of the smallest."""
    from numba import njit

    from minigrad.looped import kernels
    fn = getattr(kernels, name)

    @njit(error_model="numpy")
    def apply(a, out):
        for i in range(a.shape[0]):
            out[i] = fn(a[i])

    rng = np.random.default_rng(0)
    tiny = np.finfo(dtype).tiny
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 0.625, -0.625, 50.0, -50.0, 88.72, 88.73,
                -87.3, -103.9, -104.0, 709.78, 709.79, -745.1, -745.2, -708.4, 1e-300, -1e-300, 5e-324]
    a = np.concatenate([rng.uniform(lo, hi, 200_000), rng.uniform(-1, 1, 100_000),
                        rng.choice([-1, 1], 20_000) * 10.0 ** rng.uniform(-40, 1, 20_000), specials]).astype(dtype)
    out = np.empty_like(a)
    apply(a, out)
    with np.errstate(all="ignore"):
        ref = numpy_fn(a)
    normal = np.isfinite(ref) & (np.abs(ref) >= tiny)
    assert np.all(np.abs(out[normal] - ref[normal]) <= 3 * np.spacing(np.abs(ref[normal])))
    special = ~np.isfinite(ref) | (ref == 0)
    np.testing.assert_array_equal(out[special], ref[special])          # inf, -inf, NaN where numpy's are
    assert np.array_equal(np.signbit(out[ref == 0]), np.signbit(ref[ref == 0]))
    sub = np.isfinite(ref) & (np.abs(ref) < tiny)
    assert np.all(np.abs(out[sub] - ref[sub]) <= 2 * np.finfo(dtype).smallest_subnormal)


def test_consecutive_elementwise_vjps_share_a_nest():
    """Backward fusion: tanh's vjp and the product's and sum's before it run in one nest over the
    step's elements (the corpus tests hold the gradients to the numpy backend's)."""
    c = mg.Tensor(np.ones((1, 3)), requires_grad=True)
    body = lambda h, x: ((h * x + c).tanh() * x, h)                  # c broadcast: its gradient summed
    backward = JitRunner(mg.scan_program(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((4, 2, 3))))).source
    backward = backward.split("def backward")[1]
    nests = backward.split("for i0 in")
    assert max(n.count("gs = ") for n in nests) >= 3
    h0, xs = mg.Tensor(np.full((2, 3), 0.3), requires_grad=True), mg.Tensor(np.linspace(-1, 1, 24).reshape(4, 2, 3))
    grads = []
    for backend in ("numpy", "numba"):
        for t in (c, h0):
            t.grad = None
        h, ys = mg.scan(body, h0, xs, backend=backend)
        (h.sum() + (ys * ys).sum()).backward()
        grads.append((c.grad, h0.grad))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_view_is_read_through_its_base():
    """The gate slices of an LSTM step are read from the array they slice, at offsets: the
    nests then index C-contiguous arrays only, which LLVM vectorises."""
    from minigrad.nn.recurrent import lstm_step
    U, W, b = mg.Tensor(np.ones((3, 8))), mg.Tensor(np.ones((2, 8))), mg.Tensor(np.zeros(8))
    h0 = (mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.zeros((1, 2))))
    body = lambda c, x: (lstm_step(x, c, U, W, b), None)
    forward = JitRunner(mg.scan_program(body, h0, mg.Tensor(np.ones((4, 1, 3))))).source.split("def backward")[0]
    assert "i1 + 2]" in forward and "i1 + 6]" in forward           # the f and o gates of 2 units


# ------------------------------------------------------------------ the disk cache

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import minigrad as mg
    from minigrad.looped import diskcache
    W = mg.Tensor(np.full((3, 3), 0.1), requires_grad=True)
    act = sys.argv[1]
    body = lambda h, x: (getattr(h @ W + x, act)(), h)
    h, ys = mg.scan(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((4, 2, 3))), backend=sys.argv[2])
    (h.sum() + ys.sum()).backward()
    print(diskcache.stats["compiled"], diskcache.stats["loaded"], repr(float(W.grad.sum())))
""")


def _process(cache, act="tanh", backend="numba"):
    env = dict(os.environ, MINIGRAD_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", SCRIPT, act, backend], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    compiled, loaded, grad = out.stdout.split()
    return int(compiled), int(loaded), float(grad)


def test_a_second_process_loads_the_compiled_loops_instead_of_compiling(tmp_path):
    first = _process(tmp_path)
    second = _process(tmp_path)
    assert first[:2] == (2, 0)                 # forward and backward compiled
    assert second[:2] == (0, 2)                # both loaded from the cache
    assert second[2] == first[2]               # the same machine code
    assert second[2] == pytest.approx(_process(tmp_path, backend="numpy")[2], rel=1e-12)
    assert len(list((tmp_path / "numba").glob("loop_*.py"))) == 1


def test_a_changed_program_never_loads_a_stale_entry(tmp_path):
    _process(tmp_path, "tanh")
    compiled, loaded, grad = _process(tmp_path, "sin")
    assert (compiled, loaded) == (2, 0)
    assert grad == pytest.approx(_process(tmp_path, "sin", "numpy")[2], rel=1e-12)
    assert len(list((tmp_path / "numba").glob("loop_*.py"))) == 2


def test_the_cache_key_covers_what_the_machine_code_depends_on(monkeypatch):
    import numba
    key = diskcache._fingerprint("def forward(n): pass\n")
    assert diskcache._fingerprint("def forward(n): return\n") != key
    monkeypatch.setattr(numba, "__version__", numba.__version__ + ".other")
    assert diskcache._fingerprint("def forward(n): pass\n") != key


def test_an_unwritable_cache_directory_compiles_in_memory_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(diskcache, "_warned", set())
    backends.clear_cache()
    W = mg.Tensor(np.full((2, 2), 0.3), requires_grad=True)
    h0, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    with pytest.warns(RuntimeWarning, match="compiling in memory") as caught:
        h, _ = mg.scan(lambda h, x: ((h @ W + x).sin(), None), h0, xs, backend="numba")
        mg.scan(lambda h, x: ((h @ W + x).cos(), None), h0, xs, backend="numba")
    assert len([w for w in caught if "compiling in memory" in str(w.message)]) == 1
    ref, _ = mg.scan(lambda h, x: ((h @ W + x).sin(), None), h0, xs, backend="numpy")
    np.testing.assert_allclose(h.numpy(), ref.numpy(), rtol=1e-12)
    backends.clear_cache()


def test_a_slow_first_compile_says_what_it_is_doing(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(diskcache, "NOTICE_AFTER", 0.0)
    backends.clear_cache()
    W = mg.Tensor(np.full((2, 2), 0.3), requires_grad=True)
    mg.scan(lambda h, x: ((h @ W + x).exp() * 0.1, None), mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.ones((3, 1, 2))),
            backend="numba")
    err = capfd.readouterr().err
    assert "compiling a looped program with numba" in err and str(tmp_path) in err
    backends.clear_cache()


def test_a_program_compiled_ahead_of_time_is_not_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    backends.clear_cache()
    W = mg.Tensor(np.full((2, 2), 0.3), requires_grad=True)
    body = lambda h, x: ((h @ W + x).tanh() * 0.5, h)
    h0, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    runner = mg.scan_program(body, h0, xs).compile("numba")
    assert isinstance(runner, JitRunner) and runner.kernels is not None
    before = dict(diskcache.stats)
    mg.scan(body, h0, xs, backend="numba")[0].sum().backward()
    assert diskcache.stats == before
    backends.clear_cache()


# ------------------------------------------------------------------ auto

def _lstm_program(B, H):
    U, W, b = (mg.Tensor(np.zeros(s), requires_grad=True) for s in ((3, 4 * H), (H, 4 * H), (4 * H,)))
    body = lambda s, x: (lambda hc: (hc, hc[0]))(nn.lstm_step(x, s, U, W, b))
    return mg.scan_program(body, (mg.Tensor(np.zeros((B, H))),) * 2, mg.Tensor(np.zeros((5, B, 3))))


def test_auto_compiles_small_steps_and_leaves_large_ones_to_numpy():
    assert isinstance(backends.get(_lstm_program(1, 16), "auto"), JitRunner)
    assert isinstance(backends.get(_lstm_program(16, 64), "auto"), JitRunner)     # 4096 gate values: numba
    large = _lstm_program(32, 128)      # 32 x 512 gate values a step: numpy's BLAS calls are faster
    assert int(np.prod((32, 512))) > backends.JIT_MAX_ELEMENTS
    assert isinstance(backends.get(large, "auto"), Compiled)


def test_auto_falls_back_cleanly_without_numba(monkeypatch):
    from minigrad.looped import jit
    monkeypatch.setattr(jit, "available", lambda: None)
    backends.clear_cache()
    runner = backends.get(_lstm_program(1, 4), "auto")
    assert isinstance(runner, Compiled) and not hasattr(runner, "fallback")
    with pytest.raises(ImportError, match=r"minigrad\[fast\]"):
        backends.get(_lstm_program(1, 4), "numba")
    backends.clear_cache()


def test_auto_falls_back_cleanly_for_a_program_numba_cannot_express():
    W = mg.Tensor(np.full((2, 2), 0.3), requires_grad=True)
    body = lambda h, x: ((mg.concatenate([h, x], axis=0)[:1] @ W).tanh(), h)
    h0, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    h, _ = mg.scan(body, h0, xs, backend="auto")
    h.sum().backward()
    g = W.grad.copy()
    W.grad = None
    ref, _ = mg.scan(body, h0, xs, backend="interpret")
    ref.sum().backward()
    np.testing.assert_allclose(h.numpy(), ref.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g, W.grad, rtol=1e-12)


# ------------------------------------------------------------------ the looped node's guarantees, on numba

@pytest.mark.parametrize("T", [1, 4, 9])
@pytest.mark.parametrize("k", [1, 3, "T", "T+5"])
def test_checkpointing_gives_the_same_gradients_on_the_compiled_loops(T, k):
    corpus.test_checkpointing_gives_the_same_gradients(T, k, "numba")


def test_outputs_never_share_memory_on_the_compiled_loops():
    corpus.test_outputs_never_share_memory_with_each_other_the_inputs_or_a_parameter("numba")


def test_an_in_place_change_before_backward_is_refused_on_the_compiled_loops():
    """A read value changed in place before backward is refused, as on numpy. The final carry is
    a copy the reverse loop never reads (numpy's is the saved tanh output, so there it is
    refused): changing it leaves the gradients as they were."""
    rng = np.random.default_rng(1)
    h0 = mg.Tensor(rng.uniform(-1, 1, (4, 8)), requires_grad=True)
    xs = mg.Tensor(rng.uniform(-1, 1, (4, 4, 8)))
    W = mg.Tensor(rng.uniform(-1, 1, (8, 8)) * 0.1, requires_grad=True)
    W2 = W * 1.0                                  # not a leaf: versions, not pins
    body = lambda h, x: ((h @ W2 + x).tanh(), h)
    carry, ys = mg.scan(body, h0, xs, backend="numba")
    W2 += 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        carry.sum().backward()
    grads = []
    for change in (False, True):
        h0.grad = None
        carry, ys = mg.scan(lambda h, x: ((h @ W + x).tanh(), h), h0, xs, backend="numba")
        loss = carry.sum() + ys.sum()
        if change:
            carry += 5.0
        loss.backward()
        grads.append(h0.grad.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    M = rng.uniform(-1, 1, (4, 8))                # a plain array the body takes: pinned, as eager pins it
    carry, _ = mg.scan(lambda h, x: ((h * M + x).tanh(), h), h0, xs, backend="numba")
    with pytest.raises(ValueError, match="read-only"):
        M[...] = 0.0


def test_anomaly_mode_checks_every_vjp_on_the_compiled_backend():
    """Under ``mg.detect_anomaly`` the numba backend runs its steps through the interpreter, which
    names the op whose gradient is not finite."""
    W = mg.Tensor(np.full((2, 2), 0.5), requires_grad=True)
    h0, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.full((3, 1, 2), -1.0))
    with mg.detect_anomaly():
        h, _ = mg.scan(lambda h, x: ((h @ W + x).relu().sqrt(), h), h0, xs, backend="numba")
        with pytest.raises(Exception, match="sqrt"):
            h.sum().backward()


def test_edge_values_follow_numpy_not_python():
    """Division by zero, log of 0 and of a negative number, sqrt of a negative number: inf and NaN
    as numpy gives them (numba's default would raise ZeroDivisionError)."""
    xs = mg.Tensor(np.array([[[0.0, -1.0, 2.0]], [[1.0, 0.0, -3.0]]]), requires_grad=True)
    h0 = mg.Tensor(np.array([[1.0, 0.0, -2.0]]), requires_grad=True)
    body = lambda h, x: (h / x + x.log() * 0.0 + (x - 0.5).sqrt() * 0.0, h)
    out = {}
    for backend in ("numpy", "numba"):
        h0.grad = xs.grad = None
        with np.errstate(all="ignore"):
            c, ys = mg.scan(body, h0, xs, backend=backend)
            (c.sum() + ys.sum()).backward()
        out[backend] = (c.numpy(), h0.grad, xs.grad)
    for a, b in zip(out["numba"], out["numpy"]):
        np.testing.assert_array_equal(a, b)
    assert not np.isfinite(out["numba"][0]).all() and not np.isfinite(out["numba"][2]).all()


def test_one_compiled_lstm_from_four_threads_with_different_batch_sizes():
    """The issue-13 thread test with ``auto`` choosing numba: each thread has its own scratch
    buffers, the compiled loops hold no state between calls."""
    assert isinstance(backends.get(_lstm_program(1, 8), "auto"), JitRunner)
    corpus.test_one_looped_lstm_from_four_threads_with_different_batch_sizes()


def test_changing_the_ys_before_backward_is_refused():
    """The reverse loop may read a step's value from the ys the user holds (``y = tanh`` of the
    step, whose vjp reads y): an in-place change of them before backward is refused, never a
    silently wrong gradient."""
    rng = np.random.default_rng(2)
    W = mg.Tensor(rng.uniform(-1, 1, (3, 3)), requires_grad=True)
    h0, xs = mg.Tensor(np.zeros((2, 3))), mg.Tensor(rng.uniform(-1, 1, (5, 2, 3)))
    body = lambda h, x: (lambda n: (n, (n * 2.0).tanh()))((h @ W + x).tanh())
    _, ys = mg.scan(body, h0, xs, backend="numba")
    loss = ys.sum()                               # sum saves nothing: what refuses is the scan's own check
    ys += 5.0
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_a_program_numba_fails_to_compile_runs_on_numpy(monkeypatch):
    """A compile error inside numba (here, a stand-in for one) is no error of the user's: the
    program runs on the numpy backend, and ``.fallback`` says what happened."""
    from numba.core.errors import TypingError

    def broken(source, signatures):
        raise TypingError("a typing failure")
    monkeypatch.setattr(diskcache, "load", broken)
    backends.clear_cache()
    W = mg.Tensor(np.full((2, 2), 0.3), requires_grad=True)
    body = lambda h, x: ((h @ W + x).tanh(), h)
    h0, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    runner = backends.get(mg.scan_program(body, h0, xs), "auto")
    assert isinstance(runner, Compiled) and "could not compile (TypingError" in runner.fallback
    h, _ = mg.scan(body, h0, xs)
    ref, _ = mg.scan(body, h0, xs, backend="interpret")
    np.testing.assert_allclose(h.numpy(), ref.numpy(), rtol=1e-12)
    backends.clear_cache()
