"""In-place changes: never a silently wrong gradient.

An array a live graph may read (a leaf's, or an ndarray operand, and the views of it given to ops)
is read-only until that graph's backward has run or the graph is freed, so a write through the
array raises. The library's own in-place changes (optimizer steps, loads, the Tensor in-place
operators) go through, as version changes a backward through an older graph refuses.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn

WRITES = {
    "x.data[...] = 10": lambda t: t.data.__setitem__(Ellipsis, 10.0),
    "np.copyto(x.data, ...)": lambda t: np.copyto(t.data, 10.0),
    "np.add(..., out=x.data)": lambda t: np.add(t.data, 1.0, out=t.data),
    "x.numpy()[0] = 5": lambda t: t.numpy().__setitem__(0, 5.0),
    "x.data -= 1": lambda t: t.data.__isub__(1.0),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=list(WRITES))
def test_a_write_through_the_array_of_a_saved_leaf_raises_and_the_gradient_stays_right(write):
    x = mg.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = (x * x).sum()
    with pytest.raises(ValueError, match="read-only"):
        write(x)
    np.testing.assert_array_equal(x.data, [1.0, 2.0, 3.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])        # not [20, 20, 20]
    write(x)                                                      # the freed graph needs it no more
    assert not np.array_equal(x.data, [1.0, 2.0, 3.0])


def test_the_users_own_array_and_ndarray_operands_are_held_too():
    arr = np.array([1.0, 2.0])
    x = mg.Tensor(arr, requires_grad=True)         # keeps arr's memory
    c = np.array([3.0, 4.0])
    y = (x * c).sum()                              # multiply saved c for x's gradient
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 7.0
    with pytest.raises(ValueError, match="read-only"):
        c[0] = 7.0
    y.backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    arr[0], c[0] = 7.0, 7.0


def test_views_of_a_leaf_and_the_array_they_view_are_held():
    base = np.zeros((2, 3))
    base[0] = [0.0, 1.0, 2.0]
    x = mg.Tensor(base[0], requires_grad=True)     # a view of the user's array (which owns its memory)
    w = mg.Tensor(np.ones((3, 2)), requires_grad=True)
    xt = w.T                                       # a view the transpose op returned
    y = (x @ w).sum() + (xt * 2.0).sum()
    for write in (lambda: base.__setitem__(0, 0.0), lambda: x.data.__setitem__(0, 0.0),
                  lambda: xt.data.__setitem__(0, 0.0)):
        with pytest.raises(ValueError, match="read-only"):
            write()
    y.backward()
    np.testing.assert_array_equal(w.grad, np.outer([0.0, 1.0, 2.0], [1.0, 1.0]) + 2.0)
    base[0] = 0.0
    x.data[1] = 5.0
    assert base[0, 1] == 5.0


def test_arrays_are_writable_again_when_the_graph_is_dropped_and_held_while_another_lives():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    first = (x * x).sum()
    second = (x * 3.0).sum()
    first.backward()
    with pytest.raises(ValueError, match="read-only"):
        x.data[0] = 5.0                            # the second graph still reads x
    del second                                     # dropped without a backward
    x.data[0] = 5.0
    assert x.data[0] == 5.0


def test_arrays_read_only_to_begin_with_stay_read_only():
    arr = np.array([1.0, 2.0])
    arr.flags.writeable = False
    x = mg.Tensor(arr, requires_grad=True)
    (x * x).sum().backward()
    assert not arr.flags.writeable


def test_retain_graph_keeps_them_read_only_and_a_step_then_makes_the_second_backward_raise():
    w = nn.Parameter(np.array([1.0, 2.0]))
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(ValueError, match="read-only"):
        w.data[0] = 0.0
    mg.optim.SGD([w], lr=0.1).step()               # the library's write goes through, as a version change
    np.testing.assert_allclose(w.data, [0.8, 1.6])
    with pytest.raises(RuntimeError, match="multiply.*modified in place"):
        loss.backward()


def test_an_optimizer_step_after_backward_while_the_loss_is_referenced():
    mg.seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(), nn.Linear(4, 1, dtype=np.float64))
    opt = mg.optim.Adam(model.parameters(), lr=0.01)
    x = np.random.default_rng(0).standard_normal((5, 3))
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()                                 # loss (and its freed graph) still referenced
        losses.append(loss)
    assert losses[2].item() < losses[0].item()
    for p in model.parameters():
        p.data[...] = 0.0                          # nothing holds them any more


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(3, 2, dtype=np.float64),
    lambda: nn.LSTM(3, 2, unroll=True, dtype=np.float64),
    lambda: nn.LSTM(3, 2, unroll=False, dtype=np.float64),
    lambda: nn.GRU(3, 2, unroll=False, dtype=np.float64),
], ids=["Linear", "LSTM unrolled", "LSTM looped", "GRU looped"])
def test_parameter_and_input_writes_are_refused_until_backward(make):
    x = np.random.default_rng(1).standard_normal((2, 4, 3) if not isinstance(make(), nn.Linear) else (2, 3))

    def grads():
        mg.seed(0)
        layer = make()
        loss = (layer(x) ** 2).sum()
        return layer, loss

    ref_layer, ref_loss = grads()
    ref_loss.backward()
    layer, loss = grads()
    for p in layer.parameters():
        with pytest.raises(ValueError, match="read-only"):
            p.data[...] = 10.0
        with pytest.raises(ValueError, match="read-only"):
            np.copyto(p.numpy(), 10.0)
    with pytest.raises(ValueError, match="read-only"):
        x[...] = 10.0                              # the input array the layer read
    loss.backward()
    for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
        p.data[...] = 10.0
    x[...] = 10.0


# ---------------------------------------------------------------- in-place operators

def test_in_place_operators_change_the_tensor_itself():
    t = mg.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))
    before = t
    t += 1.0
    t -= np.array([1.0, 0.0])
    t *= mg.Tensor(np.array([2.0, 2.0]))
    t /= 4.0
    t **= 1.0
    t[0, 1] = -1.0
    t[1] = mg.Tensor(np.array([7.0, 8.0]))
    t[:, 0] += 1.0
    assert t is before and t.is_leaf
    np.testing.assert_array_equal(t.data, [[1.5, -1.0], [8.0, 8.0]])


def test_in_place_on_a_leaf_that_requires_grad_only_under_no_grad():
    w = nn.Parameter(np.array([1.0, 2.0]))
    for change in (lambda: w.__iadd__(1.0), lambda: w.__isub__(1.0), lambda: w.__imul__(2.0),
                   lambda: w.__itruediv__(2.0), lambda: w.__ipow__(2.0), lambda: w.__setitem__(0, 5.0)):
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad.*no_grad"):
            change()
    np.testing.assert_array_equal(w.data, [1.0, 2.0])
    with mg.no_grad():
        w += 1.0
        w[0] = 0.5
    np.testing.assert_array_equal(w.data, [0.5, 3.0])
    assert w.is_leaf and w.requires_grad


def test_in_place_changes_keep_shape_and_dtype():
    t = mg.Tensor(np.zeros(3))
    with pytest.raises(ValueError, match=r"\+=.*\(3,\)"):
        t += np.ones((2, 3))
    i = mg.Tensor(np.arange(3))
    with pytest.raises(TypeError, match=r"\+=.*int64"):
        i += 0.5
    w = mg.Tensor(np.ones(3), requires_grad=True)
    h = w * 1.0
    with pytest.raises(ValueError, match=r"\*=.*\(2, 3\)"):
        h *= mg.Tensor(np.ones((2, 3)), requires_grad=True)


def test_a_version_change_of_a_value_a_recorded_op_needs_makes_backward_raise():
    x = mg.Tensor(np.array([0.5, 1.0]), requires_grad=True)
    y = x.exp()                                    # exp's vjp reads its output
    y += 1.0
    with pytest.raises(RuntimeError, match="exp.*modified in place"):
        y.sum().backward()
    c = mg.Tensor(np.array([2.0, 3.0]))
    loss = (x * c).sum()
    c[0] = 10.0                                    # a constant the multiply saved
    with pytest.raises(RuntimeError, match="multiply.*modified in place"):
        loss.backward()


def _in_place_chain(x, w):
    h = x * 2.0
    h += w                                         # non-leaf: recorded, as in PyTorch
    h *= x
    h -= 1.0
    h /= w
    h **= 2
    h[0] = (x[1] * w[1]).reshape(())
    return (h ** 2).sum()


def test_recorded_in_place_operators_give_pytorchs_gradients():
    torch = pytest.importorskip("torch")
    xv, wv = np.array([0.5, -1.5, 2.0]), np.array([1.5, 2.0, -0.5])
    x, w = mg.Tensor(xv.copy(), requires_grad=True), mg.Tensor(wv.copy(), requires_grad=True)
    _in_place_chain(x, w).backward()
    tx = torch.tensor(xv, requires_grad=True)
    tw = torch.tensor(wv, requires_grad=True)
    _in_place_chain(tx, tw).backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad, tw.grad.numpy(), rtol=1e-12)


def test_recorded_in_place_operators_pass_gradcheck():
    x = mg.Tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    w = mg.Tensor(np.array([1.5, 2.0, -0.5]), requires_grad=True)
    assert mg.gradcheck(_in_place_chain, [x, w])


def test_in_place_in_a_scan_body_is_refused():
    def body(c, x):
        c = c * 1.0
        c += x
        return c, None
    with pytest.raises(RuntimeError, match="scan: in-place"):
        mg.scan(body, mg.Tensor(np.zeros(2)), mg.Tensor(np.ones((3, 2))))


def test_manual_sgd_with_minus_equals_trains_to_the_same_weights_as_optim_sgd():
    x = np.random.default_rng(0).standard_normal((16, 3))
    y = np.sin(x.sum(1, keepdims=True))

    def model():
        mg.seed(0)
        return nn.Sequential(nn.Linear(3, 8, dtype=np.float64), nn.Tanh(), nn.Linear(8, 1, dtype=np.float64))

    manual, auto = model(), model()
    opt = mg.optim.SGD(auto.parameters(), lr=0.1)
    params = list(manual.parameters())
    for _ in range(20):
        for p in params:
            p.grad = None
        nn.functional.mse_loss(manual(x), y).backward()
        with mg.no_grad():
            for p in manual.parameters():
                p -= 0.1 * p.grad                  # every PyTorch tutorial's manual SGD
        opt.zero_grad()
        nn.functional.mse_loss(auto(x), y).backward()
        opt.step()
    assert all(a is b for a, b in zip(params, manual.parameters()))
    first = model()
    for (name, p), q, p0 in zip(manual.named_parameters(), auto.parameters(), first.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert not np.allclose(p.data, p0.data)     # it trained


def test_a_result_the_user_reaches_is_held_while_its_graph_lives():
    x = mg.Tensor(np.array([0.5, 1.0]), requires_grad=True)
    y = x.exp()                                    # exp's vjp reads its own output
    with pytest.raises(ValueError, match="read-only"):
        y.data[...] = 0.0
    h = x * 2.0
    a = h.numpy()
    z = (h * h).sum()                              # the multiply saved h's array
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 9.0
    (y.sum() + z).backward()
    np.testing.assert_allclose(x.grad, np.exp([0.5, 1.0]) + 8.0 * np.array([0.5, 1.0]))
    y.data[...] = 0.0                              # freed: writable again
    a[0] = 9.0


def test_a_detached_result_shares_the_protection_of_its_source():
    x = mg.Tensor(np.array([0.5, 1.0]), requires_grad=True)
    y = x.tanh()                                   # tanh's vjp reads y
    d = y.detach()
    with pytest.raises(ValueError, match="read-only"):
        d.data[0] = 0.0
    d += 1.0                                       # the in-place operator goes through, as a version change
    with pytest.raises(RuntimeError, match="tanh.*modified in place"):
        y.sum().backward()


def test_a_graph_freed_by_the_cycle_collector_makes_its_arrays_writable_again():
    """CPython clears the weakrefs inside a garbage cycle before running finalizers: a pin that
    kept its arrays only through such weakrefs left them read-only for good."""
    import gc
    x = mg.Tensor(np.ones(3), requires_grad=True)
    view = x.data[1:]
    y = x[1:] * 2 + mg.Tensor(view)      # the view is an operand: pinned too
    cycle = [y]
    cycle.append(cycle)
    assert not x.data.flags.writeable and not view.flags.writeable
    del y, cycle
    gc.collect()
    assert x.data.flags.writeable and view.flags.writeable
    x.data[0] = 5.0


def test_an_optimizer_steps_after_an_eval_forward_of_a_looped_lstm_was_collected():
    """The looped LSTM's kept trace sits in a cycle: once collected, the next optimizer step
    failed with 'output array is read-only'."""
    import gc
    model = nn.Sequential(nn.LSTM(3, 4, dtype=np.float64), nn.Linear(4, 1, dtype=np.float64))
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    model(x).numpy()
    gc.collect()
    opt = mg.optim.Adam(model.parameters())
    model(x).sum().backward()
    opt.step()
    assert all(p.data.flags.writeable for p in model.parameters())


def test_pin_records_stay_bounded_across_steps_and_go_with_their_array():
    """A pinned array's record outlives its pins (a parameter is pinned by every step's graph):
    it must not collect the views of every step, and it goes when the array dies."""
    from minigrad import engine
    w = mg.Tensor(np.ones((2, 3)), requires_grad=True)
    x = np.arange(12.0).reshape(2, 6).copy()
    for _ in range(50):
        y = (mg.Tensor(x.T[:3]) @ w).sum()      # a fresh read-only view of x every step
        assert not x.flags.writeable and not w.data.flags.writeable
        y.backward()
        assert x.flags.writeable and w.data.flags.writeable
    record = engine._pinned[id(x)]
    assert record.count == 0 and record.views == []
    n = len(engine._pinned)
    del x, record
    assert len(engine._pinned) == n - 1


def test_an_array_two_graphs_read_stays_read_only_until_both_are_freed():
    w = mg.Tensor(np.ones(3), requires_grad=True)
    a, b = (w * 2.0).sum(), (w * 3.0).sum()
    a.backward()
    with pytest.raises(ValueError, match="read-only"):
        w.data[0] = 0.0
    b.backward()
    w.data[0] = 0.0
    np.testing.assert_allclose(w.grad, [5.0, 5.0, 5.0])


def test_a_pin_survives_the_collector_freeing_the_arrays_last_other_graph_mid_pin():
    """Pinning counted an array's new hold only after allocating for a view of it: the collector,
    run by that allocation, could free a cyclic graph holding the array's last pin, leave it
    writable, and the new graph's gradient read whatever was written next."""
    import gc

    class Cycle:
        pass

    threshold = gc.get_threshold()
    try:
        for th in range(1, 80):           # the collector runs at a different allocation each time
            W = mg.Tensor(np.ones(4), requires_grad=True)
            view = W.data[:2]                       # made before any pin: writable
            u = mg.Tensor(np.ones(2), requires_grad=True)
            gc.collect()
            c = Cycle()
            c.c, c.loss = c, (W * 2.0).sum()        # a graph holding W, left as cyclic garbage
            del c
            gc.set_threshold(th, 10, 10)
            y = (mg.Tensor(view) * u).sum()         # reads W's memory through the view
            gc.set_threshold(*threshold)
            gc.collect()
            assert not W.data.flags.writeable, th
            with pytest.raises(ValueError, match="read-only"):
                W.data[0] = 100.0
            y.backward()
            np.testing.assert_array_equal(u.grad, [1.0, 1.0])
    finally:
        gc.set_threshold(*threshold)


def test_idle_pin_records_are_bounded_and_views_of_overlapping_graphs_do_not_pile_up():
    from minigrad import engine
    w = mg.Tensor(np.ones(3), requires_grad=True)
    data = [np.full(3, float(i)) for i in range(3 * engine.IDLE_RECORDS)]     # each pinned once
    for x in data:
        (mg.Tensor(x) * w).sum().backward()
    assert len(engine._idle) <= engine.IDLE_RECORDS
    assert sum(1 for k in engine._pinned if any(k == id(x) for x in data)) <= engine.IDLE_RECORDS
    assert all(x.flags.writeable for x in data)
    big = np.ones((200, 3))
    kept = None
    for i in range(200):                           # each graph lives into the next step: never count 0
        y = (mg.Tensor(big[i]) * w).sum()
        if kept is not None:
            kept.backward()
        kept = y
    assert len(engine._pinned[id(big)].views) <= 33
    kept.backward()
    assert big.flags.writeable


@pytest.mark.parametrize("unroll", [False, True])
def test_a_leaf_viewing_an_array_a_graph_holds_is_read_only_through_data(unroll):
    """The graph holds X (the owner) and the view it was given; the leaf's own array, another
    view of X, stayed writable: x.data[...] = 0 was accepted and the gradient read zeros."""
    X = np.random.default_rng(0).standard_normal((4, 5, 3))
    lstm = nn.LSTM(3, 2, dtype=np.float64, unroll=unroll)
    x = mg.Tensor(X[0:2])
    lstm(x).sum().backward()
    want = [p.grad.copy() for p in lstm.parameters()]
    lstm.zero_grad()
    y = lstm(x).sum()
    for write in (lambda: x.data.__setitem__(Ellipsis, 0.0), lambda: x.numpy().fill(0.0)):
        with pytest.raises(ValueError, match="read-only"):
            write()
    y.backward()
    for p, w in zip(lstm.parameters(), want):
        np.testing.assert_allclose(p.grad, w, rtol=1e-12)
    x.data[...] = 0.0                              # freed: writable again
    assert not X[0:2].any()


def test_threads_sharing_a_parameter_never_see_it_writable_while_their_graph_lives():
    """Pin counts change under a lock: unlocked, two threads' check-then-count could interleave
    and leave a parameter writable under a live graph (a race: this stress test caught it in
    about one run in two before the lock; it cannot fail with it)."""
    import sys
    import threading
    W = mg.Tensor(np.ones((4, 4)), requires_grad=True)
    seen_writable = []

    def work():
        x = mg.Tensor(np.ones((2, 4)))
        for _ in range(6000):
            y = (x @ W).tanh().sum()
            if W.data.flags.writeable:
                seen_writable.append(True)
            y.backward()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not seen_writable
    assert W.data.flags.writeable
