"""Stacked (``num_layers``) and bidirectional recurrent layers, dropout between layers and
recurrent dropout (issue 15), in both graph modes.

Checked against PyTorch's own ``nn.LSTM/GRU/RNN(batch_first=True, num_layers=2,
bidirectional=True)`` with converted weights (packed sequences for masks), skipped without
torch; and without torch by finite differences (``mg.gradcheck`` in float64), by the two graph
modes against each other, and by compositions of plain single-layer, single-direction layers.
"""
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import minigrad as mg
from minigrad import interop, nn
from minigrad.nn import functional_call

F64 = np.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
N_STATES = {"lstm": 2, "gru": 1, "rnn": 1}
EXPORT = {"lstm": interop.torch_lstm_state_dict, "gru": interop.torch_gru_state_dict,
          "rnn": interop.torch_rnn_state_dict}
LOAD = {"lstm": interop.load_torch_lstm, "gru": interop.load_torch_gru, "rnn": interop.load_torch_rnn}
CONFIGS = {"l1": (1, False), "l2-bi": (2, True), "l2": (2, False), "l1-bi": (1, True)}
LENGTHS = [5, 2, 1, 4]                              # post-padded batch; T = 5


def random_layer(kind, I, H, L, bi, seed, unroll=False, **kw):
    """A float64 layer with every weight (biases too) random, so no gate sits at a special value."""
    layer = CLASSES[kind](I, H, num_layers=L, bidirectional=bi, unroll=unroll, dtype=F64, **kw)
    rng = np.random.default_rng(seed)
    layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    return layer


def post_padded_mask(lengths, T):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def grads_in_torch_layout(kind, layer):
    """minigrad's parameter gradients as a PyTorch state dict (the interop export applied to them)."""
    twin = CLASSES[kind](layer.input_size, layer.hidden_size, num_layers=layer.num_layers,
                         bidirectional=layer.bidirectional, dtype=F64)
    twin.set_weights([p.grad for _, p in layer.named_parameters()])
    sd = EXPORT[kind](twin)
    if kind != "gru":           # x U + h W + b_ih + b_hh: both of PyTorch's biases get db
        sd.update({k.replace("bias_ih", "bias_hh"): v for k, v in sd.items() if k.startswith("bias_ih")})
    return sd


# ------------------------------------------------------------------ against PyTorch

def run_torch(torch, kind, t_layer, x, states, R, RS, lengths):
    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s, requires_grad=True) for s in states]
    inp = tx if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        tx, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    out, final = t_layer(inp, tuple(t_states) if kind == "lstm" else t_states[0])
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    final = final if kind == "lstm" else (final,)
    loss = (out * torch.tensor(R)).sum() + sum((f * torch.tensor(r)).sum() for f, r in zip(final, RS))
    loss.backward()
    return loss, out, final, tx, t_states


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_matches_torch_outputs_states_and_every_gradient(kind, unroll, masked, config):
    torch = pytest.importorskip("torch")
    L, bi = CONFIGS[config]
    D, I, H, B, T = 1 + bi, 3, 4, len(LENGTHS), max(LENGTHS)
    torch.manual_seed(0)
    t_layer = getattr(torch.nn, kind.upper())(I, H, num_layers=L, bidirectional=bi, batch_first=True).double()
    sd = {k: v.detach().numpy().copy() for k, v in t_layer.state_dict().items()}
    assert all(np.abs(v).sum() > 0 for v in sd.values())          # torch's init: both biases non-zero
    layer = CLASSES[kind](I, H, num_layers=L, bidirectional=bi, return_sequences=True, return_state=True,
                          unroll=unroll, dtype=F64)
    LOAD[kind](layer, sd)

    rng = np.random.default_rng(9)
    n = N_STATES[kind]
    x = rng.standard_normal((B, T, I))
    states = [rng.standard_normal((L * D, B, H)) for _ in range(n)]
    R = rng.standard_normal((B, T, D * H))
    RS = [rng.standard_normal((L * D, B, H)) for _ in range(n)]
    lengths = LENGTHS if masked else None
    t_loss, t_out, t_final, tx, t_states = run_torch(torch, kind, t_layer, x, states, R, RS, lengths)

    mx = mg.Tensor(x, requires_grad=True)
    m_states = [mg.Tensor(s if L * D > 1 else s[0], requires_grad=True) for s in states]   # (B, H) when plain
    mask = post_padded_mask(LENGTHS, T) if masked else None
    m_out, *m_final = layer(mx, initial_state=tuple(m_states), mask=mask)
    m_loss = (m_out * R).sum() + sum((f * r.reshape(f.shape)).sum() for f, r in zip(m_final, RS))
    m_loss.backward()

    np.testing.assert_allclose(m_loss.item(), t_loss.item(), **TIGHT)
    np.testing.assert_allclose(m_out.numpy(), t_out.detach().numpy(), **TIGHT)
    for m, t in zip(m_final, t_final):
        np.testing.assert_allclose(m.numpy(), t.detach().numpy().reshape(m.shape), **TIGHT)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), **TIGHT)
    for m, t in zip(m_states, t_states):
        np.testing.assert_allclose(m.grad, t.grad.numpy().reshape(m.shape), **TIGHT)
    grads = grads_in_torch_layout(kind, layer)
    t_params = dict(t_layer.named_parameters())
    assert sorted(grads) == sorted(t_params)
    for k, p in t_params.items():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), err_msg=k, **TIGHT)


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_last_output_is_each_directions_final_output_as_torch(kind, unroll):
    """Without return_sequences: the forward direction's output at each sequence's last valid step
    beside the backward direction's at time 0, i.e. torch's h_n[-2] and h_n[-1] side by side."""
    torch = pytest.importorskip("torch")
    I, H, B, T = 3, 4, len(LENGTHS), max(LENGTHS)
    torch.manual_seed(1)
    t_layer = getattr(torch.nn, kind.upper())(I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    layer = CLASSES[kind](I, H, num_layers=2, bidirectional=True, unroll=unroll, dtype=F64)
    LOAD[kind](layer, t_layer.state_dict())
    x = np.random.default_rng(2).standard_normal((B, T, I))
    tx = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(LENGTHS), batch_first=True,
                                                     enforce_sorted=False)
    t_out, t_final = t_layer(packed)
    h_n = t_final[0] if kind == "lstm" else t_final
    t_last = torch.cat([h_n[-2], h_n[-1]], dim=-1)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, batch_first=True)
    rows = torch.arange(B)
    np.testing.assert_allclose(t_last[:, :H].detach().numpy(),
                               padded[rows, torch.tensor(LENGTHS) - 1, :H].detach().numpy(), **TIGHT)
    R = np.random.default_rng(3).standard_normal((B, 2 * H))
    (t_last * torch.tensor(R)).sum().backward()
    mx = mg.Tensor(x, requires_grad=True)
    out = layer(mx, mask=post_padded_mask(LENGTHS, T))
    (out * R).sum().backward()
    assert out.shape == (B, 2 * H)
    np.testing.assert_allclose(out.numpy(), t_last.detach().numpy(), **TIGHT)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), **TIGHT)
    grads, t_params = grads_in_torch_layout(kind, layer), dict(t_layer.named_parameters())
    for k, p in t_params.items():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), err_msg=k, **TIGHT)


def test_parameter_counts_match_torchs_structure():
    """Layer l >= 1 reads directions * H features. GRU counts equal PyTorch's; the LSTM and RNN have
    one bias where PyTorch has two, so theirs are PyTorch's less one bias per layer and direction."""
    torch = pytest.importorskip("torch")
    count = lambda m: sum(p.size for p in m.parameters())
    for I, H, L, bi in [(3, 4, 2, True), (5, 2, 3, False), (1, 3, 1, True)]:
        sets = L * (1 + bi)
        for kind, k in (("lstm", 4), ("gru", 3), ("rnn", 1)):
            t_count = sum(p.numel() for p in getattr(torch.nn, kind.upper())(I, H, L, bidirectional=bi).parameters())
            extra = 0 if kind == "gru" else sets * k * H
            assert count(CLASSES[kind](I, H, num_layers=L, bidirectional=bi)) == t_count - extra


# ------------------------------------------------------------------ without torch

@pytest.mark.parametrize("kind", CLASSES)
def test_parameter_names_counts_and_summary(kind):
    k = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    layer = CLASSES[kind](3, 4, num_layers=2, bidirectional=True)
    names = [n for n, _ in layer.named_parameters()]
    assert names == [f"{p}_l{i}{s}" for i in range(2) for s in ("", "_reverse") for p in "UWb"]
    assert layer.U_l1_reverse.shape == (8, k * 4) and layer.W_l0.shape == (4, k * 4)
    bias = 2 * k * 4 if kind == "gru" else k * 4
    per_set = lambda i: i * k * 4 + 4 * k * 4 + bias
    assert sum(p.size for p in layer.parameters()) == 2 * per_set(3) + 2 * per_set(8)
    model = nn.Sequential(CLASSES[kind](3, 4, bidirectional=True), nn.Linear(8, 1))
    text = nn.summary(model, (None, 3))
    assert f"(None, 8)                 {2 * per_set(3)}" in text
    assert f"Total params: {2 * per_set(3) + 9:,}" in text


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_gradcheck_stacked_bidirectional(kind, unroll, masked):
    """Finite differences (float64) for every output with respect to the input, the stacked initial
    states and every layer's and direction's parameters: the full Jacobians in one case per kind,
    random projections of them (fast_mode) in the others, to keep the suite quick."""
    rng = np.random.default_rng(4)
    layer = random_layer(kind, 2, 2, 2, True, seed=5, unroll=unroll, return_sequences=True, return_state=True)
    n = N_STATES[kind]
    names = [name for name, _ in layer.named_parameters()]
    inputs = [mg.Tensor(rng.standard_normal((2, 3, 2)), requires_grad=True)]
    inputs += [mg.Tensor(rng.standard_normal((4, 2, 2)), requires_grad=True) for _ in range(n)]
    inputs += [mg.Tensor(p.numpy().copy(), requires_grad=True) for _, p in layer.named_parameters()]
    mask = np.array([[True, True, False], [True, False, False]]) if masked else None

    def fn(x, *rest):
        params = dict(zip(names, rest[n:]))
        return functional_call(layer, params, x, initial_state=tuple(rest[:n]), mask=mask)
    assert mg.gradcheck(fn, inputs, fast_mode=unroll or not masked)


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_gradcheck_through_both_dropouts_with_a_fixed_draw(kind, unroll):
    """Dropout between layers and recurrent dropout: reseeding before each forward gives the same
    masks, so the function is deterministic and finite differences apply."""
    rng = np.random.default_rng(6)
    layer = random_layer(kind, 2, 3, 2, True, seed=7, unroll=unroll, dropout=0.4, recurrent_dropout=0.4,
                         return_sequences=True)
    names = [name for name, _ in layer.named_parameters()]
    inputs = [mg.Tensor(rng.standard_normal((2, 3, 2)), requires_grad=True)]
    inputs += [mg.Tensor(p.numpy().copy(), requires_grad=True) for _, p in layer.named_parameters()]

    def fn(x, *params):
        mg.seed(3)
        return functional_call(layer, dict(zip(names, params)), x)
    assert mg.gradcheck(fn, inputs, fast_mode=True)
    layer.eval()
    assert np.all(fn(inputs[0]).numpy() == layer(inputs[0]).numpy())   # eval: no draw at all


def plain_twin(layer, i, input_size, **kw):
    """A one-layer, one-direction layer holding ``layer``'s i-th weight set (PyTorch's order)."""
    twin = type(layer)(input_size, layer.hidden_size, dtype=F64, return_sequences=True, **kw)
    twin.set_weights(layer.get_weights()[3 * i:3 * i + 3])
    return twin


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_stacked_bidirectional_is_the_composition_of_plain_layers(kind, unroll):
    """Each layer's backward direction is a plain layer over the time-reversed sequence, its outputs
    reversed back and put after the forward direction's; layer 1 reads layer 0's output."""
    layer = random_layer(kind, 3, 2, 2, True, seed=8, unroll=unroll, return_sequences=True, return_state=True)
    x = mg.Tensor(np.random.default_rng(9).standard_normal((2, 4, 3)))
    out, *finals = layer(x)
    seq, want_finals = x, []
    for i in range(2):
        fwd = plain_twin(layer, 2 * i, seq.shape[-1], return_state=True)
        bwd = plain_twin(layer, 2 * i + 1, seq.shape[-1], return_state=True)
        f_out, *f_states = fwd(seq)
        b_out, *b_states = bwd(seq[:, ::-1])
        seq = mg.concatenate([f_out, b_out[:, ::-1]], axis=-1)
        want_finals += [f_states, b_states]
    np.testing.assert_allclose(out.numpy(), seq.numpy(), **TIGHT)
    for k, final in enumerate(finals):
        assert final.shape == (4, 2, 2)
        np.testing.assert_allclose(final.numpy(), np.stack([s[k].numpy() for s in want_finals]), **TIGHT)


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_padded_batch_equals_each_sequence_alone(kind, unroll):
    """The backward direction reads each sequence reversed within its own length: a post-padded
    batch gives, row by row, what the unpadded sequence alone gives (zeros on the padding)."""
    layer = random_layer(kind, 2, 3, 2, True, seed=10, unroll=unroll, return_sequences=True, return_state=True)
    T = max(LENGTHS)
    x = np.random.default_rng(11).standard_normal((len(LENGTHS), T, 2))
    out, *finals = layer(x, mask=post_padded_mask(LENGTHS, T))
    for b, n in enumerate(LENGTHS):
        alone, *alone_finals = layer(x[b:b + 1, :n])
        np.testing.assert_allclose(out.numpy()[b, :n], alone.numpy()[0], **TIGHT)
        assert np.all(out.numpy()[b, n:] == 0)
        for f, a in zip(finals, alone_finals):
            np.testing.assert_allclose(f.numpy()[:, b], a.numpy()[:, 0], **TIGHT)


@pytest.mark.parametrize("kind", CLASSES)
def test_record_contributions_agree_between_graph_modes(kind):
    """Each layer's and direction's per-step shares of its parameters' gradients are the same in
    both modes (a backward direction's steps numbered in its own order, step 0 at time T-1), and
    they sum to .grad."""
    x = np.random.default_rng(19).standard_normal((2, 4, 2))
    mask = post_padded_mask([4, 2], 4)
    shares = []
    for unroll in (True, False):
        layer = random_layer(kind, 2, 3, 2, True, seed=20, unroll=unroll, return_sequences=True)
        params = layer.parameters()
        with mg.record_contributions(*params) as rec:
            (layer(x, mask=mask) ** 2).sum().backward()
        per_step = []
        for p in params:
            steps = {c.step for c in rec.of(p)}
            assert steps == set(range(4))
            per_step.append([np.sum([c.grad for c in rec.of(p) if c.step == t], axis=0) for t in range(4)])
            np.testing.assert_allclose(rec.total(p), p.grad, **TIGHT)
        shares.append(per_step)
    for a, b in zip(*shares):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, **TIGHT)


@st.composite
def stacked_problems(draw):
    kind = draw(st.sampled_from(list(CLASSES)))
    L, bi = draw(st.sampled_from(list(CONFIGS.values())))
    B, T, I, H = (draw(st.integers(1, n)) for n in (3, 4, 3, 3))
    mask = draw(st.none() | hnp.arrays(bool, (B, T)))          # any pattern, holes and empty rows too
    return kind, L, bi, B, T, I, H, mask, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=min(15, settings.default.max_examples), deadline=None)
@given(stacked_problems())
def test_unrolled_and_looped_agree_on_every_output_and_gradient(problem):
    kind, L, bi, B, T, I, H, mask, return_sequences, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I))
    states = [rng.standard_normal((L * (1 + bi), B, H)) for _ in range(N_STATES[kind])]
    if L * (1 + bi) == 1:
        states = [s[0] for s in states]
    results = []
    for unroll in (True, False):
        layer = random_layer(kind, I, H, L, bi, seed, unroll=unroll, return_sequences=return_sequences,
                             return_state=True)
        mx = mg.Tensor(x, requires_grad=True)
        ms = [mg.Tensor(s, requires_grad=True) for s in states]
        outs = layer(mx, initial_state=tuple(ms), mask=mask)
        sum((o * np.cos(np.arange(o.size)).reshape(o.shape)).sum() for o in outs).backward()
        results.append([o.numpy() for o in outs] + [mx.grad] + [s.grad for s in ms]
                       + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, **TIGHT)


@pytest.mark.parametrize("kind", CLASSES)
def test_stacked_states_are_checked(kind):
    n = N_STATES[kind]
    layer = CLASSES[kind](3, 4, num_layers=2, bidirectional=True)
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(4, 2, 4\)"):
        layer(x, initial_state=tuple(np.zeros((2, 4), np.float32) for _ in range(n)))
    out = CLASSES[kind](3, 4, num_layers=3, return_state=True)(x)
    assert out[0].shape == (2, 4) and all(s.shape == (3, 2, 4) for s in out[1:])
    np.testing.assert_array_equal(out[0].numpy(), out[1].numpy()[-1])       # the top layer's h
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_layers"):
            CLASSES[kind](3, 4, num_layers=bad)
    for bad in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match="dropout"):
            CLASSES[kind](3, 4, num_layers=2, dropout=bad)
        with pytest.raises(ValueError, match="recurrent_dropout"):
            CLASSES[kind](3, 4, recurrent_dropout=bad)
    with pytest.warns(UserWarning, match="num_layers=1"):
        CLASSES[kind](3, 4, dropout=0.5)


# ------------------------------------------------------------------ dropout between layers

@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
def test_dropout_acts_between_layers_in_training_only(unroll):
    p = 0.5
    layer = random_layer("lstm", 3, 4, 2, False, seed=12, unroll=unroll, dropout=p, return_sequences=True)
    x = mg.Tensor(np.random.default_rng(13).standard_normal((2, 6, 3)))
    first, second = plain_twin(layer, 0, 3), plain_twin(layer, 1, 4)
    mg.seed(5)
    got = layer(x).numpy()
    mg.seed(5)
    dropped = nn.functional.dropout(first(x).transpose(1, 0, 2), p).transpose(1, 0, 2)   # drawn time-major
    want = second(dropped).numpy()                                 # layer 0's output dropped, not layer 1's
    np.testing.assert_allclose(got, want, **TIGHT)
    assert not np.allclose(got, layer(x).numpy())                  # a fresh draw per call
    assert not np.allclose(got, second(first(x)).numpy())
    layer.eval()
    np.testing.assert_allclose(layer(x).numpy(), second(first(x)).numpy(), **TIGHT)


# ------------------------------------------------------------------ recurrent dropout

def observed_rnn_masks(unroll, p, calls=2, B=3, H=50, T=4):
    """Each call's recurrent-dropout mask, read back from an RNN built so that every step shows it:
    U = 0, b = 1, W = I and h0 = 1, so h_t = tanh(1 + m * h_{t-1}) per unit: tanh(1) where the
    unit's mask is 0, larger where it is kept (m = 1 / (1 - p))."""
    layer = nn.RNN(1, H, unroll=unroll, recurrent_dropout=p, return_sequences=True, dtype=F64)
    layer.set_weights([np.zeros((1, H)), np.eye(H), np.ones(H)])
    x, h0 = np.zeros((B, T, 1)), np.ones((B, H))
    masks = []
    for _ in range(calls):
        out = layer(x, initial_state=(h0,)).numpy()
        h_prev = np.concatenate([h0[:, None], out[:, :-1]], axis=1)
        masks.append(np.round((np.arctanh(out) - 1.0) / h_prev, 7))   # the mask each step applied, (B, T, H)
    return layer, masks


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
def test_recurrent_dropout_one_mask_per_call_shared_by_its_steps(unroll):
    p = 0.4
    layer, masks = observed_rnn_masks(unroll, p, calls=3)
    for m in masks:
        np.testing.assert_array_equal(m, m[:, :1].repeat(m.shape[1], 1))          # the same at every step
        np.testing.assert_allclose(np.unique(m), [0.0, 1 / (1 - p)])              # inverted scaling
        assert 0.2 < np.mean(m == 0) < 0.6
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])   # fresh per call
    layer.eval()
    x, h0 = np.zeros((3, 4, 1)), np.ones((3, 50))
    out = layer(x, initial_state=(h0,)).numpy()
    np.testing.assert_allclose(out[:, 0], np.tanh(2.0))                            # no dropout in eval


@pytest.mark.parametrize("config", ["l1", "l2-bi"])
@pytest.mark.parametrize("kind", CLASSES)
def test_recurrent_dropout_unrolled_and_looped_agree_given_the_seed(kind, config):
    L, bi = CONFIGS[config]
    x = np.random.default_rng(14).standard_normal((3, 5, 2))
    results = []
    for unroll in (True, False):
        layer = random_layer(kind, 2, 3, L, bi, seed=15, unroll=unroll, recurrent_dropout=0.5,
                             dropout=0.3 if L > 1 else 0.0, return_sequences=True, return_state=True)
        calls = []
        mg.seed(16)
        for _ in range(2):
            mx = mg.Tensor(x, requires_grad=True)
            outs = layer(mx, mask=post_padded_mask([5, 3, 1], 5))
            sum((o * o).sum() for o in outs).backward()
            calls.append([o.numpy() for o in outs] + [mx.grad] + [p.grad.copy() for p in layer.parameters()])
            layer.zero_grad()
        assert not np.allclose(calls[0][0], calls[1][0])         # the second call drew other masks
        results.append(calls)
    for a, b in zip(results[0], results[1]):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, **TIGHT)


def numpy_step(kind, x, h, c, U, W, b, m):
    """One step in plain numpy with the recurrent mask m on h where it enters h W (Keras's meaning)."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    H = h.shape[1]
    if kind == "rnn":
        return np.tanh(x @ U + b + (h * m) @ W), None
    if kind == "lstm":
        z = x @ U + b + (h * m) @ W
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = f * c + i * g
        return o * np.tanh(c), c
    xz, hz = x @ U + b[0], (h * m) @ W + b[1]
    z, r = sig(xz[:, :H] + hz[:, :H]), sig(xz[:, H:2 * H] + hz[:, H:2 * H])
    n = np.tanh(xz[:, 2 * H:] + r * hz[:, 2 * H:])
    return z * h + (1 - z) * n, None            # the carried h is not dropped, only the product's


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", CLASSES)
def test_recurrent_dropout_applies_the_mask_to_the_recurrent_product(kind, unroll, monkeypatch):
    B, T, I, H = 2, 4, 3, 5
    layer = random_layer(kind, I, H, 1, False, seed=17, unroll=unroll, recurrent_dropout=0.5,
                         return_sequences=True)
    rng = np.random.default_rng(18)
    given_masks = [(rng.random((B, H)) > 0.5) * 2.0 for _ in range(2)]
    draws = iter(given_masks)
    monkeypatch.setattr(layer, "_recurrent_mask", lambda batch: mg.Tensor(next(draws)))
    x = rng.standard_normal((B, T, I))
    U, W, b = layer.get_weights()
    for m in given_masks:
        h = c = np.zeros((B, H))
        want = []
        for t in range(T):
            h, c = numpy_step(kind, x[:, t], h, c, U, W, b, m)
            want.append(h)
        np.testing.assert_allclose(layer(x).numpy(), np.stack(want, 1), **TIGHT)
