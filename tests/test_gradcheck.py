"""mg.gradcheck as a public feature, and minigrad.testing used the way a user would."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from minigrad.testing import arrays, assert_grad_close, broadcastable_shapes, float_dtypes, tensors, valid_axes


@mg.primitive
def cube(x):
    return x ** 3, lambda g: (3 * x ** 2 * g,)


@mg.primitive
def wrong_cube(x):
    return x ** 3, lambda g: (2 * x ** 2 * g,)      # should be 3 x**2


def _leaf(values):
    return mg.Tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


# ---------------------------------------------------------------- passing

CORRECT = [
    ("cube", cube, [[0.5, -1.5, 2.0]]),
    ("tanh_layer", lambda x, w: (x @ w).tanh().sum(), [[[0.1, -0.3], [0.7, 0.2]], [[0.5], [-1.0]]]),
    ("softmax", lambda x: mg.softmax(x, axis=-1), [[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]]),
    ("broadcast", lambda a, b: a * b + b.exp(), [[[1.0], [2.0]], [0.3, -0.4, 1.1]]),
]


@pytest.mark.parametrize("fast_mode", [False, True])
@pytest.mark.parametrize("name, fn, values", CORRECT, ids=[c[0] for c in CORRECT])
def test_gradcheck_passes_correct_functions(name, fn, values, fast_mode):
    assert mg.gradcheck(fn, [_leaf(v) for v in values], fast_mode=fast_mode) is True


def test_gradcheck_leaves_its_inputs_alone():
    x = _leaf([0.5, -1.5])
    mg.gradcheck(cube, [x])
    assert x.grad is None
    np.testing.assert_array_equal(x.data, [0.5, -1.5])


# ---------------------------------------------------------------- catching a wrong vjp

def _numbers(message, word):
    return float(re.search(rf"{word} (\S+),", message).group(1))


def test_gradcheck_catches_a_wrong_vjp_and_names_input_and_values():
    x = _leaf([0.5, -1.5, 2.0])
    with pytest.raises(mg.GradcheckError) as info:
        mg.gradcheck(wrong_cube, [x])
    msg = str(info.value)
    assert "output 0" in msg and "input 0" in msg
    assert "d output[2] / d input[2]" in msg         # the worst element: x = 2
    assert _numbers(msg, "analytic") == pytest.approx(2 * 2.0 ** 2)
    assert _numbers(msg, "numeric") == pytest.approx(3 * 2.0 ** 2, rel=1e-6)


def test_gradcheck_names_the_input_that_is_wrong():
    a, b = _leaf([1.0, 2.0]), _leaf([0.5, 1.5])
    with pytest.raises(mg.GradcheckError, match="with respect to input 1"):
        mg.gradcheck(lambda a, b: a * 2.0 + wrong_cube(b), [a, b])


def test_gradcheck_names_the_output_that_is_wrong():
    a = _leaf([1.0, 2.0])
    with pytest.raises(mg.GradcheckError, match="output 1 with respect to input 0"):
        mg.gradcheck(lambda a: (cube(a), wrong_cube(a)), [a])


def test_gradcheck_fast_mode_catches_a_wrong_vjp():
    with pytest.raises(mg.GradcheckError, match="input 0.*projection"):
        mg.gradcheck(wrong_cube, [_leaf([0.5, -1.5, 2.0])], fast_mode=True)


def test_gradcheck_returns_false_without_raising():
    assert mg.gradcheck(wrong_cube, [_leaf([1.0, 2.0])], raise_exception=False) is False
    assert mg.gradcheck(cube, [_leaf([1.0, 2.0])], raise_exception=False) is True


def test_gradcheck_fails_where_the_function_is_undefined():
    # log at -1 is NaN: a finite analytic gradient must not pass against a NaN numeric one
    with np.errstate(invalid="ignore"):
        assert mg.gradcheck(mg.log, [_leaf([-1.0, 2.0])], raise_exception=False) is False


def test_gradcheck_error_is_an_assertion_error():
    assert issubclass(mg.GradcheckError, AssertionError)


# ---------------------------------------------------------------- inputs and outputs

def test_gradcheck_warns_for_float32_inputs():
    x = mg.Tensor(np.array([0.5, 1.5], np.float32), requires_grad=True)
    with pytest.warns(UserWarning, match="float64"):
        mg.gradcheck(cube, [x], atol=1e-2, rtol=1e-2)


def test_gradcheck_checks_a_float32_model_in_float32_and_warns_that_it_is_weak():
    mg.seed(0)
    lstm = mg.nn.LSTM(3, 4, dtype=np.float32)          # refuses float64 input: perturbing in float64 failed
    x32 = mg.Tensor(np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32), requires_grad=True)
    with pytest.warns(UserWarning, match="float32.*weak"):
        assert mg.gradcheck(lambda x: lstm(x).sum(), [x32])
    with pytest.warns(UserWarning, match="float32"):
        assert mg.gradcheck(lambda U: lstm(x32).sum(), [lstm.U], fast_mode=True)


def test_gradcheck_in_float32_still_catches_a_wrong_gradient():
    x = mg.Tensor(np.array([0.5, -1.5, 2.0], np.float32), requires_grad=True)
    with pytest.warns(UserWarning, match="float32"):
        assert mg.gradcheck(lambda t: cube(t).sum(), [x])
    with pytest.warns(UserWarning, match="float32"), pytest.raises(mg.GradcheckError, match="Jacobian mismatch"):
        mg.gradcheck(lambda t: wrong_cube(t).sum(), [x])


def test_gradcheck_handles_tuple_outputs_and_several_inputs():
    a, b = _leaf([[1.0, 2.0], [0.5, -1.0]]), _leaf([0.3, -0.7])
    assert mg.gradcheck(lambda a, b: (a @ b, (a * b).sum(axis=0), a.max()), [a, b])


def test_gradcheck_skips_inputs_that_do_not_require_grad():
    a, c = _leaf([1.0, 2.0]), mg.Tensor([3.0, 4.0])
    assert mg.gradcheck(lambda a, c: wrong_cube(c) + a, [a, c])     # wrong_cube only touches c
    with pytest.raises(ValueError, match="requires_grad"):
        mg.gradcheck(lambda c: c * 2.0, [c])


# ---------------------------------------------------------------- minigrad.testing, as a user writes it

@mg.primitive
def softplus(x):
    y = np.logaddexp(0.0, x)
    return y, lambda g: (g * 0.5 * (1 + np.tanh(0.5 * x)),)


@given(arrays(elements=(-5.0, 5.0)))
def test_user_primitive_gradient_property(x):
    assert_grad_close(lambda t: softplus(t), x)


@given(broadcastable_shapes(2).flatmap(lambda s: st.tuples(arrays(s[0]), arrays(s[1], elements=(0.5, 2.0)))))
def test_user_model_gradient_property(pair):
    a, b = pair
    assert_grad_close(lambda a, b: (softplus(a) / b).logsumexp(), a, b)


def test_assert_grad_close_fails_readably_for_a_wrong_vjp():
    with pytest.raises(AssertionError, match=r"input 0[\s\S]*inputs: 0: shape \(2,\) float64 = \[0.5, 2. \]"):
        assert_grad_close(wrong_cube, np.array([0.5, 2.0]))


def test_assert_grad_close_passes_tensors_through_as_constants():
    index = mg.Tensor(np.array([0.0, 1.0, 0.0]))      # requires_grad=False: not checked
    assert_grad_close(lambda x, c: x * c + wrong_cube(c), np.array([1.0, 2.0, 3.0]), index)


@given(tensors(shape=(2, 3), dtype=float_dtypes(), elements=(0.1, 1.0), requires_grad=True))
def test_tensors_strategy(t):
    assert isinstance(t, mg.Tensor) and t.shape == (2, 3) and t.requires_grad
    assert t.dtype in (np.float32, np.float64)
    assert np.all((t.data >= 0.1) & (t.data <= 1.0))


@given(st.data())
def test_arrays_draw_small_nonempty_shapes_including_scalars(data):
    x = data.draw(arrays())
    assert x.dtype == np.float64 and x.ndim <= 3 and x.size >= 1 and np.all(np.abs(x) <= 3)


@given(broadcastable_shapes(3))
def test_broadcastable_shapes_broadcast(shapes):
    assert len(shapes) == 3
    np.broadcast_shapes(*shapes)


@given(st.integers(0, 4).flatmap(lambda nd: st.tuples(st.just(nd), valid_axes(nd))))
def test_valid_axes_are_valid_for_numpy(case):
    ndim, axis = case
    np.sum(np.ones((2,) * ndim), axis=axis)


def test_importing_minigrad_does_not_import_hypothesis():
    code = "import sys, minigrad; assert 'hypothesis' not in sys.modules, 'hypothesis was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_points_only_to_files_an_install_has():
    """A pip install holds the minigrad package, not tests/, examples/ or benchmarks/: no docstring
    or message may send a reader there."""
    from pathlib import Path

    import minigrad
    root = Path(minigrad.__file__).parent
    pointers = re.compile(r"\b(tests|examples|benchmarks)/[\w./]+")
    found = {f"{path.relative_to(root)}: {m.group(0)}" for path in root.rglob("*.py")
             for m in pointers.finditer(path.read_text())}
    assert not found
