"""Choosing and caching a backend for a program.

``get(prog, backend)`` returns an object with ``start(prog, reads, xs, T, need) -> Run`` and the
segment methods ``forward`` and ``backward`` (see ``interpret.py``). Compiled backends are
cached by the program's structure (``Program.key``), never by its values, under a lock: a
compiled program is immutable, so threads share it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from . import jit
from .codegen import compile_numpy
from .interpret import Interpreter
from .passes import optimize

__all__ = ["get", "clear_cache"]

_CACHE_SIZE = 64
_cache = OrderedDict()         # Program.key() -> compiled backend
_templates = OrderedDict()     # (a trace's key, interpreting?) -> (the program after its passes, its backend)
_lock = threading.Lock()


def lookup(traced, backend="auto"):
    """The program (after its passes) and the backend that runs it, for a call just traced:
    compiled once per structure (``traced.key``), the template rebound to this call's values."""
    key = (traced.key, backend)
    with _lock:
        entry = _templates.get(key)
    if entry is not None and entry[1].fresh():
        return entry[0].rebind(traced.program), entry[1]
    prog = optimize(traced.marked())
    runner = get(prog, backend)
    with _lock:
        _templates[key] = (prog, runner)
        if len(_templates) > _CACHE_SIZE:
            _templates.popitem(last=False)
    return prog, runner


def get(prog, backend="auto"):
    """The backend for ``prog`` (compiled backends cached by its structure and backend)."""
    if backend == "interpret":
        return Interpreter(prog)
    if backend == "auto":
        backend = "numba" if _jit_pays(prog) else "numpy"
    if backend == "numba" and jit.available() is None:
        raise ImportError('scan: backend="numba" needs numba, which is not installed: pip install "minigrad[fast]"')
    if backend not in ("numpy", "numba"):
        raise ValueError(f"scan: unknown backend {backend!r}")
    key = (prog.key(), backend)
    with _lock:
        runner = _cache.get(key)
        if runner is not None:
            _cache.move_to_end(key)
    if runner is not None and runner.fresh():
        return runner
    make = compile_numpy if backend == "numpy" else jit.compile_jit
    runner = make(prog)                   # outside the lock: compiles of distinct programs run at once
    with _lock:
        old = _cache.get(key)
        if old is None or not old.fresh():
            _cache[key] = old = runner
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return old


# The numba backend's loops beat numpy's per-op calls while a step's arrays are small; once its
# products are large enough for OpenBLAS to start threads (on every call, from inside the loop)
# numpy wins, and a long program compiles for minutes (measured: the repository's benchmark
# notes, seventh and eighth sessions, have the crossover and compile times).
JIT_MAX_ELEMENTS = 4096
JIT_MAX_EQNS = 48


def _jit_pays(prog):
    """``auto``'s rule: numba when it is installed, the loop has at most ``JIT_MAX_EQNS``
    equations and its widest value at most ``JIT_MAX_ELEMENTS`` elements per step."""
    if jit.available() is None:
        return False
    loop = [e for e in prog.eqns if e.stage != "once"]
    return len(loop) <= JIT_MAX_EQNS and max((int(np.prod(e.out.shape)) for e in loop), default=0) <= JIT_MAX_ELEMENTS


def clear_cache():
    with _lock:
        _cache.clear()
        _templates.clear()
