"""Learning-rate schedules with PyTorch's arguments and PyTorch's numbers (``torch.optim.lr_scheduler``).

Call ``scheduler.step()`` once per epoch (or per batch), after ``optimizer.step()``. Each schedule
sets every param group's ``'lr'`` from that group's base rate (its ``'lr'`` when the scheduler was
made, kept as ``'initial_lr'`` in the group, as PyTorch does). ``get_last_lr()`` is the list of
the groups' current rates and ``last_epoch`` counts the ``step()`` calls (0 after construction).

The rates are computed as PyTorch computes them, most from the previous rate (``lr * gamma``,
chained), not from a closed form: e.g. ``CosineAnnealingLR``'s recursive update gives floats a few
ulps away from ``eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2``, and the ones here
are PyTorch's to the last bit. A schedule therefore composes with other changes to ``'lr'``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from ..io import SEP, unflatten_state
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR", "LinearLR",
           "ReduceLROnPlateau"]


def _number(where, name, value, lo=0.0, hi=math.inf, lo_open=False, hi_open=False, integer=False):
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    ok = ok and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{where}: {name} must be {kind} in {bounds}, got {value!r}")
    return value


class LRScheduler:
    """Base class: subclasses define ``get_lr()``, the groups' rates at ``last_epoch``, which may
    read the groups' current ``'lr'`` (the previous step's rates)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        where = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{where}: expected a minigrad Optimizer, got {type(optimizer).__name__}")
        _number(where, "last_epoch", last_epoch, lo=-1, integer=True)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            missing = [i for i, g in enumerate(optimizer.param_groups) if "initial_lr" not in g]
            if missing:
                raise ValueError(f"{where}: resuming at last_epoch={last_epoch} needs 'initial_lr' in every param "
                                 f"group (load the optimizer's state dict first); param groups {missing} lack it")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True        # the constructor's step leaves the rates as they are (but LinearLR's)
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list:
        raise NotImplementedError

    def get_last_lr(self) -> list:
        """The learning rate of every param group after the last ``step()``."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance ``last_epoch`` by one and set every group's ``'lr'``."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise ValueError(f"{type(self).__name__}: the optimizer has {len(groups)} param groups, but had "
                             f"{len(self.base_lrs)} when the scheduler was made")
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in groups]

    def _lrs(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Everything but the optimizer (and LambdaLR's functions), to resume a schedule: save it
        with ``mg.save(scheduler, path)`` beside the optimizer's state."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()
                if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict) -> None:
        """Load a :meth:`state_dict`, nested or as :func:`minigrad.load` returns it. Its names
        must be this scheduler's (ValueError otherwise, and nothing changes)."""
        if any(isinstance(k, str) and SEP in k for k in state_dict):
            state_dict = unflatten_state(state_dict)
        own = self.state_dict()
        state = dict(state_dict)
        for key, value in own.items():             # an empty dict (no milestones) is not in a file
            if isinstance(value, Mapping) and not value:
                state.setdefault(key, {})
        if set(state) != set(own):
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing keys {sorted(set(own) - set(state))}, "
                             f"unknown keys {sorted(set(state) - set(own))}; nothing was loaded")
        self.__dict__.update({k: _like(own[k], v) for k, v in state.items()})


def _like(template, value):
    """``value`` (possibly read back from a file as arrays) in the Python type of ``template``."""
    if isinstance(template, Counter):
        return Counter({int(k): int(v) for k, v in value.items()})
    if isinstance(template, list):
        return np.asarray(value).tolist()
    if isinstance(template, (bool, int, float, str)):
        return type(template)(np.asarray(value).item())
    return value


class StepLR(LRScheduler):
    """Multiply the rates by ``gamma`` every ``step_size`` steps: ``base * gamma ** (t // step_size)``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = _number("StepLR", "step_size", step_size, lo=1, integer=True)
        self.gamma = _number("StepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class MultiStepLR(LRScheduler):
    """Multiply the rates by ``gamma`` at each milestone: ``base * gamma ** (milestones passed)``
    (a milestone listed twice counts twice)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        milestones = list(milestones)
        for m in milestones:
            _number("MultiStepLR", "each milestone", m, lo=0, integer=True)
        self.milestones = Counter(milestones)
        self.gamma = _number("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._lrs()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._lrs()]


class ExponentialLR(LRScheduler):
    """Multiply the rates by ``gamma`` every step: ``base * gamma ** t``."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = _number("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine from each base rate down to ``eta_min`` over ``T_max`` steps (and back up over the
    next ``T_max``, periodically): ``eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2``,
    computed with PyTorch's recursive update (the same floats as PyTorch)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = _number("CosineAnnealingLR", "T_max", T_max, lo=1, integer=True)
        self.eta_min = _number("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._lrs()
        if (t - 1 - T) % (2 * T) == 0:          # at the bottom: the ratio below would be 0 / 0
            return [lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2 for lr, base in zip(self._lrs(), self.base_lrs)]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - lo) + lo for lr in self._lrs()]


class LambdaLR(LRScheduler):
    """``base * lr_lambda(t)``: one function for every group, or a list with one per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per param group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        if not all(callable(f) for f in self.lr_lambdas):
            raise TypeError("LambdaLR: lr_lambda must be a function of the epoch (or a list of them)")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class LinearLR(LRScheduler):
    """Warm-up (or decay): scale each base rate by a factor going linearly from ``start_factor``
    to ``end_factor`` over ``total_iters`` steps, then constant."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        self.start_factor = _number("LinearLR", "start_factor", start_factor, lo=0.0, hi=1.0, lo_open=True)
        self.end_factor = _number("LinearLR", "end_factor", end_factor, hi=1.0)
        self.total_iters = _number("LinearLR", "total_iters", total_iters, lo=1, integer=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, a, b = self.last_epoch, self.start_factor, self.end_factor
        if t == 0:
            return [lr * a for lr in self._lrs()]
        if self._is_initial or t > self.total_iters:
            return self._lrs()
        # the ratio of the factor at t to the factor at t - 1
        return [lr * (1.0 + (b - a) / (self.total_iters * a + (t - 1) * (b - a))) for lr in self._lrs()]


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rates by ``factor`` when a metric has stopped improving for more than
    ``patience`` steps: ``scheduler.step(val_loss)`` after each evaluation.

    Parameters are PyTorch's: ``mode`` ``'min'`` or ``'max'``; an improvement beats the best so far
    by ``threshold``, relative (``'rel'``: ``best * (1 - threshold)`` in min mode) or absolute
    (``'abs'``); after a reduction, ``cooldown`` steps are ignored; rates never go below ``min_lr``
    (a number, or one per group), and a reduction smaller than ``eps`` is skipped.
    """

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0.0,
                 eps: float = 1e-8):
        where = "ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{where}: expected a minigrad Optimizer, got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{where}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        n = len(optimizer.param_groups)
        min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * n
        if len(min_lrs) != n:
            raise ValueError(f"{where}: expected {n} min_lrs (one per param group), got {len(min_lrs)}")
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = _number(where, "factor", factor, hi=1.0, hi_open=True)
        self.patience = _number(where, "patience", patience, integer=True)
        self.threshold = _number(where, "threshold", threshold)
        self.cooldown = _number(where, "cooldown", cooldown, integer=True)
        self.min_lrs = [_number(where, "min_lr", m) for m in min_lrs]
        self.eps = _number(where, "eps", eps)
        self.base_lrs = self._lrs()
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = self._lrs()

    def _is_better(self, a, best):
        if self.threshold_mode == "rel":
            return a < best * (1 - self.threshold) if self.mode == "min" else a > best * (1 + self.threshold)
        return a < best - self.threshold if self.mode == "min" else a > best + self.threshold

    def step(self, metrics) -> None:
        """Record this evaluation's ``metrics`` (a number or a 1-element Tensor) and reduce the
        rates if it is the ``patience + 1``-th step in a row without improvement."""
        current = float(metrics.item() if hasattr(metrics, "item") else metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0           # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, floor)
                if group["lr"] - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._lrs()
