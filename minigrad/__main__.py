"""``python -m minigrad``: the demo that answers the Q&A minigrad started from, and a graph picture.

    python -m minigrad                 # the same as: python -m minigrad demo
    python -m minigrad demo --steps 5 --seed 1
    python -m minigrad graph lstm.svg  # the unrolled 3-step LSTM's graph (needs Graphviz; .dot does not)
    python -m minigrad --version

The demo asks: in an LSTM run over T timesteps, do steps 1, 2, 3 use the same weights U and W,
and are they updated together? It answers by running one, in four parts:

1. the Q&A's Keras model and its summary (117,377 parameters);
2. a small unrolled LSTM: every step's matmuls read the very same U and W objects;
3. backward under ``mg.record_contributions``: each step's share of dL/dU and dL/dW, which sum
   to ``U.grad`` and ``W.grad``; one SGD step then moves U and W once, together;
4. checks: finite differences, and the looped graph (``mg.scan``) against the unrolled one.

Every claim it prints is checked; the exit status is 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import minigrad as mg

# ---------------------------------------------------------------------------- output

_RULE = "-" * 72


class Report:
    """Prints the demo and keeps score of its checks."""

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout
        self.checks = []             # (name, passed)

    def __call__(self, text: str = "") -> None:
        print(text, file=self.out)

    def heading(self, text: str) -> None:
        self()
        self(text)
        self(_RULE)

    def check(self, passed: bool, text: str) -> bool:
        passed = bool(passed)
        self.checks.append((text, passed))
        self(f"  {'PASS' if passed else 'FAIL'}  {text}")
        return passed

    @property
    def failed(self):
        return [name for name, ok in self.checks if not ok]


def _norm(a) -> float:
    return float(np.linalg.norm(a))


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


def _close(a, b, rtol=1e-12) -> bool:
    """Equal to rounding: the difference is a few ulps of the larger magnitude."""
    scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    return _max_diff(a, b) <= rtol * scale


# ---------------------------------------------------------------------------- the pieces

def qa_model():
    """The Q&A's Keras model: ``Sequential(LSTM(100, 128), Dropout(0.5), Linear(128, 1), Sigmoid())``."""
    nn = mg.nn
    return nn.Sequential(nn.LSTM(100, 128), nn.Dropout(0.5), nn.Linear(128, 1), nn.Sigmoid())


def small_problem(steps: int = 3, seed: int = 0, unroll: bool = True):
    """A float64 LSTM(4, 3) over ``steps`` timesteps on a fixed random batch of 2, with a
    squared-error loss on its last output. Returns ``(lstm, x, y)``; the weights depend only
    on ``seed``, so the unrolled and looped layers built with one seed are the same function."""
    mg.seed(seed)
    lstm = mg.nn.LSTM(4, 3, unroll=unroll, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    x = mg.Tensor(rng.standard_normal((2, steps, 4)))
    y = mg.Tensor(rng.uniform(-0.5, 0.5, (2, 3)))
    return lstm, x, y


def loss_of(lstm, x, y):
    """L = mean((h_T - y)^2): it depends on every step through the recurrence."""
    return mg.nn.functional.mse_loss(lstm(x), y)


def matmul_uses(output, *weights):
    """For each weight, the ``matmul`` nodes of the graph behind ``output`` that read it, as
    ``{id(weight): [(timestep, node, the weight object the node holds), ...]}`` sorted by step.
    Found by walking the graph itself (``output.node``, then each node's ``parents``), not by
    asking the layer."""
    uses = {id(w): [] for w in weights}
    seen, stack = {id(output.node)}, [output.node]
    while stack:
        node = stack.pop()
        for p in node.parents:
            if node.op == "matmul" and p is not None and id(p) in uses:
                uses[id(p)].append((node.step, node, p))
            if isinstance(p, mg.Node) and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    for v in uses.values():
        v.sort(key=lambda u: -1 if u[0] is None else u[0])
    return uses


def contributions(lstm, x, y):
    """Backward under ``mg.record_contributions(U, W)``: returns ``(loss, recorder)``; the
    layer's parameters then hold their ``.grad``."""
    lstm.zero_grad()
    loss = loss_of(lstm, x, y)
    with mg.record_contributions(lstm.U, lstm.W) as rec:
        loss.backward()
    return loss, rec


def central_difference(lstm, x, y, param, index, eps=1e-6) -> float:
    """dL/dparam[index] by (L(p + eps) - L(p - eps)) / (2 eps), in float64."""
    old = param.data[index]
    try:
        with mg.no_grad():
            param.data[index] = old + eps
            plus = loss_of(lstm, x, y).item()
            param.data[index] = old - eps
            minus = loss_of(lstm, x, y).item()
    finally:
        param.data[index] = old
    return (plus - minus) / (2 * eps)


# ---------------------------------------------------------------------------- the demo

def part1_summary(say: Report) -> str:
    say.heading("1. The Q&A's model and its Keras-style summary")
    say("  Sequential(LSTM(100, 128), Dropout(0.5), Linear(128, 1), Sigmoid())")
    say()
    table = mg.nn.summary(qa_model(), (None, 100))
    for line in table.splitlines():
        say("  " + line)
    say()
    say("  LSTM: 4 gates * (100*128 input weights U + 128*128 recurrent weights W + 128 biases b)")
    say(f"        = 4 * ({100 * 128:,} + {128 * 128:,} + 128) = {4 * (100 * 128 + 128 * 128 + 128):,}")
    counts = [line.split()[-1] for line in table.splitlines() if line.endswith(tuple("0123456789"))
              and "(" in line and "params" not in line]
    say.check(counts == ["117248", "0", "129", "0"] and "Total params: 117,377" in table,
              "the summary reports 117,248 / 0 / 129 / 117,377, as Keras does")
    return table


def part2_sharing(say: Report, steps: int, seed: int):
    say.heading(f"2. {steps} timesteps, one U and one W")
    lstm, x, y = small_problem(steps, seed, unroll=True)
    say(f"  LSTM(4, 3, unroll=True), float64, seed {seed}: input (batch 2, {steps} steps, 4 features)")
    say(f"  lstm.U: id {id(lstm.U):#x}, shape {lstm.U.shape}    lstm.W: id {id(lstm.W):#x}, shape {lstm.W.shape}")
    say()
    loss = loss_of(lstm, x, y)
    uses = matmul_uses(loss, lstm.U, lstm.W)
    say("  The matmul nodes of the graph, found by walking it from the loss:")
    say(f"  {'step':<10}{'x_t @ U reads':<28}{'h_(t-1) @ W reads'}")
    by_step_u = {s: p for s, _, p in uses[id(lstm.U)]}
    by_step_w = {s: p for s, _, p in uses[id(lstm.W)]}
    for t in range(steps):
        u, w = by_step_u.get(t), by_step_w.get(t)
        cell_u = f"id {id(u):#x} {'is' if u is lstm.U else 'is not'} U" if u is not None else "-"
        cell_w = f"id {id(w):#x} {'is' if w is lstm.W else 'is not'} W" if w is not None else "-"
        say(f"  {f'{t + 1} (t={t})':<10}{cell_u:<28}{cell_w}")
    say()
    say.check(sorted(by_step_u) == list(range(steps)) and all(p is lstm.U for p in by_step_u.values())
              and sorted(by_step_w) == list(range(steps)) and all(p is lstm.W for p in by_step_w.values()),
              f"all {steps} steps read the very same U and W objects (one matmul each, `is` holds)")
    n_params = len(lstm.parameters())
    say.check(n_params == 3, f"the layer owns {n_params} Parameters (U, W, b), whatever the number of steps")
    return lstm, x, y


def part3_backprop(say: Report, lstm, x, y, lr: float = 0.1):
    steps = x.shape[1]
    say.heading("3. Backpropagation through time: each step's share of the gradient")
    say("  L = mean((h_T - y)^2);  with mg.record_contributions(lstm.U, lstm.W) as rec: L.backward()")
    loss, rec = contributions(lstm, x, y)
    say(f"  L = {loss.item():.6f}")
    ok = True
    for name, p in (("U", lstm.U), ("W", lstm.W)):
        cs = rec.of(p)
        say()
        say(f"  dL/d{name}, in the order backward produced the contributions:")
        say(f"    {'step':<10}{'op':<10}{'norm':>12}")
        for c in cs:
            label = "-" if c.step is None else f"{c.step + 1} (t={c.step})"
            say(f"    {label:<10}{c.op:<10}{_norm(c.grad):>12.6f}")
        total = rec.total(p)
        say(f"    {'sum':<20}{_norm(total):>12.6f}    {name}.grad: {_norm(p.grad):.6f}, "
            f"max |sum - {name}.grad| = {_max_diff(total, p.grad):.1e}")
        ok &= say.check(sorted(c.step for c in cs) == list(range(steps)) and _close(total, p.grad),
                        f"one contribution per step to d{name}, and they sum to {name}.grad")
    say("  (W's share at step 1 is zero: it multiplies h_0, which is zero.)")

    say()
    say(f"  One optimizer step: opt = mg.optim.SGD(lstm.parameters(), lr={lr}); opt.step()")
    before = {name: p.data.copy() for name, p in (("U", lstm.U), ("W", lstm.W))}
    grads = {name: p.grad.copy() for name, p in (("U", lstm.U), ("W", lstm.W))}
    opt = mg.optim.SGD(lstm.parameters(), lr=lr)
    opt.step()
    say(f"    {'':<4}{'|change|':>12}{'lr * |grad|':>14}   max |change + lr * sum of the step shares|")
    for name, p in (("U", lstm.U), ("W", lstm.W)):
        change = p.data - before[name]
        expected = -lr * rec.total(p)
        say(f"    {name:<4}{_norm(change):>12.6f}{lr * _norm(grads[name]):>14.6f}   {_max_diff(change, expected):.1e}")
        ok &= say.check(_close(change, expected), f"{name} moved once, by -lr * (the sum of all {steps} steps' shares)")
    say("  One step() call, one update per Parameter object: the steps' shares were already summed")
    say("  into .grad by backward, so U and W change together, never once per timestep.")
    return ok


def part4_checks(say: Report, steps: int, seed: int):
    say.heading("4. Checks: finite differences, and the looped graph against the unrolled one")
    lstm, x, y = small_problem(steps, seed, unroll=True)
    contributions(lstm, x, y)
    say(f"  {'entry':<10}{'backprop':>16}{'central difference':>22}")
    worst = 0.0
    for name, p, index in (("U", lstm.U, (0, 0)), ("W", lstm.W, (1, 5)), ("b", lstm.b, (7,))):
        num = central_difference(lstm, x, y, p, index)
        ana = float(p.grad[index])
        worst = max(worst, abs(num - ana) / max(1e-8, abs(num)))
        say(f"  {f'{name}{list(index)}':<10}{ana:>16.10f}{num:>22.10f}")
    say.check(worst < 1e-6, f"the entries above agree (largest relative difference {worst:.1e})")

    def fn(U, W, b):          # the loss as a function of the weights, for gradcheck's fresh copies
        return mg.nn.functional.mse_loss(mg.nn.functional_call(lstm, {"U": U, "W": W, "b": b}, x), y)

    n = lstm.U.size + lstm.W.size + lstm.b.size
    try:
        passed = mg.gradcheck(fn, [lstm.U, lstm.W, lstm.b])
        detail = ""
    except mg.GradcheckError as err:
        passed, detail = False, f": {err}"
    say.check(passed, f"mg.gradcheck: all {n} entries of dL/dU, dL/dW, dL/db match finite differences{detail}")

    looped, _, _ = small_problem(steps, seed, unroll=False)
    _, rec_u = contributions(lstm, x, y)
    _, rec_l = contributions(looped, x, y)
    say()
    say(f"  The same LSTM with unroll=False: graph nodes {mg.graph_size(loss_of(looped, x, y))} "
        f"(looped, one scan) against {mg.graph_size(loss_of(lstm, x, y))} (unrolled)")
    diffs = {name: _max_diff(getattr(lstm, name).grad, getattr(looped, name).grad) for name in "UWb"}
    say.check(all(_close(getattr(lstm, k).grad, getattr(looped, k).grad, 1e-10) for k in "UWb"),
              "looped and unrolled gradients agree: max |diff| "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))

    def by_step(rec, p):
        return {c.step: c.grad for c in rec.of(p)}

    same = True
    worst = 0.0
    for pu, pl in ((lstm.U, looped.U), (lstm.W, looped.W)):
        a, b = by_step(rec_u, pu), by_step(rec_l, pl)
        same &= sorted(a) == sorted(b) == list(range(steps))
        if same:
            worst = max(worst, max(_max_diff(a[t], b[t]) for t in a))
            same &= all(_close(a[t], b[t], 1e-10) for t in a)
    say.check(same, f"the looped graph reports the same per-step contributions (max |diff| {worst:.1e})")


def run_demo(steps: int = 3, seed: int = 0, out=None) -> int:
    """Run the four parts, printing to ``out`` (stdout); returns the exit status (0: all passed)."""
    if steps < 1:
        raise ValueError(f"demo: steps must be at least 1, got {steps}")
    start = time.perf_counter()
    say = Report(out)
    say("minigrad demo: in an LSTM, do timesteps 1, 2, 3 share U and W, and are they updated together?")
    part1_summary(say)
    lstm, x, y = part2_sharing(say, steps, seed)
    part3_backprop(say, lstm, x, y)
    part4_checks(say, steps, seed)
    say()
    say(_RULE)
    failed = say.failed
    elapsed = time.perf_counter() - start
    if failed:
        say(f"{len(failed)} of {len(say.checks)} checks FAILED ({elapsed:.1f} s):")
        for name in failed:
            say(f"  FAIL  {name}")
        return 1
    say(f"All {len(say.checks)} checks passed ({elapsed:.1f} s). Yes: one U and one W, read by every step;")
    say("their gradients are the sums of the steps' shares, and one optimizer step updates them together.")
    return 0


def run_graph(path: str, steps: int = 3, seed: int = 0, looped: bool = False, out=None) -> int:
    """Write the graph of the demo's LSTM loss to ``path`` (``.dot`` needs no Graphviz)."""
    lstm, x, y = small_problem(steps, seed, unroll=not looped)
    loss = loss_of(lstm, x, y)
    out = out if out is not None else sys.stdout
    try:
        mg.draw(loss, path, params=lstm)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    mode = "looped (one scan node)" if looped else "unrolled (one U, one W, an edge to every step)"
    print(f"wrote {path}: the {steps}-step LSTM's graph, {mode}", file=out)
    return 0


_GRAPH_FORMATS = ("svg", "png", "pdf", "dot", "gv")


def _steps(text: str) -> int:
    """--steps: a whole number of timesteps, at least 1 (argparse reports anything else)."""
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {steps}")
    return steps


def _graph_path(text: str) -> str:
    """graph's output path, whose extension picks the format."""
    ext = os.path.splitext(text)[1].lstrip(".").lower()
    if ext not in _GRAPH_FORMATS:
        known = ", ".join("." + f for f in _GRAPH_FORMATS)
        raise argparse.ArgumentTypeError(f"{text!r}: the extension must be one of {known}, got "
                                         f"{'.' + ext if ext else 'none'}")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minigrad",
        description="minigrad's command line. With no command, runs the demo.")
    parser.add_argument("--version", action="version", version=f"minigrad {mg.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="show that an LSTM's timesteps share U and W, and check it (the default)",
                          description="Show that an LSTM's timesteps share U and W and are updated together; "
                                      "check it by finite differences and against the looped graph. Exit status "
                                      "1 if any check fails.")
    graph = sub.add_parser("graph", help="write the demo LSTM's graph as a picture (.svg, .png: Graphviz) or .dot",
                           description="Write the graph behind the demo LSTM's loss with mg.draw.")
    graph.add_argument("path", type=_graph_path,
                       help="output file; its extension picks the format (.svg, .png, .pdf: Graphviz; .dot, .gv)")
    graph.add_argument("--looped", action="store_true", help="the looped graph (one scan node) instead")
    for p in (demo, graph):
        p.add_argument("--steps", type=_steps, default=3, help="number of timesteps, at least 1 (default 3)")
        p.add_argument("--seed", type=int, default=0, help="random seed of the weights and data (default 0)")
    args = parser.parse_args(argv)
    if args.command == "graph":
        return run_graph(args.path, args.steps, args.seed, args.looped)
    if args.command is None:
        args.steps, args.seed = 3, 0
    return run_demo(args.steps, args.seed)


if __name__ == "__main__":
    sys.exit(main())
