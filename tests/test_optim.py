"""minigrad.optim: one step on a quadratic against hand-computed updates, torch trajectories, training."""
import time

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn, optim

# The quadratic f(p) = 0.5 * sum(A * p**2), gradient A * p, from p0 = (1, -2) with A = (1, 3):
# the first gradient is g0 = (1, -6).
A = np.array([1.0, 3.0])
P0 = np.array([1.0, -2.0])


def run(make_opt, steps, p0=P0):
    p = nn.Parameter(p0.copy())
    opt = make_opt([p])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (mg.Tensor(A) * p * p).sum()).backward()
        opt.step()
    return p.data


def test_sgd_plain():
    np.testing.assert_allclose(run(lambda ps: optim.SGD(ps, lr=0.1), 1), [0.9, -1.4])   # p0 - 0.1 * (1, -6)


def test_sgd_momentum_two_steps():
    # step 1: buf = g0 = (1, -6), p1 = (0.9, -1.4); step 2: g1 = (0.9, -4.2),
    # buf = 0.9 * (1, -6) + (0.9, -4.2) = (1.8, -9.6), p2 = p1 - 0.1 * buf = (0.72, -0.44)
    np.testing.assert_allclose(run(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), 2), [0.72, -0.44])


def test_sgd_nesterov():
    # buf = g0; d = g0 + 0.9 * buf = (1.9, -11.4); p1 = p0 - 0.1 * d
    np.testing.assert_allclose(run(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), 1),
                               [0.81, -0.86])


def test_sgd_weight_decay():
    # d = g0 + 0.1 * p0 = (1.1, -6.2); p1 = p0 - 0.1 * d
    np.testing.assert_allclose(run(lambda ps: optim.SGD(ps, lr=0.1, weight_decay=0.1), 1), [0.89, -1.38])


def test_rmsprop_plain():
    # v = 0.01 * g0**2 = (0.01, 0.36); p1 = p0 - 0.01 * g0 / (sqrt(v) + 1e-8)
    expected = [1 - 0.01 * 1 / (0.1 + 1e-8), -2 + 0.01 * 6 / (0.6 + 1e-8)]
    np.testing.assert_allclose(run(lambda ps: optim.RMSprop(ps, lr=0.01), 1), expected, rtol=1e-14)


def test_rmsprop_centered():
    # a = 0.01 * g0 = (0.01, -0.06); v - a**2 = (0.0099, 0.3564)
    expected = [1 - 0.01 * 1 / (np.sqrt(0.0099) + 1e-8), -2 + 0.01 * 6 / (np.sqrt(0.3564) + 1e-8)]
    np.testing.assert_allclose(run(lambda ps: optim.RMSprop(ps, lr=0.01, centered=True), 1), expected, rtol=1e-14)


def test_rmsprop_momentum_two_steps():
    # step 1 as plain: buf = g0 / (sqrt(v1) + eps) = (10, -10) (eps ignored below 1e-6), p1 = (0.9, -1.9)
    # step 2: g1 = (0.9, -5.7); v2 = 0.99 * (0.01, 0.36) + 0.01 * (0.81, 32.49) = (0.0180, 0.6813)
    # buf = 0.5 * (10, -10) + g1 / sqrt(v2); p2 = p1 - 0.01 * buf
    buf = np.array([5.0, -5.0]) + np.array([0.9, -5.7]) / np.sqrt([0.0180, 0.6813])
    expected = np.array([0.9, -1.9]) - 0.01 * buf
    np.testing.assert_allclose(run(lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5), 2), expected, rtol=1e-6)


def test_adam_two_steps():
    # step 1: m = 0.1 g0, v = 0.001 g0**2, bias-corrected m/(1-0.9) = g0, v/(1-0.999) = g0**2,
    # so p1 = p0 - 0.1 * g0 / (|g0| + 1e-8) = (0.9, -1.9) up to eps
    p1 = np.array([1 - 0.1 * 1 / (1 + 1e-8), -2 + 0.1 * 6 / (6 + 1e-8)])
    np.testing.assert_allclose(run(lambda ps: optim.Adam(ps, lr=0.1), 1), p1, rtol=1e-14)
    # step 2: g1 = A * p1 = (0.9, -5.7) (to 1e-9); m = (0.09 + 0.09, -0.54 - 0.57) = (0.18, -1.11);
    # v = 0.999 * 0.001 * (1, 36) + 0.001 * (0.81, 32.49) = (0.001809, 0.068454);
    # p2 = p1 - 0.1 * (m / 0.19) / (sqrt(v / 0.001999) + 1e-8)
    m = np.array([0.18, -1.11])
    v = np.array([0.001809, 0.068454])
    p2 = np.array([0.9, -1.9]) - 0.1 * (m / 0.19) / (np.sqrt(v / 0.001999) + 1e-8)
    np.testing.assert_allclose(run(lambda ps: optim.Adam(ps, lr=0.1), 2), p2, rtol=1e-7)


def test_adam_weight_decay_is_l2_in_the_gradient():
    # g = g0 + 0.5 * p0 = (1.5, -7); first Adam step moves each coordinate by lr * sign(g)
    np.testing.assert_allclose(run(lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.5), 1), [0.9, -1.9],
                               rtol=1e-7)


def make_torch_pair(torch, seed=0):
    """The same float64 MLP in minigrad and torch (torch's Linear holds the transposed weight)."""
    mg.seed(seed)
    model = nn.Sequential(nn.Linear(3, 5, dtype=np.float64), nn.Tanh(), nn.Linear(5, 1, dtype=np.float64))
    model[0].bias.data = np.random.default_rng(seed).standard_normal(5)
    tmodel = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    with torch.no_grad():
        for ours, theirs in [(model[0], tmodel[0]), (model[2], tmodel[2])]:
            theirs.weight.copy_(torch.tensor(ours.weight.data.T))
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    return model, tmodel


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
])
def test_trajectories_match_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    model, tmodel = make_torch_pair(torch)
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    topt = getattr(torch.optim, name)(tmodel.parameters(), **kwargs)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    for _ in range(15):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    np.testing.assert_allclose(model[0].weight.data, tmodel[0].weight.detach().numpy().T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model[2].bias.data, tmodel[2].bias.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_mlp_learns_xor_to_full_accuracy_quickly():
    start = time.perf_counter()
    mg.seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (256, 2))
    x += 0.1 * np.sign(x)                       # a margin around the quadrant boundaries
    x = x.astype(np.float32)
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(np.float32)[:, None]
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = optim.Adam(model.parameters(), lr=0.05)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    accuracy = ((model(x).data > 0) == (y > 0.5)).mean()
    assert accuracy == 1.0
    assert time.perf_counter() - start < 5.0


def test_step_invalidates_graphs_recorded_before_it():
    w = nn.Parameter(np.array([1.0, 2.0]))
    loss = (w * w).sum()                # the multiply saved w's array for backward
    w.grad = np.ones(2)
    optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_params_without_grad_are_skipped_and_dtype_is_kept():
    a = nn.Parameter(np.ones(2, np.float32))
    b = nn.Parameter(np.ones(2, np.float32))
    for opt in (optim.SGD([a, b], lr=0.1, momentum=0.9), optim.RMSprop([a, b]), optim.Adam([a, b])):
        a.grad, b.grad = np.ones(2, np.float32), None
        before = b.data.copy()
        opt.step()
        np.testing.assert_array_equal(b.data, before)
        assert id(b) not in opt.state and a.data.dtype == np.float32


def test_zero_grad_and_param_groups():
    a, b = nn.Parameter(np.ones(1)), nn.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = np.ones(1), np.ones(1)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.5])
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    opt.lr = 0.2
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    assert optim.Adam(nn.Linear(2, 2)).param_groups[0]["params"][0].shape == (2, 2)   # a Module is accepted


@pytest.mark.parametrize("make, message", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: lr must be a number in \[0.0, inf\], got -0.1"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-1), "momentum must be"),
    (lambda ps: optim.RMSprop(ps, alpha=1.5), "alpha must be a number in"),
    (lambda ps: optim.RMSprop(ps, eps=-1e-8), "eps must be"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), r"betas\[1\] must be a number in \[0.0, 1.0\)"),
    (lambda ps: optim.Adam(ps, betas=0.9), "betas must be a pair"),
    (lambda ps: optim.Adam(ps, lr="fast"), "lr must be a number"),
    (lambda ps: optim.Adam(ps, weight_decay=-1), "weight_decay must be"),
])
def test_bad_hyperparameters_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(np.zeros(2))])


def test_bad_parameter_lists_are_clear_errors():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="leaf tensors"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([np.zeros(2)], lr=0.1)
