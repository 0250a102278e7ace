"""The looped program's own costs: compile time against the body's size, and peak memory against
the sequence length with and without ``checkpoint=``.

    python benchmarks/looped.py compile        # first call of bodies of 15 to 480 ops
    python benchmarks/looped.py memory         # peak memory of an LSTM training step against T
    python benchmarks/looped.py                # both

Each figure is the median of a few runs in this process (compile: the numpy backend, the caches
cleared before each run, so every run compiles); memory is tracemalloc's peak over one training
step, after a warm-up step, as a multiple of the state the step keeps without checkpointing
(T*B*6H values).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minigrad as mg  # noqa: E402
from minigrad.looped import backends, inline  # noqa: E402


def chain_body(n_ops, W, a):
    """A body of about ``n_ops`` primitives: blocks of (matmul, add, tanh, multiply, subtract)."""
    def body(h, x):
        for _ in range(max(1, n_ops // 5)):
            z = (h @ W + x).tanh()
            h = z * a - h * 0.5
        return h, h
    return body


def first_call(n_ops, T=20, reps=3):
    """Median seconds of: the first call (trace + compile + run + backward) with every cache
    cleared, as in a fresh process; the first call with only the compiled programs cleared (the
    primitives' folded templates kept: another body of the same ops); and a later call."""
    rng = np.random.default_rng(0)
    W = mg.Tensor(rng.standard_normal((16, 16)) * 0.1, requires_grad=True)
    a = mg.Tensor(rng.standard_normal(16), requires_grad=True)
    h0, xs = mg.Tensor(np.zeros((4, 16))), mg.Tensor(rng.standard_normal((T, 4, 16)))
    body = chain_body(n_ops, W, a)
    ops = len(mg.scan_program(body, h0, xs).eqns)

    def run():
        t0 = time.perf_counter()
        carry, _ = mg.scan(body, h0, xs, backend="numpy")      # the generator's own compile
        carry.sum().backward()
        return time.perf_counter() - t0
    times = {"cold": [], "warm": [], "later": []}
    for _ in range(reps):
        backends.clear_cache()
        inline.clear_templates()
        times["cold"].append(run())
        backends.clear_cache()
        times["warm"].append(run())
        times["later"].append(run())
    return ops, *(statistics.median(times[k]) for k in ("cold", "warm", "later"))


def compile_table(sizes=(15, 60, 240, 480)):
    print("| ops in the body | first call | first call, templates kept | later call | first / later |")
    print("|---|---|---|---|---|")
    rows = {}
    for n in sizes:
        ops, first, warm, later = first_call(n)
        rows[n] = first
        print(f"| {ops} | {first * 1e3:.1f} ms | {warm * 1e3:.1f} ms | {later * 1e3:.1f} ms | x{first / later:.1f} |",
              flush=True)
    if 60 in rows and 480 in rows:
        print(f"\n480-op body / 60-op body, first call: x{rows[480] / rows[60]:.1f} (ops x8)")


def peak_step(T, checkpoint, B=32, I=100, H=128):
    rng = np.random.default_rng(0)
    lstm = mg.nn.LSTM(I, H, return_sequences=True, dtype=np.float32, checkpoint=checkpoint)
    x = mg.Tensor(rng.uniform(-1, 1, (B, T, I)).astype(np.float32))

    def step():
        lstm.zero_grad()
        lstm(x).sum().backward()
    step()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, seconds, T * B * 6 * H * 4


def memory_table(Ts=(50, 200, 500, 1000), ks=(None, 10, 32)):
    print("| T | " + " | ".join("no checkpoint" if k is None else f"checkpoint={k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for T in Ts:
        cells = []
        for k in ks:
            peak, seconds, state = peak_step(T, k)
            cells.append(f"{peak / 2**20:.1f} MB ({peak / state:.2f}x state), {seconds * 1e3:.0f} ms")
        print(f"| {T} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["compile", "memory", "both"], default="both")
    args = ap.parse_args()
    if args.what in ("compile", "both"):
        compile_table()
    if args.what in ("memory", "both"):
        print()
        memory_table()
