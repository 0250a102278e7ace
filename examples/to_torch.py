"""How a model graduates: prototype in minigrad, hand it to PyTorch, train on there.

A stacked bidirectional LSTM classifier (token ids -> one of 3 classes: which token, 1, 2 or 3, is
most frequent in the sequence) is written and trained for a while in minigrad, where each gradient
can be read and checked. ``minigrad.interop.to_torch`` then turns it into a ``torch.nn.Sequential``
with the same weights: the two give the same outputs, and the next training steps, taken on both
sides with the same Adam settings, give the same losses, because the LSTM's second PyTorch bias
(``bias_hh``) is exported as zero and frozen (minigrad has one bias). From here the torch model is
an ordinary PyTorch module: ``DistributedDataParallel``, ``torch.compile``, ``torch.save``...
and ``minigrad.interop.from_torch`` brings it back.

Run:  python examples/to_torch.py [--quick]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import minigrad as mg
from minigrad import interop, nn

VOCAB, CLASSES = 8, 3


def make_batch(rng, n, steps):
    """Token ids in [0, 8) and the label: which of tokens 1, 2, 3 occurs most (ties: the lowest)."""
    x = rng.integers(0, VOCAB, size=(n, steps))
    counts = np.stack([(x == k).sum(axis=1) for k in (1, 2, 3)], axis=1)
    return x, counts.argmax(axis=1)


def build():
    return nn.Sequential(
        nn.Embedding(VOCAB, 16, dtype=np.float64),
        nn.LSTM(16, 24, num_layers=2, bidirectional=True, dtype=np.float64),
        nn.LayerNorm(48, dtype=np.float64), nn.Dropout(0.2), nn.Linear(48, CLASSES, dtype=np.float64))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only (the tests' setting)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("This example needs PyTorch: pip install torch (or pip install minigrad[interop])")
        return 1
    steps, more, length = (30, 5, 12) if args.quick else (300, 100, 20)
    rng = np.random.default_rng(0)
    mg.seed(0)

    # 1. prototype in minigrad
    model = build()
    opt = mg.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y = make_batch(rng, 32, length)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"minigrad: {steps} Adam steps, loss {loss.item():.4f}")

    # 2. hand over: same weights, same outputs. Both sides stay in eval mode from here (dropout
    # off), so the twin runs below draw nothing random and must agree step for step.
    model.eval()
    tmodel = interop.to_torch(model)
    print(tmodel)
    x, y = make_batch(rng, 64, length)
    diff = np.abs(model(x).numpy() - tmodel(torch.from_numpy(x)).detach().numpy()).max()
    print(f"outputs of minigrad and torch differ by at most {diff:.1e}")
    if diff > 1e-10:
        print("FAIL: the outputs differ")
        return 1

    # 3. train on in torch; the same steps in minigrad give the same losses
    opt_t = torch.optim.Adam([p for p in tmodel.parameters() if p.requires_grad], lr=3e-3)
    opt_m = mg.optim.Adam(model.parameters(), lr=3e-3)
    worst = 0.0
    for _ in range(more):
        x, y = make_batch(rng, 32, length)
        loss_t = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        opt_t.zero_grad()
        loss_t.backward()
        opt_t.step()
        loss_m = nn.functional.cross_entropy(model(x), y)
        opt_m.zero_grad()
        loss_m.backward()
        opt_m.step()
        worst = max(worst, abs(loss_t.item() - loss_m.item()))
    print(f"torch: {more} more Adam steps, loss {loss_t.item():.4f}; the minigrad twin's losses differ by at most "
          f"{worst:.1e}")
    x, y = make_batch(rng, 1000, length)
    with torch.no_grad():
        accuracy = (tmodel(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    print(f"torch model's accuracy on 1000 new sequences: {accuracy:.1%}")
    if worst > 1e-8:
        print("FAIL: training diverged between minigrad and torch")
        return 1
    print("The hand-over is exact.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
