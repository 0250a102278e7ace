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
