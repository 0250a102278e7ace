"""Do an LSTM's timesteps share their weights, and are they updated together?

The question this project started from, answered by running an LSTM and looking at its graph:

1. an unrolled LSTM over 3 steps: every step's matmuls read the very same ``U`` and ``W`` objects;
2. backpropagation through time: each step sends its own share of dL/dU and dL/dW, and those
   shares add up to ``U.grad`` and ``W.grad`` (``mg.record_contributions`` shows them);
3. one optimizer step then moves U and W once, by -lr times that sum;
4. the same gradients checked by finite differences and by the looped graph (``mg.scan``);
5. the picture: ``mg.to_dot`` writes the graph (one U node with an edge to every step's matmul),
   ``mg.draw`` renders it to PNG when Graphviz is installed.

Run:  python examples/shared_weights.py [--steps 3] [--out-dir DIR] [--quick]
(``python -m minigrad demo`` prints the same facts, plus the Q&A's Keras summary.)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

import minigrad as mg
from minigrad.nn.functional import mse_loss


def make_lstm(steps, seed, unroll):
    """A small float64 LSTM and a fixed batch: 2 sequences of ``steps`` steps of 4 features."""
    mg.seed(seed)                                    # the layer's initial weights come from here
    lstm = mg.nn.LSTM(4, 3, unroll=unroll, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    x = mg.Tensor(rng.standard_normal((2, steps, 4)))
    y = mg.Tensor(rng.uniform(-0.5, 0.5, (2, 3)))    # a target for the last hidden state h_T
    return lstm, x, y


def reachable(t):
    """Every op node in the graph behind ``t`` (``t.node``, then each node's ``parents``: Nodes,
    or leaf Tensors such as the parameters themselves), found iteratively."""
    seen, stack, found = {id(t.node)}, [t.node], []
    while stack:
        node = stack.pop()
        found.append(node)
        for p in node.parents:
            if isinstance(p, mg.Node) and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timesteps (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where to write the graph pictures (default: here)")
    parser.add_argument("--quick", action="store_true", help="for CI: skip the full finite-difference check")
    args = parser.parse_args(argv)
    failures = []

    def check(ok, what):
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
        if not ok:
            failures.append(what)

    # -- 1. One U and one W, read by every step ----------------------------------------------
    # unroll=True records each step's ops in the graph, tagged with their timestep (mg.timestep).
    lstm, x, y = make_lstm(args.steps, args.seed, unroll=True)
    loss = mse_loss(lstm(x), y)                      # depends only on the last output h_T
    print(f"1. An unrolled LSTM over {args.steps} steps: which weights do the steps' matmuls read?")
    matmuls = [n for n in reachable(loss) if n.op == "matmul"]
    for t in sorted(matmuls, key=lambda m: (m.step, m.parents[1] is lstm.W)):
        weight = t.parents[1]                        # x_t @ U and h_(t-1) @ W: the weight is the 2nd input
        name = "U" if weight is lstm.U else "W" if weight is lstm.W else "?"
        print(f"   step {t.step + 1}: matmul node {id(t):#x} reads {name} (object {id(weight):#x})")
    check(sum(m.parents[1] is lstm.U for m in matmuls) == args.steps
          and sum(m.parents[1] is lstm.W for m in matmuls) == args.steps,
          f"{args.steps} distinct matmul nodes read lstm.U, {args.steps} read lstm.W: two objects in all")

    # -- 2. Backpropagation through time ---------------------------------------------------------
    # Every use of U sends back a gradient; backward adds them up into U.grad. record_contributions
    # keeps each one, with the op and the timestep of the use.
    print("\n2. Backward: each step's contribution to the gradients")
    with mg.record_contributions(lstm.U, lstm.W) as rec:
        loss.backward()
    for name, p in (("U", lstm.U), ("W", lstm.W)):
        shares = rec.of(p)                           # in the order backward produced them
        print(f"   dL/d{name}: " + ", ".join(f"step {c.step + 1}: {np.linalg.norm(c.grad):.5f}" for c in shares))
        diff = np.abs(rec.total(p) - p.grad).max()
        check(len(shares) == args.steps and diff < 1e-12,
              f"the {len(shares)} contributions sum to {name}.grad (max |diff| {diff:.1e})")

    # -- 3. One update for all steps --------------------------------------------------------------
    lr = 0.1
    before_U, before_W = lstm.U.data.copy(), lstm.W.data.copy()
    opt = mg.optim.SGD(lstm.parameters(), lr=lr)     # holds U, W, b: three Parameters, whatever T is
    opt.step()
    print(f"\n3. One SGD step (lr={lr}) updates U and W once, together:")
    for name, p, before in (("U", lstm.U, before_U), ("W", lstm.W, before_W)):
        change = p.data - before
        print(f"   |change of {name}| = {np.linalg.norm(change):.6f},  lr * |{name}.grad| = "
              f"{lr * np.linalg.norm(p.grad):.6f}")
        check(np.allclose(change, -lr * rec.total(p), rtol=0, atol=1e-15),
              f"{name} changed by -lr * (the sum of the {args.steps} steps' contributions)")

    # -- 4. Are those gradients right? ------------------------------------------------------------
    print("\n4. Checks")
    lstm, x, y = make_lstm(args.steps, args.seed, unroll=True)     # fresh weights, before the update

    def loss_fn(U, W, b):
        # the loss as a function of the weights: gradcheck perturbs copies of them
        return mse_loss(mg.nn.functional_call(lstm, {"U": U, "W": W, "b": b}, x), y)

    weights = [lstm.U, lstm.W, lstm.b]
    try:  # compares every entry of dL/dU, dL/dW, dL/db (random projections with --quick) with central differences
        ok = mg.gradcheck(loss_fn, weights, fast_mode=args.quick)
        message = ""
    except mg.GradcheckError as err:
        ok, message = False, f": {err}"
    check(ok, f"mg.gradcheck (finite differences, float64) agrees with backprop{message}")

    looped, _, _ = make_lstm(args.steps, args.seed, unroll=False)  # same seed: the same weights
    mse_loss(lstm(x), y).backward()
    mse_loss(looped(x), y).backward()
    diffs = [np.abs(a.grad - b.grad).max() for a, b in zip(weights, [looped.U, looped.W, looped.b])]
    check(max(diffs) < 1e-10, "the looped graph (one scan node) gives the same U, W, b gradients "
          f"(max |diff| {max(diffs):.1e})")

    # -- 5. The picture ---------------------------------------------------------------------------
    print("\n5. The graph")
    os.makedirs(args.out_dir, exist_ok=True)
    lstm, x, y = make_lstm(args.steps, args.seed, unroll=True)
    looped, _, _ = make_lstm(args.steps, args.seed, unroll=False)
    for name, layer in (("unrolled", lstm), ("looped", looped)):
        loss = mse_loss(layer(x), y)
        path = os.path.join(args.out_dir, f"lstm_{name}.dot")
        with open(path, "w") as f:
            f.write(mg.to_dot(loss, params=layer))   # params: name the weights "U", "W", "b"
        print(f"   wrote {path} ({mg.graph_size(loss)} op nodes)")
        if shutil.which("dot"):                      # Graphviz installed: render it too
            print(f"   wrote {mg.draw(loss, os.path.join(args.out_dir, f'lstm_{name}.png'), params=layer)}")
    if not shutil.which("dot"):
        print("   (install Graphviz to render them: apt-get install graphviz; then dot -Tpng lstm_unrolled.dot)")

    print(f"\n{'All checks passed.' if not failures else f'{len(failures)} check(s) FAILED.'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
