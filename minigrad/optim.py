"""Optimizers with PyTorch's update rules (``torch.optim.SGD``, ``RMSprop``, ``Adam``).

Each step updates ``p.data`` in place and bumps the parameter's version counter (through the
``Tensor.data`` setter), so a backward through a graph recorded before the step refuses to
run instead of returning gradients computed from overwritten values. Parameters whose
``grad`` is None (unused in the last backward) are skipped, state and all.

``params`` may be a Module, an iterable of Tensors, or an iterable of dicts ``{'params': [...],
'lr': ...}`` (param groups, as in torch) whose keys override the defaults for that group.
Hyperparameters are Python floats, so float32 parameters stay float32.
"""
from __future__ import annotations

import math

import numpy as np

from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam"]


def _check(name, value, opt, lo=0.0, hi=math.inf, hi_open=False):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and lo <= value
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{opt}: {name} must be a number in {bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: holds ``param_groups`` (dicts with ``'params'`` and hyperparameters) and a
    per-parameter ``state`` dict. Subclasses implement ``_update(p, grad, group, state)``."""

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if callable(getattr(params, "parameters", None)):
            params = params.parameters()
        if isinstance(params, Tensor):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        seen = set()
        for g in groups:
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(f"{name}: param groups must be dicts with a 'params' key")
            unknown = set(g) - set(defaults) - {"params"}
            if unknown:
                raise TypeError(f"{name}: unknown hyperparameters {sorted(unknown)} in a param group")
            group = {**self.defaults, **g}
            ps = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
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

    @property
    def lr(self) -> float:
        """The learning rate of the first group; setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        value = _check("lr", value, type(self).__name__)
        for g in self.param_groups:
            g["lr"] = value

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``grad = None``)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(id(p), {})
                self._update(p, p.grad, group, state)
                p._bump()

    def _update(self, p, grad, group, state):
        raise NotImplementedError

    def __repr__(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.param_groups[0].items() if k != "params")
        return f"{type(self).__name__}({opts})"


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

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        for key in ("lr", "eps", "weight_decay"):
            g[key] = _check(key, g[key], "Adam")
        betas = g["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        g["betas"] = tuple(_check(f"betas[{i}]", b, "Adam", 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))

    def _update(self, p, grad, g, state):
        b1, b2 = g["betas"]
        if g["weight_decay"]:
            grad = grad + g["weight_decay"] * p.data
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
