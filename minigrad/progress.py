"""Progress bars: tqdm when it is installed, a plain text fallback otherwise.

``progress(iterable, total=None, desc=None)`` returns an object you iterate (or ``update(n)``
by hand) with ``set_postfix(**values)`` and ``close()``, and that works as a context manager:
the subset of tqdm's interface that minigrad's training loop, benchmarks and examples use.
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["progress", "PlainProgress", "have_tqdm"]


def have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def progress(iterable=None, total=None, desc=None, disable=False, file=None, backend="auto", interval=1.0):
    """A progress bar over ``iterable`` (``total`` defaults to its ``len``).

    Parameters
    ----------
    backend : ``'auto'`` | ``'tqdm'`` | ``'plain'``
        ``'auto'`` uses tqdm if it is importable, the output is a terminal, and
        ``MINIGRAD_PLAIN_PROGRESS`` is not set; off a terminal (a log file, CI) it uses the plain
        bar, which writes whole lines instead of redrawing one.
    disable : bool
        Show nothing (iteration still works).
    interval : float or None
        The plain bar's seconds between lines off a terminal (and between redraws on one); None:
        only the final line, when the bar closes.
    """
    if backend not in ("auto", "tqdm", "plain"):
        raise ValueError(f"progress: backend must be 'auto', 'tqdm' or 'plain', got {backend!r}")
    use_tqdm = backend == "tqdm" or (backend == "auto" and not os.environ.get("MINIGRAD_PLAIN_PROGRESS")
                                     and _isatty(sys.stderr if file is None else file) and have_tqdm())
    if use_tqdm:
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, disable=disable, file=file)
    return PlainProgress(iterable, total=total, desc=desc, disable=disable, file=file, interval=interval)


def _isatty(out) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress:
    """The fallback bar: ``desc: 40/100 [40%] 1.2s, loss=0.31``. On a terminal it redraws one
    line; elsewhere (logs, CI) it prints a line at most every ``interval`` seconds, plus the last
    when it closes. With ``interval=None``, only that last line."""

    def __init__(self, iterable=None, total=None, desc=None, disable=False, file=None, interval=1.0, width=20):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable, self.total, self.desc = iterable, total, desc
        self.disable, self.file = disable, file
        self.interval, self.width = interval, width
        self.n = 0
        self.postfix = {}
        self._start = time.perf_counter()
        self._last = -float("inf")
        self._closed = False

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def _tty(self):
        return _isatty(self._out())

    def format(self) -> str:
        elapsed = time.perf_counter() - self._start
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            frac = min(self.n / self.total, 1.0)
            filled = int(frac * self.width)
            parts.append(f"{'#' * filled}{'.' * (self.width - filled)} {self.n}/{self.total} [{frac:4.0%}]")
        else:
            parts.append(f"{self.n} it")
        parts.append(f" {elapsed:.1f}s")
        if self.postfix:
            parts.append(", " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items()))
        return "".join(parts)

    def _draw(self, final=False):
        if self.disable:
            return
        now = time.perf_counter()
        if not final and (self.interval is None or now - self._last < self.interval):
            return
        self._last = now
        out = self._out()
        if self._tty():
            out.write("\r" + self.format() + ("\n" if final else ""))
        else:
            out.write(self.format() + "\n")
        out.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def set_postfix(self, ordered_dict=None, refresh=True, **values) -> None:
        self.postfix = {**(ordered_dict or {}), **values}
        if refresh:
            self._draw()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._draw(final=True)

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress: nothing to iterate (created without an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.total


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
