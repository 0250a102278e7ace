"""``python -m minigrad demo`` and the mechanism it shows: mg.record_contributions."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from minigrad import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


def run_module(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minigrad", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_the_demo_runs_and_prints_the_key_facts():
    r = run_module("demo")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    # 1. the Q&A's summary
    assert "117248" in out and "Total params: 117,377" in out and "Non-trainable params: 0" in out
    assert "4 * (12,800 + 16,384 + 128) = 117,248" in out
    # 2. the same U and W at steps 1, 2, 3
    assert out.count(" is U ") == 3 and out.count(" is W") == 3 and "is not" not in out
    # 3. the contributions and their sum
    assert "max |sum - U.grad|" in out and "max |sum - W.grad|" in out
    assert "PASS  one contribution per step to dU, and they sum to U.grad" in out
    assert "PASS  U moved once" in out and "PASS  W moved once" in out
    # 4. the checks
    assert "PASS  mg.gradcheck" in out and "PASS  looped and unrolled gradients agree" in out
    assert "FAIL" not in out
    assert "All 11 checks passed" in out


def test_no_command_is_the_demo_and_help_works():
    out = io.StringIO()
    assert cli.run_demo(out=out) == 0
    r = run_module("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "graph" in r.stdout
    r = run_module("demo", "--help")
    assert r.returncode == 0 and "--steps" in r.stdout and "--seed" in r.stdout


def test_steps_and_seed_options():
    out = io.StringIO()
    assert cli.run_demo(steps=5, seed=2, out=out) == 0
    text = out.getvalue()
    assert "5 (t=4)" in text and "6 (t=5)" not in text and "seed 2" in text
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0"])


def test_a_failing_check_fails_the_demo(monkeypatch):
    class TwiceSGD(mg.optim.SGD):          # a bug of the kind the demo rules out: one update per step
        def step(self):
            super().step()
            super().step()

    monkeypatch.setattr(mg.optim, "SGD", TwiceSGD)
    out = io.StringIO()
    assert cli.run_demo(out=out) == 1
    text = out.getvalue()
    assert "FAIL  U moved once" in text and "checks FAILED" in text


def test_graph_command_writes_dot(tmp_path):
    path = tmp_path / "lstm.dot"
    out = io.StringIO()
    assert cli.run_graph(str(path), steps=3, out=out) == 0
    src = path.read_text()
    assert src.startswith("digraph") and src.count("matmul | t=") == 6
    assert cli.run_graph(str(tmp_path / "looped.dot"), looped=True, out=out) == 0
    assert "scan (loop over 3 steps)" in (tmp_path / "looped.dot").read_text()


def test_version():
    r = run_module("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"minigrad {mg.__version__}"


@pytest.mark.parametrize("args, message", [
    (["graph", "g.dot", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["demo", "--steps", "-2"], "argument --steps: must be at least 1, got -2"),
    (["demo", "--steps", "two"], "argument --steps: must be a whole number, got 'two'"),
    (["graph", "g.foo"], "argument path: 'g.foo': the extension must be one of .svg, .png, .pdf, .dot, .gv, got .foo"),
    (["graph", "graph"], "argument path: 'graph': the extension must be one of .svg, .png, .pdf, .dot, .gv, got none"),
])
def test_bad_arguments_are_argparse_errors_not_tracebacks(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path / a) if a.startswith("g.") else a for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message.replace("'g.foo'", repr(str(tmp_path / "g.foo"))) in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())                     # nothing was written


# ---------------------------------------------------------------- what the demo relies on

@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "looped"])
def test_record_contributions_one_per_timestep_summing_to_the_grads(unroll):
    lstm, x, y = cli.small_problem(steps=3, seed=0, unroll=unroll)
    loss, rec = cli.contributions(lstm, x, y)
    for p in (lstm.U, lstm.W):
        cs = rec.of(p)
        assert sorted(c.step for c in cs) == [0, 1, 2]
        assert all(c.op == "matmul" and c.tensor is p and c.grad.shape == p.shape for c in cs)
        np.testing.assert_allclose(rec.total(p), p.grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(sum(c.grad for c in cs), p.grad, rtol=1e-12, atol=1e-15)
    assert rec.of(lstm.b) == []                 # not watched
    (w0,) = [c for c in rec.of(lstm.W) if c.step == 0]
    assert np.all(w0.grad == 0)                 # W multiplies h_0 = 0 at the first step


def test_unrolled_and_looped_contributions_agree_step_by_step():
    a, x, y = cli.small_problem(steps=4, seed=1, unroll=True)
    b, _, _ = cli.small_problem(steps=4, seed=1, unroll=False)
    _, ra = cli.contributions(a, x, y)
    _, rb = cli.contributions(b, x, y)
    for pa, pb in ((a.U, b.U), (a.W, b.W)):
        ga = {c.step: c.grad for c in ra.of(pa)}
        gb = {c.step: c.grad for c in rb.of(pb)}
        assert sorted(ga) == sorted(gb) == [0, 1, 2, 3]
        for t in ga:
            np.testing.assert_allclose(ga[t], gb[t], rtol=1e-10, atol=1e-14)


def test_matmul_uses_finds_each_steps_reads_of_the_shared_weights():
    lstm, x, y = cli.small_problem(steps=3, seed=0, unroll=True)
    uses = cli.matmul_uses(cli.loss_of(lstm, x, y), lstm.U, lstm.W)
    for p in (lstm.U, lstm.W):
        assert [s for s, _, _ in uses[id(p)]] == [0, 1, 2]
        assert all(w is p and node.op == "matmul" for _, node, w in uses[id(p)])
        assert len({id(node) for _, node, _ in uses[id(p)]}) == 3      # three distinct nodes, one weight
    looped, x, y = cli.small_problem(steps=3, seed=0, unroll=False)
    uses = cli.matmul_uses(cli.loss_of(looped, x, y), looped.U, looped.W)
    assert uses == {id(looped.U): [], id(looped.W): []}     # the looped graph has one scan node instead
