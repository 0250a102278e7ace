"""One seedable random generator shared by minigrad: initialisers, Dropout, ``mg.randn``/``mg.rand``.

``mg.seed(n)`` (or ``mg.manual_seed(n)``, PyTorch's name) makes every later draw reproducible;
``get_rng()`` returns the generator in use,
so code that wants its own stream can still pass ``rng=`` where a function offers it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["seed", "manual_seed", "get_rng"]

_rng = np.random.default_rng()


def seed(n: int | None) -> np.random.Generator:
    """Replace the shared generator with ``np.random.default_rng(n)`` and return it."""
    global _rng
    _rng = np.random.default_rng(n)
    return _rng


def manual_seed(n: int | None) -> np.random.Generator:
    """PyTorch's name for :func:`seed`."""
    return seed(n)


def get_rng() -> np.random.Generator:
    """The shared ``np.random.Generator`` that minigrad draws from when no ``rng`` is given."""
    return _rng
