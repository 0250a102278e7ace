"""What ``fit`` returns and calls back, with Keras's names and meaning: ``History``, ``Callback``,
``EarlyStopping`` and ``ModelCheckpoint``.

After each epoch ``fit`` calls ``callback.on_epoch_end(epoch, logs)`` with the epoch's values
(``logs`` holds ``loss``, the metrics, and ``val_`` versions of both when there is validation
data); a callback stops training by setting ``self.model.stop_training = True``, as in Keras.
"""
from __future__ import annotations

import math

from ..io import save

__all__ = ["History", "Callback", "EarlyStopping", "ModelCheckpoint"]


class History:
    """What ``fit`` returns: ``history`` maps each logged name (``'loss'``, ``'accuracy'``,
    ``'val_loss'``, ...) to its per-epoch values; ``epoch`` lists the epochs run (from 0)."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def _record(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def plot(self, path) -> None:
        """Draw each quantity against the epoch, its ``val_`` curve beside it, one panel per
        quantity, and save the figure to ``path`` (the format follows its suffix: .png, .svg, .pdf).

        Raises
        ------
        ImportError
            if matplotlib is not installed (``pip install matplotlib``).
        """
        try:
            from matplotlib.figure import Figure  # no pyplot: no display or global state needed
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("History.plot draws with matplotlib, which is not installed: "
                              "pip install matplotlib") from None
        names = [k for k in self.history if not k.startswith("val_")] or list(self.history)
        if not names:
            raise ValueError("History.plot: nothing to plot (no epoch was recorded)")
        fig = Figure(figsize=(4.5 * len(names), 3.5))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            for key in (name, "val_" + name):
                if key in self.history:
                    values = self.history[key]
                    ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(name)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)

    def __repr__(self):
        return f"History({len(self.epoch)} epochs: {sorted(self.history)})"


class Callback:
    """Base class: override the hooks you need. ``self.model`` is set before training starts."""

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs=None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        pass

    def on_train_end(self, logs=None) -> None:
        pass


class _Monitor(Callback):
    """Watches one logged quantity; ``mode='auto'`` maximises accuracies and AUCs, else minimises."""

    def __init__(self, monitor, mode, min_delta=0.0):
        where = type(self).__name__
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{where}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if monitor.endswith(("acc", "accuracy", "auc")) else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))

    def _current(self, logs):
        if self.monitor not in (logs or {}):
            hint = " (pass validation_data or validation_split to fit)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not among the logged values "
                             f"{sorted(logs or {})}{hint}")
        return logs[self.monitor]

    def _improves(self, current, best):
        if self.mode == "min":
            return current - self.min_delta < best
        return current + self.min_delta > best

    def _worst(self):
        return math.inf if self.mode == "min" else -math.inf


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs in a row, as Keras's ``EarlyStopping``.

    Parameters
    ----------
    monitor : str
        A logged name: ``'val_loss'`` (the default), ``'loss'``, ``'val_accuracy'``, ...
    patience : int
        Epochs without improvement to wait before stopping.
    restore_best_weights : bool
        At the end of training (stopped early or not, as in Keras 3), load the weights of the
        best epoch back into the model.
    mode : ``'auto'`` | ``'min'`` | ``'max'``
        ``'auto'``: maximise names ending in ``acc``, ``accuracy`` or ``auc``, minimise the rest.
    baseline : float, optional
        Training also stops if the value does not beat this within ``patience`` epochs.
    start_from_epoch : int
        Epochs to train before watching.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 baseline: float | None = None, restore_best_weights: bool = False, start_from_epoch: int = 0,
                 verbose: int = 0):
        super().__init__(monitor, mode, min_delta)
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, got {patience!r}")
        self.patience, self.baseline = patience, baseline
        self.restore_best_weights, self.start_from_epoch = bool(restore_best_weights), start_from_epoch
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best, self.best_weights = self._worst(), None

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.state_dict()      # a copy
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}")
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model's weights with :func:`minigrad.save` after each epoch, as Keras's
    ``ModelCheckpoint`` (weights only: load them with ``model.load_state_dict(mg.load(path))``).

    Parameters
    ----------
    filepath : str or os.PathLike
        May hold ``str.format`` fields filled from the epoch (from 1) and the logs, e.g.
        ``'ckpt-{epoch:02d}-{val_loss:.3f}.npz'``; used as given otherwise (no suffix added).
    monitor : str
        The logged name that decides what "best" is (with ``save_best_only``).
    save_best_only : bool
        Save only when ``monitor`` improves on the best so far (the first epoch always does).
    mode : ``'auto'`` | ``'min'`` | ``'max'``
        As for :class:`EarlyStopping`.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0, save_best_only: bool = False,
                 mode: str = "auto"):
        super().__init__(monitor, mode)
        self.filepath, self.verbose, self.save_best_only = filepath, verbose, bool(save_best_only)
        self.best = self._worst()

    def on_train_begin(self, logs=None):
        self.best = self._worst()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = str(self.filepath)
        if "{" in path:
            try:
                path = path.format(epoch=epoch + 1, **logs)
            except (KeyError, IndexError) as err:
                raise ValueError(f"ModelCheckpoint: the path {path!r} names {err}, which is not 'epoch' or a "
                                 f"logged value {sorted(logs)}") from None
        if self.save_best_only:
            current = self._current(logs)
            if not self._improves(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5g} to {current:.5g}, "
                      f"saving the model to {path}")
            self.best = current
        save(self.model, path)
