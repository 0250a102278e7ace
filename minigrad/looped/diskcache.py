"""The compiled backend's disk cache: generated loops stored by a hash of their text.

numba's own cache keys a function by its file and line, which generated code does not have. So
each generated module is written once to ``<cache dir>/numba/loop_<hash>.py``, the hash taken
over its text and everything its compiled form depends on (numba's, numpy's and Python's
versions, the kernels it calls); numba then caches the machine code beside it (``cache=True``).
A second process finds the file and loads the machine code instead of compiling; a changed
program is another text, so another file: a stale entry is never loaded.

The cache directory is ``$MINIGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/minigrad``, else
``~/.cache/minigrad``. When it cannot be written the loops are compiled in memory, with a
one-line warning. A compile that takes over a second says so on stderr.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ..io import atomic_write

__all__ = ["cache_dir", "load", "stats"]

_warned = set()
_lock = threading.Lock()
stats = {"compiled": 0, "loaded": 0}     # functions compiled afresh / loaded from disk, this process
NOTICE_AFTER = 1.0                          # seconds before a compile says what it is doing
# numba's options for the loops: IEEE results (inf, NaN) where Python's would raise, as numpy gives them
OPTIONS = {"nogil": True, "error_model": "numpy"}


def cache_dir() -> Path:
    """Where compiled loops are kept (see the module's docstring)."""
    root = os.environ.get("MINIGRAD_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "minigrad" if xdg else Path.home() / ".cache" / "minigrad"


def _fingerprint(source):
    import numba
    kernels = Path(__file__).with_name("kernels.py").read_bytes()
    h = hashlib.sha256()
    for part in (source.encode(), kernels, repr(sorted(OPTIONS.items())).encode(), numba.__version__.encode(),
                 np.__version__.encode(), sys.version.encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def _write(path, source):
    """Write ``source`` to ``path`` unless it is there already (atomically: never half a file)."""
    if path.exists() and path.read_text() == source:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(source.encode()))


def _module(source, name):
    """The generated module: from its file in the cache (numba may cache beside it), else in memory."""
    path = cache_dir() / "numba" / f"{name}.py"
    try:
        _write(path, source)
        probe = path.parent / "__pycache__"
        probe.mkdir(exist_ok=True)
        if not os.access(probe, os.W_OK):
            raise PermissionError(f"{probe} is not writable")
        spec = importlib.util.spec_from_file_location(f"minigrad._loops.{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module       # numba's cached code finds its globals by module name
        return module, True
    except OSError as err:
        key = str(cache_dir())
        with _lock:
            first = key not in _warned
            _warned.add(key)
        if first:
            warnings.warn(f"minigrad: cannot write the compiled-loop cache in {cache_dir()} ({err}); compiling "
                          "in memory (set MINIGRAD_CACHE_DIR to a writable directory to keep compiled loops)",
                          RuntimeWarning, stacklevel=4)
        module = type(sys)(f"minigrad_loop_{name}")
        exec(compile(source, f"<minigrad loop {name}>", "exec"), module.__dict__)
        return module, False


def load(source, signatures):
    """The generated ``forward`` and ``backward`` of ``source``, compiled for ``signatures``:
    machine code from the disk cache when it is there, else compiled (and stored)."""
    from numba import njit
    name = "loop_" + _fingerprint(source)
    module, on_disk = _module(source, name)
    where = f"cached in {cache_dir()}" if on_disk else "not cached: the cache directory is not writable"
    timer = threading.Timer(NOTICE_AFTER, lambda: print(
        f"minigrad: compiling a looped program with numba (once per program; {where})...",
        file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    start = time.perf_counter()
    out, loaded = [], 0
    try:
        for fname, sig in zip(("forward", "backward"), signatures):
            fn = njit(sig, cache=on_disk, **OPTIONS)(getattr(module, fname))
            loaded += bool(on_disk and sum(fn.stats.cache_hits.values()))
            out.append(fn)
    finally:
        timer.cancel()
    with _lock:
        stats["loaded"] += loaded
        stats["compiled"] += len(out) - loaded
    seconds = time.perf_counter() - start
    if seconds > NOTICE_AFTER:
        print(f"minigrad: {'loaded' if loaded == len(out) else 'compiled'} in {seconds:.1f} s", file=sys.stderr,
              flush=True)
    return tuple(out)
