"""Checkpoints as plain ``.npz`` archives: written atomically, read without ever unpickling.

``save`` writes to a temporary file beside the target (through a symbolic link, beside the file
it points to), flushes and fsyncs it, then ``os.replace``-s it over the target: a crash at any
point leaves either the old file or the complete new one, never a truncated one, and the next
save of that target removes the temporary file a killed one left. The file gets the mode
``open()`` would give it (the umask applies), or keeps the mode of the file it replaces.

``load`` parses every member's header first and refuses, before allocating anything, an archive
whose arrays would take more memory than ``max_bytes``; it never unpickles, and turns every way a
file can be bad (text, a PyTorch file, a member that is no ``.npy`` array, truncation, a bad CRC)
into one :class:`CheckpointError` that says what the file is.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
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
    is added); a symbolic link is written through, to the file it points to. Nested dicts (an
    optimizer's state, or ``{'model': ..., 'optimizer': ...}``) are stored under keys joined with
    ``'/'`` (:func:`flatten_state`); numbers become 0-d arrays.

    Parameters
    ----------
    obj : Module, Optimizer or Mapping[str, ndarray | Tensor | number | nested Mapping]
    path : str or os.PathLike
    """
    arrays = _to_arrays(obj)

    def write(f):
        # What np.savez does, but with allow_pickle=False and names that may be any string.
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)

    atomic_write(path, write)


def _temp_names(target):
    """The pattern of ``target``'s temporary files: ``.NAME.<8 random characters>.tmp``, as this
    module and the mkstemp of earlier versions named them (another target's, ``.NAME.b.<...>.tmp``,
    never matches)."""
    return re.compile(r"\." + re.escape(os.path.basename(target)) + r"\.[0-9a-z_]{8}\.tmp")


def atomic_write(path, write) -> str:
    """Write a file atomically: ``write(f)`` fills a temporary file beside the target, which is
    fsynced and renamed over it. A symbolic link is written through (its target is replaced, the
    link stays); the temporary files an earlier, killed write to the same target left are removed
    first. The new file gets the mode of the file it replaces, or ``0o666`` less the umask, as
    ``open()`` would give. Returns the path written (the link's target for a link)."""
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    pattern = _temp_names(target)
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if pattern.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None                          # os.open's 0o666 below, less the umask
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return target


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


MIN_BYTES = 64 << 20         # the default bound on what load allocates: max(MIN_BYTES, 100 * file size)


def load(path, max_bytes: int | None = None) -> dict:
    """Read a checkpoint written by :func:`save` (or any ``.npz`` of plain arrays).

    Every member's header is read and checked first; nothing is allocated for an archive whose
    arrays would need more than ``max_bytes`` in all (a small deflated file can declare gigabytes).

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        The most memory the arrays may take; by default max(64 MiB, 100 times the file's size).

    Returns
    -------
    dict of name -> ndarray, in the archive's order.

    Raises
    ------
    CheckpointError
        naming the file and saying what it is, if it is missing, not an ``.npz`` archive (a text
        file, a single ``.npy`` array, a PyTorch file), holds a member that is no ``.npy`` array,
        holds object arrays (which only pickle could restore), declares more than ``max_bytes``,
        or is truncated or corrupt (a bad CRC).
    """
    with _Archive(path, max_bytes) as archive:
        return archive.read()


class _Header:
    """What an archive member declares: its shape and dtype (enough to check it against a model)."""

    __slots__ = ("shape", "dtype", "fortran", "offset", "member")

    def __init__(self, shape, dtype, fortran, offset, member):
        self.shape, self.dtype, self.fortran, self.offset, self.member = shape, dtype, fortran, offset, member

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


_PICKLE_HINT = "minigrad never unpickles (a pickle can run code)"


def _what_it_is(start):
    """Describe a file that is not a zip archive from its first bytes."""
    if not start:
        return "is empty (a save that never finished writes to a temporary file, never to the target)"
    if start.startswith(b"\x93NUMPY"):
        return "holds a single array, not an .npz archive of named arrays (np.save writes those; use mg.save)"
    if start[:1] == b"\x80":
        return f"is a pickle file (torch.save's legacy format, or pickle.dump); {_PICKLE_HINT}"
    try:
        start.decode("utf-8")
        return "is a text file, not an .npz checkpoint (mg.save writes those)"
    except UnicodeDecodeError:
        return f"is not an .npz checkpoint (it starts with the bytes {start[:8]!r})"


class _Archive:
    """An ``.npz`` file opened for reading: ``headers`` (name -> _Header), checked against the
    archive and the memory bound when opened; ``read(names)`` reads the values."""

    def __init__(self, path, max_bytes=None):
        self.path = path = os.fspath(path)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                start = f.read(64)
        except FileNotFoundError as err:
            raise CheckpointError(f"load: checkpoint file not found: '{path}'") from err
        except OSError as err:
            raise CheckpointError(f"load: cannot read '{path}': {err}") from err
        if max_bytes is None:
            max_bytes = max(MIN_BYTES, 100 * size)
        elif isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"load: max_bytes must be a non-negative integer, got {max_bytes!r}")
        if not start.startswith(b"PK"):
            raise CheckpointError(f"load: '{path}' {_what_it_is(start)}")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise CheckpointError(f"load: '{path}' is not a readable .npz archive (truncated or corrupt?): "
                                  f"{err}") from err
        try:
            self.headers = self._parse(size, max_bytes)
        except BaseException:
            self.zip.close()
            raise

    def _parse(self, size, max_bytes):
        path, infos = self.path, self.zip.infolist()
        names = [i.filename for i in infos]
        if any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"load: '{path}' is a PyTorch checkpoint (torch.save); {_PICKLE_HINT}. Load it "
                                  f"with torch.load and convert its weights with minigrad.interop")
        headers, total = {}, 0
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise CheckpointError(f"load: '{path}' holds the member '{info.filename}', which is not a .npy "
                                      f"array: not a checkpoint mg.save wrote")
            name = info.filename[:-4]
            if name in headers:
                raise CheckpointError(f"load: '{path}' holds the member '{info.filename}' twice")
            headers[name] = h = self._header(info)
            if h.offset + h.nbytes > info.file_size:
                raise CheckpointError(f"load: '{path}' is truncated or corrupt: '{name}' declares shape {h.shape} "
                                      f"{h.dtype} ({h.nbytes} bytes), more than its member holds")
            total += h.nbytes
        if total > max_bytes:
            raise CheckpointError(f"load: '{path}' ({size} bytes) declares arrays of {total} bytes in all, more "
                                  f"than max_bytes={max_bytes} (by default max(64 MiB, 100 times the file's "
                                  f"size)); if you trust the file, pass mg.load(path, max_bytes=...) to allow it")
        return headers

    def _header(self, info):
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read[version](f, max_header_size=1 << 16)
                offset = f.tell()
        except Exception as err:
            raise CheckpointError(f"load: '{self.path}': the member '{info.filename}' is not a readable .npy "
                                  f"array: {err}") from err
        if dtype.hasobject:
            raise CheckpointError(f"load: '{self.path}' holds object arrays ('{info.filename[:-4]}'); refused: "
                                  f"loading them would need pickle")
        return _Header(shape, dtype, fortran, offset, info)

    def read(self, names=None) -> dict:
        out = {}
        for name in self.headers if names is None else names:
            h = self.headers[name]
            try:
                with self.zip.open(h.member) as f:
                    f.seek(h.offset)
                    arr = np.empty(h.shape, h.dtype, order="F" if h.fortran else "C")
                    view = memoryview(arr.reshape(-1, order="A").view(np.uint8))
                    got = 0
                    while got < h.nbytes:       # in blocks: a member's stream may hand over less per call
                        n = f.readinto(view[got:got + (1 << 22)])
                        if not n:
                            raise ValueError(f"the data ends after {got} of {h.nbytes} bytes")
                        got += n
                    if f.read(1):             # reading to the end also makes zipfile check the CRC
                        raise ValueError("there are bytes after the array's data")
            except CheckpointError:
                raise
            except Exception as err:
                raise CheckpointError(f"load: '{self.path}' is truncated or corrupt ('{name}'): {err}") from err
            out[name] = arr
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()
