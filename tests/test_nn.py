"""minigrad.nn: modules, layers, initialisers, losses, summary, clip_grad_norm_, fit, progress."""
import io

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import minigrad as mg
from minigrad import nn
from minigrad.nn import functional as F
from minigrad.nn import functional_call
from minigrad.progress import PlainProgress, progress


def check_layer_grads(layer, x, **gradcheck_kwargs):
    """gradcheck the layer's output with respect to its input and every parameter (float64)."""
    names = [n for n, _ in layer.named_parameters()]
    params = [mg.Tensor(p.data.copy(), requires_grad=True) for _, p in layer.named_parameters()]
    inputs = [mg.Tensor(x, requires_grad=x.dtype.kind == "f"), *params]

    def fn(x, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), x)
    assert mg.gradcheck(fn, inputs, **gradcheck_kwargs)


def away_from_zero(draw_seed, shape, lo=0.2, hi=2.0):
    """Values in [-hi, -lo] U [lo, hi]: no kinks (relu) within the finite-difference step."""
    r = np.random.default_rng(draw_seed)
    return r.uniform(lo, hi, shape) * r.choice([-1.0, 1.0], shape)


side = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------ Module and Parameter

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 4, dtype=np.float64)
        self.scale = nn.Parameter(np.ones(4))
        self.layers = [nn.Linear(4, 4, dtype=np.float64), nn.Dropout(0.5)]   # a plain list of modules
        self.not_a_param = mg.Tensor(np.zeros(2), requires_grad=True)        # plain Tensors are not registered

    def forward(self, x):
        h = self.inner(x) * self.scale
        for layer in self.layers:
            h = layer(h)
        return h


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 1, dtype=np.float64)

    def forward(self, x):
        return self.head(self.block(x))


def test_named_parameters_dotted_for_nested_modules_and_lists():
    names = [n for n, _ in Outer().named_parameters()]
    assert names == ["block.scale", "block.inner.weight", "block.inner.bias", "block.layers.0.weight",
                     "block.layers.0.bias", "head.weight", "head.bias"]
    m = Outer()
    assert [p.shape for p in m.parameters()] == [(4,), (3, 4), (4,), (4, 4), (4,), (4, 1), (1,)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())


def test_list_of_modules_becomes_indexable_module_list():
    b = Block()
    assert isinstance(b.layers, nn.ModuleList) and len(b.layers) == 2
    assert isinstance(b.layers[0], nn.Linear) and isinstance(b.layers[-1], nn.Dropout)
    b.layers.append(nn.Linear(4, 2))
    assert "layers.2.weight" in dict(b.named_parameters())


def test_shared_parameter_is_listed_once():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_parameter_is_float_and_requires_grad():
    p = nn.Parameter(np.zeros(3, np.float32))
    assert p.requires_grad and p.dtype == np.float32 and p.is_leaf
    assert "Parameter(" in repr(p)
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(np.arange(3))
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad


def test_assignment_errors_are_clear():
    lin = nn.Linear(2, 3)
    with pytest.raises(TypeError, match="wrap it in mg.nn.Parameter"):
        lin.weight = mg.Tensor(np.zeros((2, 3), np.float32))
    lin.bias = None                                     # removing a parameter is allowed
    assert [n for n, _ in lin.named_parameters()] == ["weight"]

    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_train_eval_recurse():
    m = Outer()
    assert all(mod.training for mod in m.modules())
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    assert len(list(m.modules())) == 7           # Outer, Block, inner, layers, 2 in layers, head
    m.block.train()
    assert m.block.layers[1].training and not m.training and not m.head.training


def test_zero_grad_clears_every_parameter():
    m = Outer()
    m(np.ones((2, 3))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_repr_is_nested_like_pytorch():
    assert repr(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Dropout(0.25)))) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "    (1): Dropout(p=0.25)\n"
        "  )\n"
        ")")


def test_state_dict_is_a_copy_keyed_by_dotted_names():
    m = Outer()
    sd = m.state_dict()
    assert list(sd) == [n for n, _ in m.named_parameters()]
    before = sd["head.weight"].copy()
    m.head.weight.data += 1
    np.testing.assert_array_equal(sd["head.weight"], before)


def test_forward_hook_and_removal():
    lin = nn.Linear(2, 3)
    seen = []
    h = lin.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    lin(np.zeros((5, 2)))
    h.remove()
    lin(np.zeros((1, 2)))
    assert seen == [(5, 3)]


def test_functional_call_swaps_and_restores():
    lin = nn.Linear(2, 1, dtype=np.float64)
    w = mg.Tensor(np.array([[2.0], [3.0]]), requires_grad=True)
    out = functional_call(lin, {"weight": w}, np.array([[1.0, 1.0]]))
    assert out.item() == 5.0
    out.backward()
    np.testing.assert_array_equal(w.grad, [[1.0], [1.0]])
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.grad is None
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        functional_call(lin, {"nope": w}, np.zeros((1, 2)))


# ------------------------------------------------------------------ layers: gradients in float64

@given(batch=side, n_in=side, n_out=side, bias=st.booleans(), seed=seeds)
def test_linear_gradcheck(batch, n_in, n_out, bias, seed):
    mg.seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias, dtype=np.float64)
    check_layer_grads(layer, np.random.default_rng(seed).standard_normal((batch, n_in)))


@given(lead=st.lists(side, min_size=0, max_size=2), n_in=side, n_out=side, seed=seeds)
def test_linear_any_leading_axes_gradcheck(lead, n_in, n_out, seed):
    mg.seed(seed)
    layer = nn.Linear(n_in, n_out, dtype=np.float64)
    check_layer_grads(layer, np.random.default_rng(seed).standard_normal((*lead, n_in)), fast_mode=True)


def test_linear_matches_closed_form():
    rng = np.random.default_rng(0)
    layer = nn.Linear(3, 2, dtype=np.float64)
    x, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    y = layer(x)
    np.testing.assert_allclose(y.data, x @ layer.weight.data + layer.bias.data)
    (y * g).sum().backward()
    np.testing.assert_allclose(layer.weight.grad, x.T @ g)
    np.testing.assert_allclose(layer.bias.grad, g.sum(0))


@given(num=st.integers(1, 6), dim=side, shape=st.lists(side, min_size=1, max_size=2), seed=seeds)
def test_embedding_gradcheck(num, dim, shape, seed):
    mg.seed(seed)
    layer = nn.Embedding(num, dim, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, num, shape)
    check_layer_grads(layer, idx)


def test_embedding_gradient_accumulates_repeated_indices():
    layer = nn.Embedding(4, 3, dtype=np.float64)
    idx = np.array([[0, 2, 0], [2, 2, 1]])
    out = layer(idx)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.data, layer.weight.data[idx])
    out.sum().backward()
    # row k of the gradient is (number of times k occurs) * ones
    np.testing.assert_array_equal(layer.weight.grad, np.array([2, 1, 3, 0])[:, None] * np.ones((4, 3)))

    layer.zero_grad()
    g = np.random.default_rng(1).standard_normal((2, 3, 3))
    (layer(idx) * g).sum().backward()
    expected = np.zeros((4, 3))
    for i in range(2):
        for j in range(3):
            expected[idx[i, j]] += g[i, j]
    np.testing.assert_allclose(layer.weight.grad, expected)


def test_embedding_rejects_bad_indices():
    layer = nn.Embedding(5, 2)
    with pytest.raises(TypeError, match=r"Embedding\(5, 2\): indices must be integers.*float64"):
        layer(np.array([0.0, 1.0]))
    with pytest.raises(IndexError, match=r"index 5 is out of range \[0, 5\)"):
        layer(np.array([1, 5]))
    with pytest.raises(IndexError, match="index -1"):
        layer(np.array([-1]))


@given(shape=st.lists(side, min_size=1, max_size=3), seed=seeds,
       layer=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]))
def test_activation_gradcheck(shape, seed, layer):
    check_layer_grads(layer(), away_from_zero(seed, shape))


def test_activations_forward():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(nn.ReLU()(x).data, np.maximum(x, 0))
    np.testing.assert_allclose(nn.Tanh()(x).data, np.tanh(x))
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-x)))


@given(shape=st.lists(side, min_size=1, max_size=3), p=st.sampled_from([0.0, 0.2, 0.5, 0.9]), seed=seeds)
def test_dropout_gradcheck(shape, p, seed):
    layer = nn.Dropout(p)

    def fn(x):
        mg.seed(seed)            # the same mask in every forward of the check
        return layer(x)
    assert mg.gradcheck(fn, [mg.Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)])


def test_dropout_scales_in_train_mode_with_the_mask_gradient():
    mg.seed(0)
    p = 0.25
    x = mg.Tensor(np.random.default_rng(0).uniform(1, 2, (200, 50)), requires_grad=True)
    y = nn.Dropout(p)(x)
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], x.data[kept] / (1 - p))
    assert abs(kept.mean() - (1 - p)) < 0.01             # 10,000 draws: sd of the mean is 0.004
    y.sum().backward()
    np.testing.assert_allclose(x.grad, kept / (1 - p))


def test_dropout_is_identity_in_eval_mode_and_validates_p():
    x = mg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    layer = nn.Dropout(0.9).eval()
    y = layer(x)
    np.testing.assert_array_equal(y.data, x.data)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))
    for bad in (-0.1, 1.0, 1.5, "0.5"):
        with pytest.raises(ValueError, match="Dropout: p must be a probability in"):
            nn.Dropout(bad)


def test_dropout_is_reproducible_with_seed():
    x = np.ones((4, 5), np.float32)
    mg.seed(7)
    a = nn.Dropout(0.5)(x).data
    mg.seed(7)
    b = nn.Dropout(0.5)(x).data
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


@given(batch=side, seed=seeds)
def test_sequential_mlp_gradcheck(batch, seed):
    mg.seed(seed)
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(), nn.Linear(4, 2, dtype=np.float64),
                          nn.Sigmoid())
    check_layer_grads(model, np.random.default_rng(seed).standard_normal((batch, 3)))


def test_sequential_indexing_len_iteration():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers and seq[0] is layers[0] and seq[-1] is layers[2]
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == layers[1:]
    with pytest.raises(IndexError):
        seq[3]
    with pytest.raises(TypeError, match="layer 1 is a function"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_layer_input_errors_name_layer_shapes_and_dtypes():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear\(3, 2\): input shape \(4, 5\) does not end in in_features=3"):
        lin(np.zeros((4, 5)))
    for data in (np.zeros((4, 3)), mg.randn(4, 3, dtype=np.float64), [[0, 1, 2]]):   # cast to the layer's dtype
        assert lin(data).dtype == np.float32
    with pytest.raises(TypeError, match=r"Linear\(3, 2\): input must be numeric"):
        lin(np.array([["a", "b", "c"]]))
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        nn.Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_take_dtype(dtype):
    for layer in (nn.Linear(2, 3, dtype=dtype), nn.Embedding(4, 2, dtype=dtype)):
        assert all(p.dtype == dtype for p in layer.parameters())
    out = nn.Sequential(nn.Linear(2, 3, dtype=dtype), nn.ReLU(dtype=dtype), nn.Dropout(0.5, dtype=dtype))(
        np.ones((1, 2)))
    assert out.dtype == dtype


# ------------------------------------------------------------------ initialisers

def test_default_initialisation_is_documented_keras_defaults():
    mg.seed(0)
    lin = nn.Linear(300, 200)
    limit = np.sqrt(6 / (300 + 200))
    w = lin.weight.data
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert abs(w.var() - limit**2 / 3) < 0.05 * limit**2 / 3         # variance of U(-a, a) is a^2/3
    np.testing.assert_array_equal(lin.bias.data, 0)
    e = nn.Embedding(1000, 20).weight.data
    assert np.abs(e).max() <= 0.05 and np.abs(e).max() > 0.049


def test_initialisers():
    mg.seed(1)
    he = nn.init.he_uniform((400, 100), dtype=np.float64)
    assert np.abs(he).max() <= np.sqrt(6 / 400)
    assert nn.init.compute_fans((3, 5, 7)) == (15, 21)
    for shape in [(6, 6), (3, 12), (12, 3)]:
        q = nn.init.orthogonal(shape, dtype=np.float64)
        small = min(shape)
        gram = q @ q.T if shape[0] < shape[1] else q.T @ q
        np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)
    np.testing.assert_array_equal(nn.init.zeros((2, 2)), 0)
    np.testing.assert_array_equal(nn.init.ones((2,)), 1)


def test_seed_makes_initialisation_and_randn_reproducible():
    mg.seed(42)
    a, ra = nn.Linear(4, 4).weight.data.copy(), mg.randn(3).data
    mg.seed(42)
    b, rb = nn.Linear(4, 4).weight.data.copy(), mg.randn(3).data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)
    assert mg.get_rng() is mg.random.get_rng()


# ------------------------------------------------------------------ losses

def _reduce(v, reduction):
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


reductions = pytest.mark.parametrize("reduction", ["mean", "sum", "none"])


@reductions
def test_mse_forward_and_grad(reduction):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(F.mse_loss(x, y, reduction).data, _reduce((x - y) ** 2, reduction))
    assert mg.gradcheck(lambda a, b: F.mse_loss(a, b, reduction),
                        [mg.Tensor(x, requires_grad=True), mg.Tensor(y, requires_grad=True)])


@reductions
def test_bce_forward_and_grad(reduction):
    rng = np.random.default_rng(1)
    p, y = rng.uniform(0.05, 0.95, (4, 3)), rng.uniform(0, 1, (4, 3))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(F.binary_cross_entropy(p, y, reduction).data, _reduce(expected, reduction))
    assert mg.gradcheck(lambda a: F.binary_cross_entropy(a, y, reduction), [mg.Tensor(p, requires_grad=True)])


def test_bce_clips_saturated_probabilities():
    p = mg.Tensor(np.array([0.0, 1.0, 1.0]), requires_grad=True)
    loss = F.binary_cross_entropy(p, np.array([1.0, 0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(loss.data, [-np.log(1e-12), -np.log(1e-12), 0.0])
    loss.sum().backward()
    assert np.all(np.isfinite(p.grad))
    with pytest.raises(ValueError, match=r"input must be probabilities in \[0, 1\]"):
        F.binary_cross_entropy(np.array([1.5]), np.array([1.0]))


@reductions
def test_bce_with_logits_forward_and_grad(reduction):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 2)) * 3, rng.uniform(0, 1, (5, 2))
    s = 1 / (1 + np.exp(-x))
    expected = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(x, y, reduction).data,
                               _reduce(expected, reduction), rtol=1e-12)
    assert mg.gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction),
                        [mg.Tensor(x, requires_grad=True), mg.Tensor(y, requires_grad=True)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_is_stable_for_huge_logits(dtype):
    x = mg.Tensor(np.array([-1000.0, -1000.0, 1000.0, 1000.0, 0.0, 0.0], dtype), requires_grad=True)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(loss.data, [0.0, 1000.0, 1000.0, 0.0, np.log(2), np.log(2)], rtol=1e-6)
    loss.sum().backward()
    # d/dx = sigmoid(x) - y, exactly, including at x = 0
    np.testing.assert_allclose(x.grad, [0.0, -1.0, 1.0, 0.0, 0.5, -0.5])
    assert loss.dtype == dtype and x.grad.dtype == dtype


@reductions
def test_cross_entropy_is_negative_log_softmax_at_targets(reduction):
    rng = np.random.default_rng(3)
    z, t = rng.standard_normal((4, 5)) * 2, np.array([0, 4, 2, 4])
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = -logp[np.arange(4), t]
    np.testing.assert_allclose(F.cross_entropy(z, t, reduction).data, _reduce(expected, reduction))
    assert mg.gradcheck(lambda a: F.cross_entropy(a, t, reduction), [mg.Tensor(z, requires_grad=True)])


def test_cross_entropy_sequences_and_stability():
    rng = np.random.default_rng(4)
    z, t = rng.standard_normal((2, 3, 4)), rng.integers(0, 4, (2, 3))
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
    np.testing.assert_allclose(F.cross_entropy(z, t, "none").data, expected)
    big = mg.Tensor(np.array([[1000.0, 0.0], [-1000.0, 1000.0]]), requires_grad=True)
    loss = F.cross_entropy(big, np.array([1, 1]), "none")
    np.testing.assert_allclose(loss.data, [1000.0, 0.0])
    loss.sum().backward()
    np.testing.assert_allclose(big.grad, [[1.0, -1.0], [0.0, 0.0]])


def test_loss_errors_are_clear():
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(4, 1\) and target shape \(4,\) differ"):
        F.mse_loss(np.zeros((4, 1)), np.zeros(4))
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        F.mse_loss(np.zeros(2), np.zeros(2), reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.CrossEntropyLoss(reduction="batchmean")
    with pytest.raises(TypeError, match="input must have a floating-point dtype, got int64"):
        F.mse_loss(mg.Tensor(np.arange(3)), np.zeros(3))
    with pytest.raises(TypeError, match="cross_entropy: target must hold integer class indices"):
        F.cross_entropy(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\) need a target of shape \(2,\)"):
        F.cross_entropy(np.zeros((2, 3)), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


def test_a_target_of_another_dtype_is_cast_whether_or_not_it_requires_grad():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    for requires_grad in (False, True):
        y = mg.Tensor(np.array([0.5, 3.0], np.float32), requires_grad=requires_grad)
        loss = F.mse_loss(x, y, reduction="sum")
        assert loss.dtype == np.float64 and loss.item() == 0.25 + 1.0
    loss.backward()
    assert y.grad.dtype == np.float32
    np.testing.assert_array_equal(y.grad, [-1.0, 2.0])        # d/dy (x - y)^2 = -2 (x - y)


def test_float32_losses_stay_float32():
    x = mg.Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    for loss in (F.mse_loss(x, np.ones((2, 3))), F.binary_cross_entropy_with_logits(x, np.ones((2, 3))),
                 F.cross_entropy(x, np.array([0, 2])), F.binary_cross_entropy(x.sigmoid(), np.ones((2, 3)))):
        assert loss.dtype == np.float32


def test_loss_modules_match_functions():
    rng = np.random.default_rng(5)
    x, y, t = rng.standard_normal((3, 2)), rng.uniform(0, 1, (3, 2)), np.array([1, 0, 1])
    p = 1 / (1 + np.exp(-x))
    assert nn.MSELoss()(x, y).item() == F.mse_loss(x, y).item()
    assert nn.BCELoss(reduction="sum")(p, y).item() == F.binary_cross_entropy(p, y, "sum").item()
    assert nn.BCEWithLogitsLoss()(x, y).item() == F.binary_cross_entropy_with_logits(x, y).item()
    np.testing.assert_array_equal(nn.CrossEntropyLoss("none")(x, t).data, F.cross_entropy(x, t, "none").data)
    assert repr(nn.MSELoss()) == "MSELoss(reduction='mean')"


@reductions
def test_losses_match_torch(reduction):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(6)
    x, y, t = rng.standard_normal((4, 3)) * 4, rng.uniform(0, 1, (4, 3)), rng.integers(0, 3, 4)
    p = 1 / (1 + np.exp(-x))
    cases = [
        (F.mse_loss, tf.mse_loss, x, y),
        (F.binary_cross_entropy, tf.binary_cross_entropy, p, y),
        (F.binary_cross_entropy_with_logits, tf.binary_cross_entropy_with_logits, x, y),
        (F.cross_entropy, tf.cross_entropy, x, t),
    ]
    for ours, theirs, a, b in cases:
        ta = torch.tensor(a, requires_grad=True)
        tl = theirs(ta, torch.tensor(b), reduction=reduction)
        tl.sum().backward()
        ma = mg.Tensor(a, requires_grad=True)
        ml = ours(ma, b, reduction)
        ml.sum().backward()
        np.testing.assert_allclose(ml.data, tl.detach().numpy(), rtol=1e-10, err_msg=ours.__name__)
        np.testing.assert_allclose(ma.grad, ta.grad.numpy(), rtol=1e-9, atol=1e-15, err_msg=ours.__name__)


# ------------------------------------------------------------------ summary

KERAS_LIKE = """\
Model: "sequential"
_________________________________________________________________
Layer (type)                 Output Shape              Param #
=================================================================
linear (Linear)              (None, 128)               12928
_________________________________________________________________
dropout (Dropout)            (None, 128)               0
_________________________________________________________________
linear_1 (Linear)            (None, 1)                 129
=================================================================
Total params: 13,057
Trainable params: 13,057
Non-trainable params: 0
_________________________________________________________________"""


def test_summary_table_layout_and_numbers(capsys):
    model = nn.Sequential(nn.Linear(100, 128), nn.Dropout(0.5), nn.Linear(128, 1))
    assert nn.summary(model, (100,)) == KERAS_LIKE
    assert model.summary((100,)) is None
    assert capsys.readouterr().out == KERAS_LIKE + "\n"


def test_summary_restores_modes_and_leaves_no_trace():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    model[1].eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    nn.summary(model, (4,))
    assert [m.training for m in model] == [True, False, True] and model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


class Pooled(nn.Module):
    """Embeds a sequence, projects it, averages over time: a fixed-size output from a None axis."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 3)
        self.unused = nn.Linear(2, 2)
        self.temperature = nn.Parameter(np.ones(1, np.float32), requires_grad=False)

    def forward(self, idx):
        return self.proj(self.embed(idx)).mean(axis=1) * self.temperature


def test_summary_of_a_custom_module_with_a_none_axis():
    text = nn.summary(Pooled(), (None,))
    rows = [line.split() for line in text.splitlines()]
    assert ["embed", "(Embedding)", "(None,", "None,", "8)", "400"] in rows     # the attribute names
    assert ["proj", "(Linear)", "(None,", "None,", "3)", "27"] in rows
    assert ["unused", "(Linear)", "unused", "6"] in rows
    assert ["pooled", "(Pooled)", "-", "1"] in rows          # the model's own parameter
    assert "Total params: 434" in text
    assert "Trainable params: 433" in text
    assert "Non-trainable params: 1" in text


def test_summary_thousands_separators_frozen_and_errors():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 10))
    model[0].requires_grad_(False)
    text = nn.summary(model, [1000])
    assert "Total params: 1,011,010" in text
    assert "Trainable params: 10,010" in text
    assert "Non-trainable params: 1,001,000" in text
    with pytest.raises(RuntimeError, match=r"failed on a zero input of shape \(2, 7\) and dtype float32"):
        nn.summary(model, (7,))
    with pytest.raises(ValueError, match="input_shape must hold positive integers or None"):
        nn.summary(model, (0,))


def test_summary_of_a_single_layer():
    text = nn.summary(nn.Linear(3, 4, dtype=np.float64), (3,))
    assert "linear (Linear)              (None, 4)                 16" in text


# ------------------------------------------------------------------ clip_grad_norm_

def test_clip_grad_norm_matches_formula():
    a = nn.Parameter(np.zeros(3))
    b = nn.Parameter(np.zeros((2, 2)))
    c = nn.Parameter(np.zeros(1))          # no grad: skipped
    a.grad = np.array([3.0, 0.0, 4.0])
    b.grad = np.array([[0.0, 12.0], [0.0, 0.0]])
    total = nn.clip_grad_norm_([a, b, c], max_norm=6.5)
    assert total == pytest.approx(13.0)                       # sqrt(9 + 16 + 144)
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3 * coef, 0, 4 * coef])
    np.testing.assert_allclose(b.grad, [[0, 12 * coef], [0, 0]])
    assert c.grad is None
    # below the limit: unchanged
    assert nn.clip_grad_norm_([a, b], 100.0) == pytest.approx(6.5, rel=1e-6)
    np.testing.assert_allclose(a.grad, [3 * coef, 0, 4 * coef])
    a.grad = np.array([-7.0, 1.0, 2.0])
    assert nn.clip_grad_norm_(a, 1.0, norm_type=float("inf")) == 7.0
    np.testing.assert_allclose(a.grad, np.array([-7.0, 1.0, 2.0]) / (7.0 + 1e-6))


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    g = [np.random.default_rng(0).standard_normal(s) for s in [(3, 4), (4,)]]
    ps = [nn.Parameter(np.zeros_like(x)) for x in g]
    tps = [torch.zeros(x.shape, dtype=torch.float64, requires_grad=True) for x in g]
    for p, tp, x in zip(ps, tps, g, strict=True):
        p.grad, tp.grad = x.copy(), torch.tensor(x)
    assert nn.clip_grad_norm_(ps, 0.5) == pytest.approx(torch.nn.utils.clip_grad_norm_(tps, 0.5).item())
    for p, tp in zip(ps, tps, strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------ fit and progress

def test_fit_trains_and_reports_history():
    mg.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = nn.Linear(3, 1)
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=30, batch_size=16,
                  validation_data=(x, y), verbose=False)
    assert len(hist.history["loss"]) == 30 and len(hist.history["val_loss"]) == 30
    assert hist.history["loss"][-1] < 1e-3 * hist.history["loss"][0]
    assert hist.history["val_loss"][-1] == pytest.approx(nn.evaluate(model, nn.MSELoss(), x, y))


def test_fit_accepts_batches_and_rejects_one_shot_iterators_for_many_epochs():
    model = nn.Linear(2, 1)
    opt = mg.optim.SGD(model.parameters(), lr=0.01)
    data = [(np.ones((4, 2)), np.zeros((4, 1)))] * 3
    assert len(nn.fit(model, nn.MSELoss(), opt, data, epochs=2, verbose=False).history["loss"]) == 2
    with pytest.raises(ValueError, match="one-shot iterator"):
        nn.fit(model, nn.MSELoss(), opt, iter(data), epochs=2, verbose=False)


def test_plain_progress_bar():
    out = io.StringIO()
    bar = progress(range(4), desc="train", file=out, backend="plain")
    assert isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "train: ####################" in text and "4/4 [100%]" in text
    out = io.StringIO()
    with PlainProgress(total=None, file=out, interval=0) as bar:
        bar.update(3)
        bar.set_postfix(loss=0.5)
    assert "3 it" in out.getvalue() and "loss=0.5" in out.getvalue()
    with pytest.raises(ValueError, match="backend"):
        progress(range(2), backend="fancy")


def test_progress_uses_tqdm_when_installed(monkeypatch):
    import sys
    import types

    made = []

    class FakeTqdm:
        def __init__(self, iterable=None, **kwargs):
            made.append(kwargs)
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

    fake, fake_auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
    fake_auto.tqdm = FakeTqdm
    fake.auto = fake_auto
    monkeypatch.setitem(sys.modules, "tqdm", fake)
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake_auto)
    monkeypatch.delenv("MINIGRAD_PLAIN_PROGRESS", raising=False)
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    bar = progress(range(3), total=3, desc="epoch 1", file=terminal)
    assert isinstance(bar, FakeTqdm) and list(bar) == [0, 1, 2]
    assert made == [dict(total=3, desc="epoch 1", disable=False, file=terminal)]
    assert isinstance(progress(range(3), file=io.StringIO()), PlainProgress)    # a log file: whole lines
    monkeypatch.setenv("MINIGRAD_PLAIN_PROGRESS", "1")
    assert isinstance(progress(range(3), file=terminal), PlainProgress)


def test_progress_with_real_tqdm():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    assert list(progress(range(3), desc="real", file=out, backend="tqdm")) == [0, 1, 2]
    assert "real" in out.getvalue()
