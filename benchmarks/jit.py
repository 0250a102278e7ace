"""The numba backend's own figures: where it beats the numpy backend, and what compiling costs.

    python benchmarks/jit.py crossover      # LSTM training step, numba against numpy, over (batch, hidden)
    python benchmarks/jit.py compile        # first compile and a cached load (separate processes)
    python benchmarks/jit.py products       # the matrix products of an LSTM training step alone
    python benchmarks/jit.py                # all three

crossover: one LSTM training step (T = 50, input 32, float32, loss = sum of every h), both
backends in this process, alternated, median of many steps each; the ratio numba / numpy and the
widest value of the loop (batch x 4H gate values), which is what ``auto``'s rule reads
(``backends.JIT_MAX_ELEMENTS``).

compile: the first call of a body in a fresh process with an empty cache directory (trace,
generate, compile both loops), then the same in a second process that loads the machine code.

products: numpy's BLAS on exactly the products one LSTM training step needs (x U for all steps,
h W and the carry's gradient g W^T per step, the weight gradients X^T G and H^T G): the limit for
any numpy framework at that size (the harness's sizes, T = 50, float32, one BLAS thread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import minigrad as mg  # noqa: E402


def step_time(B, H, backend, T=50, I=32, reps=30):
    mg.manual_seed(0)
    lstm = mg.nn.LSTM(I, H, return_sequences=True, dtype=np.float32, backend=backend)
    x = mg.Tensor(np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32))

    def step():
        for p in lstm.parameters():
            p.grad = None
        lstm(x).sum().backward()
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def crossover():
    print("| batch | hidden | widest value | numpy | numba | numba / numpy |")
    print("|---|---|---|---|---|---|")
    for B, H in ((1, 16), (1, 64), (4, 32), (8, 32), (4, 128), (8, 64), (16, 64), (8, 128), (32, 128), (64, 256)):
        reps = 30 if B * 4 * H <= 4096 else 8
        a, b = [], []
        for _ in range(3):                      # alternate, so both see the same machine
            a.append(step_time(B, H, "numpy", reps=reps))
            b.append(step_time(B, H, "numba", reps=reps))
        a, b = statistics.median(a), statistics.median(b)
        print(f"| {B} | {H} | {B * 4 * H} | {a * 1e3:.3f} ms | {b * 1e3:.3f} ms | x{b / a:.2f} |", flush=True)


BODIES = {
    "LSTM": "lambda s, x: (lambda hc: (hc, hc[0]))(nn.lstm_step(x, s, U, W, b))",
    "GRU": "lambda s, x: (lambda h: (h, h[0]))(nn.gru_step(x, s, U[:, :3 * H], W[:, :3 * H], B2))",
    "chain of 34 blocks": "chain",
}

CHILD = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import minigrad as mg
from minigrad import nn
from minigrad.looped import diskcache
H = 16
rng = np.random.default_rng(0)
U = mg.Tensor(rng.standard_normal((8, 4 * H)) * 0.1, requires_grad=True)
W = mg.Tensor(rng.standard_normal((H, 4 * H)) * 0.1, requires_grad=True)
b = mg.Tensor(np.zeros(4 * H), requires_grad=True)
B2 = mg.Tensor(np.zeros((2, 3 * H)), requires_grad=True)
V = mg.Tensor(rng.standard_normal((H, H)) * 0.1, requires_grad=True)
def chain(h, x):
    (h,) = h
    for _ in range(34):
        z = (h @ V + x[..., :H]).tanh()
        h = z * 0.5 - h * 0.5
    return (h,), h
kind = sys.argv[1]
body = chain if kind == "chain" else eval(kind)
n = 1 if kind != "lambda s, x: (lambda hc: (hc, hc[0]))(nn.lstm_step(x, s, U, W, b))" else 2
init = tuple(mg.Tensor(np.zeros((1, H))) for _ in range(n))
xs = mg.Tensor(rng.standard_normal((20, 1, 8 if kind != "chain" else H)))
ops = len(mg.scan_program(body, init, xs).eqns)
t1 = time.perf_counter()
c, ys = mg.scan(body, init, xs, backend="numba")
ys.sum().backward()
t2 = time.perf_counter()
print(json.dumps({"ops": ops, "import": t1 - t0, "first": t2 - t1, "compiled": diskcache.stats["compiled"],
                  "loaded": diskcache.stats["loaded"]}))
"""


def compile_table():
    print("| body | ops | first compile (empty cache) | second process (cached) |")
    print("|---|---|---|---|")
    for name, src in BODIES.items():
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, MINIGRAD_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
            runs = []
            for _ in range(2):
                out = subprocess.run([sys.executable, "-c", CHILD, src], env=env, capture_output=True, text=True,
                                     check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        first, second = runs
        assert first["compiled"] == 2 and second["loaded"] == 2, (first, second)
        print(f"| {name} | {first['ops']} | {first['first']:.2f} s | {second['first']:.2f} s |", flush=True)


def products():
    print("| size (batch, input, hidden) | products alone |")
    print("|---|---|")
    rng = np.random.default_rng(0)
    for name, (B, I, H) in (("tiny", (1, 8, 16)), ("medium", (32, 100, 128)), ("large", (64, 256, 512))):
        T = 50
        f = lambda *s: rng.standard_normal(s).astype(np.float32)
        X, U, W, h, g = f(T * B, I), f(I, 4 * H), f(H, 4 * H), f(B, H), f(B, 4 * H)
        G, Hs = f(T * B, 4 * H), f(T * B, H)

        def step():
            X @ U
            for _ in range(T):
                h @ W
                g @ W.T
            X.T @ G
            Hs.T @ G
        times = []
        for _ in range(20 if H < 512 else 5):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(f"| {name} ({B}, {I}, {H}) | {statistics.median(times) * 1e3:.3f} ms |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["crossover", "compile", "products"], default=None)
    what = parser.parse_args().what
    if what in (None, "crossover"):
        crossover()
    if what in (None, "compile"):
        compile_table()
    if what in (None, "products"):
        products()


if __name__ == "__main__":
    main()
