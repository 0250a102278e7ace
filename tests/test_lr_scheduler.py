"""minigrad.optim.lr_scheduler: every schedule's rates against hand-derived values and against PyTorch."""
import math

import numpy as np
import pytest

from minigrad import nn, optim
from minigrad.optim import lr_scheduler as S

BASES = (0.1, 0.05)           # two param groups, each with its own base rate
STEPS = 30

# name, constructor arguments, the rate at step t from the base rate (derived from each schedule's definition)
SCHEDULES = [
    ("StepLR", dict(step_size=4, gamma=0.5), lambda base, t: base * 0.5 ** (t // 4)),
    ("MultiStepLR", dict(milestones=[3, 7, 7, 20], gamma=0.3),
     lambda base, t: base * 0.3 ** sum(m <= t for m in [3, 7, 7, 20])),
    ("ExponentialLR", dict(gamma=0.9), lambda base, t: base * 0.9 ** t),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001),       # down over 7 steps, up over the next 7, ...
     lambda base, t: 0.001 + (base - 0.001) * (1 + math.cos(math.pi * t / 7)) / 2),
    ("LambdaLR", dict(lr_lambda=lambda t: 1 / (1 + t)), lambda base, t: base / (1 + t)),
    ("LinearLR", dict(start_factor=0.1, end_factor=1.0, total_iters=6),
     lambda base, t: base * (0.1 + 0.9 * min(t, 6) / 6)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.25, total_iters=4),       # a linear decay
     lambda base, t: base * (1.0 - 0.75 * min(t, 4) / 4)),
]


def two_groups(make_opt=optim.SGD):
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(3))
    return make_opt([{"params": [a]}, {"params": [b], "lr": BASES[1]}], lr=BASES[0])


def rates(scheduler, steps=STEPS):
    seq = [scheduler.get_last_lr()]
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        seq.append(scheduler.get_last_lr())
    return seq


@pytest.mark.parametrize("name, kwargs, formula", SCHEDULES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SCHEDULES)])
def test_rates_match_the_hand_derived_formula(name, kwargs, formula):
    opt = two_groups()
    scheduler = getattr(S, name)(opt, **kwargs)
    seq = rates(scheduler)
    expected = [[formula(base, t) for base in BASES] for t in range(STEPS + 1)]
    np.testing.assert_allclose(seq, expected, rtol=1e-12)
    assert scheduler.last_epoch == STEPS
    assert [g["lr"] for g in opt.param_groups] == seq[-1]
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASES) == scheduler.base_lrs


@pytest.mark.parametrize("name, kwargs, formula", SCHEDULES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SCHEDULES)])
def test_rates_equal_pytorchs_bit_for_bit(name, kwargs, formula):
    torch = pytest.importorskip("torch")
    ours = rates(getattr(S, name)(two_groups(), **kwargs))
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    topt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": BASES[1]}], lr=BASES[0])
    theirs = rates(getattr(torch.optim.lr_scheduler, name)(topt, **kwargs))
    assert ours == theirs               # the chained forms, computed as PyTorch computes them


def test_cosine_uses_pytorchs_recursive_form_not_the_closed_form():
    """The two forms differ in the last bits; PyTorch's recursion is what is matched."""
    seq = rates(S.CosineAnnealingLR(two_groups(), T_max=7, eta_min=0.001))
    closed = [[0.001 + (base - 0.001) * (1 + math.cos(math.pi * t / 7)) / 2 for base in BASES]
              for t in range(STEPS + 1)]
    assert seq != closed
    lr, previous = seq[5][0], seq[4][0]
    ratio = (1 + math.cos(math.pi * 5 / 7)) / (1 + math.cos(math.pi * 4 / 7))
    assert lr == ratio * (previous - 0.001) + 0.001


# metrics to ReduceLROnPlateau(patience=2, factor=0.5, cooldown=1, threshold=0.1, threshold_mode='abs'), lr 0.1:
#  t  metric  better than best - 0.1?  bad epochs  action                  lr after
#  1  5.0     yes (best 5.0)           0                                   0.1
#  2  4.95    no                       1                                   0.1
#  3  4.95    no                       2                                   0.1
#  4  4.95    no                       3 > 2       halve, cooldown 1       0.05
#  5  4.95    no                       1 -> 0 (cooldown absorbs it)         0.05
#  6  4.0     yes (best 4.0)           0                                   0.05
#  7  4.0     no                       1                                   0.05
#  8  4.0     no                       2                                   0.05
#  9  4.0     no                       3 > 2       halve, but min_lr 0.03  0.03
# 10  4.0     no                       1 (cooldown) -> 0                    0.03
# 11-13 4.0   no                       1, 2, 3     0.03 * 0.5 < min_lr: stays 0.03
PLATEAU_METRICS = [5.0, 4.95, 4.95, 4.95, 4.95, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
PLATEAU_KWARGS = dict(patience=2, factor=0.5, cooldown=1, threshold=0.1, threshold_mode="abs", min_lr=0.03)


def plateau_rates(opt, scheduler_cls, metrics=PLATEAU_METRICS, **kwargs):
    scheduler = scheduler_cls(opt, **kwargs)
    seq = []
    for m in metrics:
        opt.step()
        scheduler.step(m)
        seq.append(scheduler.get_last_lr()[0])
    return seq, scheduler


def test_reduce_on_plateau_by_hand():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    seq, scheduler = plateau_rates(opt, S.ReduceLROnPlateau, **PLATEAU_KWARGS)
    assert seq == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03, 0.03]
    assert scheduler.last_epoch == len(PLATEAU_METRICS) and scheduler.best == 4.0


@pytest.mark.parametrize("kwargs", [
    PLATEAU_KWARGS,
    dict(mode="max", patience=1, factor=0.3),
    dict(mode="min", patience=0, threshold=0.05, min_lr=[0.01, 0.02]),
])
def test_reduce_on_plateau_matches_pytorch(kwargs):
    torch = pytest.importorskip("torch")
    metrics = list(np.random.default_rng(0).standard_normal(30).cumsum())
    ours, _ = plateau_rates(two_groups(), S.ReduceLROnPlateau, metrics, **kwargs)
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    topt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": BASES[1]}], lr=BASES[0])
    theirs, _ = plateau_rates(topt, torch.optim.lr_scheduler.ReduceLROnPlateau, metrics, **kwargs)
    assert ours == theirs


def test_schedules_drive_the_optimizer_and_compose():
    p = nn.Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    warmup = S.LinearLR(opt, start_factor=0.5, total_iters=2)
    decay = S.ExponentialLR(opt, gamma=0.5)
    lrs = []
    for _ in range(4):
        p.grad = np.ones(1)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        warmup.step()
        decay.step()
    assert lrs == [0.5, 0.375, 0.25, 0.125]        # both act on the current rate, as in PyTorch
    np.testing.assert_allclose(p.data, [-1.25])


def test_get_last_lr_is_a_copy_and_lambda_per_group():
    opt = two_groups()
    scheduler = S.LambdaLR(opt, [lambda t: 1.0, lambda t: 0.5 ** t])
    scheduler.step()
    last = scheduler.get_last_lr()
    assert last == [0.1, 0.025]
    last[0] = 7.0
    assert scheduler.get_last_lr() == [0.1, 0.025]


@pytest.mark.parametrize("make, error, message", [
    (lambda o: S.StepLR(o, step_size=0), ValueError, "StepLR: step_size must be an integer"),
    (lambda o: S.StepLR(o, step_size=2.5), ValueError, "step_size must be an integer"),
    (lambda o: S.ExponentialLR(o, gamma=-0.1), ValueError, "gamma must be a number"),
    (lambda o: S.MultiStepLR(o, milestones=[2, "5"]), ValueError, "each milestone must be an integer"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), ValueError, "T_max must be an integer"),
    (lambda o: S.LinearLR(o, start_factor=0.0), ValueError, r"start_factor must be a number in \(0.0, 1.0\]"),
    (lambda o: S.LambdaLR(o, [lambda t: 1.0]), ValueError, "expected 2 lr_lambdas"),
    (lambda o: S.LambdaLR(o, 0.5), TypeError, "lr_lambda must be a function"),
    (lambda o: S.StepLR(o, step_size=2, last_epoch=3), ValueError, "needs 'initial_lr' in every param group"),
    (lambda o: S.StepLR(object(), step_size=2), TypeError, "expected a minigrad Optimizer"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, r"factor must be a number in \[0.0, 1.0\)"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), ValueError, "mode must be 'min' or 'max'"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "expected 2 min_lrs"),
])
def test_bad_arguments_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make(two_groups())


def test_resuming_a_schedule_from_the_optimizers_state(tmp_path):
    import minigrad as mg
    opt = two_groups(optim.Adam)
    scheduler = S.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        scheduler.step()
    mg.save(opt, tmp_path / "opt.npz")
    fresh = two_groups(optim.Adam)
    fresh.load_state_dict(mg.load(tmp_path / "opt.npz"))     # brings 'lr' and 'initial_lr' back
    # as in PyTorch, the constructor steps once, from last_epoch to last_epoch + 1
    resumed = S.StepLR(fresh, step_size=2, gamma=0.5, last_epoch=scheduler.last_epoch - 1)
    assert resumed.last_epoch == scheduler.last_epoch
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [0.05, 0.025]
    assert resumed.base_lrs == list(BASES)
    scheduler.step()
    resumed.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [0.025, 0.0125]


@pytest.mark.parametrize("make, metric", [
    (lambda o: S.MultiStepLR(o, milestones=[3, 9, 9], gamma=0.5), None),
    (lambda o: S.CosineAnnealingLR(o, T_max=6, eta_min=0.001), None),
    (lambda o: S.LinearLR(o, start_factor=0.2, total_iters=10), None),
    (lambda o: S.ReduceLROnPlateau(o, patience=1, factor=0.5, cooldown=1), lambda t: 1.0 + (t % 5 == 0)),
], ids=["MultiStepLR", "CosineAnnealingLR", "LinearLR", "ReduceLROnPlateau"])
def test_a_saved_schedule_resumes_exactly(tmp_path, make, metric):
    import minigrad as mg

    def run(scheduler, steps, start):
        seq = []
        for t in range(start, start + steps):
            scheduler.optimizer.step()
            scheduler.step() if metric is None else scheduler.step(metric(t))
            seq.append(scheduler.get_last_lr())
        return seq

    straight = run(make(two_groups(optim.Adam)), 20, 0)
    first = make(two_groups(optim.Adam))
    head = run(first, 7, 0)
    mg.save(first.optimizer, tmp_path / "opt.npz")
    mg.save(first, tmp_path / "sched.npz")
    fresh = make(two_groups(optim.Adam))            # made fresh, as in PyTorch, then both states loaded
    fresh.optimizer.load_state_dict(mg.load(tmp_path / "opt.npz"))
    fresh.load_state_dict(mg.load(tmp_path / "sched.npz"))
    assert head + run(fresh, 13, 7) == straight
    with pytest.raises(ValueError, match=r"missing keys \['last_epoch'\]"):
        fresh.load_state_dict({k: v for k, v in first.state_dict().items() if k != "last_epoch"})
