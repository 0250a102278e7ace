"""Hypothesis profiles: a quick ``default`` for local runs, a thorough ``ci`` one.

Select with ``HYPOTHESIS_PROFILE=ci`` (``.ci/run`` does). Neither has a deadline: a gradient check's
time depends on the drawn shapes, and a slow example is not a wrong one.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    """A test that calls mg.set_default_dtype must not change the next test's default."""
    import minigrad as mg
    before = mg.get_default_dtype()
    yield
    mg.set_default_dtype(before)


@pytest.fixture(autouse=True)
def _auto_means_numpy_outside_the_numba_tests(request, monkeypatch):
    """``backend="auto"`` picks numba for small steps where numba is installed, and each new
    program is a compile of seconds. The suite's looped tests are about semantics, which
    tests/test_jit.py holds the numba backend to (its corpus, the layers, the looped node's
    guarantees, auto's rule): elsewhere auto means numpy, so the suite does not spend its time
    compiling."""
    if request.module.__name__ != "test_jit":
        from minigrad.looped import backends
        monkeypatch.setattr(backends, "_jit_pays", lambda prog: False)
