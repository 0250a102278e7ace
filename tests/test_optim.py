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


def test_param_groups_hold_every_option_and_override_the_defaults():
    a, b = nn.Parameter(np.ones(1)), nn.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert opt.param_groups == [
        {"params": [a], "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "dampening": 0.0},
        {"params": [b], "lr": 0.5, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "dampening": 0.0}]
    a.grad, b.grad = np.ones(1), np.ones(1)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.5])
    opt.param_groups[1]["lr"] = 0.25             # per-group rates are set in the groups
    b.grad = np.ones(1)
    opt.step()
    np.testing.assert_allclose(b.data[0], 0.5 - 0.25 * (0.9 * 1 + 1))
    assert optim.Adam(nn.Linear(2, 2)).param_groups[0]["params"][0].shape == (2, 2)   # a Module is accepted
    c = nn.Parameter(np.ones(1))
    opt.add_param_group({"params": [c], "lr": 0.3})
    assert opt.param_groups[2]["lr"] == 0.3 and opt.param_groups[2]["momentum"] == 0.0
    with pytest.raises(ValueError, match="appears more than once"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(TypeError, match=r"unknown hyperparameters \['betas'\]"):
        optim.SGD([{"params": [nn.Parameter(np.ones(1))], "betas": (0.9, 0.99)}], lr=0.1)


def test_the_lr_shortcut_is_for_one_group_and_never_flattens_groups():
    p = nn.Parameter(np.ones(1))
    opt = optim.Adam([p], lr=0.01)
    opt.lr = 0.2
    assert opt.lr == 0.2 and opt.param_groups[0]["lr"] == 0.2
    with pytest.raises(ValueError, match="lr must be a number"):
        opt.lr = -1.0
    two = optim.SGD([{"params": [nn.Parameter(np.ones(1))]}, {"params": [p], "lr": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match=r"cannot set one learning rate for 2 param groups \(their lrs: \[0.1, 0.5\]"):
        two.lr = 0.2
    with pytest.raises(ValueError, match="cannot read one learning rate for 2 param groups"):
        print(two.lr)
    assert [g["lr"] for g in two.param_groups] == [0.1, 0.5]


@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_zero_grad_sets_to_none_by_default_or_zeroes_in_place(owner):
    model = nn.Linear(2, 3, dtype=np.float64)
    opt = optim.SGD(model.parameters(), lr=0.1)
    target = opt if owner == "optimizer" else model
    model(np.ones((4, 2))).sum().backward()
    grads = [p.grad for p in model.parameters()]
    target.zero_grad(set_to_none=False)
    for p, g in zip(model.parameters(), grads):
        assert p.grad is g and not g.any()         # the same arrays, zeroed in place
    model(np.ones((4, 2))).sum().backward()        # and they accumulate afresh
    np.testing.assert_allclose(model.bias.grad, [4.0, 4.0, 4.0])
    target.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    target.zero_grad(set_to_none=False)             # a None grad stays None
    assert all(p.grad is None for p in model.parameters())


def test_adamw_by_hand():
    # PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
    p = nn.Parameter(P0.copy())
    opt = optim.AdamW([p], lr=0.1)
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[0]["eps"] == 1e-8
    p.grad = A * P0                                # g0 = (1, -6)
    opt.step()
    # decay first, p * (1 - 0.1 * 0.01); then Adam's first step moves by lr * g / (|g| + eps)
    decayed = P0 * (1 - 0.1 * 0.01)
    expected = decayed - 0.1 * np.array([1.0, -6.0]) / (np.abs([1.0, -6.0]) + 1e-8)
    np.testing.assert_allclose(p.data, expected, rtol=1e-15)
    # unlike Adam's L2 term, the decay does not enter the moments
    np.testing.assert_allclose(opt.state[id(p)]["exp_avg"], 0.1 * np.array([1.0, -6.0]), rtol=1e-15)


@pytest.mark.parametrize("kwargs", [dict(), dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3)])
def test_adamw_trajectory_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    model, tmodel = make_torch_pair(torch)
    opt, topt = optim.AdamW(model.parameters(), **kwargs), torch.optim.AdamW(tmodel.parameters(), **kwargs)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    for _ in range(30):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    for ours, theirs in [(model[0], tmodel[0]), (model[2], tmodel[2])]:
        np.testing.assert_allclose(ours.weight.data, theirs.weight.detach().numpy().T, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(ours.bias.data, theirs.bias.detach().numpy(), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ state dicts and resuming

def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()


def _mlp(seed):
    mg.seed(seed)
    return nn.Sequential(nn.Linear(3, 5, dtype=np.float64), nn.Tanh(), nn.Linear(5, 1, dtype=np.float64))


@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=0.05),
    lambda ps: optim.AdamW([{"params": ps[:2], "lr": 0.02}, {"params": ps[2:], "weight_decay": 0.1}], lr=0.05),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
], ids=["Adam", "AdamW-groups", "SGD", "RMSprop"])
def test_resuming_from_saved_model_and_optimizer_equals_training_straight_through(tmp_path, make):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    straight = _mlp(0)
    _train(straight, make(straight.parameters()), x, y, 10)

    first = _mlp(0)
    opt = make(first.parameters())
    _train(first, opt, x, y, 5)
    mg.save(first, tmp_path / "model.npz")
    mg.save(opt, tmp_path / "optim.npz")

    fresh = _mlp(1)                               # different weights, no optimizer state
    fresh_opt = make(fresh.parameters())
    fresh.load_state_dict(mg.load(tmp_path / "model.npz"))
    fresh_opt.load_state_dict(mg.load(tmp_path / "optim.npz"))
    _train(fresh, fresh_opt, x, y, 5)
    for (name, p), q in zip(fresh.named_parameters(), straight.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=0, atol=1e-12, err_msg=name)


def test_state_dict_has_pytorchs_layout_and_is_a_copy():
    torch = pytest.importorskip("torch")
    model, tmodel = make_torch_pair(torch)
    groups = lambda ps: [{"params": ps[:2], "lr": 0.01}, {"params": ps[2:]}]
    opt = optim.Adam(groups(model.parameters()), lr=0.02)
    topt = torch.optim.Adam(groups(list(tmodel.parameters())), lr=0.02)
    for o, loss in [(opt, lambda: model(np.ones((2, 3))).sum()),
                    (topt, lambda: tmodel(torch.ones(2, 3, dtype=torch.float64)).sum())]:
        loss().backward()
        o.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert sorted(ours) == sorted(theirs) == ["param_groups", "state"]
    assert sorted(ours["state"]) == sorted(theirs["state"]) == [0, 1, 2, 3]
    for i in range(4):
        assert set(ours["state"][i]) == {"step", "exp_avg", "exp_avg_sq"} <= set(theirs["state"][i])
        assert ours["state"][i]["step"] == theirs["state"][i]["step"].item() == 1
    for g, tg in zip(ours["param_groups"], theirs["param_groups"]):
        assert g["params"] == tg["params"]
        assert {k: g[k] for k in ("lr", "betas", "eps", "weight_decay")} == {k: tg[k] for k in
                                                                            ("lr", "betas", "eps", "weight_decay")}
    before = ours["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(ours["state"][0]["exp_avg"], before)


def _stepped_adam():
    ps = [nn.Parameter(np.ones((2, 3))), nn.Parameter(np.ones(3))]
    opt = optim.Adam(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones_like(p.data)
    opt.step()
    return ps, opt


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("edit, message", [
    (lambda sd: {**sd, "param_groups": sd["param_groups"] * 2}, "2 param groups in the state, 1 in the optimizer"),
    (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "params": [0]}]},
     "param_groups.0. has 1 parameters in the state, 2 in the optimizer"),
    (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "momentum": 0.9}]},
     r"unknown options \['momentum'\]"),
    (lambda sd: {**sd, "param_groups": [_without(sd["param_groups"][0], "eps")]}, r"missing options \['eps'\]"),
    (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": -1.0}]}, "lr must be a number"),
    (lambda sd: {**sd, "state": {**sd["state"], 1: _without(sd["state"][1], "exp_avg")}},
     r"state\[1\] holds \['exp_avg_sq', 'step'\]"),
    (lambda sd: {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "exp_avg": np.ones(3)}}},
     r"state\[0\]\['exp_avg'\]: shape \(3,\) dtype float64 in the state, shape \(2, 3\)"),
    (lambda sd: {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "exp_avg": np.ones((2, 3), np.float32)}}},
     "dtype float32 in the state"),
    (lambda sd: {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "step": 0}}}, "must be a positive integer"),
    (lambda sd: {**sd, "state": {**sd["state"], 7: sd["state"][0]}}, "state for parameter 7, which no param group"),
    (lambda sd: {"state": sd["state"]}, r"expected the keys \['param_groups', 'state'\]"),
], ids=["groups", "params", "unknown-option", "missing-option", "bad-option", "missing-state", "shape", "dtype",
        "step", "index", "keys"])
def test_loading_a_state_dict_of_the_wrong_structure_is_an_error_and_changes_nothing(edit, message):
    ps, opt = _stepped_adam()
    good = opt.state_dict()
    _, other = _stepped_adam()
    other.param_groups[0]["lr"] = 0.5
    bad = edit(other.state_dict())
    with pytest.raises(mg.CheckpointError, match=message) as err:
        opt.load_state_dict(bad)
    assert "nothing was loaded" in str(err.value)
    after = opt.state_dict()
    assert after["param_groups"] == good["param_groups"]
    for i in good["state"]:
        for k, v in good["state"][i].items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    with pytest.raises(TypeError, match="expected a dict"):
        opt.load_state_dict([1, 2])


def test_optimizer_and_model_in_one_file(tmp_path):
    """Nested dicts are stored under '/'-joined keys; unflatten_state gives the nesting back."""
    ps, opt = _stepped_adam()
    model = nn.Linear(2, 1)
    mg.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.npz")
    flat = mg.load(tmp_path / "ckpt.npz")
    assert {"model/weight", "optimizer/state/0/exp_avg", "optimizer/param_groups/0/betas",
            "optimizer/param_groups/0/params"} <= set(flat)
    ckpt = mg.io.unflatten_state(flat)
    _, fresh = _stepped_adam()
    fresh.param_groups[0]["lr"] = 0.7
    fresh.load_state_dict(ckpt["optimizer"])
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["betas"] == (0.9, 0.999)
    assert fresh.state_dict()["state"][1]["step"] == 1
    nn.Linear(2, 1).load_state_dict(ckpt["model"])
    with pytest.raises(ValueError, match="contains '/'"):
        mg.save({"a/b": {"c": np.ones(1)}}, tmp_path / "bad.npz")


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
