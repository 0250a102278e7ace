"""Optimizers with PyTorch's update rules (``torch.optim.SGD``, ``RMSprop``, ``Adam``, ``AdamW``).

Each step updates ``p.data`` in place and bumps the parameter's version counter (through the
``Tensor.data`` setter), so a backward through a graph recorded before the step refuses to
run instead of returning gradients computed from overwritten values. Parameters whose
``grad`` is None (unused in the last backward) are skipped, state and all.

``params`` may be a Module, an iterable of Tensors, or an iterable of dicts ``{'params': [...],
'lr': ...}`` (param groups, as in torch) whose keys override the defaults for that group;
``optimizer.param_groups`` is that list with every option filled in. Hyperparameters are Python
floats, so float32 parameters stay float32. ``state_dict()`` / ``load_state_dict()`` have
PyTorch's layout and go through ``mg.save`` / ``mg.load``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..io import SEP, CheckpointError, unflatten_state
from ..nn.utils import zero_grads
from ..tensor import Tensor

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW"]


def _check(name, value, opt, lo=0.0, hi=math.inf, hi_open=False):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and lo <= value
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{opt}: {name} must be a number in {bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: holds ``param_groups`` (dicts with ``'params'`` and every hyperparameter, as in
    PyTorch) and a per-parameter ``state`` dict. Subclasses implement ``_update(p, grad, group,
    state)`` and ``_state_spec(group)``, the per-parameter state they keep."""

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if callable(getattr(params, "parameters", None)):
            params = params.parameters()
        if isinstance(params, Tensor):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        for g in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(g)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group ``{'params': [...], 'lr': ..., ...}``; options it omits take the defaults."""
        name = type(self).__name__
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"{name}: param groups must be dicts with a 'params' key")
        unknown = set(param_group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise TypeError(f"{name}: unknown hyperparameters {sorted(unknown)} in a param group "
                            f"(known: {sorted(self.defaults)})")
        group = {**self.defaults, **param_group}
        ps = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: can only optimize leaf tensors (Parameters), got the output of "
                                 f"op '{p.op}'")
            if p.dtype.kind != "f":
                raise TypeError(f"{name}: parameters must be floating point, got dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError(f"{name}: a parameter (shape {p.shape}) appears more than once")
            seen.add(id(p))
        group["params"] = ps
        self._validate(group)
        self.param_groups.append(group)

    def _validate(self, group):
        pass

    def _state_spec(self, group) -> dict:
        """Per-parameter state names -> ``'array'`` (shaped like the parameter) or ``'step'``."""
        return {}

    @property
    def lr(self) -> float:
        """The learning rate, for an optimizer with one param group (``param_groups[0]['lr']``).

        With several groups, reading or setting it is a ValueError: one number cannot describe
        (or should not silently replace) per-group rates; use ``param_groups[i]['lr']`` or a
        scheduler from :mod:`minigrad.optim.lr_scheduler`.
        """
        return self._only_group("read")["lr"]

    @lr.setter
    def lr(self, value):
        group = self._only_group("set")
        group["lr"] = _check("lr", value, type(self).__name__)

    def _only_group(self, verb):
        if len(self.param_groups) != 1:
            lrs = [g["lr"] for g in self.param_groups]
            raise ValueError(f"{type(self).__name__}.lr: cannot {verb} one learning rate for "
                             f"{len(self.param_groups)} param groups (their lrs: {lrs}); use "
                             f"param_groups[i]['lr']")
        return self.param_groups[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient: ``grad = None`` (the default, as in PyTorch), or with
        ``set_to_none=False`` fill existing gradients with zeros in place."""
        zero_grads([p for g in self.param_groups for p in g["params"]], set_to_none)

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(id(p), {})
                with p._unlocked():      # a graph may still hold p read-only: the bump tells it
                    self._update(p, p.grad, group, state)
                p._bump()

    def _update(self, p, grad, group, state):
        raise NotImplementedError

    # -- state
    def state_dict(self) -> dict:
        """The optimizer's state in PyTorch's layout, as copies::

            {'state': {0: {'step': 3, 'exp_avg': ndarray, ...}, ...},      # by parameter index
             'param_groups': [{'lr': 0.001, ..., 'params': [0, 1]}, ...]}

        Parameters are numbered across groups in order; ``state`` omits parameters that have no
        state yet. ``mg.save(optimizer, path)`` stores it (keys like ``'state/0/exp_avg'``) and
        ``load_state_dict(mg.load(path))`` reads it back.
        """
        state, groups, index = {}, [], 0
        for g in self.param_groups:
            ids = list(range(index, index + len(g["params"])))
            for i, p in zip(ids, g["params"]):
                if self.state.get(id(p)):
                    state[i] = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                                for k, v in self.state[id(p)].items()}
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
            index += len(ids)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict) -> None:
        """Load a :meth:`state_dict` (nested, or flat as :func:`minigrad.load` returns it): every
        group's hyperparameters and every parameter's state. Parameters are matched by position.

        Everything is checked first: on any mismatch (number of groups or of parameters per group,
        unknown or missing options or state, shapes, dtypes) nothing changes and
        :class:`minigrad.CheckpointError` lists the problems.
        """
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        problems = []
        groups, state = _read_state_dict(state_dict, problems)
        new_groups, new_state = [], {}
        if groups is not None and len(groups) != len(self.param_groups):
            problems.append(f"{len(groups)} param groups in the state, {len(self.param_groups)} in the optimizer")
        elif groups is not None:
            by_index = {}
            for j, (saved, own) in enumerate(zip(groups, self.param_groups)):
                new_groups.append(self._read_group(j, saved, own, by_index, problems))
            for i, entry in state.items():
                if i not in by_index:
                    problems.append(f"state for parameter {i}, which no param group lists")
                    continue
                p, group = by_index[i]
                new_state[id(p)] = self._read_param_state(i, entry, p, group, problems)
        if problems:
            raise CheckpointError(f"{name}.load_state_dict: the state does not match the optimizer; nothing was "
                                  f"loaded:\n  " + "\n  ".join(problems))
        for own, new in zip(self.param_groups, new_groups):
            own.clear()
            own.update(new)
        self.state = new_state

    def _read_group(self, j, saved, own, by_index, problems):
        """A copy of ``own`` with ``saved``'s options, validated; records index -> (param, group)."""
        if not isinstance(saved, Mapping) or "params" not in saved:
            problems.append(f"param_groups[{j}] is not a dict with a 'params' list")
            return own
        ids = np.asarray(saved["params"])
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            problems.append(f"param_groups[{j}]['params'] must be a list of ints, got {saved['params']!r}")
            return own
        if len(ids) != len(own["params"]):
            problems.append(f"param_groups[{j}] has {len(ids)} parameters in the state, {len(own['params'])} in "
                            f"the optimizer")
        options = {k: _plain(v) for k, v in saved.items() if k != "params"}
        missing = sorted(set(self.defaults) - set(options))
        unknown = sorted(set(options) - set(self.defaults) - {"initial_lr"})
        if missing or unknown:
            problems.append(f"param_groups[{j}]: missing options {missing}, unknown options {unknown}")
            return own
        group = {**options, "params": own["params"]}
        try:
            self._validate(group)
        except ValueError as err:
            problems.append(f"param_groups[{j}]: {err}")
        for i, p in zip(ids.tolist(), own["params"]):
            if i in by_index:
                problems.append(f"parameter index {i} appears in more than one place")
            by_index[i] = (p, group)
        return group

    def _read_param_state(self, i, entry, p, group, problems):
        if not isinstance(entry, Mapping):
            problems.append(f"state[{i}] is not a dict")
            return {}
        spec = self._state_spec(group)
        if set(entry) != set(spec):
            problems.append(f"state[{i}] holds {sorted(entry)}, {type(self).__name__} with these options keeps "
                            f"{sorted(spec)}")
            return {}
        out = {}
        for key, kind in spec.items():
            value = np.asarray(entry[key])
            if kind == "step":
                if (value.ndim or value.dtype.kind not in "iuf" or not np.isfinite(value) or value != np.floor(value)
                        or value < 1):
                    problems.append(f"state[{i}]['{key}'] must be a positive integer, got {entry[key]!r}")
                    continue
                out[key] = int(value)
            elif value.shape != p.shape or value.dtype != p.dtype:
                problems.append(f"state[{i}]['{key}']: shape {value.shape} dtype {value.dtype} in the state, "
                                f"shape {p.shape} dtype {p.dtype} for the parameter")
            else:
                out[key] = np.array(value, copy=True)
        return out

    def __repr__(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.param_groups[0].items() if k != "params")
        return f"{type(self).__name__}({opts})"


def _plain(value):
    """A saved option back as a Python value: 0-d arrays -> scalars, 1-d arrays -> tuples."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.item() if np.ndim(value) == 0 else tuple(value.tolist())
    return value


def _read_state_dict(state_dict, problems):
    """``(groups, {index: state})`` from a nested or flat (``'/'``-joined) state dict, or
    ``(None, {})`` with the problem recorded."""
    if any(isinstance(k, str) and SEP in k for k in state_dict):
        state_dict = unflatten_state(state_dict)
        state_dict.setdefault("state", {})      # an empty state flattens to no keys at all
    if set(state_dict) != {"state", "param_groups"}:
        problems.append(f"expected the keys ['param_groups', 'state'], got {sorted(map(str, state_dict))}")
        return None, {}
    groups, state = state_dict["param_groups"], state_dict["state"]
    if isinstance(groups, Mapping):            # list positions come back from a file as '0', '1', ...
        keys = sorted(groups, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in keys] != [str(n) for n in range(len(keys))]:
            problems.append(f"param_groups must be a list, got keys {keys}")
            return None, {}
        groups = [groups[k] for k in keys]
    if not isinstance(groups, (list, tuple)) or not isinstance(state, Mapping):
        problems.append("'param_groups' must be a list of dicts and 'state' a dict of parameter index -> dict")
        return None, {}
    bad = [k for k in state if not str(k).isdigit()]
    if bad:
        problems.append(f"state keys must be parameter indices, got {bad}")
        return None, {}
    return list(groups), {int(k): v for k, v in state.items()}


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum; as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf          (when momentum != 0)
        p = p - lr * g
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      dampening=dampening))

    def _validate(self, g):
        for key in ("lr", "momentum", "weight_decay", "dampening"):
            g[key] = _check(key, g[key], "SGD")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")

    def _state_spec(self, g):
        return {"momentum_buffer": "array"} if g["momentum"] else {}

    def _update(self, p, grad, g, state):
        wd, mom = g["weight_decay"], g["momentum"]
        d = grad + wd * p.data if wd else grad
        if mom:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(d, dtype=p.dtype, copy=True)
            else:
                buf *= mom
                buf += (1 - g["dampening"]) * d
            d = d + mom * buf if g["nesterov"] else buf
        p.data -= g["lr"] * d


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop``::

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g**2                       (v starts at 0)
        centered: a = alpha * a + (1 - alpha) * g;  denom = sqrt(v - a**2) + eps
        else:     denom = sqrt(v) + eps
        momentum > 0: buf = momentum * buf + g / denom;  p = p - lr * buf
        else:         p = p - lr * g / denom

    Differences from Keras's RMSprop: Keras defaults to ``lr=0.001``, ``rho=0.9`` (``alpha``
    here) and ``epsilon=1e-7``, and adds epsilon inside the square root (``sqrt(v + eps)``).
    """

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered))

    def _validate(self, g):
        for key in ("lr", "eps", "weight_decay", "momentum"):
            g[key] = _check(key, g[key], "RMSprop")
        g["alpha"] = _check("alpha", g["alpha"], "RMSprop", 0.0, 1.0)

    def _state_spec(self, g):
        spec = {"square_avg": "array"}
        if g["centered"]:
            spec["grad_avg"] = "array"
        if g["momentum"]:
            spec["momentum_buffer"] = "array"
        return spec

    def _update(self, p, grad, g, state):
        alpha, wd, mom = g["alpha"], g["weight_decay"], g["momentum"]
        if wd:
            grad = grad + wd * p.data
        if not state:
            state["square_avg"] = np.zeros_like(p.data)
            if g["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
            if mom:
                state["momentum_buffer"] = np.zeros_like(p.data)
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * grad * grad
        if g["centered"]:
            a = state["grad_avg"]
            a *= alpha
            a += (1 - alpha) * grad
            denom = np.sqrt(v - a * a) + g["eps"]
        else:
            denom = np.sqrt(v) + g["eps"]
        if mom:
            buf = state["momentum_buffer"]
            buf *= mom
            buf += grad / denom
            p.data -= g["lr"] * buf
        else:
            p.data -= g["lr"] * grad / denom


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (``weight_decay`` is an L2 term added to the gradient, not
    AdamW's decoupled decay)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g**2     (both start at 0)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Keras's Adam has the same rule with ``epsilon=1e-7`` by default.
    """

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        name = type(self).__name__
        for key in ("lr", "eps", "weight_decay"):
            g[key] = _check(key, g[key], name)
        betas = g["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        g["betas"] = tuple(_check(f"betas[{i}]", b, name, 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))

    def _state_spec(self, g):
        return {"step": "step", "exp_avg": "array", "exp_avg_sq": "array"}

    def _update(self, p, grad, g, state):
        b1, b2 = g["betas"]
        wd = g["weight_decay"]
        if wd and self._decoupled:
            p.data *= 1 - g["lr"] * wd
        elif wd:
            grad = grad + wd * p.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + g["eps"]
        p.data -= (g["lr"] / (1 - b1 ** t)) * m / denom


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay, which shrinks the
    parameter directly instead of adding an L2 term to the gradient::

        p = p * (1 - lr * weight_decay)
        then Adam's update with g = grad (no L2 term)

    PyTorch's defaults, including ``weight_decay=0.01``. Keras's AdamW has the same rule with
    ``weight_decay=0.004`` and ``epsilon=1e-7`` by default.
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
