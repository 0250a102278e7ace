"""Checkpoints as plain ``.npz`` archives: written atomically, read without ever unpickling.

``save`` writes to a temporary file in the target's directory, flushes and fsyncs it, then
``os.replace``-s it over the target: a crash at any point leaves either the old file or the
complete new one, never a truncated one. ``load`` reads with ``allow_pickle=False`` (a checkpoint
cannot run code) and turns every way a file can be bad into one :class:`CheckpointError`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError", "flatten_state", "unflatten_state"]

SEP = "/"     # joins nested keys; Module state names use "." and never contain it


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not match the model it is loaded into."""


def flatten_state(state: Mapping) -> dict:
    """A nested state (dicts, and lists of dicts, e.g. an optimizer's ``state_dict()``) as one flat
    dict whose keys join the path with ``'/'``: ``{'state': {0: {'step': 3}}}`` becomes
    ``{'state/0/step': 3}``, ``{'param_groups': [{'lr': 0.1}]}`` becomes ``{'param_groups/0/lr': 0.1}``.
    Leaves (arrays, Tensors, numbers, tuples of numbers) are kept as they are; empty dicts vanish.

    Raises
    ------
    TypeError
        if a nested key is not a string or an int; ValueError if it contains ``'/'`` (ambiguous).
    """
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(key, bool) or not isinstance(key, (str, int) if prefix else str):
                raise TypeError(f"flatten_state: keys must be strings (nested ones may be ints), got {key!r}"
                                + (f" under '{prefix.rstrip(SEP)}'" if prefix else ""))
            key = str(key)
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
                value = dict(enumerate(value))
            if SEP in key and (prefix or isinstance(value, Mapping)):
                raise ValueError(f"flatten_state: the key {key!r} contains {SEP!r}, which joins nested keys")
            if isinstance(value, Mapping):
                walk(value, prefix + key + SEP)
            else:
                flat[prefix + key] = value

    walk(state, "")
    return flat


def unflatten_state(flat: Mapping) -> dict:
    """Undo :func:`flatten_state`: split every key on ``'/'`` into nested dicts (list positions
    come back as the string keys ``'0'``, ``'1'``, ...). ``unflatten_state(mg.load(path))`` gives
    back a checkpoint saved as ``mg.save({'model': ..., 'optimizer': ...}, path)``."""
    nested = {}
    for key, value in flat.items():
        *path, leaf = str(key).split(SEP)
        node = nested
        for i, part in enumerate(path):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"unflatten_state: '{SEP.join(path[:i + 1])}' is both a value and a prefix")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"unflatten_state: '{key}' is both a value and a prefix")
        node[leaf] = value
    return nested


def _to_arrays(obj) -> dict:
    if callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"save: expected a Module or a dict of name -> array, got {type(obj).__name__}")
    arrays = {}
    for name, value in flatten_state(obj).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save: names must be non-empty strings, got {name!r}")
        arr = np.asarray(value.data if isinstance(value, Tensor) else value)
        if arr.dtype.hasobject:
            raise TypeError(f"save: '{name}' is an object array ({type(value).__name__}); only numeric and "
                            f"string arrays can be stored without pickle")
        arrays[name] = arr
    return arrays


def save(obj, path) -> None:
    """Write a Module's or an Optimizer's ``state_dict()`` (or a dict of name -> ndarray/Tensor) to
    ``path`` as an uncompressed ``.npz`` archive, atomically. ``path`` is used as given (no suffix
    is added). Nested dicts (an optimizer's state, or ``{'model': ..., 'optimizer': ...}``) are
    stored under keys joined with ``'/'`` (:func:`flatten_state`); numbers become 0-d arrays.

    Parameters
    ----------
    obj : Module, Optimizer or Mapping[str, ndarray | Tensor | number | nested Mapping]
    path : str or os.PathLike
    """
    arrays = _to_arrays(obj)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # What np.savez does, but with allow_pickle=False and names that may be any string.
            with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, arr in arrays.items():
                    with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory):
    """Make the rename itself durable (POSIX); harmless to skip where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load(path) -> dict:
    """Read a checkpoint written by :func:`save` (or any ``.npz`` of plain arrays).

    Returns
    -------
    dict of name -> ndarray, in the archive's order.

    Raises
    ------
    CheckpointError
        naming the file, if it is missing, not an ``.npz`` archive, truncated or corrupt (bad CRC),
        or holds object arrays (which only pickle could restore).
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise CheckpointError(f"load: checkpoint file not found: '{path}'") from err
    except Exception as err:
        raise CheckpointError(f"load: '{path}' is not a readable .npz checkpoint: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"load: '{path}' holds a single array, not an .npz archive of named arrays")
    try:
        with archive:
            return {name: archive[name] for name in archive.files}
    except Exception as err:
        raise CheckpointError(f"load: '{path}' is truncated or corrupt, or holds object arrays "
                              f"(refused: loading them would need pickle): {err}") from err
