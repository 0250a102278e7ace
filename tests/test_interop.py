"""minigrad.interop (issue 4): PyTorch's nn.LSTM / nn.GRU weight layout, and agreement with torch itself.

The layout tests need only numpy. The agreement tests load torch's own randomly initialised weights
(both biases non-zero) into minigrad and compare outputs, final states and every gradient in float64;
they are skipped, not failed, where torch is not installed.
"""
from types import SimpleNamespace

import numpy as np
import pytest

import minigrad as mg
from minigrad import interop, nn

F64 = np.float64
I, H = 3, 4
KEYS = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def torch_like_state(k, rng):
    """A state dict in PyTorch's layout for k gate blocks, every entry random (both biases non-zero)."""
    return {"weight_ih_l0": rng.standard_normal((k * H, I)), "weight_hh_l0": rng.standard_normal((k * H, H)),
            "bias_ih_l0": rng.standard_normal(k * H), "bias_hh_l0": rng.standard_normal(k * H)}


def blocks(a, k, axis):
    return np.split(a, k, axis=axis)


# ------------------------------------------------------------------ LSTM layout

@pytest.mark.parametrize("cls", [nn.LSTM, nn.LSTMCell])
def test_lstm_export_layout(cls):
    lstm = cls(I, H, dtype=F64)
    lstm.set_weights([np.random.default_rng(0).standard_normal(w.shape) for w in lstm.get_weights()])
    sd = interop.torch_lstm_state_dict(lstm)
    assert sorted(sd) == sorted(KEYS)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert sd["weight_ih_l0"].shape == (4 * H, I) and sd["weight_hh_l0"].shape == (4 * H, H)
    np.testing.assert_array_equal(sd["weight_ih_l0"], lstm.U.numpy().T)     # gate order i, f, g, o in both
    np.testing.assert_array_equal(sd["weight_hh_l0"], lstm.W.numpy().T)
    np.testing.assert_array_equal(sd["bias_ih_l0"], lstm.b.numpy())
    np.testing.assert_array_equal(sd["bias_hh_l0"], np.zeros(4 * H))          # the sum lives in bias_ih
    for v in sd.values():
        v[...] = 9.0                                                             # copies, not views
    assert not any(np.any(p.numpy() == 9.0) for p in (lstm.U, lstm.W, lstm.b))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.LSTMCell])
def test_lstm_import_sums_the_biases(cls):
    sd = torch_like_state(4, np.random.default_rng(1))
    lstm = cls(I, H, dtype=F64)
    params = [lstm.U, lstm.W, lstm.b]
    interop.load_torch_lstm(lstm, sd)
    assert all(a is b for a, b in zip([lstm.U, lstm.W, lstm.b], params))        # loaded in place
    np.testing.assert_array_equal(lstm.U.numpy(), sd["weight_ih_l0"].T)
    np.testing.assert_array_equal(lstm.W.numpy(), sd["weight_hh_l0"].T)
    np.testing.assert_allclose(lstm.b.numpy(), sd["bias_ih_l0"] + sd["bias_hh_l0"], rtol=0, atol=0)
    back = interop.torch_lstm_state_dict(lstm)
    np.testing.assert_array_equal(back["weight_ih_l0"], sd["weight_ih_l0"])
    np.testing.assert_array_equal(back["weight_hh_l0"], sd["weight_hh_l0"])
    np.testing.assert_array_equal(back["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"])
    np.testing.assert_array_equal(back["bias_hh_l0"], 0.0)


def test_lstm_round_trip_through_the_torch_layout():
    a = nn.LSTM(I, H, dtype=F64)
    a.set_weights([np.random.default_rng(2).standard_normal(w.shape) for w in a.get_weights()])
    b = nn.LSTM(I, H, dtype=F64)
    interop.load_torch_lstm(b, interop.torch_lstm_state_dict(a))
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(p, q)
    x = mg.Tensor(np.random.default_rng(3).standard_normal((2, 5, I)))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_keeps_the_layers_dtype():
    lstm = nn.LSTM(I, H)                                                         # float32
    interop.load_torch_lstm(lstm, torch_like_state(4, np.random.default_rng(4)))
    assert lstm.U.dtype == lstm.W.dtype == lstm.b.dtype == np.float32
    gru = nn.GRU(I, H)
    interop.load_torch_gru(gru, torch_like_state(3, np.random.default_rng(4)))
    assert gru.U.dtype == gru.b.dtype == np.float32


# ------------------------------------------------------------------ GRU layout

@pytest.mark.parametrize("cls", [nn.GRU, nn.GRUCell])
def test_gru_export_reorders_gates_and_keeps_both_biases(cls):
    gru = cls(I, H, dtype=F64)
    rng = np.random.default_rng(5)
    U, W, b = (rng.standard_normal(w.shape) for w in gru.get_weights())
    gru.set_weights([U, W, b])
    sd = interop.torch_gru_state_dict(gru)
    assert sorted(sd) == sorted(KEYS)
    assert sd["weight_ih_l0"].shape == (3 * H, I) and sd["weight_hh_l0"].shape == (3 * H, H)
    z, r, n = blocks(U, 3, axis=1)                         # minigrad / Keras: z, r, n
    tr, tz, tn = blocks(sd["weight_ih_l0"], 3, axis=0)     # PyTorch: r, z, n
    np.testing.assert_array_equal(tr, r.T)
    np.testing.assert_array_equal(tz, z.T)
    np.testing.assert_array_equal(tn, n.T)
    z, r, n = blocks(W, 3, axis=1)
    np.testing.assert_array_equal(sd["weight_hh_l0"], np.concatenate([r, z, n], 1).T)
    for row, key in enumerate(["bias_ih_l0", "bias_hh_l0"]):
        z, r, n = blocks(b[row], 3, axis=0)
        np.testing.assert_array_equal(sd[key], np.concatenate([r, z, n]))
    assert np.abs(sd["bias_hh_l0"]).sum() > 0
    for v in sd.values():
        v[...] = 9.0                                       # copies, not views
    assert not any(np.any(p.numpy() == 9.0) for p in (gru.U, gru.W, gru.b))


@pytest.mark.parametrize("cls", [nn.GRU, nn.GRUCell])
def test_gru_round_trips_both_ways(cls):
    sd = torch_like_state(3, np.random.default_rng(6))
    gru = cls(I, H, dtype=F64)
    interop.load_torch_gru(gru, sd)
    back = interop.torch_gru_state_dict(gru)
    for k in KEYS:
        np.testing.assert_array_equal(back[k], sd[k])
    other = cls(I, H, dtype=F64)
    interop.load_torch_gru(other, back)
    for p, q in zip(gru.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(p, q)


# ------------------------------------------------------------------ errors leave the layer unchanged

@pytest.mark.parametrize("which", ["lstm", "gru"])
@pytest.mark.parametrize("damage,error,match", [
    (lambda sd: sd.pop("bias_hh_l0"), KeyError, "bias_hh_l0"),
    (lambda sd: sd.update(weight_hh_l0=sd["weight_hh_l0"][:, :-1]), ValueError, "weight_hh_l0 must have shape"),
    (lambda sd: sd.update(weight_ih_l0=sd["weight_ih_l0"].T), ValueError, "weight_ih_l0 must have shape"),
    (lambda sd: sd.update(bias_ih_l0=sd["bias_ih_l0"][:-1]), ValueError, "bias_ih_l0"),
    (lambda sd: sd.update({k.replace("l0", "l1"): sd.pop(k) for k in list(sd)}), KeyError, "weight_ih_l0"),
], ids=["missing", "W-shape", "U-transposed", "bias-shape", "layer-1-keys"])
def test_bad_state_dicts_are_rejected_before_anything_changes(which, damage, error, match):
    k, cls, load = {"lstm": (4, nn.LSTM, interop.load_torch_lstm), "gru": (3, nn.GRU, interop.load_torch_gru)}[which]
    layer = cls(I, H, dtype=F64)
    before = layer.get_weights()
    sd = torch_like_state(k, np.random.default_rng(7))
    damage(sd)
    with pytest.raises(error, match=match):
        load(layer, sd)
    for p, q in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(p, q)


def test_an_lstm_state_dict_does_not_load_into_a_gru():
    gru = nn.GRU(I, H, dtype=F64)
    before = gru.get_weights()
    with pytest.raises(ValueError, match="must have shape"):
        interop.load_torch_gru(gru, torch_like_state(4, np.random.default_rng(8)))
    for p, q in zip(gru.get_weights(), before):
        np.testing.assert_array_equal(p, q)


# ------------------------------------------------------------------ against torch itself

def _torch_grads_layout(kind, layer):
    """minigrad's U, W, b gradients as a PyTorch state dict (the interop export applied to them)."""
    grads = SimpleNamespace(hidden_size=layer.hidden_size, U=mg.Tensor(layer.U.grad), W=mg.Tensor(layer.W.grad),
                            b=mg.Tensor(layer.b.grad))
    if kind == "lstm":
        sd = interop.torch_lstm_state_dict(grads)
        sd["bias_hh_l0"] = sd["bias_ih_l0"]            # z = x U + h W + b_ih + b_hh: both get db
        return sd
    if kind == "gru":
        return interop.torch_gru_state_dict(grads)
    return {"weight_ih_l0": grads.U.numpy().T, "weight_hh_l0": grads.W.numpy().T,
            "bias_ih_l0": grads.b.numpy(), "bias_hh_l0": grads.b.numpy()}


def _load(kind, layer, sd):
    if kind == "lstm":
        interop.load_torch_lstm(layer, sd)
    elif kind == "gru":
        interop.load_torch_gru(layer, sd)
    else:       # no interop helper for the RNN: the conversion is the LSTM's with one block
        layer.set_weights([sd["weight_ih_l0"].T, sd["weight_hh_l0"].T, sd["bias_ih_l0"] + sd["bias_hh_l0"]])


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_matches_torch_outputs_states_and_every_gradient(kind, unroll):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t_cls, m_cls = {"lstm": (torch.nn.LSTM, nn.LSTM), "gru": (torch.nn.GRU, nn.GRU),
                    "rnn": (torch.nn.RNN, nn.RNN)}[kind]
    t_layer = t_cls(I, H, batch_first=True).double()
    sd = {k: v.detach().numpy().copy() for k, v in t_layer.state_dict().items()}
    assert all(np.abs(sd[k]).sum() > 0 for k in KEYS)          # torch's init: both biases non-zero
    layer = m_cls(I, H, return_sequences=True, return_state=True, unroll=unroll, dtype=F64)
    _load(kind, layer, sd)

    rng = np.random.default_rng(9)
    n_states = 2 if kind == "lstm" else 1
    x = rng.standard_normal((3, 5, I))
    states = [rng.standard_normal((3, H)) for _ in range(n_states)]
    R = rng.standard_normal((3, 5, H))
    RS = [rng.standard_normal((3, H)) for _ in range(n_states)]

    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s[None], requires_grad=True) for s in states]       # (layers, batch, H)
    t_out, t_final = t_layer(tx, tuple(t_states) if kind == "lstm" else t_states[0])
    t_final = t_final if kind == "lstm" else (t_final,)
    t_loss = (t_out * torch.tensor(R)).sum() + sum((f[0] * torch.tensor(r)).sum() for f, r in zip(t_final, RS))
    t_loss.backward()

    mx = mg.Tensor(x, requires_grad=True)
    m_states = [mg.Tensor(s, requires_grad=True) for s in states]
    m_out, *m_final = layer(mx, initial_state=tuple(m_states))
    m_loss = (m_out * R).sum() + sum((f * r).sum() for f, r in zip(m_final, RS))
    m_loss.backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m_loss.item(), t_loss.item(), **tol)
    np.testing.assert_allclose(m_out.numpy(), t_out.detach().numpy(), **tol)
    for m, t in zip(m_final, t_final):
        np.testing.assert_allclose(m.numpy(), t.detach().numpy()[0], **tol)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), **tol)
    for m, t in zip(m_states, t_states):
        np.testing.assert_allclose(m.grad, t.grad.numpy()[0], **tol)
    grads = _torch_grads_layout(kind, layer)
    t_params = dict(t_layer.named_parameters())
    for k in KEYS:
        np.testing.assert_allclose(grads[k], t_params[k].grad.numpy(), err_msg=k, **tol)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    t_lstm, t_gru = torch.nn.LSTM(I, H, batch_first=True), torch.nn.GRU(I, H, batch_first=True)
    lstm, gru = nn.LSTM(I, H, dtype=F64), nn.GRU(I, H, dtype=F64)
    interop.load_torch_lstm(lstm, t_lstm.state_dict())                          # float32 torch tensors
    interop.load_torch_gru(gru, dict(t_gru.named_parameters()))                # requires_grad ones too
    sd = t_lstm.state_dict()
    np.testing.assert_allclose(lstm.b.numpy(), (sd["bias_ih_l0"] + sd["bias_hh_l0"]).numpy(), rtol=1e-6)
    back = interop.torch_gru_state_dict(gru)
    for k, v in t_gru.state_dict().items():
        np.testing.assert_allclose(back[k], v.numpy(), rtol=1e-6)
    t_lstm.load_state_dict({k: torch.tensor(v) for k, v in interop.torch_lstm_state_dict(lstm).items()})
