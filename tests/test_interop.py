"""minigrad.interop (issues 4, 15): PyTorch's nn.LSTM / nn.GRU / nn.RNN weight layout, every layer and
direction.

The layout tests need only numpy; the ones that use torch are skipped, not failed, where it is not
installed. Agreement of outputs, states and every gradient with torch itself (converted weights, one and
two layers, both directions, packed sequences) is in test_recurrent_stacked.py.
"""
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


# ------------------------------------------------------------------ every layer and direction (issue 15)

KINDS = {"lstm": (nn.LSTM, 4, interop.torch_lstm_state_dict, interop.load_torch_lstm),
         "gru": (nn.GRU, 3, interop.torch_gru_state_dict, interop.load_torch_gru),
         "rnn": (nn.RNN, 1, interop.torch_rnn_state_dict, interop.load_torch_rnn)}


def torch_keys(L, bidirectional):
    sfx = [f"_l{i}{s}" for i in range(L) for s in (("", "_reverse") if bidirectional else ("",))]
    return sorted(f"{w}{x}" for x in sfx for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def random_state(kind, L, bidirectional, rng, I=I, H=H):
    """PyTorch's layout for every layer and direction, every entry random (both biases non-zero)."""
    k, D = KINDS[kind][1], 1 + bidirectional
    sd = {}
    for key in torch_keys(L, bidirectional):
        size = I if "_l0" in key else D * H
        shape = {"weight_ih": (k * H, size), "weight_hh": (k * H, H)}.get(key[:9], (k * H,))
        sd[key] = rng.standard_normal(shape)
    return sd


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_bidirectional_round_trip_and_layout(kind):
    cls, k, export, load = KINDS[kind]
    sd = random_state(kind, 2, True, np.random.default_rng(10))
    layer = cls(I, H, num_layers=2, bidirectional=True, dtype=F64)
    load(layer, sd)
    swap = (lambda m: np.concatenate([m[H:2 * H], m[:H], m[2 * H:]])) if kind == "gru" else (lambda m: m)
    for sfx in {key.split("_", 2)[2] for key in sd}:    # each key lands in the parameters of its suffix
        U, W, b = (getattr(layer, f"{p}_{sfx}").numpy() for p in "UWb")
        np.testing.assert_array_equal(U, swap(sd["weight_ih_" + sfx]).T)          # GRU: r, z, n -> z, r, n
        np.testing.assert_array_equal(W, swap(sd["weight_hh_" + sfx]).T)
        b_ih, b_hh = swap(sd["bias_ih_" + sfx]), swap(sd["bias_hh_" + sfx])
        np.testing.assert_array_equal(b, np.stack([b_ih, b_hh]) if kind == "gru" else b_ih + b_hh)
    back = export(layer)
    assert sorted(back) == torch_keys(2, True)
    for key, a in back.items():
        if kind == "gru" or key.startswith("weight"):
            np.testing.assert_array_equal(a, sd[key])
        elif key.startswith("bias_ih"):                 # the sum in bias_ih, zeros in bias_hh
            np.testing.assert_array_equal(a, sd[key] + sd[key.replace("bias_ih", "bias_hh")])
        else:
            np.testing.assert_array_equal(a, 0.0)
    other = cls(I, H, num_layers=2, bidirectional=True, dtype=F64)
    load(other, back)
    for p, q in zip(layer.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["two-layer-dict-into-one", "one-layer-dict-into-two", "no-reverse",
                                  "extra-key", "reverse-shape"])
def test_unused_missing_or_misshapen_keys_are_named_and_nothing_changes(kind, case):
    cls, k, _, load = KINDS[kind]
    rng = np.random.default_rng(11)
    L, bi, sd_L, sd_bi, error, names = {
        "two-layer-dict-into-one": (1, False, 2, False, KeyError, ["weight_ih_l1", "bias_hh_l1"]),
        "one-layer-dict-into-two": (2, False, 1, False, KeyError, ["weight_ih_l1", "bias_hh_l1"]),
        "no-reverse": (1, True, 1, False, KeyError, ["weight_ih_l0_reverse"]),
        "extra-key": (1, False, 1, False, KeyError, ["weight_hr_l0"]),
        "reverse-shape": (2, True, 2, True, ValueError, ["weight_ih_l1_reverse", str((k * H, 2 * H))]),
    }[case]
    layer = cls(I, H, num_layers=L, bidirectional=bi, dtype=F64)
    before = layer.get_weights()
    sd = random_state(kind, sd_L, sd_bi, rng)
    if case == "extra-key":
        sd["weight_hr_l0"] = rng.standard_normal((H, H))           # a proj_size model's
    if case == "reverse-shape":
        sd["weight_ih_l1_reverse"] = sd["weight_ih_l1_reverse"][:, :H]
    with pytest.raises(error) as info:
        load(layer, sd)
    for name in names:
        assert name in str(info.value)
    assert "nothing was loaded" in str(info.value)
    for p, q in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("kind", KINDS)
def test_export_loads_into_torch_and_computes_the_same(kind):
    """The exported dict is exactly what torch's own load_state_dict (strict) takes, and torch then
    computes minigrad's outputs (minigrad -> torch; torch -> minigrad is test_recurrent_stacked's)."""
    torch = pytest.importorskip("torch")
    cls = KINDS[kind][0]
    layer = cls(I, H, num_layers=2, bidirectional=True, return_sequences=True, dtype=F64)
    rng = np.random.default_rng(12)
    layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    t_layer = getattr(torch.nn, kind.upper())(I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    assert sorted(t_layer.state_dict()) == torch_keys(2, True)
    t_layer.load_state_dict({key: torch.tensor(v) for key, v in KINDS[kind][2](layer).items()})
    x = rng.standard_normal((2, 5, I))
    np.testing.assert_allclose(layer(x).numpy(), t_layer(torch.tensor(x))[0].detach().numpy(), rtol=1e-10, atol=1e-12)
