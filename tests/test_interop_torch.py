"""minigrad.interop.to_torch / from_torch (issue 16): whole models to PyTorch and back.

PyTorch is the independent reference: outputs and every gradient agree to 1e-10 in float64 for each
supported layer, one SGD step and several Adam steps (with clipping and weight decay) leave the same
weights on both sides, and what cannot be converted is a clear error that changes nothing.
"""
import copy

import numpy as np
import pytest

import minigrad as mg
from minigrad import interop, nn

torch = pytest.importorskip("torch")

F64 = np.float64
RNG = np.random.default_rng(0)
B, T, I, H = 3, 5, 4, 3


def randomize(model, rng):
    """Every parameter random (biases included), so no zero hides a layout mistake."""
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape).astype(p.dtype)
    return model


def seq_input():
    return RNG.standard_normal((B, T, I))


def idx_input():
    return RNG.integers(0, 6, size=(B, T))


def recurrent(cls, **kw):
    return lambda: cls(I, H, dtype=F64, **kw)


LAYERS = {
    "Linear": (lambda: nn.Linear(I, 2, dtype=F64), seq_input),
    "Linear-nobias": (lambda: nn.Linear(I, 2, bias=False, dtype=F64), seq_input),
    "Embedding": (lambda: nn.Embedding(6, 2, dtype=F64), idx_input),
    "Embedding-padding": (lambda: nn.Embedding(6, 2, padding_idx=1, dtype=F64), idx_input),
    "LayerNorm": (lambda: nn.LayerNorm(I, eps=1e-3, dtype=F64), seq_input),
    "LayerNorm-2d": (lambda: nn.LayerNorm((T, I), dtype=F64), seq_input),
    "LayerNorm-noaffine": (lambda: nn.LayerNorm(I, elementwise_affine=False, dtype=F64), seq_input),
    "Dropout": (lambda: nn.Dropout(0.3), seq_input),
    "ReLU": (nn.ReLU, seq_input), "Tanh": (nn.Tanh, seq_input), "Sigmoid": (nn.Sigmoid, seq_input),
    "GELU": (nn.GELU, seq_input), "GELU-tanh": (lambda: nn.GELU("tanh"), seq_input),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), seq_input), "Softmax": (lambda: nn.Softmax(dim=1), seq_input),
    "Flatten": (nn.Flatten, seq_input), "Identity": (nn.Identity, seq_input),
}
for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    _n = _cls.__name__
    LAYERS[_n] = (recurrent(_cls), seq_input)
    LAYERS[_n + "-seq"] = (recurrent(_cls, return_sequences=True), seq_input)
    LAYERS[_n + "-bi-2"] = (recurrent(_cls, num_layers=2, bidirectional=True), seq_input)
    LAYERS[_n + "-bi-2-seq-state"] = (recurrent(_cls, num_layers=2, bidirectional=True, return_sequences=True,
                                                return_state=True), seq_input)
    LAYERS[_n + "-state"] = (recurrent(_cls, return_state=True), seq_input)


def outputs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def torch_grads_in_minigrad_layout(tm):
    """PyTorch's gradients as a minigrad model's weights: a copy of ``tm`` whose parameters hold
    their gradients (zero where none, e.g. the frozen LSTM bias_hh), converted by ``from_torch``.
    (The layout converters themselves are checked against torch in test_recurrent_stacked.py.)"""
    g = copy.deepcopy(tm)
    with torch.no_grad():
        for p_g, p in zip(g.parameters(), tm.parameters()):
            p_g.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return dict(interop.from_torch(g).named_parameters())


def assert_same_forward_and_backward(model, x):
    """Outputs and the gradients of a random weighting of every output, in minigrad and in torch."""
    tm = interop.to_torch(model)
    x_t = torch.tensor(x, requires_grad=x.dtype.kind == "f")
    x_m = mg.Tensor(x.copy(), requires_grad=x.dtype.kind == "f")
    ys_m, ys_t = outputs(model(x_m)), outputs(tm(x_t))
    assert len(ys_m) == len(ys_t)
    loss_m, loss_t = 0, 0
    for y_m, y_t in zip(ys_m, ys_t):
        assert tuple(y_t.shape) == y_m.shape
        np.testing.assert_allclose(y_t.detach().numpy(), y_m.numpy(), rtol=0, atol=1e-10)
        w = RNG.standard_normal(y_m.shape)
        loss_m = loss_m + (y_m * w).sum()
        loss_t = loss_t + (y_t * torch.tensor(w)).sum()
    loss_m.backward()
    loss_t.backward()
    if x.dtype.kind == "f":
        np.testing.assert_allclose(x_t.grad.numpy(), x_m.grad, rtol=0, atol=1e-10)
    grads_t = torch_grads_in_minigrad_layout(tm)
    grads_m = dict(model.named_parameters())
    assert sorted(grads_t) == sorted(grads_m)
    for name, p in grads_m.items():
        np.testing.assert_allclose(grads_t[name].numpy(), p.grad, rtol=0, atol=1e-10, err_msg=name)
    return tm


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_forward_and_gradients_match_torch(name):
    make, data = LAYERS[name]
    model = randomize(make(), np.random.default_rng(1)).eval()
    assert_same_forward_and_backward(model, data())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_round_trips_exactly(name):
    make, data = LAYERS[name]
    model = randomize(make(), np.random.default_rng(2)).eval()
    back = interop.from_torch(interop.to_torch(model), dtype=F64)    # for a LayerNorm without parameters
    assert type(back) is type(model) and back.extra_repr() == model.extra_repr()
    assert not back.training
    params, back_params = dict(model.named_parameters()), dict(back.named_parameters())
    assert sorted(params) == sorted(back_params)
    for k, p in params.items():
        assert back_params[k] is not p and back_params[k].dtype == p.dtype
        np.testing.assert_array_equal(back_params[k].numpy(), p.numpy())
    x = mg.Tensor(data())
    for a, b in zip(outputs(model(x)), outputs(back(x))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_linear_weight_and_its_gradient_are_transposed():
    lin = randomize(nn.Linear(I, 2, dtype=F64), np.random.default_rng(3))
    tm = assert_same_forward_and_backward(lin, RNG.standard_normal((B, I)))
    np.testing.assert_array_equal(tm.weight.detach().numpy(), lin.weight.numpy().T)
    np.testing.assert_allclose(tm.weight.grad.numpy(), lin.weight.grad.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.RNN])
def test_the_second_bias_is_zero_and_frozen(cls):
    layer = randomize(cls(I, H, num_layers=2, bidirectional=True, dtype=F64), np.random.default_rng(4))
    rnn = interop.to_torch(layer).rnn
    hh = {k: p for k, p in rnn.named_parameters() if k.startswith("bias_hh")}
    assert len(hh) == 4
    for k, p in hh.items():
        assert not p.requires_grad and not p.detach().any(), k
    np.testing.assert_array_equal(rnn.bias_ih_l1_reverse.detach().numpy(), layer.b_l1_reverse.numpy())


def test_gru_keeps_both_biases_trainable():
    rnn = interop.to_torch(nn.GRU(I, H, dtype=F64)).rnn
    assert rnn.bias_ih_l0.requires_grad and rnn.bias_hh_l0.requires_grad


def test_initial_state_is_passed_as_minigrad_takes_it():
    lstm = randomize(nn.LSTM(I, H, num_layers=2, dtype=F64, return_state=True), np.random.default_rng(5))
    tm = interop.to_torch(lstm)
    x = seq_input()
    h0, c0 = RNG.standard_normal((2, 2, B, H))
    out_m = lstm(x, initial_state=(h0, c0))
    out_t = tm(torch.tensor(x), initial_state=(torch.tensor(h0), torch.tensor(c0)))
    for a, b in zip(out_m, out_t):
        np.testing.assert_allclose(b.detach().numpy(), a.numpy(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- a classifier trained on both sides

def classifier(seed):
    mg.seed(seed)
    model = nn.Sequential(
        nn.Embedding(10, 6, padding_idx=0, dtype=F64),
        nn.LSTM(6, 5, num_layers=2, bidirectional=True, dropout=0.25, dtype=F64),
        nn.LayerNorm(10, dtype=F64), nn.Dropout(0.5), nn.Linear(10, 8, dtype=F64), nn.GELU(),
        nn.Linear(8, 3, dtype=F64))
    randomize(model, np.random.default_rng(seed))
    model[0].weight.data[0] = 0
    return model.eval()       # no dropout draws: the two sides must see the same function


def batch(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, size=(4, 7)), rng.integers(0, 3, size=4)


def step_minigrad(model, opt, x, y, clip=None):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def step_torch(tm, opt, x, y, clip=None):
    loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
    opt.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in tm.parameters() if p.requires_grad], clip)
    opt.step()
    return loss.item()


def assert_same_weights(model, tm, atol):
    theirs = interop.from_torch(tm)
    for (name, p), (name_t, q) in zip(model.named_parameters(), theirs.named_parameters()):
        assert name == name_t
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=0, atol=atol, err_msg=name)


def test_stacked_bidirectional_classifier_one_sgd_step_is_the_same():
    model = classifier(0)
    tm = interop.to_torch(model)
    assert isinstance(tm, torch.nn.Sequential) and len(tm) == len(model)
    x, y = batch(1)
    before = [p.numpy().copy() for p in model.parameters()]
    step_minigrad(model, mg.optim.SGD(model.parameters(), lr=0.5), x, y)
    step_torch(tm, torch.optim.SGD(tm.parameters(), lr=0.5), x, y)
    assert all(np.abs(p.numpy() - b).max() > 1e-4 for p, b in zip(model.parameters(), before)
               if p is not model[0].weight)                                   # the step moved every weight
    assert_same_weights(model, tm, atol=1e-10)


def test_training_continues_identically_with_adam_clipping_and_weight_decay():
    model = classifier(2)
    tm = interop.to_torch(model)
    opt_m = mg.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01)
    opt_t = torch.optim.Adam([p for p in tm.parameters() if p.requires_grad], lr=0.05, weight_decay=0.01)
    losses = []
    for i in range(6):
        x, y = batch(10 + i)
        lm, lt = step_minigrad(model, opt_m, x, y, clip=0.5), step_torch(tm, opt_t, x, y, clip=0.5)
        assert abs(lm - lt) < 1e-10, (i, lm, lt)
        losses.append(lm)
    assert losses[-1] != losses[0]
    assert_same_weights(model, tm, atol=1e-10)


def test_a_torch_built_model_converts_with_its_two_biases_summed():
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True),
                             ).double()
    model = interop.from_torch(tm[0])
    assert model.return_sequences and model.return_state
    x = seq_input()
    out_t, (h_t, c_t) = tm[0](torch.from_numpy(x))
    out_m, h_m, c_m = model(x)
    for a, b in ((out_m, out_t), (h_m, h_t), (c_m, c_t)):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.b_l0.numpy(), (tm[0].bias_ih_l0 + tm[0].bias_hh_l0).detach().numpy())


def test_named_sequential_keeps_its_names():
    from collections import OrderedDict
    model = nn.Sequential(OrderedDict(encoder=nn.Linear(I, 2, dtype=F64), act=nn.Tanh()))
    tm = interop.to_torch(model)
    assert [n for n, _ in tm.named_children()] == ["encoder", "act"]
    assert [n for n, _ in interop.from_torch(tm).named_children()] == ["encoder", "act"]


def test_float32_models_stay_float32():
    tm = interop.to_torch(nn.Sequential(nn.Linear(I, 2), nn.GRU(2, 3)))
    assert {p.dtype for p in tm.parameters()} == {torch.float32}
    assert {p.dtype for p in interop.from_torch(tm).parameters()} == {np.dtype(np.float32)}


# ---------------------------------------------------------------- what cannot be converted

class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)

    def forward(self, x):
        return self.lin(x) * 2


def snapshot(params):
    return [p.detach().numpy().copy() if hasattr(p, "detach") else p.numpy().copy() for p in params]


@pytest.mark.parametrize("model, error, words", [
    (nn.Sequential(nn.Linear(2, 2), Custom()), TypeError, ["Sequential['1']", "Custom", "supported"]),
    (Custom(), TypeError, ["the model", "Custom"]),
    (nn.LSTMCell(2, 3), TypeError, ["LSTMCell"]),
    (nn.Sequential(nn.LSTM(2, 3, recurrent_dropout=0.1)), ValueError, ["recurrent_dropout=0.1", "LSTM"]),
], ids=["custom-in-sequential", "custom", "cell", "recurrent-dropout"])
def test_to_torch_refuses_clearly_and_changes_nothing(model, error, words):
    before = snapshot(model.parameters())
    with pytest.raises(error) as e:
        interop.to_torch(model)
    for w in words:
        assert w in str(e.value)
    for a, b in zip(before, snapshot(model.parameters())):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, error, words", [
    (lambda: torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Conv1d(2, 2, 1)), TypeError,
     ["Sequential['1']", "Conv1d"]),
    (lambda: torch.nn.LSTM(2, 3), ValueError, ["batch_first=False"]),
    (lambda: torch.nn.LSTM(2, 3, batch_first=True, proj_size=2), ValueError, ["proj_size"]),
    (lambda: torch.nn.RNN(2, 3, batch_first=True, nonlinearity="relu"), ValueError, ["nonlinearity"]),
    (lambda: torch.nn.Embedding(5, 2, max_norm=1.0), ValueError, ["max_norm"]),
    (lambda: torch.nn.Softmax(), ValueError, ["dim=None"]),
], ids=["conv", "time-major", "proj", "relu-rnn", "max-norm", "softmax-no-dim"])
def test_from_torch_refuses_clearly_and_changes_nothing(make, error, words):
    tm = make()
    before = snapshot(tm.parameters())
    with pytest.raises(error) as e:
        interop.from_torch(tm)
    for w in words:
        assert w in str(e.value)
    for a, b in zip(before, snapshot(tm.parameters())):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("seq", [False, True])
def test_a_post_padded_mask_runs_as_a_packed_sequence(cls, seq):
    layer = randomize(cls(I, H, num_layers=2, bidirectional=True, return_sequences=seq, return_state=True,
                          dtype=F64), np.random.default_rng(7))
    tm = interop.to_torch(layer)
    x = RNG.standard_normal((4, T, I))
    mask = np.arange(T) < np.array([[T], [2], [4], [1]])
    x_m, x_t = mg.Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    ys_m, ys_t = layer(x_m, mask=mask), tm(x_t, mask=torch.tensor(mask))
    loss_m, loss_t = 0, 0
    for y_m, y_t in zip(ys_m, ys_t):
        np.testing.assert_allclose(y_t.detach().numpy(), y_m.numpy(), rtol=0, atol=1e-10)
        w = RNG.standard_normal(y_m.shape)
        loss_m, loss_t = loss_m + (y_m * w).sum(), loss_t + (y_t * torch.tensor(w)).sum()
    loss_m.backward()
    loss_t.backward()
    np.testing.assert_allclose(x_t.grad.numpy(), x_m.grad, rtol=0, atol=1e-10)
    grads_t = torch_grads_in_minigrad_layout(tm)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(grads_t[name].numpy(), p.grad, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("mask", [np.array([[False, True, True]]), np.array([[True, False, True]]),
                                  np.array([[False, False, False]]), np.ones((1, 2), bool)],
                         ids=["pre-padded", "hole", "empty", "shape"])
def test_a_mask_packed_sequences_cannot_express_is_refused(mask):
    tm = interop.to_torch(nn.LSTM(I, H, dtype=F64))
    with pytest.raises(ValueError, match="Recurrent: .*mask"):
        tm(torch.zeros(1, 3, I, dtype=torch.float64), mask=torch.tensor(mask))
