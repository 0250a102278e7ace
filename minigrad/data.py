"""Feeding data to a model: ``TensorDataset`` and ``DataLoader`` (PyTorch's names and meaning), and
``pad_sequences`` (Keras's) for variable-length sequences.

A ``DataLoader`` yields minibatches as :class:`~minigrad.Tensor` objects that do not require grad,
as PyTorch's yields tensors: a tuple ``(xb, yb, ...)`` per batch from a ``TensorDataset(x, y, ...)``,
a single Tensor from a plain array. Batches are gathered with one fancy index per array (copies),
not row by row.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .random import get_rng
from .tensor import Tensor

__all__ = ["TensorDataset", "DataLoader", "pad_sequences"]


def _array(a, where):
    arr = np.asarray(a.data if isinstance(a, Tensor) else a)
    if arr.dtype.hasobject:
        raise TypeError(f"{where}: arrays must be numeric, got dtype object (ragged rows? see pad_sequences)")
    if arr.ndim == 0:
        raise ValueError(f"{where}: arrays need a first axis of rows, got a scalar")
    return arr


class TensorDataset:
    """Rows of several arrays (or Tensors) of the same length: ``dataset[i]`` is the tuple
    ``(x[i], y[i], ...)``, ``len(dataset)`` the number of rows.

    Raises
    ------
    ValueError
        if there are no arrays or their first axes differ (the lengths are named).
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset: needs at least one array")
        self.arrays = tuple(_array(a, "TensorDataset") for a in arrays)
        lengths = [len(a) for a in self.arrays]
        if len(set(lengths)) > 1:
            shapes = ", ".join(str(a.shape) for a in self.arrays)
            raise ValueError(f"TensorDataset: the arrays must have the same number of rows, got shapes {shapes}")

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def __repr__(self):
        return f"TensorDataset({', '.join(str(a.shape) for a in self.arrays)})"


class DataLoader:
    """Minibatches of ``batch_size`` rows from ``dataset``, in order or reshuffled every epoch.

    Parameters
    ----------
    dataset : TensorDataset, array, Tensor, or any object with ``__len__`` and ``__getitem__``
        A ``TensorDataset`` yields tuples of Tensors, one per array; an array or Tensor yields one
        Tensor per batch; another dataset's items (e.g. a list of ``(x, y)`` pairs) are stacked
        field by field, as PyTorch's default collation: tuples of Tensors for tuple items.
    batch_size : int
        Rows per batch (>= 1); the last batch is smaller unless ``drop_last``.
    shuffle : bool
        A new random order each time the loader is iterated (each epoch).
    drop_last : bool
        Skip the last batch if it is smaller than ``batch_size``.
    seed : int, optional
        The orders come from ``np.random.default_rng(seed)``, made once: a loader with the same
        seed gives the same sequence of epochs. By default they come from minigrad's shared
        generator (:func:`minigrad.seed`).

    ``len(loader)`` is the number of batches per epoch.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"DataLoader: seed must be an int or None, got {type(seed).__name__}")
        if isinstance(dataset, (np.ndarray, Tensor)):
            self._single = True
            dataset = TensorDataset(dataset)
        else:
            self._single = False
            if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
                raise TypeError(f"DataLoader: the dataset must have __len__ and __getitem__ (e.g. a TensorDataset), "
                                f"got {type(dataset).__name__}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = (self._rng or get_rng()).permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self._batch(order[start:start + self.batch_size])

    def _batch(self, idx):
        if isinstance(self.dataset, TensorDataset):
            fields = [a[idx] for a in self.dataset.arrays]
        else:
            items = [self.dataset[int(i)] for i in idx]
            if not isinstance(items[0], tuple):
                return Tensor(_stack(items))
            fields = [_stack(field) for field in zip(*items)]
        batch = tuple(Tensor(f) for f in fields)
        return batch[0] if self._single else batch

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")


def _stack(items):
    arr = np.stack([np.asarray(x.data if isinstance(x, Tensor) else x) for x in items])
    if arr.dtype.hasobject:
        raise TypeError("DataLoader: the dataset's items must be numeric arrays or numbers, got objects")
    return arr


def pad_sequences(sequences, maxlen: int | None = None, dtype=None, padding: str = "pre",
                  truncating: str = "pre", value: float = 0.0):
    """Pad (and cut) sequences of different lengths to one array, with Keras's meaning, and
    return the mask the recurrent layers take.

    Parameters
    ----------
    sequences : list of sequences
        Each a list or array of shape ``(length, *features)``; the feature shapes must agree.
    maxlen : int, optional
        The padded length; by default the longest sequence's.
    dtype : numpy dtype, optional
        By default the sequences' common dtype (token ids stay integers, features stay floats).
        Keras defaults to int32 and silently truncates float features to it; here a dtype that
        cannot hold the data (floats into ints) or the padding ``value`` is a ValueError.
    padding : ``'pre'`` | ``'post'``
        Pad before (Keras's default) or after each sequence.
    truncating : ``'pre'`` | ``'post'``
        Cut sequences longer than ``maxlen`` at the start (keep the end; Keras's default) or at the end.
    value : number
        The padding value.

    Returns
    -------
    padded : ndarray of shape ``(len(sequences), maxlen, *features)``
    mask : bool ndarray of shape ``(len(sequences), maxlen)``
        True at real steps, False at padding: pass it as ``mask=`` to ``LSTM``, ``GRU`` or ``RNN``.
    """
    for name, v in (("padding", padding), ("truncating", truncating)):
        if v not in ("pre", "post"):
            raise ValueError(f"pad_sequences: {name} must be 'pre' or 'post', got {v!r}")
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, numbers.Integral) or maxlen < 0):
        raise ValueError(f"pad_sequences: maxlen must be a non-negative integer or None, got {maxlen!r}")
    seqs = [_sequence(s, i) for i, s in enumerate(sequences)]
    features = {s.shape[1:] for s in seqs if len(s)}
    if len(features) > 1:
        raise ValueError(f"pad_sequences: every step must have the same shape, got step shapes {sorted(features)}")
    feature_shape = features.pop() if features else ()
    maxlen = max((len(s) for s in seqs), default=0) if maxlen is None else int(maxlen)
    dtype = _pad_dtype(seqs, dtype, value)
    padded = np.full((len(seqs), maxlen) + feature_shape, value, dtype=dtype)
    mask = np.zeros((len(seqs), maxlen), dtype=bool)
    for i, s in enumerate(seqs):
        kept = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        if maxlen == 0 or not len(kept):
            continue
        where = slice(maxlen - len(kept), maxlen) if padding == "pre" else slice(0, len(kept))
        padded[i, where] = kept
        mask[i, where] = True
    return padded, mask


def _sequence(s, i):
    arr = np.asarray(s.data if isinstance(s, Tensor) else s)
    if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
        raise TypeError(f"pad_sequences: sequence {i} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"pad_sequences: sequence {i} is a scalar, not a sequence")
    return arr


def _pad_dtype(seqs, dtype, value):
    dtypes = [s.dtype for s in seqs if s.size] or [s.dtype for s in seqs] or [np.float64]
    data_dtype = np.result_type(*dtypes)        # an empty list is float64 to numpy: it does not count
    target = data_dtype if dtype is None else np.dtype(dtype)
    if not np.can_cast(data_dtype, target, casting="same_kind"):
        raise ValueError(f"pad_sequences: the sequences' dtype {data_dtype} does not fit dtype {target} "
                         f"(values would be truncated); pass a dtype like {data_dtype}")
    if target.kind in "biu":
        bounds = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
        if not (float(value).is_integer() and bounds[0] <= value <= bounds[1]):
            raise ValueError(f"pad_sequences: the padding value {value!r} is not representable in dtype {target}")
    return target
