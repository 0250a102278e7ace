"""The small layers a PyTorch or Keras user reaches for: LayerNorm, GELU, LeakyReLU, Softmax,
Flatten, Identity, Embedding(padding_idx), ModuleDict and buffers.

LayerNorm, GELU and Embedding(padding_idx) are checked against PyTorch (float64, outputs and
every gradient to 1e-10; skipped without torch) and, without it, against finite differences and
values derived by hand.
"""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from minigrad.nn import functional as F

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- against PyTorch

@pytest.mark.parametrize("normalized_shape, x_shape", [(5, (3, 5)), ((4, 5), (2, 3, 4, 5)), ([6], (6,))])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_matches_pytorch(normalized_shape, x_shape, affine, bias):
    torch = pytest.importorskip("torch")
    ours = nn.LayerNorm(normalized_shape, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=np.float64)
    theirs = torch.nn.LayerNorm(normalized_shape, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    if affine:                                             # PyTorch's parameter names: load its state directly
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(randn(*theirs.weight.shape)))
            if bias:
                theirs.bias.copy_(torch.from_numpy(randn(*theirs.bias.shape)))
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    x = randn(*x_shape) * 3 + 1
    g = randn(*x_shape)
    xm, xt = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ym, yt = ours(xm), theirs(xt)
    close(ym.data, yt.detach().numpy())
    (ym * g).sum().backward()
    (yt * torch.from_numpy(g)).sum().backward()
    close(xm.grad, xt.grad.numpy())
    for name, p in ours.named_parameters():
        close(p.grad, dict(theirs.named_parameters())[name].grad.numpy())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_pytorch(approximate):
    torch = pytest.importorskip("torch")
    x = np.concatenate([randn(50) * 3, [0.0, -8.0, 8.0, 1e-8, -30.0]])
    g = randn(x.size)
    xm, xt = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ym = nn.GELU(approximate)(xm)
    yt = torch.nn.GELU(approximate)(xt)
    close(ym.data, yt.detach().numpy())
    (ym * g).sum().backward()
    (yt * torch.from_numpy(g)).sum().backward()
    close(xm.grad, xt.grad.numpy())


@pytest.mark.parametrize("padding_idx", [0, 3, -1])
def test_embedding_padding_idx_matches_pytorch(padding_idx):
    torch = pytest.importorskip("torch")
    ours = nn.Embedding(6, 4, padding_idx=padding_idx, dtype=np.float64)
    theirs = torch.nn.Embedding(6, 4, padding_idx=padding_idx, dtype=torch.float64)
    assert not theirs.weight.detach().numpy()[padding_idx].any() and not ours.weight.data[padding_idx].any()
    w = randn(6, 4)                                        # a nonzero padding row too: PyTorch still reads it
    ours.weight.data[...] = w
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(w))
    idx = np.array([[0, 3, 5, 3], [5, 5, 1, 0], [2, 4, 3, 5]])
    g = randn(3, 4, 4)
    ym, yt = ours(idx), theirs(torch.from_numpy(idx))
    close(ym.data, yt.detach().numpy())
    (ym * g).sum().backward()
    (yt * torch.from_numpy(g)).sum().backward()
    close(ours.weight.grad, theirs.weight.grad.numpy())
    assert not ours.weight.grad[padding_idx].any()


# ---------------------------------------------------------------- without PyTorch

def test_gelu_by_hand():
    # Phi(1) = 0.5 (1 + erf(1 / sqrt 2)) = 0.8413447460685429; GELU(x) = x Phi(x)
    phi1 = 0.8413447460685429
    x = mg.Tensor(np.array([-1.0, 0.0, 1.0, 2.0]), requires_grad=True)
    y = F.gelu(x)
    close(y.data, [-(1 - phi1), 0.0, phi1, 2 * 0.9772498680518208], 1e-15)
    y.sum().backward()
    density = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)     # d/dx x Phi(x) = Phi(x) + x phi(x)
    close(x.grad, [1 - phi1 - density(1.0), 0.5, phi1 + density(1.0), 0.9772498680518208 + 2 * density(2.0)], 1e-15)
    t = math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715))
    close(F.gelu(np.array([1.0]), "tanh").data, [0.5 * (1 + t)], 1e-15)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        nn.GELU("erf")


@pytest.mark.parametrize("fn", [
    lambda x: F.gelu(x), lambda x: F.gelu(x, "tanh"), lambda x: F.leaky_relu(x, 0.2),
    lambda x: nn.Softmax(dim=0)(x), lambda x: nn.Flatten(0)(x)], ids=["gelu", "gelu_tanh", "leaky_relu", "softmax",
                                                                     "flatten"])
def test_activations_gradcheck(fn):
    x = mg.Tensor(np.array([[-2.0, -0.3, 0.4], [1.5, -1.1, 2.2]]), requires_grad=True)   # away from 0
    assert mg.gradcheck(fn, [x])


def test_layer_norm_gradcheck_and_by_hand():
    x = mg.Tensor(randn(3, 2, 4), requires_grad=True)
    w, b = mg.Tensor(randn(2, 4), requires_grad=True), mg.Tensor(randn(2, 4), requires_grad=True)
    assert mg.gradcheck(lambda x, w, b: F.layer_norm(x, (2, 4), w, b, eps=1e-5), [x, w, b])
    layer = nn.LayerNorm(3, eps=0.0 + 1e-12, dtype=np.float64)
    y = layer(np.array([[1.0, 2.0, 6.0]]))                 # mean 3, variance 14/3
    close(y.data, (np.array([[1.0, 2.0, 6.0]]) - 3) / math.sqrt(14 / 3), 1e-9)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert nn.LayerNorm(3).weight.dtype == np.float32       # the default dtype
    with pytest.raises(ValueError, match=r"LayerNorm\(\(3,\)\): layer_norm: input shape \(2, 4\) does not end in "
                                         r"normalized_shape \(3,\)"):
        layer(np.zeros((2, 4)))


def test_leaky_relu_softmax_flatten_identity_by_hand():
    x = np.array([[-2.0, 0.0, 3.0], [1.0, -1.0, 0.5]])
    t = mg.Tensor(x, requires_grad=True)
    y = nn.LeakyReLU(0.1)(t)
    np.testing.assert_array_equal(y.data, np.where(x > 0, x, 0.1 * x))
    y.sum().backward()
    np.testing.assert_array_equal(t.grad, np.where(x > 0, 1.0, 0.1))        # the slope at 0, as PyTorch
    assert nn.LeakyReLU().negative_slope == 0.01
    close(nn.Softmax(dim=0)(x).data, np.exp(x) / np.exp(x).sum(0), 1e-15)
    close(nn.Softmax()(x).data, np.exp(x) / np.exp(x).sum(1, keepdims=True), 1e-15)
    with pytest.raises(TypeError, match="got both axis= and dim="):
        nn.Softmax(1, axis=1)
    assert nn.Flatten()(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    assert nn.Flatten(0, 1)(np.zeros((2, 3, 4))).shape == (6, 4)
    assert nn.Flatten()(np.zeros((0, 3, 4))).shape == (0, 12)
    with pytest.raises(ValueError, match=r"Flatten: start_dim=1 and end_dim=-1 do not name a range of the axes "
                                         r"of shape \(3,\)"):
        nn.Flatten()(np.zeros(3))
    assert nn.Identity(54, unused="x")(t) is t


def test_embedding_gradcheck_with_the_padding_row_held_fixed():
    """Finite differences see the padding row's value in the output; its gradient is zero by design,
    so the check perturbs the other rows only (the padding row enters as a constant)."""
    layer = nn.Embedding(5, 3, padding_idx=1, dtype=np.float64)
    pad = layer.weight.data[1:2].copy()
    idx = np.array([[1, 0, 4], [1, 1, 3]])

    def fn(rest):
        weight = mg.concatenate([rest[:1], mg.Tensor(pad), rest[1:]])
        return nn.functional_call(layer, {"weight": weight}, idx)
    assert mg.gradcheck(fn, [mg.Tensor(np.delete(layer.weight.data, 1, axis=0), requires_grad=True)])


def test_embedding_padding_row_gets_no_gradient_by_hand():
    layer = nn.Embedding(5, 3, padding_idx=2, dtype=np.float64)
    assert not layer.weight.data[2].any() and layer.weight.data[[0, 1, 3, 4]].all()
    layer.weight.data[2] = 7.0                            # the row's value is still read
    y = layer(np.array([2, 1, 2, 1, 4]))
    np.testing.assert_array_equal(y.data[0], [7.0, 7.0, 7.0])
    y.sum().backward()
    np.testing.assert_array_equal(layer.weight.grad, [[0] * 3, [2] * 3, [0] * 3, [0] * 3, [1] * 3])
    assert layer.extra_repr() == "5, 3, padding_idx=2" and nn.Embedding(4, 2, padding_idx=-1).padding_idx == 3
    with pytest.raises(ValueError, match=r"padding_idx must be an integer in \[-5, 5\), got 5"):
        nn.Embedding(5, 3, padding_idx=5)


# ---------------------------------------------------------------- containers and buffers

class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=np.float64)
        self.register_buffer("count", np.zeros(2))
        self.register_buffer("scratch", mg.Tensor(np.ones(3)), persistent=False)

    def forward(self, x):
        self.count = self.count + 1.0                  # assignment keeps it a buffer
        return self.lin(x) * self.scratch[:2]


def test_buffers_are_state_but_not_parameters():
    m = WithBuffer()
    assert [n for n, _ in m.named_parameters()] == ["lin.weight", "lin.bias"]
    assert [n for n, _ in m.named_buffers()] == ["count", "scratch"]
    assert sorted(m.state_dict()) == ["count", "lin.bias", "lin.weight"]      # not the non-persistent one
    m(np.ones((1, 2)))
    m(np.ones((1, 2)))
    assert isinstance(m.count, mg.Tensor) and not m.count.requires_grad and "count" in m._buffers
    np.testing.assert_array_equal(m.state_dict()["count"], [2.0, 2.0])
    fresh = WithBuffer()
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(fresh.count.data, [2.0, 2.0])
    with pytest.raises(mg.CheckpointError, match="missing keys .*'count'"):
        WithBuffer().load_state_dict({k: v for k, v in m.state_dict().items() if k != "count"})
    with pytest.raises(KeyError, match="'lin' is already an attribute, parameter or sub-module"):
        m.register_buffer("lin", np.zeros(1))
    with pytest.raises(TypeError, match="buffer 'count' must be a Tensor, an ndarray or None, got list"):
        m.count = [1.0]


def test_buffers_survive_save_and_load(tmp_path):
    m = WithBuffer()
    m.count = np.array([5.0, 6.0])
    mg.save(m, tmp_path / "m.npz")
    fresh = WithBuffer()
    fresh.load_state_dict(mg.load(tmp_path / "m.npz"))
    np.testing.assert_array_equal(fresh.count.data, [5.0, 6.0])


def test_module_dict_registers_its_modules():
    d = nn.ModuleDict({"enc": nn.Linear(2, 3), "dec": nn.Linear(3, 2)})
    d["act"] = nn.ReLU()
    assert list(d) == ["enc", "dec", "act"] and len(d) == 3 and "dec" in d
    assert [n for n, _ in d.named_parameters()] == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = nn.ModuleDict([("a", nn.Linear(2, 2)), ("b", nn.LayerNorm(2))])

        def forward(self, x):
            return self.parts["b"](self.parts["a"](x))

    model = Model()
    assert sorted(model.state_dict()) == ["parts.a.bias", "parts.a.weight", "parts.b.bias", "parts.b.weight"]
    assert model(np.ones((3, 2))).shape == (3, 2)
    del d["act"]
    assert list(d.keys()) == ["enc", "dec"]
    with pytest.raises(KeyError, match=r"no module 'act' \(keys: \['enc', 'dec'\]\)"):
        d["act"]
    with pytest.raises(TypeError, match="'x' must be a Module, got int"):
        d.update({"ok": nn.ReLU(), "x": 3})
    assert "ok" not in d                                   # checked before anything is added
    with pytest.raises(KeyError, match="keys must be non-empty strings without '.'"):
        d["a.b"] = nn.ReLU()


# ---------------------------------------------------------------- Sequential and summary

@pytest.mark.parametrize("layer, n", [(nn.LSTM(4, 8, return_state=True), 3), (nn.GRU(4, 8, return_state=True), 2)])
def test_a_layer_returning_a_tuple_inside_a_sequential_is_named(layer, n):
    model = nn.Sequential(layer, nn.Linear(8, 1))
    kind = type(layer).__name__
    with pytest.raises(TypeError, match=rf"Sequential: layer 0, {kind}\(4, 8, .*return_state=True\), returned a "
                                        rf"tuple of {n} values, but the next layer, Linear\(in_features=8, "
                                        rf"out_features=1, bias=True\), takes one tensor"):
        model(np.zeros((2, 3, 4)))
    out = nn.Sequential(nn.Linear(4, 4), layer)(np.zeros((2, 3, 4)))     # last: its tuple is the result
    assert isinstance(out, tuple) and len(out) == n


def test_summary_names_rows_by_attribute_and_numbers_sequential_layers_as_keras():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.LSTM(4, 8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(self.norm(self.encoder(x)))

    text = nn.summary(Model(), (None, 4))
    rows = [line.split()[:2] for line in text.splitlines()[4:]
            if line[:1].isalpha() and not line.startswith(("Total", "Trainable", "Non-trainable"))]
    assert rows == [["encoder", "(LSTM)"], ["norm", "(LayerNorm)"], ["head", "(Linear)"]]
    seq = nn.summary(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1)), (2,))
    assert "linear (Linear)" in seq and "gelu (GELU)" in seq and "linear_1 (Linear)" in seq
    named = nn.summary(nn.Sequential({"hidden": nn.Linear(2, 3), "out": nn.Linear(3, 1)}), (2,))
    assert "hidden (Linear)" in named and "out (Linear)" in named
