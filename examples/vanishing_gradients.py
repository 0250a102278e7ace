"""Vanishing gradients, measured: how much does the loss at step 100 still feel the input at step 1?

We run a sequence of 100 steps through a freshly initialised layer and let the loss depend only
on the last output, L = sum(h_100). Backpropagation then gives ||dL/dx_t||, the size of the
gradient that reaches the input of step t: how strongly a training signal at the end can adjust
what the layer does with what it saw t steps earlier. Three layers, same input:

* a tanh RNN: going back one step multiplies the gradient by diag(1 - h_t^2) W^T. Its orthogonal
  W keeps the length, but tanh's slope is below 1, so the gradient shrinks by a roughly constant
  factor per step: geometric decay, many orders of magnitude over 100 steps. That is the
  vanishing gradient: the RNN cannot learn dependencies that long.
* an LSTM as Keras initialises it (forget-gate bias 1): besides the path through h, the cell
  state c carries the gradient back through c_t = f_t * c_(t-1) + ..., one elementwise
  multiplication by the forget gate f_t per step, and no squashing slope or weight matrix in the
  way. At this initialisation f_t is about sigmoid(1) = 0.73, so the gradient still decays, but
  much more slowly than the RNN's.
* the same LSTM with forget-gate bias 3 (f_t about 0.95): the cell path is nearly the identity and
  the gradient reaching step 1 is about as large as at step 100. A trained LSTM gets there by
  learning f_t near 1 where it needs memory; a larger forget bias starts it there.

Run:  python examples/vanishing_gradients.py [--out vanishing_gradients.png] [--quick]
(the plot needs matplotlib; without it the table is printed all the same).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import minigrad as mg


def input_gradient_norms(layer, x):
    """||dL/dx_t|| for every step t, with L = sum of the layer's last output."""
    x = mg.Tensor(x, requires_grad=True)
    layer(x).sum().backward()                  # the layer returns h_T only: L depends on the last step
    return np.linalg.norm(x.grad, axis=(0, 2))  # over the batch and the features, one number per step


def layers(input_size, hidden, seed):
    """The three layers, float64 (the smallest norms are far below float32's range)."""
    mg.seed(seed)
    rnn = mg.nn.RNN(input_size, hidden, dtype=np.float64)
    mg.seed(seed)
    lstm = mg.nn.LSTM(input_size, hidden, dtype=np.float64)            # Keras init: forget bias 1
    mg.seed(seed)
    lstm3 = mg.nn.LSTM(input_size, hidden, dtype=np.float64)
    b = lstm3.b.data.copy()
    b[hidden:2 * hidden] = 3.0                  # gate blocks i, f, g, o: the second is the forget gate
    lstm3.b.data = b
    return {"RNN": rnn, "LSTM": lstm, "LSTM, forget bias 3": lstm3}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="sequence length (default 100; 20 with --quick)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="vanishing_gradients.png", help="the plot (PNG, needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a short sequence (for CI)")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)

    x = np.random.default_rng(args.seed).standard_normal((8, steps, 8))     # batch 8, 8 features
    norms = {name: input_gradient_norms(layer, x) for name, layer in layers(8, args.hidden, args.seed).items()}

    print(f"||dL/dx_t|| for L = sum(h_{steps}): how much of the end's training signal reaches step t")
    names = list(norms)
    print(f"{'step t':>7}" + "".join(f"{name:>22}" for name in names))
    every = max(1, steps // 10)
    for t in sorted({*range(steps - 1, -1, -every), 0}, reverse=True):
        print(f"{t + 1:>7}" + "".join(f"{norms[name][t]:>22.2e}" for name in names))
    print(f"\n||dL/dx_1|| / ||dL/dx_{steps}||: "
          + ", ".join(f"{name} {norms[name][0] / norms[name][-1]:.1e}" for name in names))

    if not args.no_plot:
        try:
            import matplotlib
            matplotlib.use("Agg")              # files only, no window
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib is not installed: no plot; pip install matplotlib)")
        else:
            fig, ax = plt.subplots(figsize=(7, 4))
            for name in names:
                ax.semilogy(np.arange(1, steps + 1), norms[name], label=name)
            ax.set_xlabel("timestep t")
            ax.set_ylabel(f"||dL/dx_t||,  L = sum(h_{steps})")
            ax.set_title("How far back does the gradient reach?")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(args.out, dpi=120)
            plt.close(fig)
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
