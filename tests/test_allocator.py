"""minigrad's malloc settings: a step's large arrays reuse pages instead of faulting in new ones."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings apply to glibc's malloc only")

# Three 3 MiB arrays live at once, then all freed: the pattern of a training step. With glibc's
# defaults the freed 9 MiB at the heap top exceed its trim threshold (2x the largest array) and go
# back to the OS, so every round faults in ~2,300 fresh pages.
SCRIPT = """
import resource, numpy as np, minigrad
def step():
    a = np.ones(3 << 18, np.float32); b = np.ones(3 << 18, np.float32); c = np.ones(3 << 18, np.float32)
    return float(a[-1] + b[-1] + c[-1])
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(minigrad.allocator.tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(**env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


def test_import_tunes_malloc_so_a_step_reuses_its_pages():
    tuned, faults = faults_per_step()
    assert tuned
    assert faults < 50


def test_opting_out_keeps_glibc_defaults_which_fault_every_step():
    tuned, faults = faults_per_step(MINIGRAD_TUNE_MALLOC="0")
    assert not tuned
    assert faults > 1000            # the cost the settings remove: ~2,300 pages per step


def test_glibc_environment_settings_win():
    tuned, _ = faults_per_step(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not tuned
