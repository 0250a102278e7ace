"""The looped program (issue 13): a corpus of bodies through both backends and the plain loop,
each pass alone, threads, memory, checkpointing, and the defects of the source-text compiler.

Every body of ``CORPUS`` runs three ways on hypothesis-drawn sizes, in float64: the plain Python
loop (ordinary Tensor ops, the reference), ``mg.scan(..., backend="interpret")`` (each primitive
called step by step) and ``backend="numpy"`` (generated code). Outputs and the gradients of init,
xs and every tensor the body reads must agree to 1e-12.
"""
import ast
import functools
import gc
import sys
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan import plain_loop  # the loop JAX documents scan by: the reference

import minigrad as mg
from minigrad import nn
from minigrad.looped import Eqn, Program, Var, backends, passes
from minigrad.looped.buffers import flatten, names_in, reuse
from minigrad.looped.codegen import Compiled

EXACT = dict(rtol=1e-12, atol=1e-12)
codegen = sys.modules["minigrad.looped.codegen"]
inline = sys.modules["minigrad.looped.inline"]


# ------------------------------------------------------------------ user primitives of every kind

@mg.primitive(batch="elementwise")
def softsign(x):
    """A user primitive of the inlinable shape, with a declared batch rule."""
    d = 1 + np.abs(x)
    return x / d, lambda g: (g / (d * d),)


def _make_scaled(k):
    @mg.primitive
    def scaled(x):                     # a closure: reads k from its enclosing function
        return x * k, lambda g: (g * k,)
    return scaled


scaled3 = _make_scaled(3.0)


def _logged(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        return fn(*a, **kw)
    return wrapper


@mg.primitive
@_logged
def cube(x):
    """A primitive behind another decorator: its source is the wrapper's, so it is called."""
    return x ** 3, lambda g: (3 * g * x * x,)


_ns = {"np": np}
exec("def _nosource(x):\n    y = np.sin(x)\n    return y, lambda g: (g * np.cos(x),)\n", _ns)
nosource = mg.primitive(_ns["_nosource"], name="nosource")      # defined by exec: no source file

_GAIN = [2.0]


@mg.primitive
def gained(x):
    """Reads a module global when it runs: a rebinding must reach looped and eager alike."""
    return x * GAIN, lambda g: (g * GAIN,)


GAIN = 2.0


# ------------------------------------------------------------------ the corpus
# name: (factory(P, dims) -> body, init spec, xs spec, reads spec); a spec maps dims (B, H, I) to a
# shape, a tuple of shapes, or None (xs=None: length= is passed). Reads named k* get no gradient.

def S(*f):
    return lambda d: tuple(x(d) if callable(x) else x for x in f)


BH = S(lambda d: d[0], lambda d: d[1])
BI = S(lambda d: d[0], lambda d: d[2])
HH = S(lambda d: d[1], lambda d: d[1])
IH = S(lambda d: d[2], lambda d: d[1])
VH = S(lambda d: d[1])
SCALAR = S()


def two(a, b):
    return lambda d: (a(d), b(d))


def _lstm_body(P, d):
    def body(c, x):
        return (*nn.lstm_step(x, c, P["U"], P["W"], P["b"]),), c[0]
    return body


def _gru_body(P, d):
    def body(c, x):
        (h,) = nn.gru_step(x, (c,), P["U"], P["W"], P["b"])
        return h, h * 2.0
    return body


def _rnn_body(P, d):
    def body(c, x):
        (h,) = nn.rnn_step(x, (c,), P["U"], P["W"], P["b"])
        return h, None
    return body


def _deep_transition(P, d):
    def body(h, x):                       # the same weight applied twice per step
        h = (h @ P["A"] + x).tanh()
        h = (h @ P["A"] + x).tanh()
        return h, h
    return body


def _mixed_dtypes(P, d):
    def body(c, x):
        a, b = c                          # a float64 carry and a float32 one
        a = (a * P["v"] + x).tanh()
        b = (b + a.astype(np.float32) * 0.5).tanh()
        return (a, b), b.astype(np.float64) * a
    return body


CORPUS = {
    "lstm": (_lstm_body, two(BH, BH), BI, {"U": S(lambda d: d[2], lambda d: 4 * d[1]),
                                          "W": S(lambda d: d[1], lambda d: 4 * d[1]),
                                          "b": S(lambda d: 4 * d[1])}),
    "gru": (_gru_body, BH, BI, {"U": S(lambda d: d[2], lambda d: 3 * d[1]), "W": S(lambda d: d[1], lambda d: 3 * d[1]),
                                "b": S(2, lambda d: 3 * d[1])}),
    "rnn": (_rnn_body, BH, BI, {"U": IH, "W": HH, "b": VH}),
    "deep transition": (_deep_transition, BH, BH, {"A": HH}),
    "clip with numpy scalars": (lambda P, d: lambda h, x: ((h.clip(np.float64(-.5), .5) + x * P["a"]).tanh(), h),
                                BH, BH, {"a": VH}),
    "numpy scalar and array operands": (
        lambda P, d: lambda h, x: ((h * np.float64(0.7) + np.linspace(-1, 1, d[1]) * x - np.float32(0.1)).tanh(),
                                   h * np.ones(d[1])), BH, BH, {}),
    "user primitive, inlinable": (lambda P, d: lambda h, x: (softsign(h @ P["W"] + x), softsign(h)),
                                  BH, BH, {"W": HH}),
    "user primitive, closure": (lambda P, d: lambda h, x: ((scaled3(h) * 0.2 + x).tanh(), scaled3(x)), BH, BH, {}),
    "user primitive, decorated": (lambda P, d: lambda h, x: ((cube(h) * 0.3 + x * P["a"]).tanh(), h), BH, BH,
                                  {"a": VH}),
    "user primitive, no source": (lambda P, d: lambda h, x: ((nosource(h) + x).tanh(), nosource(x)), BH, BH, {}),
    "user primitive reading a global": (lambda P, d: lambda h, x: ((gained(h) * 0.3 + x).tanh(), h), BH, BH, {}),
    "basic indexing": (lambda P, d: lambda h, x: ((h[:, ::-1] + x[..., :1] * P["a"] + h[:1]).tanh(), h[-1]),
                       BH, BH, {"a": VH}),
    "advanced indexing": (lambda P, d: lambda h, x: ((h[:, [0] * d[1]] * 0.5 + x).tanh(), h[np.arange(d[0]) % 2]),
                          BH, BH, {}),
    "boolean mask index": (lambda P, d: lambda h, x: ((h * x).tanh(), (h[np.arange(d[0]) >= 0] * 2.0).sum()),
                           BH, BH, {}),
    "reductions": (lambda P, d: lambda h, x: ((h - h.mean(axis=1, keepdims=True) + h.max() * x).tanh(),
                                              (h.sum(axis=0), h.min(axis=1), h.var())), BH, BH, {}),
    "softmax and logsumexp": (lambda P, d: lambda h, x: ((h.softmax(axis=-1) * P["a"] + x).tanh(),
                                                         h.logsumexp(axis=1)), BH, BH, {"a": VH}),
    "broadcast read": (lambda P, d: lambda h, x: ((h * P["v"] + P["s"] + P["col"] * x).tanh(), h * P["s"]), BH, BH,
                       {"v": VH, "s": SCALAR, "col": S(lambda d: d[0], 1)}),
    "broadcast carry": (lambda P, d: lambda h, x: ((h + x.sum(axis=0, keepdims=True)).tanh(), x - h),
                        S(1, lambda d: d[1]),
                        BH, {}),
    "several carries of different dtypes": (_mixed_dtypes, lambda d: ((d[0], d[1]), (d[0], d[1])), BH, {"v": VH}),
    "tuple xs": (lambda P, d: lambda h, xs: ((xs[0] @ P["U"] + h * xs[1]).tanh(), xs[1] * h), BH,
                 lambda d: ((d[0], d[2]), (d[0], d[1])), {"U": IH}),
    "xs None with length": (lambda P, d: lambda h, _: (h * P["a"] + (h @ P["W"]).tanh() * 0.5, None), BH, None,
                            {"a": VH, "W": HH}),
    "tuple ys with a boolean": (lambda P, d: lambda h, x: ((h * x).tanh(), (h, h > 0)), BH, BH, {}),
    "where": (lambda P, d: lambda h, x: (mg.where(h > x, h * P["a"], x - h).tanh(), mg.where(x > 0, 1.0, h)),
              BH, BH, {"a": VH}),
    "maximum and minimum": (lambda P, d: lambda h, x: ((mg.maximum(h, x) - mg.minimum(h, P["a"])).tanh(), h), BH, BH,
                            {"a": VH}),
    "power family": (lambda P, d: lambda h, x: ((h * h + 1.0) ** 0.5 * 0.3 + 2.0 ** (h * 0.1)
                                                + (x * x + 1).sqrt() * 0.1, abs(h)), BH, BH, {}),
    "exp and log": (lambda P, d: lambda h, x: (((h.exp() + 1.0).log() * 0.5 - 0.3).tanh(), (x * x).log1p()),
                    BH, BH, {}),
    "relu and sigmoid": (lambda P, d: lambda h, x: ((h.relu() - (-h).relu() * 0.5 + x.sigmoid()).tanh(), h.sigmoid()),
                         BH, BH, {}),
    "sin and cos": (lambda P, d: lambda h, x: ((h.sin() * x.cos() + P["a"]).tanh(), h.cos()), BH, BH, {"a": VH}),
    "reshape and transpose": (lambda P, d: lambda h, x: ((h.reshape(-1).reshape(d[0], d[1]) @ P["W"].T
                                                          + x.T.T).tanh(), h.T), BH, BH, {"W": HH}),
    "concatenate and stack": (lambda P, d: lambda h, x: ((mg.concatenate([h, x], axis=1) @ P["Wc"]).tanh(),
                                                         mg.stack([h, x], axis=0)), BH, BH,
                              {"Wc": S(lambda d: 2 * d[1], lambda d: d[1])}),
    "split and chunk": (lambda P, d: lambda h, x: ((mg.concatenate(mg.split(h, 1, axis=0), axis=0) + x).tanh(),
                                                   mg.chunk(h, 1, axis=1)[0]), BH, BH, {}),
    "detach": (lambda P, d: lambda h, x: ((h.detach() * x + h * P["a"]).tanh(), h.detach()), BH, BH, {"a": VH}),
    "astype round trip": (lambda P, d: lambda h, x: ((h.astype(np.float32).astype(np.float64) + x).tanh(), h), BH, BH,
                          {}),
    "work only on reads": (lambda P, d: lambda h, x: ((h @ (P["W"] / ((P["W"] * P["W"]).sum() + 1).sqrt())
                                                       + x).tanh(), P["W"].sum() * h), BH, BH, {"W": HH}),
    "hoisted chain": (lambda P, d: lambda h, x: ((h @ P["W"] + ((x @ P["U"] + P["b"]).tanh() * 2 - 1)).tanh(),
                                                 (x @ P["U"]).sum(axis=1)), BH, BI, {"U": IH, "W": HH, "b": VH}),
    "weight hoisted and per step": (lambda P, d: lambda h, x: ((x @ P["W"] + h @ P["W"]).tanh(), x @ P["W"]), BH, BH,
                                    {"W": HH}),
    "weight on the left": (lambda P, d: lambda h, x: ((P["L"] @ h + x).tanh(), h), BH, BH,
                           {"L": S(lambda d: d[0], lambda d: d[0])}),
    "matrix times vector": (lambda P, d: lambda h, x: ((h @ P["W"] + x).tanh(), h @ P["v"]), BH, BH,
                            {"W": HH, "v": VH}),
    "carry passed through": (lambda P, d: lambda c, x: (c, x * c + P["a"]), BH, BH, {"a": SCALAR}),
    "carry from x": (lambda P, d: lambda c, x: (x, c * P["a"]), BH, BH, {"a": VH}),
    "carry is a read tensor": (lambda P, d: lambda c, x: (P["w"], c * x), BH, BH, {"w": BH}),
    "ys are a read tensor, x and the carry": (lambda P, d: lambda c, x: ((c + x).tanh(), (P["w"], x, c)), BH, BH,
                                              {"w": BH}),
    "tuple carry swapped": (lambda P, d: lambda c, x: ((c[1], c[0] * x + P["a"]), c[0]), two(BH, BH), BH,
                            {"a": VH}),
    "one tensor twice in the carry": (lambda P, d: lambda c, x: (((c[0] * c[1] + x).tanh(),) * 2, c[0]),
                                      two(BH, BH), BH, {}),
    "scalar carry": (lambda P, d: lambda c, x: ((c * 0.9 + (x * P["v"]).sum() * 0.1).tanh(), c * P["a"]), SCALAR, BH,
                     {"v": VH, "a": SCALAR}),
    "constants read, no gradient": (lambda P, d: lambda h, x: ((h * P["k"] + x).tanh(), h), BH, BH, {"k": VH}),
}


def make(spec, dims, rng, T=None, dtype=np.float64):
    shape = spec(dims)
    if shape and isinstance(shape[0], tuple):
        return tuple(make(lambda d, s=s: s, dims, rng, T, np.float32 if i == 1 and dtype == "mixed" else np.float64)
                     for i, s in enumerate(shape))
    full = shape if T is None else (T, *shape)
    return rng.uniform(-1.5, 1.5, full).astype(np.float64 if dtype == "mixed" else dtype)


def run(name, dims, T, seed, how):
    factory, init_spec, xs_spec, reads = CORPUS[name]
    rng = np.random.default_rng(seed)
    mixed = name == "several carries of different dtypes"
    init = make(init_spec, dims, rng, dtype="mixed" if mixed else np.float64)
    xs = None if xs_spec is None else make(xs_spec, dims, rng, T)
    P_arrays = {k: rng.uniform(-1.5, 1.5, spec(dims)) for k, spec in reads.items()}
    wrap = lambda a: (tuple(mg.Tensor(v.copy(), requires_grad=True) for v in a) if isinstance(a, tuple)
                      else mg.Tensor(a.copy(), requires_grad=True))
    init_t, xs_t = wrap(init), None if xs is None else wrap(xs)
    P = {k: mg.Tensor(a, requires_grad=not k.startswith("k")) for k, a in P_arrays.items()}
    body = factory(P, dims)
    length = T if xs is None else None
    if how == "loop":
        carry, ys = plain_loop(body, init_t, xs_t, length)
    else:
        carry, ys = mg.scan(body, init_t, xs_t, length=length, backend=how)
    outs = [o for o in (list(carry) if isinstance(carry, tuple) else [carry])
            + (list(ys) if isinstance(ys, tuple) else [] if ys is None else [ys])]
    weights = np.random.default_rng(seed + 1)
    loss = sum((o.astype(np.float64) * weights.standard_normal(o.shape)).sum() for o in outs if o.dtype.kind == "f")
    loss.backward()
    leaves = (list(init_t) if isinstance(init_t, tuple) else [init_t]) + (
        [] if xs_t is None else list(xs_t) if isinstance(xs_t, tuple) else [xs_t]) + list(P.values())
    return [o.numpy() for o in outs], [t.grad for t in leaves if t.requires_grad]


def assert_same(a, b):
    for p, q in zip(a[0] + a[1], b[0] + b[1]):
        if p is None or q is None:
            assert p is None and q is None or np.all(np.asarray(p if q is None else q) == 0)
            continue
        assert p.shape == q.shape and p.dtype == q.dtype
        np.testing.assert_allclose(p, q, **EXACT)
    assert len(a[0]) == len(b[0]) and len(a[1]) == len(b[1])


def test_the_corpus_has_forty_bodies():
    assert len(CORPUS) >= 40


@settings(max_examples=6, deadline=None)
@given(dims=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)), T=st.integers(1, 5),
       seed=st.integers(0, 2 ** 16))
@pytest.mark.parametrize("name", CORPUS)
def test_both_backends_equal_the_plain_loop(name, dims, T, seed):
    ref = run(name, dims, T, seed, "loop")
    assert_same(run(name, dims, T, seed, "interpret"), ref)
    assert_same(run(name, dims, T, seed, "numpy"), ref)


@pytest.mark.parametrize("name", CORPUS)
def test_the_numpy_backend_generates_code_for_every_body(name):
    """No body of the corpus falls back to the interpreter (the generator handles all of them)."""
    factory, init_spec, xs_spec, reads = CORPUS[name]
    dims, rng = (2, 3, 2), np.random.default_rng(0)
    mixed = name == "several carries of different dtypes"
    init = make(init_spec, dims, rng, dtype="mixed" if mixed else np.float64)
    to_t = lambda a: tuple(mg.Tensor(v) for v in a) if isinstance(a, tuple) else mg.Tensor(a)
    xs = None if xs_spec is None else to_t(make(xs_spec, dims, rng, 4))
    P = {k: mg.Tensor(rng.uniform(-1, 1, s(dims)), requires_grad=True) for k, s in reads.items()}
    prog = mg.scan_program(factory(P, dims), to_t(init), xs, length=4 if xs is None else None)
    runner = backends.get(prog, "numpy")
    assert isinstance(runner, Compiled), getattr(runner, "fallback", None)


# ------------------------------------------------------------------ each pass alone

def _program(eqns, carry_in, xs_in, reads, carry_out, ys_out):
    return Program(tuple(carry_in), tuple(xs_in), tuple(reads), tuple(eqns), tuple(carry_out), tuple(ys_out))


def _vars():
    f = np.dtype(np.float64)
    c = Var(0, (2, 3), f, "carry", True)
    x = Var(1, (2, 3), f, "x", True)
    w = Var(2, (3, 3), f, "read", True)
    b = Var(3, (3,), f, "read", True)
    return c, x, w, b, f


def test_dce_keeps_what_the_step_returns_depends_on():
    c, x, w, b, f = _vars()
    used = Var(4, (2, 3), f, "local", True)
    dead = Var(5, (2, 3), f, "local", True)
    prog = _program([Eqn(mg.ops.add.prim, (c, x), (), used, origin=0),
                     Eqn(mg.ops.multiply.prim, (c, c), (), dead, origin=1)], [c], [x], [], [used], [])
    out = passes.dce(prog)
    assert [e.out for e in out.eqns] == [used] and out.passes == ("dce",)
    assert len(prog.eqns) == 2                              # a pass returns a new program


def test_stage_hoists_through_batch_rules_and_keeps_the_carry_in_the_loop():
    c, x, w, b, f = _vars()
    xw = Var(4, (2, 3), f, "local", True)
    xwb = Var(5, (2, 3), f, "local", True)
    ww = Var(6, (3, 3), f, "local", True)
    h = Var(7, (2, 3), f, "local", True)
    s = Var(8, (2, 3), f, "local", True)
    prog = _program([Eqn(mg.ops.matmul.prim, (x, w), (), xw, origin=0),
                     Eqn(mg.ops.add.prim, (xw, b), (), xwb, origin=1),
                     Eqn(mg.ops.multiply.prim, (w, w), (), ww, origin=2),
                     Eqn(mg.ops.matmul.prim, (c, ww), (), h, origin=3),
                     Eqn(mg.ops.add.prim, (h, xwb), (), s, origin=4)], [c], [x], [w, b], [s], [])
    stages = [e.stage for e in passes.stage(prog).eqns]
    assert stages == ["hoisted", "hoisted", "once", "loop", "loop"]
    assert [e.stage for e in passes.stage(prog, hoist=False).eqns] == ["loop"] * 5
    summed = Var(9, (2,), f, "local", True)                 # a reduction has no batch rule: not hoisted
    prog2 = _program([Eqn(mg.ops.sum.prim, (x,), (("axis", 1), ("keepdims", False)), summed, origin=0)],
                     [c], [x], [], [c], [summed])
    assert passes.stage(prog2).eqns[0].stage == "loop"


def test_a_user_primitive_can_declare_its_batch_rule():
    c, x, w, b, f = _vars()
    y = Var(4, (2, 3), f, "local", True)
    plain = mg.primitive(lambda a: (a * 2, lambda g: (g * 2,)), name="twice")
    declared = mg.primitive(lambda a: (a * 2, lambda g: (g * 2,)), name="twice", batch="elementwise")
    for prim, stage in ((plain, "loop"), (declared, "hoisted")):
        prog = _program([Eqn(prim.prim, (x,), (), y, origin=0)], [c], [x], [], [c], [y])
        assert passes.stage(prog).eqns[0].stage == stage


def test_defer_marks_a_read_weight_of_a_per_step_product():
    c, x, w, b, f = _vars()
    h = Var(4, (2, 3), f, "local", True)
    hb = Var(5, (2, 3), f, "local", True)
    prog = passes.stage(_program([Eqn(mg.ops.matmul.prim, (c, w), (), h, origin=0),
                                  Eqn(mg.ops.add.prim, (h, b), (), hb, origin=1)], [c], [x], [w, b], [hb], []))
    deferred = passes.defer(prog)
    assert [e.deferred for e in deferred.eqns] == [(1,), ()]
    frozen = Var(2, (3, 3), f, "read", False)               # no gradient wanted: nothing to defer
    prog = passes.stage(_program([Eqn(mg.ops.matmul.prim, (c, frozen), (), h, origin=0)], [c], [x], [frozen],
                                 [h], []))
    assert passes.defer(prog).eqns[0].deferred == ()


def test_buffer_reuse_writes_into_a_dead_owned_buffer_of_the_same_shape_only():
    import ast
    code = ast.parse("a = p * q\nb = a + r\nc = b * s\nd = c + a").body
    info = {n: ((64, 64), np.dtype(np.float64)) for n in "abcdpqrs"}
    out, groups = reuse(code, info, live_out={"d"})
    text = ast.unparse(ast.Module(out, []))
    assert "b = a + r" in text                              # a is read again below: not reused
    assert "c = np.multiply(b, s, out=b)" in text           # b is dead after: its buffer takes c
    assert groups.of["c"] == groups.of["b"]
    small = {n: ((2, 2), np.dtype(np.float64)) for n in "ab"}
    assert ast.unparse(reuse(ast.parse("a = p * q\nb = a + 1.0").body, small, live_out={"b"})[0][1]) == "b = a + 1.0"


def test_buffer_reuse_never_writes_into_a_view_that_is_still_read():
    import ast
    code = ast.parse("a = p * q\nv = a.reshape(-1)\nb = a + r\nc = v * b").body
    info = {n: ((64, 64), np.dtype(np.float64)) for n in "abcpqr"}
    out, _ = reuse(code, info, live_out={"c"})
    assert "out=a" not in ast.unparse(ast.Module(out, []))


def test_flatten_names_each_arithmetic_step():
    import ast
    info = {n: ((64, 64), np.dtype(np.float64)) for n in "gy"}
    out = flatten(ast.parse("d = g * (y - y * y)").body, info, "_t")
    text = ast.unparse(ast.fix_missing_locations(ast.Module(out, [])))
    assert text.splitlines() == ["_t0 = y * y", "_t1 = y - _t0", "d = g * _t1"]
    assert info["_t1"] == ((64, 64), np.dtype(np.float64))


# ------------------------------------------------------------------ listing

def test_the_listing_names_every_stage_and_primitive():
    mg.seed(0)
    lstm = nn.LSTM(3, 4, return_sequences=True, dtype=np.float64)
    prog = mg.scan_program(lambda c, x: ((*nn.lstm_step(x, c, lstm.U, lstm.W, lstm.b),), c[0]),
                           (mg.Tensor(np.zeros((2, 4))), mg.Tensor(np.zeros((2, 4)))), mg.Tensor(np.zeros((5, 2, 3))))
    text = str(prog)
    for part in ("before the loop", "forward loop", "reverse loop", "after the loop", "= matmul(", "= sigmoid(",
                 "= tanh(", "deferred", "(all steps)"):
        assert part in text, part
    assert prog.passes == ("dce", "stage", "defer")


# ------------------------------------------------------------------ threads, memory, the caches

def _lstm_and_inputs(batches, seed=0):
    mg.seed(seed)
    lstm = nn.LSTM(4, 8, return_sequences=True, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return lstm, [rng.standard_normal((b, 6, 4)) for b in batches]


def _step(lstm, x):
    U, W, b = (mg.Tensor(p.numpy().copy(), requires_grad=True) for p in (lstm.U, lstm.W, lstm.b))
    out = mg.scan(lambda c, xt: ((*nn.lstm_step(xt, c, U, W, b),), c[0]),
                  (mg.Tensor(np.zeros((x.shape[0], 8))), mg.Tensor(np.zeros((x.shape[0], 8)))),
                  mg.Tensor(x.transpose(1, 0, 2)))[1]
    (out * out).sum().backward()
    return out.numpy(), U.grad, W.grad


def test_one_looped_lstm_from_four_threads_with_different_batch_sizes():
    lstm, xs = _lstm_and_inputs([1, 2, 3, 5])
    expected = [_step(lstm, x) for x in xs]
    errors, wrong = [], []

    def worker(k):
        try:
            for _ in range(300):
                for got, ref in zip(_step(lstm, xs[k]), expected[k]):
                    if not np.array_equal(got, ref):
                        wrong.append(k)
        except Exception as err:            # noqa: BLE001  (reported below)
            errors.append(err)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong


def test_first_compiles_of_distinct_bodies_in_four_threads_at_once():
    backends.clear_cache()
    inline.clear_templates()             # the primitives' templates too: made and shared meanwhile
    barrier, errors, results = threading.Barrier(4), [], {}

    def worker(k):
        try:
            a = mg.Tensor(np.full(3, 0.1 * (k + 1)), requires_grad=True)
            body = [lambda h, x: ((h * a + x).tanh(), h), lambda h, x: ((h + a * x).sigmoid(), h * 2.0),
                    lambda h, x: (mg.maximum(h, x * a), h.exp()), lambda h, x: ((h @ np.eye(3) + a).tanh(), None)][k]
            barrier.wait()
            carry, _ = mg.scan(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((4, 2, 3))))
            carry.sum().backward()
            ref, _ = plain_loop(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((4, 2, 3))))
            results[k] = np.allclose(carry.numpy(), ref.numpy(), **EXACT)
        except Exception as err:            # noqa: BLE001
            errors.append(err)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {0: True, 1: True, 2: True, 3: True}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_forward_without_backward_frees_its_saved_arrays_with_the_collector_off(backend):
    """No reference cycle (hub vjp -> outputs -> Tensor -> Node -> hub): dropping the outputs
    frees what the loop saved for backward by reference counting alone."""
    if backend == "numba":
        pytest.importorskip("numba")
    from minigrad.looped.jit import JitRunner
    runner = {"numpy": Compiled, "numba": JitRunner}[backend]
    lstm, (x,) = _lstm_and_inputs([3])
    lstm.backend = backend
    seen = []
    real = runner.forward

    def spy(self, run, t0, t1, carry, keep, Y=None):
        carry, saved = real(self, run, t0, t1, carry, keep, Y)
        for item in saved or ():
            for a in (item if isinstance(item, list) else []):      # per-step values the loop allocated
                if isinstance(a, np.ndarray) and a.base is None:
                    seen.append(weakref.ref(a))
        return carry, saved
    was = gc.isenabled()
    gc.disable()
    try:
        runner.forward = spy
        out = lstm(mg.Tensor(x))
        assert out.requires_grad and seen
        del out
        assert all(r() is None for r in seen)
    finally:
        runner.forward = real
        if was:
            gc.enable()


# ------------------------------------------------------------------ checkpointing

@pytest.mark.parametrize("T", [1, 4, 9])
@pytest.mark.parametrize("k", [1, 3, "T", "T+5"])
@pytest.mark.parametrize("backend", ["numpy", "interpret"])
def test_checkpointing_gives_the_same_gradients(T, k, backend):
    k = {"T": T, "T+5": T + 5}.get(k, k)
    rng = np.random.default_rng(T * 10 + (k if isinstance(k, int) else 0))
    params = [rng.standard_normal(s) * 0.5 for s in ((3, 16), (4, 16), (16,))]
    x = rng.standard_normal((T, 2, 3))

    def grads(checkpoint):
        U, W, b = (mg.Tensor(p, requires_grad=True) for p in params)
        xs = mg.Tensor(x, requires_grad=True)
        h0 = mg.Tensor(np.zeros((2, 4)), requires_grad=True)
        (h, c), hs = mg.scan(lambda s, xt: ((*nn.lstm_step(xt, s, U, W, b),), s[0] * 2.0),
                             (h0, mg.Tensor(np.zeros((2, 4)))), xs, checkpoint=checkpoint, backend=backend)
        ((hs ** 2).sum() + (c * h).sum()).backward()
        return [hs.numpy(), U.grad, W.grad, b.grad, xs.grad, h0.grad]
    for a, b_ in zip(grads(k), grads(None)):
        np.testing.assert_allclose(a, b_, **EXACT)


def test_a_checkpointed_layer_keeps_a_fraction_of_the_memory():
    import tracemalloc
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.uniform(-1, 1, (8, 400, 16)).astype(np.float32))
    peaks = {}
    for k in (None, 20):
        lstm = nn.LSTM(16, 32, return_sequences=True, dtype=np.float32, checkpoint=k)
        lstm(x).sum().backward()
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            lstm(x).sum().backward()
            peaks[k] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert peaks[20] < 0.6 * peaks[None], peaks


def test_checkpoint_and_backend_are_checked():
    h, xs = mg.Tensor(np.zeros((1, 2))), mg.Tensor(np.zeros((3, 1, 2)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="checkpoint"):
            mg.scan(lambda c, x: (c + x, None), h, xs, checkpoint=bad)
        with pytest.raises(ValueError, match="checkpoint"):
            nn.LSTM(2, 3, checkpoint=bad)
    with pytest.raises(ValueError, match="backend"):
        mg.scan(lambda c, x: (c + x, None), h, xs, backend="numba-please")
    with pytest.raises(ValueError, match="backend"):
        nn.GRU(2, 3, backend="cuda")


# ------------------------------------------------------------------ the old compiler's defects

def test_a_rebound_global_reaches_looped_and_eager_alike():
    global GAIN
    h0, xs = mg.Tensor(np.full((1, 2), 0.3)), mg.Tensor(np.ones((3, 1, 2)))
    body = CORPUS["user primitive reading a global"][0]({}, None)
    try:
        for gain in (2.0, -1.5):
            GAIN = gain
            looped, _ = mg.scan(body, h0, xs, backend="numpy")
            eager, _ = plain_loop(body, h0, xs)
            np.testing.assert_allclose(looped.numpy(), eager.numpy(), **EXACT)
    finally:
        GAIN = 2.0


def test_a_layer_follows_a_rebound_global_of_its_cells_primitives(monkeypatch):
    """The layers reuse the trace of their own cells; the compiled code they reuse still checks,
    at every call, the globals it inlined. Here sigmoid's clip floor, folded in as a constant."""
    mg.seed(2)
    lstm = nn.LSTM(3, 4, return_sequences=True, dtype=np.float64)
    twin = nn.LSTM(3, 4, return_sequences=True, dtype=np.float64, unroll=True)
    twin.set_weights(lstm.get_weights())
    x = mg.Tensor(np.random.default_rng(0).standard_normal((2, 5, 3)) * 3)
    np.testing.assert_allclose(lstm(x).numpy(), twin(x).numpy(), **EXACT)
    zero_floor = lambda shape, dtype: np.zeros(shape, dtype)     # clip at 0: sigmoid(x < 0) becomes 0.5
    monkeypatch.setattr(mg.ops, "_exp_floor_like", zero_floor)
    codegen.foldable(zero_floor)
    np.testing.assert_allclose(lstm(x).numpy(), twin(x).numpy(), **EXACT)


def test_a_primitive_whose_file_changed_since_import_is_called_not_inlined(tmp_path, monkeypatch):
    import importlib
    mod = tmp_path / "edited_prim.py"
    mod.write_text("import numpy as np\nimport minigrad as mg\n\n\n@mg.primitive\n"
                   "def double(x):\n    return x * 2.0, lambda g: (g * 2.0,)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_prim")
    mod.write_text("import numpy as np\nimport minigrad as mg\n\n\n@mg.primitive\n"
                   "def double(x):\n    return x * 3.0, lambda g: (g * 3.0,)\n")   # edited, not reloaded
    body = lambda h, x: (module.double(h) * 0.1 + x, h)
    h0, xs = mg.Tensor(np.ones((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    looped, _ = mg.scan(body, h0, xs, backend="numpy")
    eager, _ = plain_loop(body, h0, xs)
    np.testing.assert_allclose(looped.numpy(), eager.numpy(), **EXACT)


def test_a_user_primitive_of_the_usual_shape_is_inlined_and_others_are_called():
    """The generator inlines a user primitive's source like the library's own (no call per step);
    one whose source it cannot read (made by exec, or behind another decorator) is called."""
    h0, xs = mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((4, 2, 3)))
    W = mg.Tensor(np.eye(3) * 0.5, requires_grad=True)
    sources = {}
    for name, body in (("inlined", lambda h, x: (softsign(h @ W + x), h)),
                       ("called", lambda h, x: (nosource(h @ W) + cube(x), h))):
        runner = backends.get(mg.scan_program(body, h0, xs), "numpy")
        sources[name] = "\n".join(runner.sources.values())
    assert "softsign" not in sources["inlined"] and "np.abs" in sources["inlined"]
    assert sources["called"].count("= P") >= 2                    # P<k>(...): the primitive called


def _doubled(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        out, vjp = fn(*a, **kw)
        return out * 2.0, lambda g: tuple(x * 2.0 for x in vjp(g))
    return wrapper


@mg.primitive
@_doubled
def doubled_identity(x):
    return x, lambda g: (g,)


def test_a_decorator_that_changes_a_primitive_is_run_not_bypassed():
    """``inspect.getsource`` follows ``functools.wraps`` to the wrapped function: inlining that
    source would drop the decorator's work. Looped must equal eager."""
    h0, xs = mg.Tensor(np.full((2, 3), 0.1), requires_grad=True), mg.Tensor(np.ones((4, 2, 3)))
    body = lambda h, x: ((doubled_identity(h) * 0.3 + x).tanh(), h)
    ref = plain_loop(body, h0, xs)[0]
    ref.sum().backward()
    ref_grad, h0.grad = h0.grad, None
    got = mg.scan(body, h0, xs, backend="numpy")[0]
    got.sum().backward()
    np.testing.assert_allclose(got.numpy(), ref.numpy(), **EXACT)
    np.testing.assert_allclose(h0.grad, ref_grad, **EXACT)


def test_compiling_never_calls_a_vjp():
    calls = []

    @mg.primitive
    def watched(x):
        def vjp(g):
            calls.append(1)
            raise AssertionError("a vjp ran without a backward")
        return x * 1.0, vjp
    a = mg.Tensor(np.ones(3), requires_grad=True)
    for backend in ("numpy", "interpret"):
        carry, ys = mg.scan(lambda h, x: ((watched(h) * a + x).tanh(), h), mg.Tensor(np.zeros((2, 3))),
                            mg.Tensor(np.ones((4, 2, 3))), backend=backend)
        assert carry.requires_grad
    assert calls == []


def test_the_cache_is_by_structure_and_values_are_bound_at_every_call(monkeypatch):
    backends.clear_cache()
    compiles = []
    real = backends.compile_numpy
    monkeypatch.setattr(backends, "compile_numpy", lambda prog: compiles.append(1) or real(prog))
    for scale in (0.5, 2.0, -1.0):
        a = mg.Tensor(np.full(3, scale), requires_grad=True)
        ramp = np.linspace(0, scale, 3)
        body = lambda h, x: ((h * a + x * ramp + scale).tanh(), h)
        looped, _ = mg.scan(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((5, 2, 3))))
        eager, _ = plain_loop(body, mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.ones((5, 2, 3))))
        np.testing.assert_allclose(looped.numpy(), eager.numpy(), **EXACT)
    assert len(compiles) == 1


@mg.primitive
def times_k(x, *, k):
    """Folds one way for k=True and another for k=1, which are equal and hash alike."""
    if k is True:
        return x * 2.0, lambda g: (g * 2.0,)
    return x * k, lambda g: (g * k,)


def test_a_primitive_folded_for_a_static_value_is_not_reused_for_an_equal_value_of_another_type():
    inline.clear_templates()
    h0, xs = mg.Tensor(np.full((1, 2), 0.3)), mg.Tensor(np.ones((3, 1, 2)))
    for k in (True, 1, 1.0, np.float32(1.0)):
        body = lambda h, x, k=k: ((times_k(h, k=k) * 0.5 + x).tanh(), h)
        looped, _ = mg.scan(body, h0, xs, backend="numpy")
        eager, _ = plain_loop(body, h0, xs)
        np.testing.assert_allclose(looped.numpy(), eager.numpy(), **EXACT)
    assert len({inline._frozen(v) for v in (1, True, 1.0, -0.0, 0.0, np.float32(1), np.float64(1))}) == 7
    for unkeyed in (np.ones(2), [1, 2], float("nan")):
        with pytest.raises(TypeError):
            inline._frozen(unkeyed)


def test_each_use_of_a_primitive_gets_its_own_copy_of_one_folded_template():
    """A primitive's source is parsed and folded once per set of compile-time facts (static
    arguments, operand ranks, shapes, dtypes); each use gets a copy under its own names, which
    later stages may rewrite without touching the template or another use."""
    inline.clear_templates()
    src = inline.source_of(mg.ops.matmul.prim.fn)
    f64 = np.dtype(np.float64)

    def use(a, b, prefix, shape=(2, 3)):
        return src.instantiate(prefix, [a, b], {"needs_grad": (True, True)}, {}, {a: shape, b: (3, 4)},
                               {a: 2, b: 2}, None, "g", {a: f64, b: f64})

    def text(inl):
        exprs = [inl.out] + [g for g in inl.grads if g is not None]
        return ast.unparse(ast.Module(inl.fwd + inl.vjp + [ast.Expr(e) for e in exprs], []))

    first = use("a", "b", "_0_")
    for tree in first.fwd + first.vjp + [first.out] + first.grads:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                node.id = "spoiled"                  # what a later stage may do to its copy
    second, third = use("c", "d", "_1_"), use("c", "d", "_1_")
    assert len(src._templates) == 1
    assert text(second) == text(third) and "spoiled" not in text(second)
    assert "c @ d" in text(second) and "_mm_grads" not in text(second)     # the helper folded in
    use("a", "b", "_2_", shape=(5, 3))
    assert len(src._templates) == 2


def test_the_tree_walks_agree_with_the_ast_modules_own():
    tree = ast.parse("def f(a, b):\n    x, (y, z) = a @ b, (1, b)\n    return [q for q in x if q], y.T + z")
    for ctx in (ast.Load, ast.Store):
        assert names_in(tree, ctx) == {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                                       and isinstance(n.ctx, ctx)}
    made = [ast.Assign([ast.Name("t", ast.Store())], ast.BinOp(ast.Name("a", ast.Load()), ast.Add(),
                                                               ast.Constant(1.0)))]
    ours, theirs = (ast.parse("def f(a):\n    return a") for _ in range(2))
    for tree in (ours, theirs):
        tree.body[0].body[:0] = inline.copy_tree(made)       # new statements, without positions
    codegen._locate(ours)
    ast.fix_missing_locations(theirs)
    assert ast.dump(ours, include_attributes=True) == ast.dump(theirs, include_attributes=True)


# ------------------------------------------------------------------ outputs, parameters and in-place changes
# Sizes of at least 1024 elements: the generator reuses buffers only from there on.

_pick_ns = {"np": np}
exec("def pick(a, b):\n    return b, lambda g: (None, g)\n", _pick_ns)
pick = mg.primitive(_pick_ns["pick"])            # called, not inlined: returns its second operand itself


@pytest.mark.parametrize("grad", [False, True])
def test_a_called_primitive_returning_a_parameter_never_gets_it_overwritten(grad):
    rng = np.random.default_rng(5)
    A0, X0, W0 = rng.uniform(-1, 1, (32, 64)), rng.uniform(-1, 1, (3, 32, 64)), rng.uniform(-1, 1, (32, 64))
    outs = {}
    for how in ("loop", "numpy"):
        W = mg.Tensor(W0.copy(), requires_grad=grad)
        body = lambda h, x: ((pick(h * x, W) * 2.0 + h * 0.5).tanh(), h)
        h0, xs = mg.Tensor(A0.copy()), mg.Tensor(X0.copy())
        carry = plain_loop(body, h0, xs)[0] if how == "loop" else mg.scan(body, h0, xs, backend=how)[0]
        outs[how] = carry.numpy().copy()
        np.testing.assert_array_equal(W.numpy(), W0)
    np.testing.assert_allclose(outs["numpy"], outs["loop"], **EXACT)


@pytest.mark.parametrize("backend", ["numpy", "interpret"])
def test_outputs_never_share_memory_with_each_other_the_inputs_or_a_parameter(backend):
    rng = np.random.default_rng(0)
    W = mg.Tensor(rng.uniform(-1, 1, (64, 64)) * 0.1, requires_grad=True)
    h0, xs = mg.Tensor(rng.uniform(-1, 1, (32, 64))), mg.Tensor(rng.uniform(-1, 1, (4, 32, 64)))
    carry, ys = mg.scan(lambda h, x: (lambda n: (n, n))((h @ W + x).tanh()), h0, xs, backend=backend)
    assert not np.shares_memory(carry.numpy(), ys.numpy())
    V = mg.Tensor(np.ones((32, 64)), requires_grad=True)
    for body in (lambda c, x: (V, c * x), lambda c, x: (c, c * x)):
        carry, _ = mg.scan(body, h0, xs, backend=backend)
        assert not np.shares_memory(carry.numpy(), V.numpy()) and not np.shares_memory(carry.numpy(), h0.numpy())


@pytest.mark.parametrize("backend", ["numpy", "interpret"])
def test_an_in_place_change_of_an_output_or_a_read_value_before_backward_is_refused(backend):
    rng = np.random.default_rng(1)
    h0 = mg.Tensor(rng.uniform(-1, 1, (32, 64)), requires_grad=True)
    xs = mg.Tensor(rng.uniform(-1, 1, (4, 32, 64)))
    W = mg.Tensor(rng.uniform(-1, 1, (64, 64)) * 0.1, requires_grad=True)
    W2 = W * 1.0                                  # not a leaf: versions, not pins
    carry, ys = mg.scan(lambda h, x: ((h @ W2 + x).tanh(), h), h0, xs, backend=backend)
    carry += 5.0                                  # the last step's tanh output: backward reads it
    with pytest.raises(RuntimeError, match="modified in place"):
        (carry * carry).sum().backward()
    carry, ys = mg.scan(lambda h, x: ((h @ W2 + x).tanh(), h), h0, xs, backend=backend)
    W2 += 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        carry.sum().backward()
    M = rng.uniform(-1, 1, (32, 64))              # a plain array the body takes: pinned, as eager pins it
    carry, _ = mg.scan(lambda h, x: ((h * M + x).tanh(), h), h0, xs, backend=backend)
    with pytest.raises(ValueError, match="read-only"):
        M[...] = 0.0


def test_integer_and_boolean_outputs_need_no_gradient():
    h0 = mg.Tensor(np.ones((2, 3)), requires_grad=True)
    carry, ys = mg.scan(lambda h, x: (h * x, (h > 0, h)), h0, mg.Tensor(np.ones((3, 2, 3))))
    assert carry.requires_grad and ys[1].requires_grad and not ys[0].requires_grad
