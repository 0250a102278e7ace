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

__all__ = ["save", "load", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not match the model it is loaded into."""


def _to_arrays(obj) -> dict:
    if callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"save: expected a Module or a dict of name -> array, got {type(obj).__name__}")
    arrays = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save: names must be non-empty strings, got {name!r}")
        arr = np.asarray(value.data if isinstance(value, Tensor) else value)
        if arr.dtype.hasobject:
            raise TypeError(f"save: '{name}' is an object array ({type(value).__name__}); only numeric and "
                            f"string arrays can be stored without pickle")
        arrays[name] = arr
    return arrays


def save(obj, path) -> None:
    """Write a Module's ``state_dict()`` (or a dict of name -> ndarray/Tensor) to ``path`` as an
    uncompressed ``.npz`` archive, atomically. ``path`` is used as given (no suffix is added).

    Parameters
    ----------
    obj : Module or Mapping[str, ndarray | Tensor]
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
