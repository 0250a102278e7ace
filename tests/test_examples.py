"""Every example runs (``--quick``, in a subprocess, as a user would run it) and shows what it claims."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name, *args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIGRAD_PLAIN_PROGRESS="1",
               # small matrices: one BLAS thread is faster, and the time does not depend on the
               # other load of a shared machine (threads spinning on busy cores cost up to 8x here)
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def test_every_example_is_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["char_lstm.py", "gradcheck_your_op.py", "keras_model.py", "sequence_classification.py",
                       "shared_weights.py", "to_torch.py", "vanishing_gradients.py"]


def test_shared_weights(tmp_path):
    out = ok(run_example("shared_weights.py", "--quick", "--out-dir", str(tmp_path), cwd=tmp_path))
    assert "FAIL" not in out and "All checks passed." in out
    assert len(re.findall(r"step [123]: matmul node \w+ reads U", out)) == 3
    assert "the 3 contributions sum to U.grad" in out and "the 3 contributions sum to W.grad" in out
    dot = (tmp_path / "lstm_unrolled.dot").read_text()
    assert dot.count('label="U\\n(4, 12)"') == 1 and dot.count("matmul | t=") == 6
    assert "scan (loop over 3 steps)" in (tmp_path / "lstm_looped.dot").read_text()
    if shutil.which("dot"):
        assert (tmp_path / "lstm_unrolled.png").read_bytes()[:4] == b"\x89PNG"


def test_sequence_classification(tmp_path):
    out = ok(run_example("sequence_classification.py", "--quick", cwd=tmp_path))
    assert "Total params:" in out
    assert re.search(r"held-out accuracy: \d+\.\d% on 200 sequences after 20 steps", out)


def test_sequence_classification_fails_below_90_percent(tmp_path):
    # full size, but one training step: near chance, so the full mode's gate must trip
    r = run_example("sequence_classification.py", "--train-steps", "1", cwd=tmp_path)
    assert r.returncode == 1 and "FAIL: below 90%" in r.stdout
    assert "Total params: 117,377" in r.stdout                  # the Q&A's model, at full size


def _losses(out):
    first, last = re.search(r"loss (\d+\.\d+) at step 1 -> (\d+\.\d+)", out).groups()
    return float(first), float(last)


def test_char_lstm_learns_in_both_graph_modes(tmp_path):
    looped = ok(run_example("char_lstm.py", "--quick", cwd=tmp_path))
    unrolled = ok(run_example("char_lstm.py", "--quick", "--unroll", cwd=tmp_path))
    first, last = _losses(looped)
    assert last < first - 0.3                                    # it learns, even in 15 steps
    assert "looped LSTM" in looped and "unrolled LSTM" in unrolled
    assert _losses(unrolled) == pytest.approx((first, last), abs=2e-3)   # one model, two graphs
    samples = re.findall(r"^step \d+: loss \d\.\d+ .*\n  \| First Citizen:", looped, re.M)
    assert len(samples) == 4                                     # it samples text as it learns


def test_vanishing_gradients(tmp_path):
    png = tmp_path / "vg.png"
    out = ok(run_example("vanishing_gradients.py", "--quick", "--out", str(png), cwd=tmp_path))
    ratios = dict(re.findall(r"(RNN|LSTM|LSTM, forget bias 3) (\d\.\de[+-]\d+)", out.split("||dL/dx_1||")[-1]))
    rnn, lstm, lstm3 = float(ratios["RNN"]), float(ratios["LSTM"]), float(ratios["LSTM, forget bias 3"])
    assert rnn < lstm < 0.1 < lstm3                              # the RNN's gradient fades fastest
    assert len(re.findall(r"^\s+\d+(\s+\d\.\d\de[+-]\d+){3}$", out, re.M)) == 11     # the table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out
    else:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_gradcheck_your_op(tmp_path):
    out = ok(run_example("gradcheck_your_op.py", "--quick", cwd=tmp_path))
    assert "PASS  the vjp of softplus matches" in out
    assert "gradcheck raised GradcheckError" in out and "Jacobian mismatch" in out
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        assert "hypothesis is not installed" in out
    else:
        assert "PASS  test_softplus_gradient" in out and "PASS  test_softplus_identity" in out
    assert "FAIL" not in out and "All checks passed." in out


def test_to_torch_hands_over_exactly(tmp_path):
    pytest.importorskip("torch")
    out = ok(run_example("to_torch.py", "--quick", cwd=tmp_path))
    assert "(rnn): LSTM(16, 24, num_layers=2, batch_first=True, bidirectional=True)" in out
    diff = float(re.search(r"differ by at most (\S+)\n", out).group(1))
    drift = float(re.search(r"losses differ by at most (\S+)\n", out).group(1))
    assert diff <= 1e-10 and drift <= 1e-8 and "The hand-over is exact." in out


def test_keras_model_converts_the_qa_model(tmp_path):
    missing = [m for m in ("keras", "jax", "h5py") if importlib.util.find_spec(m) is None]   # not imported here:
    if missing:                                                     # Keras picks its backend when imported
        pytest.skip(f"optional: {missing}")
    out = ok(run_example("keras_model.py", "--quick", cwd=tmp_path))
    assert "117,248" in out and "Total params: 117,377" in out and "The same model in both." in out
    diffs = [float(d) for d in re.findall(r"differ by at most (\S+)\n", out)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5


def test_keras_model_says_how_to_install_keras(tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "keras.py").write_text("raise ImportError('No module named keras')\n")
    env_path = str(hidden) + os.pathsep + os.environ.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(EXAMPLES / "keras_model.py"), "--quick"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + env_path))
    assert "pip install keras jax jaxlib h5py" in ok(r)
