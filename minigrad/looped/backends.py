"""Choosing and caching a backend for a program.

``get(prog, backend)`` returns an object with ``start(prog, reads, xs, T, need) -> Run`` and the
segment methods ``forward`` and ``backward`` (see ``interpret.py``). Compiled backends are
cached by the program's structure (``Program.key``), never by its values, under a lock: a
compiled program is immutable, so threads share it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

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
    key = (traced.key, backend == "interpret")
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
    """The backend for ``prog`` (compiled backends cached by its structure)."""
    if backend == "interpret":
        return Interpreter(prog)
    if backend in ("numpy", "auto"):
        key = prog.key()
        with _lock:
            runner = _cache.get(key)
            if runner is not None:
                _cache.move_to_end(key)
        if runner is not None and runner.fresh():
            return runner
        runner = compile_numpy(prog)          # outside the lock: compiles of distinct programs run at once
        with _lock:
            old = _cache.get(key)
            if old is None or not old.fresh():
                _cache[key] = old = runner
            if len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return old
    raise ValueError(f"scan: unknown backend {backend!r}")


def clear_cache():
    with _lock:
        _cache.clear()
        _templates.clear()
