"""``fit``, ``evaluate`` and ``predict``: the usual loops, written once, with Keras's conveniences.

``fit`` is exactly this loop, plus the epoch's bookkeeping (so it is easy to write by hand when
you need something else)::

    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:                       # a mg.data.DataLoader
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if clip_norm is not None:
                clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
        # then: validation in eval mode under no_grad, History, callbacks (which may stop it)
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

from ..data import DataLoader, TensorDataset
from ..engine import no_grad
from ..progress import progress
from ..tensor import Tensor
from . import functional as F
from .callbacks import History
from .loss import BCEWithLogitsLoss
from .utils import clip_grad_norm_

__all__ = ["fit", "evaluate", "predict"]


def _array(a):
    return a.data if isinstance(a, Tensor) else np.asarray(a)


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode and no_grad; every module's own mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


# ------------------------------------------------------------------ metrics

def _accuracy_counter(loss_fn):
    """Keras's ``'accuracy'``, chosen from the shapes: one output column (or none) is binary,
    thresholded at 0 after a logits loss (``BCEWithLogitsLoss``) and at 0.5 otherwise; several
    columns are classes, compared by argmax with integer targets or with one-hot targets."""
    logits = isinstance(loss_fn, BCEWithLogitsLoss) or loss_fn is F.binary_cross_entropy_with_logits
    threshold = 0.0 if logits else 0.5

    def count(pred, y):
        pred, y = _array(pred), _array(y)
        if pred.ndim and pred.shape[-1] > 1:
            if y.shape == pred.shape:
                hits = pred.argmax(-1) == y.argmax(-1)
            elif y.shape == pred.shape[:-1]:
                hits = pred.argmax(-1) == y
            else:
                raise ValueError(f"accuracy: predictions of shape {pred.shape} need integer targets of shape "
                                 f"{pred.shape[:-1]} or one-hot targets of shape {pred.shape}, got {y.shape}")
        else:
            if y.size != pred.size:
                raise ValueError(f"accuracy: predictions of shape {pred.shape} and targets of shape {y.shape} "
                                 f"differ in size")
            hits = (pred.reshape(y.shape) > threshold) == (y > 0.5)
        return float(hits.sum()), hits.size
    return count


def _metric_counters(metrics, loss_fn):
    """``{name: count(pred, y) -> (total, weight)}`` for ``'accuracy'`` and callables."""
    counters = {}
    for m in metrics or ():
        if m in ("accuracy", "acc"):
            name, count = m, _accuracy_counter(loss_fn)
        elif callable(m):
            name = getattr(m, "__name__", type(m).__name__)
            count = (lambda fn: lambda pred, y: (_scalar(fn(_array(pred), _array(y))) * len(_array(pred)),
                                                 len(_array(pred))))(m)
        else:
            raise ValueError(f"fit: metrics must be 'accuracy' or callables metric(y_pred, y_true), got {m!r}")
        if name in counters or name == "loss":
            raise ValueError(f"fit: two metrics named {name!r}")
        counters[name] = count
    return counters


def _scalar(value):
    return float(value.item() if hasattr(value, "item") else value)


class _Means:
    """Running weighted means of the loss and the metrics over an epoch's batches."""

    def __init__(self, counters):
        self.counters = counters
        self.sums = dict.fromkeys(["loss", *counters], 0.0)
        self.weights = dict.fromkeys(["loss", *counters], 0)

    def add(self, loss, pred, y):
        n = len(_array(y))
        self.sums["loss"] += loss * n
        self.weights["loss"] += n
        for name, count in self.counters.items():
            total, weight = count(pred, y)
            self.sums[name] += total
            self.weights[name] += weight

    def means(self, prefix=""):
        return {prefix + k: self.sums[k] / max(self.weights[k], 1) for k in self.sums}


# ------------------------------------------------------------------ data

def _loader(x, y, batch_size, shuffle):
    """A re-iterable source of ``(xb, yb)`` batches, and its length if known."""
    if y is not None:
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)
        return loader, len(loader)
    if callable(x):
        return _Replay(x), None
    if iter(x) is x:
        return x, None          # a one-shot iterator: usable for one epoch only (checked by fit)
    try:
        return x, len(x)
    except TypeError:
        return x, None


class _Replay:
    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


def _split(x, y, validation_split, validation_data):
    if not validation_split:
        return x, y, validation_data
    if not 0 < validation_split < 1:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    if validation_data is not None:
        raise ValueError("fit: pass validation_data or validation_split, not both")
    if y is None:
        raise ValueError("fit: validation_split needs arrays x and y (it holds out their last rows); "
                         "with batches, pass validation_data")
    x, y = _array(x), _array(y)
    at = int(len(x) * (1 - validation_split))      # Keras: the last rows, before any shuffling
    if at == 0:
        raise ValueError(f"fit: validation_split={validation_split} of {len(x)} rows leaves no training rows")
    return x[:at], y[:at], (x[at:], y[at:])


def _validation(validation_data, batch_size):
    if isinstance(validation_data, tuple) and len(validation_data) == 2:
        return DataLoader(TensorDataset(*validation_data), batch_size=batch_size)
    if isinstance(validation_data, tuple) or iter(validation_data) is validation_data:
        raise ValueError("fit: validation_data must be a pair (x_val, y_val) or a re-iterable of (xb, yb) batches "
                         "such as a DataLoader")
    return validation_data


# ------------------------------------------------------------------ the loops

def fit(model, loss_fn, optimizer, x, y=None, *, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        validation_data=None, validation_split: float = 0.0, metrics=None, callbacks=None,
        clip_norm: float | None = None, verbose: int = 1, progress_backend: str = "auto") -> History:
    """Train ``model`` for ``epochs`` epochs, as Keras's ``model.fit``, and return a :class:`History`.

    Parameters
    ----------
    model : Module
    loss_fn : callable
        ``loss_fn(model(xb), yb)`` returns a scalar Tensor, e.g. ``mg.nn.MSELoss()``.
    optimizer : Optimizer
    x, y : arrays or Tensors
        The training set (rows on axis 0), cut into batches of ``batch_size`` rows, reshuffled each
        epoch if ``shuffle`` (from :func:`minigrad.seed`'s generator). Or ``y=None`` and, as ``x``,
        a :class:`~minigrad.data.DataLoader` (or any re-iterable of ``(xb, yb)`` batches, or a
        callable returning a fresh iterator).
    validation_data : (x_val, y_val) or a DataLoader, optional
        Evaluated after each epoch in eval mode under ``no_grad``; logged as ``val_loss`` and
        ``val_<metric>``.
    validation_split : float
        Hold out this fraction of ``x, y`` (their last rows, before shuffling, as Keras) as
        validation data. Not with ``validation_data``.
    metrics : list of ``'accuracy'`` and callables
        Logged per epoch (training batches' values, weighted by batch size, as Keras reports
        them). ``'accuracy'`` is binary for one output column (threshold 0 after
        ``BCEWithLogitsLoss``, else 0.5) and argmax for several (integer or one-hot targets). A
        callable is called like ``loss_fn``, ``metric(y_pred, y_true)``, on numpy arrays, returns
        a number, and is logged under its ``__name__``.
    callbacks : list of Callback
        E.g. :class:`~minigrad.nn.EarlyStopping`, :class:`~minigrad.nn.ModelCheckpoint`.
    clip_norm : float, optional
        Clip the gradients' total norm (:func:`~minigrad.nn.utils.clip_grad_norm_`) before each step.
    verbose : 0, 1 or 2
        1: a progress bar per epoch on a terminal (tqdm if installed), ending in a line with the
        epoch's values; off a terminal (a log file) only that line. 2: only that line. 0: silent.

    Returns
    -------
    History
        ``history.history`` maps ``'loss'``, each metric and their ``val_`` versions to per-epoch lists.
    """
    _check_positive(epochs=epochs, batch_size=batch_size)
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    x, y, validation_data = _split(x, y, validation_split, validation_data)
    train, n_batches = _loader(x, y, batch_size, shuffle)
    if iter(train) is train and epochs > 1:
        raise ValueError("fit: x is a one-shot iterator, which cannot be replayed for several epochs; pass a "
                         "DataLoader, a list of batches, a callable returning a fresh iterator, or arrays x and y")
    val = None if validation_data is None else _validation(validation_data, batch_size)
    counters = _metric_counters(metrics, loss_fn)
    history, callbacks = History(), list(callbacks or ())
    for cb in callbacks:
        cb.set_model(model)
    model.stop_training = False
    for cb in callbacks:
        cb.on_train_begin()
    for epoch in range(epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        bar = _epoch_bar(verbose, n_batches, f"epoch {epoch + 1}/{epochs}", progress_backend)
        try:
            logs = _train_epoch(model, loss_fn, optimizer, train, counters, clip_norm, bar)
            if val is not None:
                logs.update(_evaluate_batches(model, loss_fn, val, counters, prefix="val_"))
            bar.set_postfix(logs, refresh=False)
        finally:
            bar.close()
        history._record(epoch, logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()
    return history


def _check_positive(where="fit", **values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {v!r}")


def _epoch_bar(verbose, total, desc, backend):
    """Verbose 1 on a terminal: a live bar. Otherwise (verbose 2, a log file) the plain bar's
    one final line per epoch, so a log gets one line per epoch, not one per redraw."""
    isatty = getattr(sys.stderr, "isatty", None)
    live = verbose == 1 and bool(isatty and isatty())
    return progress(total=total, desc=desc, disable=not verbose, backend=backend if live else "plain",
                    interval=1.0 if live else None)


def _train_epoch(model, loss_fn, optimizer, batches, counters, clip_norm, bar):
    model.train()
    means = _Means(counters)
    for xb, yb in batches:
        optimizer.zero_grad()
        out = model(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        if clip_norm is not None:
            clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        means.add(loss.item(), out, yb)
        bar.update(1)
        bar.set_postfix(means.means(), refresh=False)
    return means.means()


def _evaluate_batches(model, loss_fn, batches, counters, prefix=""):
    means = _Means(counters)
    with _eval_mode(model):
        for xb, yb in batches:
            out = model(xb)
            means.add(loss_fn(out, yb).item(), out, yb)
    return means.means(prefix)


def evaluate(model, loss_fn, x, y=None, batch_size: int = 256, metrics=None):
    """The mean loss over ``(x, y)`` (or over the batches of a DataLoader ``x``) in eval mode under
    ``no_grad`` (every module's mode is restored). With ``metrics`` (as for :func:`fit`), a dict
    ``{'loss': ..., 'accuracy': ..., ...}`` instead."""
    batches = DataLoader(TensorDataset(x, y), batch_size=batch_size) if y is not None else x
    logs = _evaluate_batches(model, loss_fn, batches, _metric_counters(metrics, loss_fn))
    return logs if metrics else logs["loss"]


def predict(model, x, batch_size: int = 32) -> np.ndarray:
    """``model(x)`` in batches of ``batch_size`` rows, in eval mode under ``no_grad`` (every module's
    mode is restored), concatenated into one ndarray (a tuple of them if the model returns a tuple)."""
    _check_positive("predict", batch_size=batch_size)
    x = _array(x)
    if x.dtype.hasobject or x.ndim == 0:
        raise TypeError(f"predict: x must be an array or Tensor with rows on axis 0, got {type(x).__name__} "
                        f"of dtype {x.dtype} and shape {x.shape}")
    outs = []
    with _eval_mode(model):
        for start in range(0, len(x), batch_size):
            out = model(Tensor(x[start:start + batch_size]))
            outs.append(tuple(_array(o) for o in out) if isinstance(out, tuple) else _array(out))
    if not outs:
        raise ValueError(f"predict: x has no rows (shape {x.shape})")
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return np.concatenate(outs)
