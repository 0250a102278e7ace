"""The engine's promises: accumulation over shared uses, depth, freed graphs, in-place safety,
anomaly detection, clear errors, grad mode, and the Tensor's own surface."""
from __future__ import annotations

import gc
import math
import sys
import threading
import warnings
import weakref

import numpy as np
import pytest

import minigrad as mg

engine = sys.modules["minigrad.engine"]

# ---------------------------------------------------------------- shared use accumulates


def _unrolled_rnn(W, T=3):
    """h_t = tanh(W h_{t-1}), h_0 = 1: the same W is used at every step."""
    h = mg.Tensor(1.0)
    for _ in range(T):
        h = (W * h).tanh()
    return h


def test_shared_weight_gets_the_sum_of_every_step():
    W = mg.Tensor(0.5, requires_grad=True, dtype=np.float64)
    _unrolled_rnn(W).backward()
    assert abs(W.grad - 0.6245764637) < 1e-9

    # The three per-step contributions dL/dh_t * tanh'(.) * h_{t-1}, by hand in plain floats.
    h = [1.0]
    for _ in range(3):
        h.append(math.tanh(0.5 * h[-1]))
    contributions, dh = [], 1.0
    for t in (3, 2, 1):
        local = dh * (1 - h[t] ** 2)
        contributions.append(local * h[t - 1])
        dh = local * 0.5
    assert all(c > 0.1 for c in contributions)          # each matters: dropping one fails the check
    assert W.grad == pytest.approx(sum(contributions), abs=1e-12)


def test_shared_weight_gradient_matches_finite_differences():
    assert mg.gradcheck(_unrolled_rnn, [mg.Tensor(0.5, requires_grad=True, dtype=np.float64)], atol=1e-8, rtol=1e-6)


def test_a_tensor_used_twice_in_one_op_gets_both_gradients():
    x = mg.Tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, -4.0, 6.0])


def test_diamond_graph_sums_both_paths():
    x = mg.Tensor(2.0, requires_grad=True, dtype=np.float64)
    a = x * 3.0
    y = a.exp() + a * a                    # a reaches y along two paths
    y.backward()
    assert x.grad == pytest.approx(3 * math.exp(6.0) + 2 * 6.0 * 3, rel=1e-12)


# ---------------------------------------------------------------- depth

def test_chain_of_100k_ops_backpropagates_iteratively():
    n = 100_000
    c = 1.0 + 1e-5
    x = mg.Tensor(0.5, requires_grad=True, dtype=np.float64)
    y = x
    for _ in range(n):
        y = y * c
    assert mg.graph_size(y) == n
    y.backward()
    assert x.grad == pytest.approx(c ** n, rel=1e-9)


# ---------------------------------------------------------------- backward's contract

def test_backward_on_a_non_scalar_needs_grad():
    y = mg.Tensor([1.0, 2.0], requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"single-element.*shape \(2,\)"):
        y.backward()


def test_backward_with_an_explicit_grad():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    (x * x).backward(np.array([10.0, 100.0]))
    np.testing.assert_array_equal(x.grad, [20.0, 400.0])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        (x * x).backward(np.ones(3))


def test_backward_on_a_tensor_without_graph_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (mg.Tensor([1.0]) * 2.0).sum().backward()


def test_second_backward_through_a_freed_graph_names_retain_graph():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def _graph_holding_only_in_a_vjp():
    """x * c where c's array is referenced by nothing but multiply's vjp closure."""
    x = mg.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    saved = np.array([4.0, 5.0, 6.0])
    ref = weakref.ref(saved)
    y = (x * mg.Tensor(saved)).sum()
    del saved
    gc.collect()
    assert ref() is not None
    return x, y, ref


def test_backward_frees_the_saved_arrays():
    x, y, ref = _graph_holding_only_in_a_vjp()
    y.backward()
    gc.collect()
    assert ref() is None
    np.testing.assert_array_equal(x.grad, [4.0, 5.0, 6.0])


def test_retain_graph_keeps_the_saved_arrays():
    x, y, ref = _graph_holding_only_in_a_vjp()
    y.backward(retain_graph=True)
    gc.collect()
    assert ref() is not None


def test_gradients_accumulate_across_graphs_until_zero_grad():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_leaf_grad_is_not_an_alias_of_a_caller_array():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    seed = np.array([1.0, 1.0])
    (x + 0.0).backward(seed)
    x.grad += 1.0                          # an optimizer may update gradients in place
    np.testing.assert_array_equal(seed, [1.0, 1.0])


def test_a_fresh_gradient_reaches_the_leaf_without_a_copy_and_others_are_copied():
    """A vjp may mark an array it allocated itself as ``FreshGrad`` (scan does, for parameter
    gradients): the leaf then keeps that array, and a second use adds into it in place. A plain
    returned array may be referenced elsewhere (here: the vjp's own saved array), so the leaf
    gets a copy."""
    from minigrad.engine import FreshGrad
    made, kept = [], []

    @mg.primitive
    def scale(x, *, fresh):
        def vjp(g):
            out = 3.0 * g
            made.append(out)
            kept.append(out)                 # the vjp keeps a reference: not fresh for the engine
            return (FreshGrad(out) if fresh else out,)
        return 3.0 * x, vjp

    for fresh in (True, False):
        made.clear()
        w = mg.Tensor([1.0, 2.0], requires_grad=True)
        (scale(w, fresh=fresh).sum() + scale(w, fresh=fresh).sum() * 2).backward()
        np.testing.assert_array_equal(w.grad, [9.0, 9.0])            # 3 + 2 * 3, each element
        assert (w.grad is made[0] or w.grad is made[1]) == fresh
        for arr in made:                     # what the vjps kept is unchanged unless it was handed over
            if arr is not w.grad:
                assert set(arr.tolist()) <= {3.0, 6.0}


# ---------------------------------------------------------------- in-place changes

def test_inplace_change_of_a_saved_input_makes_backward_raise():
    w = mg.Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    x = mg.Tensor([[1.0], [1.0]], requires_grad=True)
    loss = (w @ x).sum()
    with mg.no_grad():
        w -= 0.1 * np.ones((2, 2))         # e.g. an optimizer step before backward
    with pytest.raises(RuntimeError, match=r"matmul.*modified in place"):
        loss.backward()


def test_inplace_change_of_the_other_factor_is_caught_too():
    a = mg.Tensor([1.0, 2.0], requires_grad=True)
    b = mg.Tensor([3.0, 4.0], requires_grad=True)
    loss = (a * b).sum()
    with mg.no_grad():
        b *= 2.0
    with pytest.raises(RuntimeError, match="multiply"):
        loss.backward()


def test_inplace_change_seen_through_a_view_is_caught():
    x = mg.Tensor([[1.0, 2.0]], requires_grad=True)
    W = mg.Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = (x @ W.T).sum()                 # matmul saved W.T, a view of W's array
    with mg.no_grad():
        W -= 1.0
    with pytest.raises(RuntimeError, match="matmul.*modified in place"):
        loss.backward()


def test_inplace_change_of_a_tensor_outside_the_graph_is_caught():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    c = mg.Tensor([3.0, 4.0])              # requires no grad, but multiply saved it for x's gradient
    loss = (x * c).sum()
    c *= 2.0
    with pytest.raises(RuntimeError, match="multiply.*modified in place"):
        loss.backward()


def test_inplace_change_before_the_forward_is_fine():
    w = mg.Tensor([1.0, 2.0], requires_grad=True)
    w.data -= 0.5                          # an earlier optimizer step: no graph holds w yet
    loss = (w * w).sum()
    loss.backward()
    np.testing.assert_array_equal(w.grad, [1.0, 3.0])


def test_inplace_change_of_an_input_the_vjp_does_not_read_is_fine():
    a = mg.Tensor([1.0, 2.0], requires_grad=True)
    b = mg.Tensor([3.0, 4.0], requires_grad=True)
    loss = ((a + b) * 2.0).sum()           # add's vjp reads neither addend
    with mg.no_grad():
        a -= 1.0
    loss.backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])
    np.testing.assert_array_equal(b.grad, [2.0, 2.0])


def test_rebinding_data_after_forward_is_fine():
    a = mg.Tensor([1.0, 2.0], requires_grad=True)
    b = mg.Tensor([3.0, 4.0], requires_grad=True)
    loss = (a * b).sum()
    a.data = np.array([10.0, 20.0])        # a new array: the saved one is untouched
    loss.backward()
    np.testing.assert_array_equal(a.grad, [3.0, 4.0])
    np.testing.assert_array_equal(b.grad, [1.0, 2.0])   # the values of the forward, not the new ones


# ---------------------------------------------------------------- anomaly detection

def test_detect_anomaly_names_the_forward_op_that_makes_nan():
    x = mg.Tensor([-1.0, 2.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mg.detect_anomaly():
            y = x * 2.0
            with pytest.raises(FloatingPointError, match=r"forward of op 'log'.*NaN"):
                y.log()
        (x * 2.0).log()                    # outside the context: no check, just NaN


def test_detect_anomaly_names_the_backward_op_that_makes_inf():
    x = mg.Tensor([0.0, 4.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mg.detect_anomaly():
            loss = (x.sqrt() * 3.0).sum()  # finite forward; sqrt's vjp divides by 0
            with pytest.raises(FloatingPointError, match=r"backward of op 'sqrt'.*inf"):
                loss.backward()


def test_detect_anomaly_as_a_decorator():
    @mg.detect_anomaly()
    def f(t):
        return t.log()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="log"):
            f(mg.Tensor([-1.0], requires_grad=True))


# ---------------------------------------------------------------- clear errors

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_requires_grad_on_a_non_float_dtype_is_a_type_error(dtype):
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        mg.Tensor(np.zeros(3, dtype), requires_grad=True)
    with pytest.raises(TypeError):
        mg.Tensor(np.zeros(3, dtype)).requires_grad_()


def test_matmul_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 2\) do not align"):
        mg.Tensor(np.ones((3, 4))) @ mg.Tensor(np.ones((5, 2)))


@pytest.mark.parametrize("name, fn", [
    ("add", lambda a, b: a + b), ("subtract", lambda a, b: a - b), ("multiply", lambda a, b: a * b),
    ("divide", lambda a, b: a / b), ("power", lambda a, b: a ** b), ("maximum", mg.maximum),
])
def test_broadcast_mismatch_names_op_and_shapes(name, fn):
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        fn(mg.Tensor(np.ones((2, 3)), requires_grad=True), mg.Tensor(np.ones(4)))


def test_where_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"where: shapes \(2, 3\) and \(4,\)"):
        mg.where(np.ones((2, 3), bool), mg.Tensor(np.ones(4), requires_grad=True), 0.0)


@pytest.mark.parametrize("fn, pattern", [
    (lambda: mg.Tensor(np.ones(3))[5], r"getitem: index 5 is invalid for shape \(3,\)"),
    (lambda: mg.concatenate([mg.Tensor(np.ones((2, 3))), mg.Tensor(np.ones((3, 4)))], axis=0),
     r"concatenate: .*\(2, 3\) and \(3, 4\)"),
    (lambda: mg.Tensor(np.ones((2, 3))).reshape(4), r"reshape: .*\(2, 3\)"),
])
def test_other_bad_inputs_name_op_and_shapes(fn, pattern):
    with pytest.raises((ValueError, IndexError), match=pattern):
        fn()


def test_a_vjp_returning_a_misshapen_gradient_is_an_error_not_a_silent_reshape():
    @mg.primitive
    def transposed(x):
        return x.T.copy(), lambda g: (g,)  # forgets to transpose g back: (3, 2) for a (2, 3) input
    x = mg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"transposed: vjp returned a gradient of shape \(3, 2\)"):
        transposed(x).sum().backward()


# ---------------------------------------------------------------- grad mode and detach

def test_no_grad_context_records_nothing():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    with mg.no_grad():
        assert not mg.is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert mg.is_grad_enabled()
    assert not y.requires_grad and y.op is None and mg.graph_size(y) == 0
    assert (x * 2.0).requires_grad        # recording resumes


def test_no_grad_decorator_records_nothing_and_restores_on_error():
    @mg.no_grad()
    def step(t):
        return t * 2.0

    @mg.no_grad()
    def fails(t):
        raise KeyError("boom")

    x = mg.Tensor([1.0], requires_grad=True)
    assert not step(x).requires_grad
    with pytest.raises(KeyError):
        fails(x)
    assert mg.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_grad_mode_is_thread_local():
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def other():
        with mg.no_grad():
            inside.set()
            release.wait(10)
            seen["other"] = (mg.Tensor([1.0], requires_grad=True) * 2.0).requires_grad

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    try:
        assert mg.is_grad_enabled()         # the other thread's no_grad does not reach this one
        assert (mg.Tensor([1.0], requires_grad=True) * 2.0).requires_grad
    finally:
        release.set()
        thread.join(10)
    assert seen["other"] is False


def test_detach_cuts_the_graph():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    d = y.detach()
    assert not d.requires_grad and d.op is None
    np.testing.assert_array_equal(d.data, y.data)
    (d * x).sum().backward()                # d is a constant: the gradient is x**2, not 3 x**2
    np.testing.assert_array_equal(x.grad, [1.0, 4.0])


def test_graph_size_counts_op_nodes_once():
    x = mg.Tensor([1.0, 2.0], requires_grad=True)
    assert mg.graph_size(x) == 0
    a = x * 2.0
    y = (a + a).sum()                       # multiply, add, sum: a is shared but counted once
    assert mg.graph_size(y) == 3


# ---------------------------------------------------------------- the Tensor's surface

def test_tensor_attributes():
    arr = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    t = mg.Tensor(arr, requires_grad=True)
    assert isinstance(t.data, np.ndarray) and t.data is arr       # a float ndarray is kept as it is
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == np.float32
    assert t.requires_grad and t.grad is None
    assert t.numpy() is t.data
    assert mg.Tensor(3.5).item() == 3.5 and isinstance(mg.Tensor(3.5).item(), float)
    (t * t).sum().backward()
    assert t.grad.shape == (2, 3) and t.grad.dtype == np.float32
    np.testing.assert_array_equal(t.grad, 2 * arr)
    t.zero_grad()
    assert t.grad is None


def test_repr_is_readable():
    x = mg.Tensor([1.0, 2.5], requires_grad=True)          # the default dtype is not shown
    assert repr(x) == "Tensor([1. , 2.5], requires_grad=True)"
    assert repr(x * 2.0) == "Tensor([2., 5.], op=multiply)"
    assert "dtype=float64" in repr(mg.Tensor(np.ones(2, np.float64)))
    big = repr(mg.Tensor(np.zeros(1000)))
    assert "..." in big and len(big) < 200


# ---------------------------------------------------------------- user primitives

@mg.primitive
def scale_by(x, s, *, power=1):
    """x * s**power; the gradient for s is deliberately not given (None)."""
    return x * s ** power, lambda g: (g * s ** power, None)


def test_primitive_with_a_none_gradient_and_static_keywords():
    x, s = mg.Tensor([1.0, 2.0], requires_grad=True), mg.Tensor(3.0, requires_grad=True)
    y = scale_by(x, s, power=2)
    assert y.op == "scale_by"
    np.testing.assert_array_equal(y.data, [9.0, 18.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [9.0, 9.0])   # the scalar gradient broadcasts back to (2,)
    assert s.grad is None


def test_primitive_needs_grad_tells_which_inputs_need_a_gradient():
    seen = []

    @mg.primitive
    def mul(a, b, *, needs_grad):
        seen.append(needs_grad)
        return a * b, lambda g: (g * b, g * a)

    mul(mg.Tensor([1.0], requires_grad=True), mg.Tensor([2.0]))
    mul(mg.Tensor([1.0]), np.array([2.0]))
    with mg.no_grad():
        mul(mg.Tensor([1.0], requires_grad=True), mg.Tensor([2.0], requires_grad=True))
    assert seen == [(True, False), (False, False), (False, False)]


def test_a_vjp_returning_the_wrong_number_of_gradients_is_an_error():
    @mg.primitive
    def two_inputs(a, b):
        return a + b, lambda g: (g,)
    y = two_inputs(mg.Tensor([1.0], requires_grad=True), mg.Tensor([2.0], requires_grad=True))
    with pytest.raises(RuntimeError, match="two_inputs: vjp returned 1 gradients for 2 inputs"):
        y.sum().backward()


@pytest.mark.parametrize("rows", [1, 6, 7, 4096], ids=lambda r: f"flush every {r} rows")
def test_weight_gradients_of_many_uses_multiplied_out_in_blocks(rows, monkeypatch):
    """A leaf weight used by T products gets its gradient as stacked products, a block of rows at a
    time; two weights fed the same per-step gradient share one concatenation. Checked against
    finite differences, with blocks that split the steps every way."""
    monkeypatch.setattr(engine._Outer, "ROWS", rows)
    rng = np.random.default_rng(3)
    xs = [mg.Tensor(rng.standard_normal((3, 4))) for _ in range(7)]
    cs = [mg.Tensor(rng.standard_normal((3, 2))) for _ in range(7)]

    def f(W, V):
        total = 0.0
        for t, (x, c) in enumerate(zip(xs, cs)):
            total = total + ((x @ W + c @ V) * (t + 1)).tanh().sum()    # the same g reaches W and V
        return total

    W = mg.Tensor(rng.standard_normal((4, 5)) * 0.3, requires_grad=True)
    V = mg.Tensor(rng.standard_normal((2, 5)) * 0.3, requires_grad=True)
    assert mg.gradcheck(f, (W, V))


def test_the_graph_does_not_keep_an_intermediate_no_vjp_reads():
    """Nodes hold parents, vjps, shapes: not data. ``x @ U`` feeds an add (whose vjp reads nothing),
    so once the caller drops it its array is freed, and backward is still right."""
    r = np.random.default_rng(3)
    x = mg.Tensor(r.standard_normal((4, 3)), requires_grad=True)
    U = mg.Tensor(r.standard_normal((3, 5)), requires_grad=True)
    a = x @ U
    freed = weakref.ref(a.data)
    y = (a + 1.0).tanh().sum()
    assert a.node.op == "matmul" and a.node.parents == (x, U)   # leaves are the Tensors themselves
    del a
    gc.collect()
    assert freed() is None
    assert mg.graph_size(y) == 4                                   # matmul, add, tanh, sum
    y.backward()
    g = 1.0 - np.tanh(x.data @ U.data + 1.0) ** 2
    np.testing.assert_allclose(x.grad, g @ U.data.T, rtol=1e-12)
    np.testing.assert_allclose(U.grad, x.data.T @ g, rtol=1e-12)
    assert mg.graph_size(y) == 4                                   # the structure outlives backward


def test_record_contributions_watches_an_intermediate_tensor_too():
    x = mg.Tensor(np.arange(3.0), requires_grad=True)
    h = x * 2.0
    y = (h * h).sum() + h.sum()
    with mg.record_contributions(h) as rec:
        y.backward()
    assert sorted(c.op for c in rec.of(h)) == ["multiply", "multiply", "sum"]
    assert all(c.tensor is h for c in rec.contributions)
    np.testing.assert_allclose(rec.total(h), 2 * h.data + 1)      # d/dh of sum(h^2) + sum(h)


def test_gradient_sums_are_kept_per_graph_entry_not_per_value_or_array():
    """Backward keys its sums by the Nodes and leaf Tensors themselves (and knows per key which
    sums it may add into in place): equal-valued leaves stay apart though Tensor's == is
    elementwise, and the one array add's vjp hands to both its inputs is added into for neither."""
    a = mg.Tensor([1.0, 2.0], requires_grad=True, dtype=np.float64)
    b = mg.Tensor([1.0, 2.0], requires_grad=True, dtype=np.float64)
    p, q = a * 1.0, b * 1.0
    ((p + q) + p * 5.0 + q * 7.0).sum().backward()
    np.testing.assert_array_equal(a.grad, [6.0, 6.0])
    np.testing.assert_array_equal(b.grad, [8.0, 8.0])


@pytest.mark.parametrize("g_shape, shape", [((), ()), ((1, 1, 1), (2, 3, 4)), ((2, 1, 4), (2, 3, 4)),
                                            ((1, 3, 1), (5, 3, 2)), ((2, 3), (2, 3))])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_broadcast_is_numpys_broadcast_to_as_a_read_only_view(g_shape, shape, layout):
    """A reduction's gradient stretched back to its input's shape (``sum``'s vjp)."""
    from minigrad.gradients import broadcast
    g = np.arange(1.0, 1.0 + np.prod(g_shape, dtype=int)).reshape(g_shape)
    if layout == "transposed":
        g = g.T.copy().T
    elif layout == "strided":
        g = np.repeat(g[..., None], 2, axis=-1)[..., 0]
    out = broadcast(g, shape)
    np.testing.assert_array_equal(out, np.broadcast_to(g, shape))
    assert out.shape == shape and not out.flags.writeable and np.shares_memory(out, g)


def test_broadcast_refuses_shapes_that_do_not_broadcast():
    from minigrad.gradients import broadcast
    with pytest.raises(ValueError):
        broadcast(np.ones((2, 3)), (4, 3))
    with pytest.raises(ValueError):
        broadcast(np.ones((2, 3)), (3,))


def test_backward_in_several_threads_leaves_the_collector_as_it_found_it():
    """backward pauses the cyclic collector; each pause restored the setting it had seen, so two
    overlapping in threads (the second seeing the first's pause) left it off for the process."""
    import gc
    import sys
    import threading
    W = mg.Tensor(np.ones((4, 4)), requires_grad=True)

    def work():
        x = mg.Tensor(np.ones((2, 4)))
        for _ in range(2000):
            (x @ W).tanh().sum().backward()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(3):
            assert gc.isenabled()
            threads = [threading.Thread(target=work) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert gc.isenabled()
    finally:
        sys.setswitchinterval(interval)
        gc.enable()
