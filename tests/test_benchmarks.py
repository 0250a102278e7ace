"""The benchmarks' correctness (never their timings: a benchmark is not a timed test).

The hand-written numpy floor must compute the right loss and gradients (against the plain
step-by-step reference and against finite differences), and the runner's quick mode must run
end to end and write the JSON the README describes.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import impls as IM  # noqa: E402
from benchmarks import numpy_lstm  # noqa: E402
from benchmarks.numpy_lstm import NumpyLSTM, reference_lstm  # noqa: E402


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a - b), initial=0.0))


@pytest.mark.parametrize("B,T,I,H", [(1, 1, 3, 2), (2, 5, 3, 4), (3, 7, 5, 6), (1, 13, 8, 16), (4, 9, 2, 5)])
@pytest.mark.parametrize("steps_per_block", [1, 2, 3, None])
def test_floor_matches_plain_reference(B, T, I, H, steps_per_block, monkeypatch):
    """The backward prepares blocks of steps: of one, two or three (T not a multiple), or the default."""
    if steps_per_block:
        monkeypatch.setattr(numpy_lstm, "BLOCK_BYTES", steps_per_block * B * 4 * H * 8)
    X, U, W, b = IM.make_inputs(B, T, I, H, np.float64, seed=T)
    ref_loss, ref_grads = reference_lstm(X, U, W, b)
    floor = NumpyLSTM(B, T, I, H, np.float64)
    floor.step(*IM.make_inputs(B, T, I, H, np.float64, seed=99))    # a previous step leaves nothing behind
    loss, grads = floor.step(X, U, W, b)
    assert abs(loss - ref_loss) <= 1e-12 * max(1.0, abs(ref_loss))
    for g, r, name in zip(grads, ref_grads, ("dU", "dW", "db", "dX")):
        assert g.shape == r.shape, name
        assert rel_err(g, r) < 1e-12, name
    assert floor.forward(X, U, W, b) == pytest.approx(ref_loss, rel=1e-13)


def test_floor_matches_finite_differences():
    B, T, I, H = 2, 4, 3, 3
    X, U, W, b = IM.make_inputs(B, T, I, H, np.float64, seed=1)
    floor = NumpyLSTM(B, T, I, H, np.float64)
    _, grads = floor.step(X, U, W, b)
    grads = [np.array(g) for g in grads]
    args = [X, U, W, b]
    eps = 1e-6
    for which, grad in zip((1, 2, 3, 0), grads):          # dU, dW, db, dX
        arr = args[which]
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            numeric[idx] = (floor.forward(*plus) - floor.forward(*minus)) / (2 * eps)
        assert rel_err(grad, numeric) < 1e-7, which


def test_float32_floor_is_close_to_float64():
    B, T, I, H = 4, 30, 10, 12
    X, U, W, b = IM.make_inputs(B, T, I, H, np.float64)
    ref_loss, ref_grads = reference_lstm(X, U, W, b)
    loss, grads = NumpyLSTM(B, T, I, H, np.float32).step(*(a.astype(np.float32) for a in (X, U, W, b)))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == np.float32
        assert rel_err(g, r) < 1e-4


def test_compare_flags_a_wrong_gradient():
    X, U, W, b = IM.make_inputs(2, 3, 4, 5, np.float32)
    loss, grads = reference_lstm(X, U, W, b)
    assert IM.compare((loss, grads), (loss, grads), np.float32)[0]
    bad = (grads[0], grads[1] * 1.01, grads[2], grads[3])
    ok, errs = IM.compare((loss, bad), (loss, grads), np.float32)
    assert not ok and errs["dW"] > 1e-3
    ok, _ = IM.compare((loss, (grads[0], grads[1], grads[2], grads[3][:, :1])), (loss, grads), np.float32)
    assert not ok                                          # a wrong shape is wrong


def test_every_available_implementation_agrees_with_the_floor():
    """In process, on a tiny problem: what is installed must be right (what is not is skipped)."""
    X, U, W, b = IM.make_inputs(2, 3, 4, 5, np.float64)
    ref = IM.build("numpy floor", X, U, W, b).step()
    ref = (ref[0], tuple(np.array(g) for g in ref[1]))
    for name in IM.IMPLS:
        try:
            bench = IM.build(name, X, U, W, b)
        except ImportError:
            continue
        bench.step()
        ok, errs = IM.compare(bench.step(), ref, np.float64)
        assert ok, (name, errs)
        out = bench.forward()
        if bench.graph_nodes is not None:
            assert bench.graph_nodes(out) >= 1


def test_default_grid_and_skips():
    from benchmarks import run
    args = run.parse_args([])
    configs, skipped = run.configurations(args)
    assert ("large", "float32", 1000) not in configs and any(s[:3] == ("large", "float32", 1000) for s in skipped)
    assert ("medium", "float64", 1000) in configs and ("tiny", "float64", 50) not in configs
    assert run.skip_reason("MyGrad", "medium", "float32", 1000, args)
    assert run.skip_reason("minigrad unrolled", "medium", "float32", 1000, args) is None
    quick, _ = run.configurations(run.parse_args(["--quick"]))
    assert quick == [(s, "float32", T) for s in ("tiny", "medium") for T in (1, 10, 50)]


def test_quick_mode_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    impls = ["numpy floor", "minigrad looped", "minigrad unrolled", "torch fused"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--size", "tiny", "--T", "1,3",
           "--rounds", "1", "--reps", "2", "--impl", ",".join(impls), "--out", str(out), "--no-plot"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| implementation |" in proc.stdout and "[2/2] tiny float32 T=3" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"schema", "machine", "settings", "results", "targets", "skipped_summary", "versions"} <= set(doc)
    assert {"cpu", "cores", "python", "numpy", "blas"} <= set(doc["machine"])
    assert out.with_suffix(".md").exists()
    rows = {(r["impl"], r["T"]): r for r in doc["results"]}
    assert set(rows) == {(n, T) for n in impls for T in (1, 3)}
    timed_keys = {"step_ms", "forward_ms", "ratio_floor", "peak_mb", "kept_mb", "check", "state_mb", "step_rounds"}
    for T in (1, 3):
        floor = rows["numpy floor", T]
        assert floor["status"] == "ok", floor
        assert timed_keys <= set(floor) and floor["ratio_floor"] == 1.0 and floor["step_ms"] > 0
        for mode in ("minigrad looped", "minigrad unrolled"):
            row = rows[mode, T]
            assert row["status"] == "ok", row                    # checked against the floor, then timed
            assert timed_keys <= set(row) and row["graph_nodes"] >= 1
        torch_row = rows["torch fused", T]
        assert torch_row["status"] in ("ok", "error")            # error only where torch is missing
        if torch_row["status"] == "ok":
            assert torch_row["ratio_torch_fused"] == 1.0
    assert rows["minigrad looped", 3]["graph_nodes"] < rows["minigrad unrolled", 3]["graph_nodes"]


def test_the_report_speaks_of_targets_not_issue_numbers():
    from benchmarks import run
    target = {"status": "meets", "target": "minigrad looped <= 1.0x floor at tiny, T=50", "measured": "x0.90"}
    doc = {"machine": {}, "settings": {"rounds": 1}, "results": [], "targets": [target]}
    text = run.markdown(doc)
    assert "Performance targets (float32; see benchmarks/README.md):" in text
    assert "- meets: minigrad looped <= 1.0x floor at tiny, T=50: x0.90" in text
    assert "issue" not in text.lower()
