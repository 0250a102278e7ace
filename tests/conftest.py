"""Hypothesis profiles: a quick ``default`` for local runs, a thorough ``ci`` one.

Select with ``HYPOTHESIS_PROFILE=ci`` (``.ci/run`` does). Neither has a deadline: a gradient check's
time depends on the drawn shapes, and a slow example is not a wrong one.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
