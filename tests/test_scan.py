"""mg.scan (issue 4): JAX's ``lax.scan`` contract, checked against the plain Python loop it stands for.

Every body in the table below runs twice: through ``mg.scan`` (one graph node, generated numpy
loops) and through ``plain_loop`` (ordinary Tensor ops, one engine node per op and step). Values
and the gradients of init, xs and every outside tensor must agree to 1e-10 in float64; a sample of
bodies is also gradchecked against finite differences, which share nothing with either path.
"""
import contextlib

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import example, given

import minigrad as mg
from minigrad import nn

TIGHT = dict(rtol=1e-10, atol=1e-12)
B, H, I = 2, 3, 2


def plain_loop(fn, init, xs=None, length=None):
    """What scan computes, as the loop JAX documents it by."""
    T = length if xs is None else (xs[0] if isinstance(xs, tuple) else xs).shape[0]
    carry, ys = init, []
    for t in range(T):
        x_t = None if xs is None else tuple(x[t] for x in xs) if isinstance(xs, tuple) else xs[t]
        carry, y = fn(carry, x_t)
        ys.append(y)
    if ys[0] is None:
        return carry, None
    if isinstance(ys[0], tuple):
        return carry, tuple(mg.stack([y[k] for y in ys], 0) for k in range(len(ys[0])))
    return carry, mg.stack(ys, 0)


def leaves(tree):
    if tree is None:
        return []
    return list(tree) if isinstance(tree, tuple) else [tree]


# ------------------------------------------------------------------ the table of bodies

@mg.primitive
def softsign(x):
    """A user primitive (not inlinable by scan: it is called step by step)."""
    d = 1 + np.abs(x)
    return x / d, lambda g: (g / d ** 2,)


@mg.primitive
def scaled(x, s, *, needs_grad=(True, True)):
    """A user primitive with two operands that asks which need a gradient."""
    nx, ns = needs_grad
    return x * np.tanh(s), lambda g: (g * np.tanh(s) if nx else None,
                                      (g * x * (1 - np.tanh(s) ** 2)).sum(0) if ns else None)


def _mlp(P):
    def body(h, x):
        h = (x @ P["U"] + h @ P["W"] + P["b"]).tanh()
        return h, h
    return body


def _tuple_carry(P):
    def body(carry, x):
        h, c = carry
        c = c * x.sigmoid() + (h @ P["W"]).tanh()
        h = c.tanh() * P["a"]
        return (h, c), (h, c * 2.0)
    return body


def _xs_tuple(P):
    def body(h, inp):
        x1, x2 = inp
        h = (x1 @ P["U"] + h * x2).tanh()
        return h, x2 * h
    return body


def _broadcast(P):
    def body(h, x):
        h = (h * P["v"] + P["s"]).tanh() + x * P["m"] + P["col"] + P["k"]
        return h, h * P["s"]
    return body


def _reductions(P):
    def body(h, x):
        centred = h - h.mean(axis=1, keepdims=True)
        h = (centred + h.max(axis=-1, keepdims=True) * x + h.softmax(axis=-1) * P["a"]).tanh()
        return h, (h.sum(axis=1), h.sum(), x.min(axis=0))
    return body


def _torch_names(P):
    """The elementwise primitives added for PyTorch users, and dim=/keepdim= inside a body."""
    def body(h, x):
        s = h.sin() * x.cos() + (h * h).log1p() * P["a"] - (x * 0.5).expm1()
        h = (s - s.mean(dim=1, keepdim=True)).tanh() + h.std(dim=-1, keepdim=True) * 0.1
        return h, h.softmax(dim=0).square()
    return body


def _getitem(P):
    def body(h, x):
        rolled = mg.concatenate([h[:, 1:], h[:, :1] * x[:, :1]], axis=1)
        picked = h[:, [0, 2, 2]]                                 # an advanced index, with a repeat
        h = (rolled + picked * P["a"] + h[..., -1:] + h[0]).tanh()
        return h, (h[1], h[:, 0], h[:, ::2])
    return body


def _where(P):
    def body(h, x):
        h = mg.where(h > x, h * P["a"], x - h)
        h = mg.where(x >= 0.0, h, 0.5 * h) + mg.where(h < 0.1, 1.0, P["a"]).tanh()
        return h.tanh(), h != h.sum(axis=1, keepdims=True)       # a boolean y
    return body


def _user_primitives(P):
    def body(h, x):
        h = softsign(h @ P["W"] + x) + scaled(h, P["a"])
        return h, softsign(h * P["a"])
    return body


def _passthrough(P):
    return lambda c, x: (c, x * c + P["a"])


def _carry_from_x(P):
    return lambda c, x: (x, c * P["a"])


def _no_carry_dependence(P):
    return lambda c, x: (x * P["a"] + P["b"], c)


def _constants(P):
    ramp = np.linspace(-1.0, 1.0, H)

    def body(h, x):
        h = (h * 2.0 + ramp - 1 + (1.0 - h) ** 2 / 4 + 2.0 ** (h * 0.1) + np.float64(0.5) * x).tanh()
        return h, h / 3
    return body


def _detach(P):
    def body(h, x):
        return (h.detach() * x + h * P["a"]).tanh(), h.detach() * P["a"]
    return body


def _math(P):
    def body(h, x):
        h = h / (1.0 + h ** 2) + (x.exp() + 1.0).log() + (x * x + 1.0).sqrt() + abs(h) * P["a"]
        h = h.relu() - (-h).relu() * 0.5 + h.clip(-0.5, 0.5) + mg.maximum(h, x) - mg.minimum(h, P["a"])
        return (h * 0.3).tanh(), h.sigmoid()
    return body


def _shapes(P):
    def body(h, x):
        flat = h.reshape(B * H).reshape(B, H)
        h = (flat @ P["W"].T + (h.T @ x).T.sum(axis=0) + x.transpose(1, 0).transpose() * 0.5).tanh()
        return h, mg.stack([h, x], axis=0)
    return body


def _hoisted_chain(P):
    def body(h, x):
        z = (x @ P["U"] + P["b"]).tanh() * 2.0 - 1.0              # carry-independent: hoisted
        return (h @ P["W"] + z).tanh(), z.sum(axis=1)
    return body


def _weight_in_both(P):
    def body(h, x):                                               # W in a hoisted and a per-step product
        return (x @ P["W"] + h @ P["W"]).tanh(), x @ P["W"]
    return body


def _invariant(P):
    def body(h, x):
        Wn = P["W"] / ((P["W"] * P["W"]).sum() + 1.0).sqrt()    # outside-only work inside the body
        return (h @ Wn + x).tanh(), Wn.sum() * h
    return body


def _batched_matmul(P):
    def body(h, x):
        h3 = (h.reshape(B, 1, H) @ P["W3"]).reshape(B, H)      # per-example matrices (B, H, H)
        return (h3 + x).tanh(), h @ P["v"]                     # and matrix @ vector
    return body


def _scalar_carry(P):
    return lambda c, x: ((c * 0.9 + (x * P["v"]).sum() * 0.1).tanh(), c * P["a"])


def _concat_weight(P):
    def body(h, x):
        return (mg.concatenate([h, x], axis=1) @ P["Wc"]).tanh(), None
    return body


def _xs_unused(P):
    return lambda h, x: ((h @ P["W"]).tanh(), h)


def _roles_in_ys(P):
    return lambda c, x: ((c + x).tanh(), (P["w"], x, c))            # ys: an outside tensor, x, the carry


def _outside_as_carry(P):
    return lambda c, x: (P["w"], c * x)


def _swapped_tuple(P):
    return lambda c, x: ((c[1], c[0] * x + P["a"]), c[0])


def _one_tensor_twice_in_carry(P):
    def body(c, x):
        n = (c[0] * c[1] + x * P["a"]).tanh()
        return (n, n), n
    return body


def _only_length(P):
    def body(h, _):
        return h * P["a"] + (h @ P["W"]).tanh() * 0.5, None
    return body


# name: (body factory, init shapes (a tuple of shapes for a tuple carry), xs shapes per step, outside shapes)
# Outside names starting with "k" are constants (no gradient); ``None`` xs means ``length=T``.
CASES = {
    "tensor carry, tensor xs": (_mlp, (B, H), (B, I), {"U": (I, H), "W": (H, H), "b": (H,)}),
    "tuple carry, tuple ys": (_tuple_carry, ((B, H), (B, H)), (B, H), {"W": (H, H), "a": (H,)}),
    "tuple xs": (_xs_tuple, (B, H), ((B, I), (B, H)), {"U": (I, H)}),
    "xs None with length": (_only_length, (B, H), None, {"a": (H,), "W": (H, H)}),
    "broadcasting": (_broadcast, (B, H), (B, H), {"v": (H,), "s": (), "m": (1, H), "col": (B, 1), "k": (H,)}),
    "reductions": (_reductions, (B, H), (B, H), {"a": (H,)}),
    "PyTorch names": (_torch_names, (B, H), (B, H), {"a": (H,)}),
    "getitem": (_getitem, (B, H), (B, H), {"a": (1, H)}),
    "comparisons and where": (_where, (B, H), (B, H), {"a": (H,)}),
    "user primitives": (_user_primitives, (B, H), (B, H), {"W": (H, H), "a": (H,)}),
    "carry passed through": (_passthrough, (B, H), (B, H), {"a": ()}),
    "carry from x": (_carry_from_x, (B, H), (B, H), {"a": (H,)}),
    "carry-independent carry": (_no_carry_dependence, (B, H), (B, H), {"a": (H,), "b": (B, H)}),
    "constants": (_constants, (B, H), (B, H), {}),
    "detach": (_detach, (B, H), (B, H), {"a": (H,)}),
    "math": (_math, (B, H), (B, H), {"a": (H,)}),
    "reshape and transpose": (_shapes, (B, H), (B, H), {"W": (H, H)}),
    "hoisted chain": (_hoisted_chain, (B, H), (B, I), {"U": (I, H), "W": (H, H), "b": (H,)}),
    "weight hoisted and per step": (_weight_in_both, (B, H), (B, H), {"W": (H, H)}),
    "invariant work": (_invariant, (B, H), (B, H), {"W": (H, H)}),
    "batched matmul": (_batched_matmul, (B, H), (B, H), {"W3": (B, H, H), "v": (H,)}),
    "scalar carry": (_scalar_carry, (), (B, H), {"v": (H,), "a": ()}),
    "concatenated weight": (_concat_weight, (B, H), (B, I), {"Wc": (H + I, H)}),
    "xs unused": (_xs_unused, (B, H), (B, I), {"W": (H, H)}),
    "ys are outside, x and carry": (_roles_in_ys, (B, H), (B, H), {"w": (B, H)}),
    "carry is an outside tensor": (_outside_as_carry, (B, H), (B, H), {"w": (B, H)}),
    "tuple carry swapped": (_swapped_tuple, ((B, H), (B, H)), (B, H), {"a": (H,)}),
    "one tensor twice in the carry": (_one_tensor_twice_in_carry, ((B, H), (B, H)), (B, H), {"a": (H,)}),
}


class Run:
    """Fresh Tensors for one case (values drawn from ``seed``), run by ``scan`` or ``plain_loop``."""

    def __init__(self, name, T, seed, grads=("init", "xs", "outside")):
        factory, init_shape, x_shape, outside = CASES[name]
        rng = np.random.default_rng(seed)
        rand = lambda shape: rng.uniform(-1.5, 1.5, shape)
        tuple_of = lambda s: s if isinstance(s, tuple) and s and isinstance(s[0], tuple) else None
        self.init = tuple(rand(s) for s in tuple_of(init_shape)) if tuple_of(init_shape) else rand(init_shape)
        if x_shape is None:
            self.xs, self.length = None, T
        elif tuple_of(x_shape):
            self.xs, self.length = tuple(rand((T, *s)) for s in x_shape), None
        else:
            self.xs, self.length = rand((T, *x_shape)), None
        self.outside = {k: rand(s) for k, s in outside.items()}
        self.factory, self.grads, self.seed = factory, grads, seed

    def tensors(self, tree, need):
        if tree is None:
            return None
        if isinstance(tree, tuple):
            return tuple(mg.Tensor(a.copy(), requires_grad=need) for a in tree)
        return mg.Tensor(tree.copy(), requires_grad=need)

    def __call__(self, how):
        init = self.tensors(self.init, "init" in self.grads)
        xs = self.tensors(self.xs, "xs" in self.grads)
        P = {k: mg.Tensor(a.copy(), requires_grad="outside" in self.grads and not k.startswith("k"))
             for k, a in self.outside.items()}
        run = mg.scan if how == "scan" else plain_loop
        carry, ys = run(self.factory(P), init, xs, length=self.length)
        outs = leaves(carry) + leaves(ys)
        rng = np.random.default_rng(self.seed + 1)
        loss = None
        for o in outs:
            if o.dtype.kind == "f":
                term = (o * rng.standard_normal(o.shape)).sum()
                loss = term if loss is None else loss + term
        if loss.requires_grad:
            loss.backward()
        grad = lambda t: np.zeros(t.shape) if t.grad is None else t.grad
        return {"outs": [o.numpy() for o in outs],
                "grads": [grad(t) for t in leaves(init) + leaves(xs) + list(P.values()) if t.requires_grad]}


def assert_runs_agree(a, b, **tol):
    tol = tol or TIGHT
    assert len(a["outs"]) == len(b["outs"]) and len(a["grads"]) == len(b["grads"])
    for p, q in zip(a["outs"], b["outs"]):
        assert p.shape == q.shape and p.dtype == q.dtype
        np.testing.assert_allclose(p, q, **tol)
    for p, q in zip(a["grads"], b["grads"]):
        np.testing.assert_allclose(p, q, **tol)


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("grads", [("init", "xs", "outside"), ("outside",), ("init",)],
                         ids=["all", "outside-only", "init-only"])
@pytest.mark.parametrize("name", CASES)
def test_scan_equals_the_plain_loop(name, grads, T):
    for seed in (0, 1):                 # the second call reuses the compiled program with new values
        r = Run(name, T, seed, grads)
        assert_runs_agree(r("scan"), r("loop"))


GRADCHECKED = ["tensor carry, tensor xs", "tuple carry, tuple ys", "tuple xs", "xs None with length", "broadcasting",
               "reductions", "PyTorch names", "getitem", "user primitives", "hoisted chain",
               "weight hoisted and per step", "batched matmul", "scalar carry"]


@pytest.mark.parametrize("name", GRADCHECKED)
def test_scan_gradients_match_finite_differences(name):
    r = Run(name, 3, seed=2)
    init, xs = r.tensors(r.init, True), r.tensors(r.xs, True)
    names = list(r.outside)
    inputs = leaves(init) + leaves(xs) + [mg.Tensor(r.outside[k], requires_grad=True) for k in names]
    n_init, n_xs = len(leaves(init)), len(leaves(xs))

    def fn(*ts):
        i = ts[:n_init] if isinstance(r.init, tuple) else ts[0]
        x = ts[n_init:n_init + n_xs] if isinstance(r.xs, tuple) else (ts[n_init] if n_xs else None)
        carry, ys = mg.scan(r.factory(dict(zip(names, ts[n_init + n_xs:]))), i, x, length=r.length)
        return tuple(o for o in leaves(carry) + leaves(ys) if o.dtype.kind == "f")
    assert mg.gradcheck(fn, inputs)


def _loss_and_grads(outs, ts):
    loss = sum((o * np.cos(np.arange(o.size)).reshape(o.shape)).sum() for o in outs)
    loss.backward()
    return [o.numpy() for o in outs] + [t.grad for t in ts]


@pytest.mark.parametrize("roles", ["init also read from outside", "xs also read whole from outside",
                                   "one tensor as two inits", "one tensor as two xs"])
def test_one_tensor_in_several_roles(roles):
    """Gradients from every role a tensor plays (init, xs, outside) add up, as in the plain loop."""
    results = []
    for run in (mg.scan, plain_loop):
        rng = np.random.default_rng(3)
        A = mg.Tensor(rng.standard_normal((B, H)), requires_grad=True)
        X = mg.Tensor(rng.standard_normal((4, B, H)), requires_grad=True)
        if roles == "init also read from outside":
            outs = run(lambda c, x: ((c * A + x).tanh(), c), A, X)
        elif roles == "xs also read whole from outside":
            outs = run(lambda c, x: ((c + x + (X * c).sum(axis=0)).tanh(), None), A, X)
        elif roles == "one tensor as two inits":
            outs = run(lambda c, x: ((c[0] * x, c[1] + x), None), (A, A), X)
        else:
            outs = run(lambda c, x: ((c * x[0] + x[1]).tanh(), x[0] * x[1]), A, (X, X))
        results.append(_loss_and_grads(leaves(outs[0]) + leaves(outs[1]), [A, X]))
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, **TIGHT)


def test_stacked_layers_chained_scans_and_reversed_xs():
    """A scan's outputs feeding another scan (stacked layers), and a reversed view as xs."""
    results = []
    for unroll in (False, True):
        mg.seed(0)
        first = nn.LSTM(2, 3, return_sequences=True, unroll=unroll, dtype=np.float64)
        second = nn.GRU(3, 2, return_sequences=True, unroll=unroll, dtype=np.float64)
        x = mg.Tensor(np.random.default_rng(1).standard_normal((2, 5, 2)), requires_grad=True)
        seq = first(x)
        out = second(seq[:, ::-1]) + second(seq)
        (out * out).sum().backward()
        results.append([out.numpy(), x.grad, first.U.grad, first.W.grad, second.W.grad, second.b.grad])
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, **TIGHT)


def test_two_backward_passes_through_different_outputs():
    results = []
    for run in (mg.scan, plain_loop):
        W = mg.Tensor(np.array([[0.5, -0.3], [0.2, 0.4]]), requires_grad=True)
        xs = mg.Tensor(np.random.default_rng(2).standard_normal((4, 1, 2)), requires_grad=True)
        carry, ys = run(lambda h, x: ((h @ W + x).tanh(), h * 2.0), mg.Tensor(np.ones((1, 2))), xs)
        carry.sum().backward(retain_graph=True)                    # the carry only
        first = W.grad.copy()
        (ys * ys).sum().backward()                                 # then the ys only
        results.append([first, W.grad, xs.grad])
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, **TIGHT)


def test_freezing_a_parameter_between_calls():
    rng = np.random.default_rng(0)
    lstm = nn.LSTM(2, 3, dtype=np.float64)
    x = mg.Tensor(rng.standard_normal((2, 3, 2)))
    lstm(x).sum().backward()
    lstm.zero_grad()
    lstm.W.requires_grad_(False)
    lstm(x).sum().backward()
    assert lstm.W.grad is None
    ref = nn.LSTM(2, 3, dtype=np.float64, unroll=True)
    ref.set_weights(lstm.get_weights())
    ref(x).sum().backward()
    np.testing.assert_allclose(lstm.U.grad, ref.U.grad, **TIGHT)


def test_per_step_product_of_a_3d_carry_and_a_2d_weight():
    results = []
    for run in (mg.scan, plain_loop):
        rng = np.random.default_rng(0)
        W = mg.Tensor(rng.standard_normal((3, 3)), requires_grad=True)
        h0 = mg.Tensor(rng.standard_normal((2, 1, 3)), requires_grad=True)
        xs = mg.Tensor(rng.standard_normal((4, 2, 1, 3)))
        carry, _ = run(lambda h, x: ((h @ W + x).tanh(), None), h0, xs)
        results.append(_loss_and_grads([carry], [W, h0]))
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, **TIGHT)


def test_compiling_a_body_warns_nothing():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init = mg.Tensor(np.zeros((3, 7)), requires_grad=True)        # a shape no other test compiles
        carry, _ = mg.scan(lambda h, x: (h.clip(-0.5, 0.5).transpose(1, 0).transpose(1, 0) + x, None), init,
                           mg.Tensor(np.ones((2, 3, 7))))
        carry.sum().backward()
    np.testing.assert_array_equal(init.grad, 0.0)


def test_indexing_with_a_traced_tensor_is_a_clear_error():
    """An index read from a traced tensor would be frozen at step 0 (a silently wrong lookup)."""
    E = mg.Tensor(np.random.default_rng(0).standard_normal((5, 3)), requires_grad=True)
    ids = mg.Tensor(np.array([[0, 1], [2, 3], [4, 0]]))
    with pytest.raises(RuntimeError, match="index"):
        mg.scan(lambda c, x: ((c + E[x]).tanh(), None), mg.Tensor(np.zeros((2, 3))), ids)
    with pytest.raises(RuntimeError, match="index"):                 # inside a tuple index too
        mg.scan(lambda c, x: ((c + E[x, :]).tanh(), None), mg.Tensor(np.zeros((2, 3))), ids)
    # the way that works: a one-hot product, from comparisons
    results = []
    for run in (mg.scan, plain_loop):
        E.grad = None
        one_hot = lambda x: mg.where(x.reshape(2, 1) == np.arange(5.0), 1.0, 0.0)
        carry, _ = run(lambda c, x: ((c + one_hot(x) @ E).tanh(), None), mg.Tensor(np.zeros((2, 3))), ids)
        results.append(_loss_and_grads([carry], [E]))
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, **TIGHT)
    _, ys = mg.scan(lambda c, x: (c, one_hot(x) @ E), mg.Tensor(np.zeros((2, 3))), ids)
    np.testing.assert_array_equal(ys.numpy(), E.numpy()[ids.numpy()])


# ------------------------------------------------------------------ a user-written cell, hypothesis-drawn

def minimal_gated_unit(P, masked):
    """A user's cell (a minimal gated unit), optionally with a Keras-style mask in the carry update."""
    def body(h, inp):
        x, m = inp if masked else (inp, None)
        f = (x @ P["Uf"] + h @ P["Wf"] + P["bf"]).sigmoid()
        cand = (x @ P["Uh"] + (f * h) @ P["Wh"] + P["bh"]).tanh()
        new = (1.0 - f) * h + f * cand
        if masked:
            return mg.where(m, new, h), mg.where(m, new, 0.0)
        return new, new
    return body


@st.composite
def cell_problems(draw):
    b, T = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    i, h = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    mask = draw(st.none() | hnp.arrays(bool, (T, b, 1)))
    if mask is not None:
        edit = draw(st.sampled_from(["as drawn", "a row all False", "False at the last step"]))
        if edit == "a row all False":
            mask[:, draw(st.integers(0, b - 1))] = False
        elif edit == "False at the last step":
            mask[-1] = False
    return b, T, i, h, mask, draw(st.integers(0, 2**32 - 1))


@given(cell_problems())
@example((1, 1, 1, 1, None, 0))
@example((1, 1, 2, 3, np.zeros((1, 1, 1), bool), 0))
@example((3, 4, 2, 2, np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0]], bool)[..., None], 1))
def test_user_cell_scan_equals_the_plain_loop(problem):
    b, T, i, h, mask, seed = problem
    rng = np.random.default_rng(seed)
    shapes = {"Uf": (i, h), "Wf": (h, h), "bf": (h,), "Uh": (i, h), "Wh": (h, h), "bh": (h,)}
    values = {k: rng.standard_normal(s) * 0.7 for k, s in shapes.items()}
    x, h0, R = rng.standard_normal((T, b, i)), rng.standard_normal((b, h)), rng.standard_normal((T, b, h))
    results = []
    for run in (mg.scan, plain_loop):
        P = {k: mg.Tensor(v.copy(), requires_grad=True) for k, v in values.items()}
        xs = mg.Tensor(x.copy(), requires_grad=True)
        init = mg.Tensor(h0.copy(), requires_grad=True)
        carry, ys = run(minimal_gated_unit(P, mask is not None), init, xs if mask is None else (xs, mg.Tensor(mask)))
        ((ys * R).sum() + (carry * R[0]).sum()).backward()
        results.append([carry.numpy(), ys.numpy(), init.grad, xs.grad, *(P[k].grad for k in shapes)])
    for a, c in zip(*results):
        np.testing.assert_allclose(a, c, **TIGHT)


# ------------------------------------------------------------------ values bound at every call

def test_closure_float_rebound_between_calls_is_not_stale():
    init, xs = mg.Tensor(np.ones((2, 3))), mg.Tensor(np.arange(12.0).reshape(4, 1, 3) / 10)
    scale = 2.0

    def body(c, x):
        return c * scale + x, c * scale
    first = mg.scan(body, init, xs)
    scale = 3.0
    second = mg.scan(body, init, xs)
    want = plain_loop(body, init, xs)
    for got, exp in zip(second, want):
        np.testing.assert_allclose(got.numpy(), exp.numpy(), **TIGHT)
    assert not np.allclose(first[0].numpy(), second[0].numpy())


def test_closure_tensor_rebound_or_changed_in_place_between_calls_is_not_stale():
    """A Tensor, an ndarray constant and a static index read from the enclosing scope are all
    rebound between two calls of one body (same structure, so the compiled program is reused)."""
    init, xs = mg.Tensor(np.ones((2, 3))), mg.Tensor(np.linspace(-1, 1, 12).reshape(4, 1, 3))
    w = mg.Tensor(np.full(3, 0.5), requires_grad=True)
    k = np.array([1.0, 2.0, 3.0])
    idx = 0

    def body(c, x):
        return (c * w + x * k).tanh(), c[:, idx]
    first = mg.scan(body, init, xs)[0].numpy()
    old_w = w
    w = mg.Tensor(np.full(3, -0.25), requires_grad=True)
    k = np.array([-1.0, 0.0, 1.0])
    idx = 2
    carry, ys = mg.scan(body, init, xs)
    (carry.sum() + ys.sum()).backward()
    scan_w, w = w, mg.Tensor(w.numpy(), requires_grad=True)         # the loop gets its own copy of the new w
    carry_ref, ys_ref = plain_loop(body, init, xs)
    (carry_ref.sum() + ys_ref.sum()).backward()
    assert not np.allclose(first, carry.numpy())
    np.testing.assert_allclose(carry.numpy(), carry_ref.numpy(), **TIGHT)
    np.testing.assert_allclose(ys.numpy(), ys_ref.numpy(), **TIGHT)
    np.testing.assert_allclose(scan_w.grad, w.grad, **TIGHT)
    assert old_w.grad is None                                        # the old tensor is out of the picture

    w = scan_w
    w.data = np.full(3, 0.75)                                        # changed in place between calls
    again = mg.scan(body, init, xs)[0]
    w = mg.Tensor(np.full(3, 0.75))
    np.testing.assert_allclose(again.numpy(), plain_loop(body, init, xs)[0].numpy(), **TIGHT)


def test_reading_an_outside_tensors_data_in_the_body_is_allowed_and_fresh():
    w = mg.Tensor(np.array([0.5, 1.0]))
    body = lambda c, x: (c * w.data + x, None)
    init, xs = mg.Tensor(np.ones((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    np.testing.assert_allclose(mg.scan(body, init, xs)[0].numpy(), [[1.875, 4.0]])
    w.data = np.array([2.0, 0.0])
    np.testing.assert_allclose(mg.scan(body, init, xs)[0].numpy(), [[15.0, 1.0]])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_rebinding_a_layer_parameter_between_calls(kind):
    rng = np.random.default_rng(0)
    layer = getattr(nn, kind)(2, 3, dtype=np.float64)
    x = mg.Tensor(rng.standard_normal((2, 4, 2)))
    before = layer(x).numpy()
    old_W = layer.W
    layer.W = nn.Parameter(rng.standard_normal(layer.W.shape))
    looped = layer(x)
    looped.sum().backward()
    unrolled = getattr(nn, kind)(2, 3, dtype=np.float64, unroll=True)
    unrolled.set_weights(layer.get_weights())
    want = unrolled(x)
    want.sum().backward()
    assert not np.allclose(looped.numpy(), before)
    np.testing.assert_allclose(looped.numpy(), want.numpy(), **TIGHT)
    np.testing.assert_allclose(layer.W.grad, unrolled.W.grad, **TIGHT)
    assert old_W.grad is None


# ------------------------------------------------------------------ clear errors

def _scan_error(body, init=None, xs=None, **kwargs):
    init = mg.Tensor(np.zeros((2, 3))) if init is None else init
    xs = mg.Tensor(np.ones((4, 2, 3))) if xs is None else xs
    return lambda: mg.scan(body, init, xs, **kwargs)


@pytest.mark.parametrize("body,error,match", [
    (lambda c, x: (c.sum(axis=0), None), TypeError, r"carry 0 must keep its shape and dtype.*\(2, 3\).*\(3,\)"),
    (lambda c, x: (c.astype(np.float32), None), TypeError, "carry 0 must keep its shape and dtype.*float32"),
    (lambda c, x: ((c, c), None), TypeError, "carry"),
    (lambda c, x: c, TypeError, "must return a pair"),
    (lambda c, x: (c + float(x.data.sum()), None), RuntimeError, r"\.data of a traced tensor"),
    (lambda c, x: (c * c.sum().item(), None), RuntimeError, r"item\(\) of a traced tensor"),
    (lambda c, x: (c * float(c.sum()), None), RuntimeError, "traced tensor"),
    (lambda c, x: (c + 1 if (x.sum() > 0) else c, None), RuntimeError, "traced tensor"),
    (lambda c, x: (c + x.numpy(), None), RuntimeError, "traced tensor"),
], ids=["shape", "dtype", "structure", "not-a-pair", ".data", ".item()", "float()", "bool()", ".numpy()"])
def test_clear_errors_from_the_body(body, error, match):
    with pytest.raises(error, match=match):
        _scan_error(body)()


def test_clear_errors_from_the_arguments():
    body = lambda c, x: (c, None)
    init = mg.Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"disagree on the number of steps: \[3, 4\]"):
        mg.scan(body, init, (mg.Tensor(np.ones((4, 2))), mg.Tensor(np.ones((3, 2)))))
    with pytest.raises(ValueError, match="disagree"):
        mg.scan(body, init, mg.Tensor(np.ones((4, 2))), length=5)
    with pytest.raises(ValueError, match="pass xs .* or length="):
        mg.scan(body, init)                                      # neither xs nor length
    with pytest.raises(TypeError, match="init"):
        mg.scan(body, None, length=3)
    with pytest.raises(TypeError, match="must be Tensors"):
        mg.scan(body, init, "not a tensor")


def test_scan_inside_a_scan_body_is_a_clear_error():
    def outer(c, x):
        inner, _ = mg.scan(lambda h, _: (h * 2.0, None), c, length=2)
        return inner + x, None
    with pytest.raises(NotImplementedError, match="scan inside a scan"):
        _scan_error(outer)()


def test_a_failed_trace_leaves_no_trace_active():
    with pytest.raises(RuntimeError):
        _scan_error(lambda c, x: (c * c.sum().item(), None))()
    assert mg.engine.active_trace() is None
    assert (mg.Tensor(np.ones(2)) * 2).data.sum() == 4.0         # reading values works again


# ------------------------------------------------------------------ graph, grad mode, retain_graph, dtypes

def test_scan_is_one_node_whatever_its_length():
    W = mg.Tensor(np.eye(3) * 0.5, requires_grad=True)
    sizes = set()
    for T in (1, 3, 50):
        carry, ys = mg.scan(lambda h, x: ((h @ W + x).tanh(),) * 2, mg.Tensor(np.zeros((1, 3))),
                            mg.Tensor(np.ones((T, 1, 3))))
        sizes.add(mg.graph_size(carry.sum() + ys.sum()))
    assert len(sizes) == 1


def test_no_grad_records_nothing():
    W = mg.Tensor(np.eye(2), requires_grad=True)
    with mg.no_grad():
        carry, ys = mg.scan(lambda h, x: ((h @ W + x).tanh(), h), mg.Tensor(np.zeros((1, 2))),
                            mg.Tensor(np.ones((3, 1, 2))))
    assert not carry.requires_grad and not ys.requires_grad and mg.graph_size(carry) == 0


def test_gradient_reaches_params_when_init_and_xs_need_none():
    W = mg.Tensor(np.array([[0.5, -0.2], [0.1, 0.3]]), requires_grad=True)
    carry, _ = mg.scan(lambda h, x: ((h @ W + x).tanh(), None), mg.Tensor(np.ones((1, 2))),
                       mg.Tensor(np.ones((3, 1, 2))))
    assert carry.requires_grad
    carry.sum().backward()
    W2 = mg.Tensor(W.numpy(), requires_grad=True)
    ref, _ = plain_loop(lambda h, x: ((h @ W2 + x).tanh(), None), mg.Tensor(np.ones((1, 2))),
                        mg.Tensor(np.ones((3, 1, 2))))
    ref.sum().backward()
    np.testing.assert_allclose(W.grad, W2.grad, **TIGHT)


@pytest.mark.parametrize("name", ["tensor carry, tensor xs", "tuple carry, tuple ys", "user primitives"])
def test_retain_graph_then_second_backward_doubles_the_grads(name):
    r = Run(name, 3, seed=4)
    init, xs = r.tensors(r.init, True), r.tensors(r.xs, True)
    P = {k: mg.Tensor(a, requires_grad=True) for k, a in r.outside.items()}
    carry, ys = mg.scan(r.factory(P), init, xs)
    loss = sum((o * o).sum() for o in leaves(carry) + leaves(ys))
    ts = leaves(init) + leaves(xs) + list(P.values())
    loss.backward(retain_graph=True)
    once = [t.grad.copy() for t in ts]
    loss.backward()
    for t, g in zip(ts, once):
        assert np.abs(g).sum() > 0
        np.testing.assert_allclose(t.grad, 2 * g, rtol=1e-13)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_output_gradients_from_several_uses_accumulate():
    W = mg.Tensor(np.array([[0.5, -0.2], [0.1, 0.3]]), requires_grad=True)
    body = lambda h, x: ((h @ W + x).tanh(), h * 2.0)
    init, xs = mg.Tensor(np.ones((1, 2))), mg.Tensor(np.ones((3, 1, 2)))
    carry, ys = mg.scan(body, init, xs)
    (carry.sum() * 3 + (carry * ys[1]).sum() + ys.sum()).backward()
    got = W.grad
    W.grad = None
    carry, ys = plain_loop(body, init, xs)
    (carry.sum() * 3 + (carry * ys[1]).sum() + ys.sum()).backward()
    np.testing.assert_allclose(got, W.grad, **TIGHT)


@pytest.mark.parametrize("name", ["tensor carry, tensor xs", "tuple carry, tuple ys", "reductions", "user primitives"])
def test_float32_scan_agrees_with_float64(name):
    r64 = Run(name, 4, seed=5)
    ref = r64("scan")
    r32 = Run(name, 4, seed=5)
    r32.init = tuple(a.astype(np.float32) for a in r32.init) if isinstance(r32.init, tuple) else r32.init.astype(
        np.float32)
    r32.xs = r32.xs.astype(np.float32)
    r32.outside = {k: a.astype(np.float32) for k, a in r32.outside.items()}
    got = r32("scan")
    for o in got["outs"]:
        assert o.dtype in (np.float32, np.bool_)
    for g in got["grads"]:
        assert g.dtype == np.float32
    assert len(got["outs"]) == len(ref["outs"])
    for p, q in zip(got["outs"], ref["outs"]):
        np.testing.assert_allclose(p.astype(np.float64), q, rtol=1e-5, atol=1e-5)
    for p, q in zip(got["grads"], ref["grads"]):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


def _scan_and_loop_grads(body, h0, xs, weights):
    """Final carry, and every weight's gradient of sum(final carry), through scan and the plain loop."""
    out = []
    for looped in (True, False):
        for w in weights:
            w.grad = None
        if looped:
            c, _ = mg.scan(body, h0, xs)
        else:
            c = h0
            for t in range(xs.shape[0]):
                c, _ = body(c, xs[t])
        c.sum().backward()
        out.append([c.data.copy()] + [w.grad.copy() for w in weights])
    return out


def test_an_output_a_user_vjp_keeps_is_never_overwritten_in_place():
    """The compiler writes 'a - 1' into a's buffer when a is dead; a user primitive's vjp closure
    keeps its output alive under no name the compiler sees, so it must not be reused."""
    @mg.primitive
    def softplus(x):
        out = np.logaddexp(0.0, x)
        return out, lambda g: (g * np.exp(x - out),)          # reads its own output

    rng = np.random.default_rng(0)
    W = mg.Tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    xs = mg.Tensor(rng.standard_normal((6, 2, 3)))
    looped, plain = _scan_and_loop_grads(lambda h, x: ((softplus(h @ W + x) - 1.0), h), mg.Tensor(np.zeros((2, 3))),
                                         xs, [W])
    for a, b in zip(looped, plain):
        np.testing.assert_allclose(a, b, **TIGHT)


def test_a_temporary_another_value_views_is_never_overwritten_in_place():
    rng = np.random.default_rng(1)
    W = mg.Tensor(rng.standard_normal((3, 3)), requires_grad=True)

    def body(h, x):
        a = h @ W                  # a fresh temporary ...
        v = a.reshape(2, 3)        # ... that a view keeps reading
        b = a + x                  # a is dead by name here, but not by memory
        return (v * b).tanh(), None
    looped, plain = _scan_and_loop_grads(body, mg.Tensor(np.full((2, 3), 0.1)),
                                         mg.Tensor(rng.standard_normal((5, 2, 3))), [W])
    for a, b in zip(looped, plain):
        np.testing.assert_allclose(a, b, **TIGHT)


def test_backward_never_writes_into_the_outputs_it_returned():
    """The compiler lets a step's gradient take the buffer of a saved value that dies; an output
    row (ys) or carry the caller holds must never be one of them."""
    rng = np.random.default_rng(3)
    W = mg.Tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    for body in (lambda h, x: ((h @ W + x).tanh() * 0.5, (h @ W + x).tanh()),
                 lambda h, x: (((h @ W + x) * 0.5).tanh(), (h @ W + x) * (h @ W + x))):
        carry, ys = mg.scan(body, mg.Tensor(np.full((2, 3), 0.1)), mg.Tensor(rng.standard_normal((4, 2, 3))))
        seen = (carry.data.copy(), ys.data.copy())
        ((ys * ys).sum() + carry.sum()).backward()
        np.testing.assert_array_equal(carry.data, seen[0])
        np.testing.assert_array_equal(ys.data, seen[1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("masked", [False, True])
def test_an_unrolled_layer_inside_a_scan_body_reads_every_step_of_its_input(kind, masked):
    """The unrolled layer took its input for plain data when it required no gradient: inside a
    traced body that array holds step 0 only, so every outer step read step 0's sequence."""
    rng = np.random.default_rng(0)
    inner = getattr(nn, kind)(2, 3, dtype=np.float64, unroll=True)
    xs = mg.Tensor(rng.standard_normal((4, 2, 5, 2)))        # outer steps, batch, inner time, features
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    h0 = mg.Tensor(np.zeros((2, 3)))

    def body(h, x):
        y = inner(x, mask=mask if masked else None)
        return h + y, y

    results = []
    for run in (mg.scan, plain_loop):
        inner.zero_grad()
        carry, ys = run(body, h0, xs)
        (carry.sum() + (ys * ys).sum()).backward()
        results.append((carry.numpy(), ys.numpy(), *(p.grad.copy() for p in inner.parameters())))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, **TIGHT)


@pytest.mark.parametrize("backend", ["interpret", "numpy", "numba"])
@pytest.mark.parametrize("anomaly", [False, True])
def test_each_call_reads_its_own_constants(backend, anomaly):
    """A program is compiled once per structure and rebound to each call's constants; the
    interpreter (and numba under detect_anomaly, which runs it) read the first call's."""
    if backend == "numba":
        pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    W = mg.Tensor(rng.standard_normal((3, 3)), requires_grad=True)
    h0 = mg.Tensor(rng.standard_normal((2, 3)))
    xs = mg.Tensor(rng.standard_normal((4, 2, 3)))
    for _ in range(3):
        C = rng.standard_normal((2, 3))            # a different ndarray every call: a constant of the body

        def body(h, x):
            h = (h @ W + x * C).tanh()
            return h, h

        results = []
        for run in (lambda f, i, x: mg.scan(f, i, x, backend=backend), plain_loop):
            W.grad = None
            with mg.detect_anomaly() if anomaly else contextlib.nullcontext():
                carry, ys = run(body, h0, xs)
                (carry.sum() + ys.sum()).backward()
            results.append((carry.numpy(), ys.numpy(), W.grad.copy()))
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, **TIGHT)
