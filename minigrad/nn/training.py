"""``fit``: the usual training loop, written once, with a progress bar.

It is exactly this loop (so it is easy to write by hand when you need something else)::

    for epoch in range(epochs):
        model.train()
        for xb, yb in batches:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if clip_norm is not None:
                clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
"""
from __future__ import annotations

import numpy as np

from ..engine import no_grad
from ..progress import progress
from ..random import get_rng
from ..tensor import Tensor
from .utils import clip_grad_norm_

__all__ = ["fit", "evaluate", "batches"]


def _array(a):
    return a.data if isinstance(a, Tensor) else np.asarray(a)


def batches(x, y, batch_size: int, shuffle: bool = False, rng=None):
    """Yield ``(x[i], y[i])`` minibatches of ``batch_size`` rows (the last may be smaller), in a
    random order if ``shuffle`` (from the shared generator unless ``rng`` is given)."""
    x, y = _array(x), _array(y)
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} rows but y has {len(y)}")
    n = len(x)
    order = (get_rng() if rng is None else rng).permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def _epoch_data(data, y, batch_size, shuffle):
    if y is not None:
        return lambda: batches(data, y, batch_size, shuffle)
    if callable(data):
        return data
    if iter(data) is data:
        return None        # a one-shot iterator: usable for one epoch only
    return lambda: data


def fit(model, loss_fn, optimizer, x, y=None, *, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        validation_data=None, clip_norm: float | None = None, verbose: bool = True, progress_backend: str = "auto"):
    """Train ``model`` and return the history ``{'loss': [...], 'val_loss': [...]}`` (per-epoch means,
    weighted by batch size).

    Parameters
    ----------
    model : Module
    loss_fn : callable
        ``loss_fn(model(xb), yb)`` returns a scalar Tensor, e.g. ``mg.nn.MSELoss()``.
    optimizer : Optimizer
    x, y : arrays or Tensors
        The training set (rows on axis 0), cut into minibatches of ``batch_size``, reshuffled each
        epoch if ``shuffle``. Or pass ``y=None`` and, as ``x``, an iterable of ``(xb, yb)`` batches
        that can be iterated once per epoch (a list, or a callable returning a fresh iterator).
    validation_data : (x_val, y_val), optional
        Evaluated after each epoch in eval mode under ``no_grad``.
    clip_norm : float, optional
        Clip the gradients' total norm (:func:`~minigrad.nn.utils.clip_grad_norm_`) before each step.
    verbose : bool
        Show a progress bar per epoch (tqdm if installed, else plain text) with the running loss.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
    make = _epoch_data(x, y, batch_size, shuffle)
    if make is None:
        if epochs > 1:
            raise ValueError("fit: x is a one-shot iterator, which cannot be replayed for several epochs; pass a "
                             "list of batches, a callable returning a fresh iterator, or arrays x and y")
        once = x
        make = lambda: once
    n_batches = -(-len(_array(x)) // batch_size) if y is not None else None
    history = {"loss": []}
    if validation_data is not None:
        history["val_loss"] = []
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        bar = progress(make(), total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not verbose,
                       backend=progress_backend)
        try:
            for xb, yb in bar:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                if clip_norm is not None:
                    clip_grad_norm_(model.parameters(), clip_norm)
                optimizer.step()
                n = len(_array(xb))
                total += loss.item() * n
                count += n
                bar.set_postfix(loss=total / count)
        finally:
            bar.close()
        history["loss"].append(total / max(count, 1))
        if validation_data is not None:
            history["val_loss"].append(evaluate(model, loss_fn, *validation_data, batch_size=batch_size))
    return history


def evaluate(model, loss_fn, x, y, batch_size: int = 256) -> float:
    """The mean loss over ``(x, y)`` in eval mode under ``no_grad`` (the model's mode is restored)."""
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    total, count = 0.0, 0
    try:
        with no_grad():
            for xb, yb in batches(x, y, batch_size):
                total += loss_fn(model(xb), yb).item() * len(xb)
                count += len(xb)
    finally:
        for m, mode in was_training:
            m.training = mode
    return total / max(count, 1)
