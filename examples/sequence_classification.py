"""The Q&A's Keras model, trained: LSTM(100, 128) -> Dropout(0.5) -> Dense(1) -> sigmoid.

The task is made up here, so it needs no download: each sequence has 15 steps of 100 features.
Feature 0 is a coin flip, +1 or -1, at every step (a random walk); the other 99 are Gaussian
noise. The label says whether the walk ends above zero, i.e. whether the running sum of feature 0
exceeds 0 at the last step. To get it right the LSTM has to find the one feature that matters
among 100 and count with it across all 15 steps; no single step tells.

Training is the usual loop: RMSprop (Keras's optimizer for this model), binary cross-entropy on
the sigmoid's probabilities, a fresh batch of sequences at every step (a synthetic task can give
unlimited data, so nothing to overfit), and a progress bar. The accuracy is measured on 1,000
held-out sequences the model never trains on. In full mode the script fails (exit status 1)
below 90%; it usually reaches about 99% in well under a minute on two cores.

Run:  python examples/sequence_classification.py [--quick] [--unroll]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import minigrad as mg
from minigrad.nn import LSTM, Dropout, Linear, Sequential, Sigmoid
from minigrad.nn.functional import binary_cross_entropy
from minigrad.progress import progress

FEATURES = 100


def make_sequences(n, steps, rng):
    """``n`` sequences (n, steps, 100) in float32 and their labels (n, 1): does the +-1 walk in
    feature 0 end above zero? With an odd number of steps it never ends at zero."""
    x = rng.standard_normal((n, steps, FEATURES)).astype(np.float32)
    x[:, :, 0] = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, steps))
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)[:, None]
    return x, y


def accuracy(model, x, y) -> float:
    """The fraction of correct labels, in eval mode (Dropout off) and without recording a graph."""
    model.eval()
    with mg.no_grad():
        p = model(x).data
    model.train()
    return float(((p > 0.5) == (y > 0.5)).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps (for CI)")
    parser.add_argument("--unroll", action="store_true", help="unrolled graph instead of the looped one")
    parser.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default 500; 20 quick)")
    parser.add_argument("--seq-len", type=int, default=15, help="timesteps per sequence (default 15)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    hidden = 16 if args.quick else 128
    train_steps = args.train_steps or (20 if args.quick else 500)

    mg.seed(args.seed)                                   # initial weights and dropout masks
    rng = np.random.default_rng(args.seed)               # the data
    x_test, y_test = make_sequences(200 if args.quick else 1000, args.seq_len, rng)

    # The Q&A's model. float32 (the default dtype of every layer) and the looped LSTM (default:
    # one scan node for the whole sequence; --unroll records every step's ops instead).
    model = Sequential(LSTM(FEATURES, hidden, unroll=args.unroll), Dropout(0.5), Linear(hidden, 1), Sigmoid())
    model.summary((args.seq_len, FEATURES))
    optimizer = mg.optim.RMSprop(model.parameters(), lr=args.lr)

    start = time.perf_counter()
    bar = progress(range(1, train_steps + 1), desc="training")
    acc = float("nan")
    for step in bar:
        x, y = make_sequences(args.batch, args.seq_len, rng)
        optimizer.zero_grad()
        loss = binary_cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == train_steps:        # held-out accuracy now and then
            acc = accuracy(model, x_test, y_test)
        bar.set_postfix(loss=loss.item(), test_acc=acc)
    seconds = time.perf_counter() - start

    acc = accuracy(model, x_test, y_test)
    print(f"held-out accuracy: {acc:.1%} on {len(x_test)} sequences after {train_steps} steps "
          f"of {args.batch} ({seconds:.1f} s, {'unrolled' if args.unroll else 'looped'} LSTM({FEATURES}, {hidden}))")
    if not args.quick and acc < 0.9:
        print("FAIL: below 90%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
