"""Memory layout: a batch-major input read time-major, and the looped LSTM's memory.

An RNN layer takes (batch, time, features) and runs over time, so its scan sees a transposed view.
A weight's gradient over all steps takes rows in memory order, copying a mismatched operand a block
at a time, never whole; step rows of a strided buffer stack back without a copy.
"""
import gc
import sys
import tracemalloc

import numpy as np
import pytest

import minigrad as mg
from minigrad import ops

scan_mod = sys.modules["minigrad.looped.codegen"]
backends = sys.modules["minigrad.looped.backends"]
rng = np.random.default_rng(0)


def transposed(shape, perm):
    """A view with the given shape whose memory is laid out in another axis order."""
    inv = np.argsort(perm)
    return rng.standard_normal(tuple(shape[i] for i in inv)).transpose(perm)


LAYOUTS = [((4, 5, 3), (1, 0, 2), (1, 0, 2)),    # both batch-major: no copy at all
           ((4, 5, 3), (1, 0, 2), (0, 1, 2)),    # input batch-major, gradient time-major: blocks
           ((4, 5, 3), (0, 1, 2), (1, 0, 2)),
           ((2, 3, 4, 3), (2, 0, 1, 3), (0, 1, 2, 3))]


@pytest.mark.parametrize("shape, perm_a, perm_g", LAYOUTS)
@pytest.mark.parametrize("block", [8, 1 << 20], ids=["blocked", "whole"])
def test_matmul_with_a_stack_of_any_layout_matches_numpy(shape, perm_a, perm_g, block, monkeypatch):
    monkeypatch.setattr(ops, "_BLOCK", block)
    a = transposed(shape, perm_a)
    W = rng.standard_normal((shape[-1], 6))
    g = transposed(shape[:-1] + (6,), perm_g)
    out, vjp = ops.matmul.prim.fn(a, W)
    np.testing.assert_allclose(out, np.matmul(a, W), rtol=1e-12)
    ga, gW = vjp(g)
    rows_a, rows_g = a.reshape(-1, shape[-1]), g.reshape(-1, 6)
    np.testing.assert_allclose(gW, rows_a.T @ rows_g, rtol=1e-12)
    np.testing.assert_allclose(ga, g @ W.T, rtol=1e-12)


def test_gradcheck_through_a_transposed_stack_times_a_matrix(monkeypatch):
    monkeypatch.setattr(ops, "_BLOCK", 16)          # force the blocked path on a tiny problem
    x = mg.Tensor(rng.standard_normal((3, 4, 2)), requires_grad=True)
    W = mg.Tensor(rng.standard_normal((2, 5)), requires_grad=True)
    assert mg.gradcheck(lambda x, W: (x.transpose(1, 0, 2) @ W).tanh(), (x, W))


def test_projection_of_a_transposed_view_is_contiguous_in_its_logical_order():
    """The hoisted input projection is read one step at a time: its step rows are contiguous."""
    xb = rng.standard_normal((5, 7, 3))             # batch-major
    U = rng.standard_normal((3, 4))
    out = ops._mm(xb.transpose(1, 0, 2), U)
    assert out.shape == (7, 5, 4) and out.flags.c_contiguous
    np.testing.assert_allclose(out, np.einsum("btk,kn->tbn", xb, U), rtol=1e-12)


def test_weight_gradient_copies_at_most_a_block_of_the_mismatched_operand(monkeypatch):
    monkeypatch.setattr(ops, "_BLOCK", 64 << 10)
    a = transposed((200, 64, 50), (1, 0, 2))        # 5 MB, batch-major
    g = transposed((200, 64, 40), (0, 1, 2))        # 4 MB, time-major: a is copied, in blocks
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        gW = ops._row_product(a, g)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(gW, a.reshape(-1, 50).T @ g.reshape(-1, 40), rtol=1e-10)
    assert peak < 3 * (64 << 10) + 2 * gW.nbytes     # a block (and the product), not the 5 MB


def test_step_rows_of_a_strided_buffer_stack_without_a_copy():
    buf = np.arange(4 * 3 * 5.0).reshape(3, 4, 5).transpose(1, 0, 2)   # (time, batch, n) of batch-major
    rows = [buf[t] for t in range(4)]
    stacked = scan_mod._stack_steps(rows)
    assert np.shares_memory(stacked, buf)
    np.testing.assert_array_equal(stacked, np.stack(rows))


@pytest.mark.parametrize("rows", [
    lambda c: [c[0]] * 4,                            # the same row every step
    lambda c: [c[3], c[2], c[1], c[0]],              # descending
    lambda c: [c[0][:, :2], c[1][:, :2], c[2][:, :2], c[3][:, :2]],   # evenly spaced, as a view
], ids=["same row", "descending", "partial rows"])
def test_stacking_copies_unless_the_rows_form_one_disjoint_strided_view(rows):
    c = np.arange(60.0).reshape(4, 3, 5)
    arrays = rows(c)
    stacked = scan_mod._stack_steps(arrays)
    np.testing.assert_array_equal(stacked, np.stack(arrays))


def test_disjoint_layouts():
    assert scan_mod._disjoint((4, 3, 5), (20, 80, 4))       # time-major view of batch-major
    assert not scan_mod._disjoint((4, 3, 5), (4, 80, 4))    # rows overlapping
    assert not scan_mod._disjoint((4, 3), (0, 8))           # the same row repeated
    assert scan_mod._disjoint((4, 1, 3), (24, 0, 8))        # a length-1 axis may have any stride


def test_looped_lstm_step_peak_memory_is_at_most_1_5x_the_state_it_keeps():
    """Issue 5's bound: the training step's peak extra memory, at most 1.5x T*B*6H*itemsize."""
    B, I, H, T = 32, 100, 128, 50
    lstm = mg.nn.LSTM(I, H, return_sequences=True, dtype=np.float32)
    x = mg.Tensor(rng.uniform(-1, 1, (B, T, I)).astype(np.float32))

    def step():
        for p in lstm.parameters():
            p.grad = None
        lstm(x).sum().backward()

    step()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    state = T * B * 6 * H * 4
    assert peak <= 1.5 * state, f"peak {peak / state:.2f}x the state"


def test_recording_replays_a_call_whose_program_left_the_cache():
    """A recording backward compiles its program from the forward's program, not from a trace kept
    per call: it works when the cache has since dropped that program."""
    lstm = mg.nn.LSTM(3, 4, return_sequences=True, dtype=np.float64)
    x = mg.Tensor(rng.standard_normal((2, 5, 3)))
    loss = (lstm(x) ** 2).sum()
    backends.clear_cache()
    with mg.record_contributions(lstm.W) as rec:
        loss.backward()
    assert sorted(c.step for c in rec.of(lstm.W)) == list(range(5))
    np.testing.assert_allclose(rec.total(lstm.W), lstm.W.grad, rtol=1e-12)
    ref = mg.nn.LSTM(3, 4, return_sequences=True, unroll=True, dtype=np.float64)
    ref.set_weights(lstm.get_weights())
    (ref(x) ** 2).sum().backward()
    np.testing.assert_allclose(lstm.W.grad, ref.W.grad, rtol=1e-10)


def test_unrolled_lstm_keeps_what_its_backward_reads_not_every_intermediate():
    """The unrolled graph's Nodes hold no data: after the forward it keeps the arrays its vjps
    saved (x_t, h, c, the gates, tanh(c)) and the output, not x_t @ U, the sums or z. Measured
    1.40x the state at this size; when the graph kept every op's output it was 4.6x."""
    B, I, H, T = 32, 100, 128, 50
    lstm = mg.nn.LSTM(I, H, return_sequences=True, unroll=True, dtype=np.float32)
    x = mg.Tensor(rng.uniform(-1, 1, (B, T, I)).astype(np.float32))
    lstm(x).sum().backward()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loss = lstm(x).sum()
        kept = tracemalloc.get_traced_memory()[0] - base
        loss.backward()
    finally:
        tracemalloc.stop()
    state = T * B * 6 * H * 4
    assert kept <= 2.0 * state, f"kept {kept / state:.2f}x the state"
