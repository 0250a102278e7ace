"""Write your own op, and check its gradient before you trust it.

A minigrad op is a function on numpy arrays that returns its output and its vector-Jacobian
product (vjp): given the gradient g of the loss with respect to the output, the gradient with
respect to each input (``None`` where there is none). ``@mg.primitive`` turns it into an op on
Tensors that records itself in the graph; minigrad's own ops are written the same way.

The op here is softplus, log(1 + exp(x)), written so it never overflows: the textbook formula
gives inf at x = 1000, ``np.logaddexp(0, x)`` gives 1000. Its derivative is sigmoid(x), which
is exp(x - softplus(x)), also safe for every x since x - softplus(x) <= 0.

Then three checks, from quick to thorough:
1. ``mg.gradcheck``: the vjp against central finite differences, entry by entry, in float64;
2. a hypothesis property test built from ``minigrad.testing``: the same check on many drawn
   shapes and values (hypothesis shrinks any failure to a small example), and a property of the
   forward: softplus(x) - softplus(-x) = x;
3. a deliberately wrong vjp (sigmoid(-x) instead of sigmoid(x)): gradcheck catches it and says
   where.
Last, the op works inside ``mg.scan``'s looped graph too, with the same gradients as a plain loop.

Run:  python examples/gradcheck_your_op.py [--quick]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import minigrad as mg


@mg.primitive
def softplus(x):
    """log(1 + exp(x)) for any x, without overflow."""
    out = np.logaddexp(0.0, x)

    def vjp(g):
        return (g * np.exp(x - out),)     # d softplus / dx = sigmoid(x) = exp(x - softplus(x))
    return out, vjp


@mg.primitive
def softplus_wrong(x):
    """The same forward with a sign slip in the derivative: sigmoid(-x) instead of sigmoid(x)."""
    out = np.logaddexp(0.0, x)

    def vjp(g):
        return (g * np.exp(-x - np.logaddexp(0.0, -x)),)
    return out, vjp


def property_tests(max_examples):
    """Hypothesis tests, run here by calling them (in a test file, pytest would collect them).
    Returns the number that failed (0 if hypothesis is not installed)."""
    try:
        from hypothesis import given, settings

        from minigrad.testing import arrays, assert_grad_close
    except ImportError:
        print("   hypothesis is not installed (pip install 'minigrad[test]' or pip install hypothesis): skipped")
        return 0

    @settings(max_examples=max_examples, deadline=None)
    @given(arrays(elements=(-30.0, 30.0)))          # float64 arrays of drawn shapes, up to 3 dims of 1..4
    def test_softplus_gradient(x):
        assert_grad_close(softplus, x)             # gradcheck on fresh float64 leaves, with a clear message

    @settings(max_examples=max_examples, deadline=None)
    @given(arrays(elements=(-1e3, 1e3)))
    def test_softplus_identity(x):
        t = mg.Tensor(x)
        np.testing.assert_allclose((softplus(t) - softplus(-t)).data, x, rtol=1e-12, atol=1e-12)

    failed = 0
    for test in (test_softplus_gradient, test_softplus_identity):
        try:
            test()                                  # hypothesis runs the examples; a failure raises
            print(f"   PASS  {test.__name__} ({max_examples} drawn examples)")
        except AssertionError as err:               # after shrinking to the smallest failing example
            print(f"   FAIL  {test.__name__}: {err}")
            failed += 1
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer hypothesis examples (for CI)")
    args = parser.parse_args(argv)
    failures = 0

    print("0. softplus never overflows")
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    with np.errstate(over="ignore"):
        naive = np.log1p(np.exp(x))
    def row(values):
        return "".join(f"{v:>11.4f}" for v in values)
    print(f"   x               {row(x)}")
    print(f"   log(1 + exp(x)) {row(naive)}")
    print(f"   softplus(x)     {row(softplus(mg.Tensor(x)).data)}")

    print("\n1. mg.gradcheck against finite differences (float64)")
    rng = np.random.default_rng(0)
    t = mg.Tensor(rng.uniform(-5, 5, (3, 4)), requires_grad=True)
    ok = mg.gradcheck(lambda a: softplus(a * 2.0).sum(axis=1), [t])   # composed with other ops too
    print(f"   {'PASS' if ok else 'FAIL'}  the vjp of softplus matches")
    failures += not ok

    print("\n2. hypothesis property tests from minigrad.testing")
    failures += property_tests(10 if args.quick else 100)

    print("\n3. a wrong vjp is caught")
    try:
        mg.gradcheck(softplus_wrong, [t])
        print("   FAIL  gradcheck did not notice the wrong derivative")
        failures += 1
    except mg.GradcheckError as err:
        print(f"   PASS  gradcheck raised GradcheckError:\n         {err}")

    print("\n4. in a looped graph: h_t = softplus(h_(t-1) W + x_t) - 1 through mg.scan and a plain loop")
    W = mg.Tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    xs = mg.Tensor(rng.standard_normal((6, 2, 3)))

    def body(h, x_t):
        h = softplus(h @ W + x_t) - 1.0
        return h, h

    h0 = mg.Tensor(np.zeros((2, 3)))
    h_last, _ = mg.scan(body, h0, xs)              # one graph node for all 6 steps
    h_last.sum().backward()
    looped = W.grad
    W.grad = None
    h = h0
    for t_ in range(xs.shape[0]):                  # the plain loop scan stands for
        h, _ = body(h, xs[t_])
    h.sum().backward()
    diff = np.abs(looped - W.grad).max()
    print(f"   {'PASS' if diff < 1e-12 else 'FAIL'}  dL/dW agrees: max |diff| {diff:.1e}")
    failures += diff >= 1e-12

    print(f"\n{'All checks passed.' if not failures else f'{failures} check(s) FAILED.'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
