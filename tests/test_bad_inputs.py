"""Bad input, misuse and edge values, driven by one table.

Each row is a call and what it must do: raise an exception of a given type whose message holds
given words (``Raises``), warn and return a value (``Warns``), or return the correct value
(``Gives``: hand-derived, never the code's own output). Rows cover the cases that used to go
wrong silently or with an unclear error, and the ones that already work well, so none regresses.
Gradient conventions at the edges (0 ** 0, NaN in max) are cross-checked against PyTorch below.
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

import minigrad as mg
from minigrad import interop, nn
from minigrad.nn import functional as F


class Raises(NamedTuple):
    exc: type
    words: tuple = ()


class Warns(NamedTuple):
    category: type
    words: tuple
    value: Any


class Gives(NamedTuple):
    value: Any


class Row(NamedTuple):
    name: str
    call: Callable[[], Any]
    expect: Raises | Warns | Gives


def f64(*values):
    return np.array(values, dtype=np.float64)


def grad(fn, *values, dtype=np.float64):
    """The gradient of fn(x).sum() at x = values."""
    x = mg.Tensor(np.array(values, dtype=dtype), requires_grad=True)
    fn(x).sum().backward()
    return x.grad


def grads2(fn, a, b):
    """The gradients of fn(a, b).sum() with respect to both."""
    a = mg.Tensor(np.array(a, dtype=np.float64), requires_grad=True)
    b = mg.Tensor(np.array(b, dtype=np.float64), requires_grad=True)
    fn(a, b).sum().backward()
    return np.concatenate([a.grad, b.grad])


def set_grad(shape, value):
    p = nn.Parameter(np.ones(shape))
    p.grad = value
    return p.grad


def lstm_with_mask(mask, unroll=False):
    mg.seed(0)
    lstm = nn.LSTM(2, 3, unroll=unroll, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 4, 2))
    return lstm(x, mask=mask).data


def poly_features_weight_grad():
    """Polynomial features h ** k after a ReLU, into a Linear layer: its weight gradient is finite."""
    mg.seed(0)
    lin = nn.Linear(6, 1, dtype=np.float64)
    h = mg.Tensor(np.array([[-1.0, 2.0], [0.5, -3.0]])).relu()              # zeros where negative
    feats = mg.concatenate([h ** 0, h ** 1, h ** 2], axis=1)
    lin(feats).sum().backward()
    return bool(np.isfinite(lin.weight.grad).all())


def gradcheck_lstm32():
    mg.seed(0)
    lstm = nn.LSTM(2, 3, dtype=np.float32)
    x32 = mg.Tensor(np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32), requires_grad=True)
    return mg.gradcheck(lambda x: lstm(x).sum(), [x32])


def write_while_recorded(write):
    x = mg.Tensor(f64(1, 2, 3), requires_grad=True)
    y = (x * x).sum()       # noqa: F841  (the graph must be alive during the write)
    write(x)


def write_parameter(layer):
    x = np.ones((2, 4, 3) if isinstance(layer, nn.LSTM) else (2, 3), np.float32)
    out = layer(x).sum()    # noqa: F841  (the graph must be alive during the write)
    next(iter(layer.parameters())).data[...] = 1.0


def gradient_after_refused_write():
    x = mg.Tensor(f64(1, 2, 3), requires_grad=True)
    y = (x * x).sum()
    with pytest.raises(ValueError):
        x.data[...] = 10
    y.backward()
    return x.grad


def sgd_by_hand():
    p = nn.Parameter(f64(1, 2))
    same = p
    with mg.no_grad():
        p -= 0.5
    assert p is same
    return p.data


def backward_after_in_place():
    w = nn.Parameter(f64(1, 2))
    loss = (w * w).sum()
    with mg.no_grad():
        w -= 0.5
    loss.backward()


FILES = tempfile.mkdtemp(prefix="minigrad-bad-inputs-")
atexit.register(shutil.rmtree, FILES, True)


def checkpoint(kind):
    """The path of a file of ``kind`` that mg.load must refuse (or read back)."""
    path = os.path.join(FILES, kind)
    if kind == "text":
        with open(path, "w") as f:
            f.write("loss 0.1\n")
    elif kind == "pt":                            # the layout torch.save writes
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    elif kind == "member":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("w.txt", b"1 2 3")
    elif kind == "bomb":                          # 256 MiB of zeros, deflated to a fraction of 1 MB
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("w.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (1 << 25,)})
            for _ in range(256):
                f.write(bytes(1 << 20))
    elif kind == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"w": np.zeros(2)}, f)
    else:
        mg.save({"w": np.zeros(3), "w.npy": np.ones(2)}, path)
    return path


X23 = np.arange(6.0).reshape(2, 3)
LOG2 = np.log(2.0)
SIG = lambda v: 1 / (1 + np.exp(-v))   # noqa: E731

ROWS = [
    # -------------------------------------------------- the power family, sqrt, abs: PyTorch's values
    Row("x**0 at 0 has gradient 0", lambda: grad(lambda x: x ** 0, 0.0, 1.0), Gives(f64(0, 0))),
    Row("x**0.0 (a float exponent) at 0", lambda: grad(lambda x: x ** 0.0, 0.0, 2.0), Gives(f64(0, 0))),
    Row("relu then h**k into Linear: finite weight gradient", poly_features_weight_grad, Gives(True)),
    Row("x**2 at 0", lambda: grad(lambda x: x ** 2, 0.0, 1.0), Gives(f64(0, 2))),
    Row("x**3 at -2 and 0", lambda: grad(lambda x: x ** 3, -2.0, 0.0), Gives(f64(12, 0))),
    Row("x**0.5 at 0 is inf", lambda: grad(lambda x: x ** 0.5, 0.0, 1.0), Gives(f64(np.inf, 0.5))),
    Row("x**-1 at 0 is -inf", lambda: grad(lambda x: x ** -1.0, 0.0, 1.0), Gives(f64(-np.inf, -1))),
    Row("0**x for x >= 0 has gradient 0", lambda: grad(lambda x: 0.0 ** x, 0.0, 1.0, 2.0), Gives(f64(0, 0, 0))),
    Row("2**x", lambda: grad(lambda x: 2.0 ** x, 0.0, 1.0), Gives(f64(LOG2, 2 * LOG2))),
    Row("(-2)**x is NaN, not a silent 0", lambda: grad(lambda x: (-2.0) ** x, 1.0, 2.0), Gives(f64(np.nan, np.nan))),
    Row("a**b with both at 0", lambda: grads2(lambda a, b: a ** b, [0.0, 0.0, 2.0], [0.0, 2.0, 0.0]),
        Gives(f64(0, 0, 0, 0, 0, LOG2))),
    Row("sqrt at 0 is inf", lambda: grad(lambda x: x.sqrt(), 0.0, 1.0), Gives(f64(np.inf, 0.5))),
    Row("abs at 0 is 0", lambda: grad(lambda x: x.abs(), 0.0, -1.0, 1.0), Gives(f64(0, -1, 1))),
    Row("relu at NaN gives 0 (documented; PyTorch 1)", lambda: grad(lambda x: x.relu(), np.nan, -1.0, 2.0),
        Gives(f64(0, 0, 1))),
    Row("abs at NaN gives NaN (documented; PyTorch 0)", lambda: grad(lambda x: x.abs(), np.nan, -1.0),
        Gives(f64(np.nan, -1))),
    # -------------------------------------------------- max / min: ties and NaN
    Row("max: ties share", lambda: grad(lambda x: x.max(), 3.0, 1.0, 3.0), Gives(f64(0.5, 0, 0.5))),
    Row("max: a NaN takes the gradient", lambda: grad(lambda x: x.max(), 1.0, np.nan, 3.0), Gives(f64(0, 1, 0))),
    Row("min: a NaN takes the gradient", lambda: grad(lambda x: x.min(), 1.0, np.nan, 3.0), Gives(f64(0, 1, 0))),
    Row("max(axis): NaN only in its own row",
        lambda: grad(lambda x: x.reshape(2, 2).max(axis=1), 1.0, np.nan, 4.0, 2.0), Gives(f64(0, 1, 1, 0))),
    Row("maximum with NaN and a tie", lambda: grad(lambda x: mg.maximum(x, 2.0), 1.0, np.nan, 3.0, 2.0),
        Gives(f64(0, 1, 1, 0.5))),
    Row("minimum with NaN and a tie", lambda: grad(lambda x: mg.minimum(x, 2.0), 1.0, np.nan, 3.0, 2.0),
        Gives(f64(1, 1, 0, 0.5))),
    # -------------------------------------------------- var, means of nothing
    Row("var(ddof=4) of 3 elements: inf with a warning, never negative",
        lambda: mg.Tensor(X23).var(axis=1, ddof=4).data, Warns(RuntimeWarning, ("var", "(2, 3)"), f64(np.inf, np.inf))),
    Row("var(ddof=n)", lambda: mg.Tensor(f64(1, 2, 3)).var(ddof=3).data, Warns(RuntimeWarning, ("var",), np.inf)),
    Row("var(ddof=1)", lambda: mg.Tensor(f64(1, 2, 3)).var(ddof=1).data, Gives(1.0)),
    Row("mean of 0 rows is NaN with a warning", lambda: mg.Tensor(np.zeros((0, 3))).mean().data,
        Warns(RuntimeWarning, ("mean", "(0, 3)"), np.nan)),
    Row("mean(axis=0) of 0 rows", lambda: mg.Tensor(np.zeros((0, 3))).mean(axis=0).data,
        Warns(RuntimeWarning, ("mean",), f64(np.nan, np.nan, np.nan))),
    Row("var of 0 rows", lambda: mg.Tensor(np.zeros((0, 3))).var().data, Warns(RuntimeWarning, ("mean",), np.nan)),
    Row("Tensor(3.0).mean(axis=0)", lambda: mg.Tensor(3.0).mean(axis=0),
        Raises(np.exceptions.AxisError, ("mean", "axis 0", "shape ()"))),
    Row("mean(axis=2) of a matrix", lambda: mg.Tensor(X23).mean(axis=2), Raises(ValueError, ("mean", "(2, 3)"))),
    Row("mse_loss of 0 rows", lambda: F.mse_loss(mg.Tensor(np.zeros((0, 3))), np.zeros((0, 3))),
        Raises(ValueError, ("mse_loss", "empty", "(0, 3)"))),
    Row("binary_cross_entropy of 0 rows", lambda: F.binary_cross_entropy(mg.Tensor(np.zeros((0, 3))), np.zeros((0, 3))),
        Raises(ValueError, ("binary_cross_entropy", "empty", "(0, 3)"))),
    Row("cross_entropy of 0 rows", lambda: F.cross_entropy(mg.Tensor(np.zeros((0, 3))), np.zeros(0, int)),
        Raises(ValueError, ("cross_entropy", "empty", "(0,)"))),
    Row("mse_loss of 0 rows, reduction='sum'", lambda: F.mse_loss(mg.Tensor(np.zeros((0, 3))), np.zeros((0, 3)),
                                                                  reduction="sum").data, Gives(0.0)),
    # -------------------------------------------------- losses, sigmoid
    Row("binary_cross_entropy of a NaN probability", lambda: F.binary_cross_entropy(mg.Tensor(f64(0.5, np.nan)),
                                                                                    f64(1, 0)),
        Raises(ValueError, ("binary_cross_entropy", "NaN"))),
    Row("binary_cross_entropy of 1.5", lambda: F.binary_cross_entropy(mg.Tensor(f64(0.5, 1.5)), f64(1, 0)),
        Raises(ValueError, ("binary_cross_entropy", "[0, 1]", "logits"))),
    Row("float16 sigmoid(-20) is 0, not 1.7e-5",
        lambda: mg.sigmoid(mg.Tensor(np.array([-20.0, -15.0, 0.0, 20.0], np.float16))).data,
        Gives(SIG(f64(-20, -15, 0, 20)).astype(np.float16))),
    Row("float16 sigmoid keeps float16", lambda: mg.sigmoid(mg.Tensor(np.zeros(2, np.float16))).dtype,
        Gives(np.dtype(np.float16))),
    Row("float16 sigmoid's gradient at -20 and -13", lambda: grad(mg.sigmoid, -20.0, -13.0, dtype=np.float16),
        Gives((SIG(f64(-20, -13)) * (1 - SIG(f64(-20, -13)))).astype(np.float16))),
    Row("cross_entropy with float targets", lambda: F.cross_entropy(mg.Tensor(X23), f64(0, 1)),
        Raises(TypeError, ("cross_entropy", "integer"))),
    Row("cross_entropy target out of range", lambda: F.cross_entropy(mg.Tensor(X23), np.array([0, 3])),
        Raises(ValueError, ("cross_entropy", "[0, 3)"))),
    Row("mse_loss shapes differ", lambda: F.mse_loss(mg.Tensor(np.zeros((3, 1))), np.zeros(3)),
        Raises(ValueError, ("mse_loss", "(3, 1)", "(3,)"))),
    Row("dropout p=1", lambda: F.dropout(mg.Tensor(X23), p=1.0), Raises(ValueError, ("dropout", "[0, 1)"))),
    # -------------------------------------------------- shapes, sizes, operands
    Row("reshape(1.9, 6) is not truncated", lambda: mg.Tensor(np.ones(6)).reshape(1.9, 6),
        Raises(TypeError, ("reshape", "1.9", "integers"))),
    Row("reshape(np.int64(2), 3)", lambda: mg.Tensor(np.ones(6)).reshape(np.int64(2), 3).shape, Gives((2, 3))),
    Row("reshape to a wrong size", lambda: mg.Tensor(np.ones(6)).reshape(4, 2),
        Raises(ValueError, ("reshape", "(6,)"))),
    Row("chunk(x, 0)", lambda: mg.chunk(mg.Tensor(np.ones(4)), 0), Raises(ValueError, ("chunk", "at least 1", "0"))),
    Row("chunk(x, 1.5)", lambda: mg.chunk(mg.Tensor(np.ones(4)), 1.5), Raises(TypeError, ("chunk", "integer"))),
    Row("chunk(x, 3) of 4", lambda: [c.shape for c in mg.chunk(mg.Tensor(np.ones(4)), 3)], Gives([(2,), (2,)])),
    Row("split into unequal parts", lambda: mg.split(mg.Tensor(np.ones(4)), 3), Raises(ValueError, ("split", "(4,)"))),
    Row("x @ a nested list", lambda: (mg.Tensor(X23) @ [[1.0], [2.0], [3.0]]).data, Gives(X23 @ f64(1, 2, 3)[:, None])),
    Row("a nested list @ x", lambda: ([[1.0, 2.0]] @ mg.Tensor(X23)).data, Gives(f64(1, 2)[None] @ X23)),
    Row("x @ 'str'", lambda: mg.Tensor(np.ones(3)) @ "str", Raises(TypeError, ("matmul", "str"))),
    Row("x + 'a'", lambda: mg.Tensor(np.ones(3)) + "a", Raises(TypeError, ("add", "str"))),
    Row("Tensor(['a', 'b']) + 1 keeps numpy's words", lambda: mg.Tensor(["a", "b"]) + 1,
        Raises(TypeError, ("add", "(2,)", "did not contain a loop"))),
    Row("x + a dict", lambda: mg.Tensor(np.ones(3)) * {"a": 1}, Raises(TypeError, ("multiply", "dict"))),
    Row("x + [1, 2, 3]", lambda: (mg.Tensor(np.ones(3)) + [1.0, 2.0, 3.0]).data, Gives(f64(2, 3, 4))),
    Row("np.sum(t)", lambda: np.sum(mg.Tensor(np.ones(3), requires_grad=True)),
        Raises(TypeError, ("numpy.sum", "mg.sum", "numpy()"))),
    Row("shapes that do not broadcast", lambda: mg.Tensor(np.ones(2)) + mg.Tensor(np.ones(3)),
        Raises(ValueError, ("add", "(2,)", "(3,)", "broadcast"))),
    Row("matmul (2, 3) @ (2, 3)", lambda: mg.Tensor(X23) @ mg.Tensor(X23),
        Raises(ValueError, ("matmul", "(2, 3)", "3 != 2"))),
    Row("index out of range", lambda: mg.Tensor(X23)[5], Raises(IndexError, ("getitem", "(2, 3)"))),
    Row("expand_dims axis out of range", lambda: mg.expand_dims(mg.Tensor(X23), 5),
        Raises(np.exceptions.AxisError, ("expand_dims", "5"))),
    Row("an integer tensor cannot require grad", lambda: mg.Tensor(np.arange(3), requires_grad=True),
        Raises(TypeError, ("floating-point", "int64"))),
    # -------------------------------------------------- gradients and backward
    Row("p.grad of another shape", lambda: set_grad((2, 3), np.ones(3)),
        Raises(ValueError, ("grad", "(3,)", "(2, 3)"))),
    Row("p.grad of another dtype", lambda: set_grad((2, 3), np.ones((2, 3), np.float32)),
        Raises(TypeError, ("grad", "float32", "float64"))),
    Row("p.grad of the right shape", lambda: set_grad((2, 3), np.full((2, 3), 2.0)), Gives(np.full((2, 3), 2.0))),
    Row("p.grad = None", lambda: set_grad((2, 3), None), Gives(None)),
    Row("backward of a vector without grad=", lambda: (mg.Tensor(np.ones(3), requires_grad=True) * 2).backward(),
        Raises(RuntimeError, ("backward", "single-element", "(3,)"))),
    Row("backward of a tensor that needs no grad", lambda: mg.Tensor(1.0).backward(),
        Raises(RuntimeError, ("backward", "requires_grad"))),
    Row("SGD with lr=-1", lambda: mg.optim.SGD([nn.Parameter(np.ones(2))], lr=-1.0), Raises(ValueError, ("SGD", "lr"))),
    Row("gradcheck of a float32 LSTM checks in float32, warning that it is weak", lambda: gradcheck_lstm32(),
        Warns(UserWarning, ("gradcheck", "float32", "weak"), True)),
    # -------------------------------------------------- in-place changes
    Row("x.data[...] = 10 while a graph reads x", lambda: write_while_recorded(lambda x: x.data.__setitem__(..., 10)),
        Raises(ValueError, ("read-only",))),
    Row("np.copyto(x.data, ...) while a graph reads x", lambda: write_while_recorded(lambda x: np.copyto(x.data, 1)),
        Raises(ValueError, ("read-only",))),
    Row("np.add(..., out=x.data) while a graph reads x",
        lambda: write_while_recorded(lambda x: np.add(x.data, 1, out=x.data)), Raises(ValueError, ("read-only",))),
    Row("x.numpy()[0] = 5 while a graph reads x", lambda: write_while_recorded(lambda x: x.numpy().__setitem__(0, 5)),
        Raises(ValueError, ("read-only",))),
    Row("Linear weight write while a graph reads it", lambda: write_parameter(nn.Linear(3, 2)),
        Raises(ValueError, ("read-only",))),
    Row("LSTM (unrolled) parameter write while a graph reads it", lambda: write_parameter(nn.LSTM(3, 2, unroll=True)),
        Raises(ValueError, ("read-only",))),
    Row("LSTM (looped) parameter write while a graph reads it", lambda: write_parameter(nn.LSTM(3, 2)),
        Raises(ValueError, ("read-only",))),
    Row("the gradient after a refused write", lambda: gradient_after_refused_write(), Gives(f64(2, 4, 6))),
    Row("p -= d on a parameter outside no_grad", lambda: nn.Parameter(f64(1, 2)).__isub__(1.0),
        Raises(RuntimeError, ("-=", "leaf", "no_grad"))),
    Row("p[0] = v on a parameter outside no_grad", lambda: nn.Parameter(f64(1, 2)).__setitem__(0, 1.0),
        Raises(RuntimeError, ("item assignment", "leaf", "no_grad"))),
    Row("p -= d under no_grad changes p itself", lambda: sgd_by_hand(), Gives(f64(0.5, 1.5))),
    Row("backward after an in-place change of a saved value", lambda: backward_after_in_place(),
        Raises(RuntimeError, ("multiply", "modified in place"))),
    # -------------------------------------------------- checkpoints
    Row("mg.load of a text file", lambda: mg.load(checkpoint("text")), Raises(mg.CheckpointError, ("text file",))),
    Row("mg.load of a PyTorch file", lambda: mg.load(checkpoint("pt")),
        Raises(mg.CheckpointError, ("PyTorch", "minigrad.interop"))),
    Row("mg.load of a zip with a member that is no .npy", lambda: mg.load(checkpoint("member")),
        Raises(mg.CheckpointError, ("'w.txt'", "not a .npy array"))),
    Row("mg.load of a pickle", lambda: mg.load(checkpoint("pickle")),
        Raises(mg.CheckpointError, ("pickle", "never unpickles"))),
    Row("mg.load of a small deflated archive declaring 256 MiB", lambda: mg.load(checkpoint("bomb")),
        Raises(mg.CheckpointError, ("268435456 bytes", "max_bytes"))),
    Row("mg.load over max_bytes", lambda: mg.load(checkpoint("npz"), max_bytes=10),
        Raises(mg.CheckpointError, ("40 bytes", "max_bytes=10"))),
    Row("keys 'w' and 'w.npy' keep their own arrays", lambda: [a.tolist() for a in mg.load(checkpoint("npz")).values()],
        Gives([[0.0, 0.0, 0.0], [1.0, 1.0]])),
    Row("mg.load of a missing file", lambda: mg.load(os.path.join(FILES, "nothing.npz")),
        Raises(mg.CheckpointError, ("not found", "nothing.npz"))),
    Row("load_torch_lstm of a two-layer state dict into one layer (issue 15's interop)",
        lambda: interop.load_torch_lstm(nn.LSTM(2, 3), interop.torch_lstm_state_dict(nn.LSTM(2, 3, num_layers=2))),
        Raises(KeyError, ("weight_ih_l1", "nothing was loaded"))),
    Row("load_torch_gru of a one-direction state dict into a bidirectional GRU",
        lambda: interop.load_torch_gru(nn.GRU(2, 3, bidirectional=True), interop.torch_gru_state_dict(nn.GRU(2, 3))),
        Raises(KeyError, ("weight_ih_l0_reverse",))),
    # -------------------------------------------------- recurrent masks
    Row("LSTM mask of 0.3", lambda: lstm_with_mask(np.full((2, 4), 0.3)), Raises(ValueError, ("LSTM", "mask", "0.3"))),
    Row("LSTM mask with NaN", lambda: lstm_with_mask(np.where(np.eye(2, 4) > 0, np.nan, 1.0)),
        Raises(ValueError, ("LSTM", "mask", "nan"))),
    Row("LSTM mask of strings", lambda: lstm_with_mask(np.full((2, 4), "yes")),
        Raises(TypeError, ("LSTM", "mask", "<U3"))),
    Row("LSTM unrolled mask of 0.3", lambda: lstm_with_mask(np.full((2, 4), 0.3), unroll=True),
        Raises(ValueError, ("LSTM", "mask", "0.3"))),
    Row("LSTM mask of the wrong shape", lambda: lstm_with_mask(np.ones((4, 2), bool)),
        Raises(ValueError, ("LSTM", "mask", "(2, 4)", "(4, 2)"))),
    Row("LSTM mask of 0/1 floats is the boolean mask",
        lambda: np.abs(lstm_with_mask(np.array([[1.0, 1, 0, 0], [1, 1, 1, 1]]))
                       - lstm_with_mask(np.array([[True, True, False, False], [True] * 4]))).max(), Gives(0.0)),
    Row("LSTM input of the wrong rank", lambda: nn.LSTM(2, 3)(np.ones((4, 2), np.float32)),
        Raises(ValueError, ("LSTM", "(4, 2)"))),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(row):
    expect = row.expect
    if isinstance(expect, Raises):
        with pytest.raises(expect.exc) as info:
            row.call()
        for word in expect.words:
            assert word in str(info.value), f"{word!r} not in the message: {info.value}"
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = row.call()
    if isinstance(expect, Warns):
        messages = [str(w.message) for w in caught if issubclass(w.category, expect.category)]
        assert messages, f"no {expect.category.__name__}"
        assert any(all(word in m for word in expect.words) for m in messages), messages
    if isinstance(expect.value, np.ndarray) or isinstance(expect.value, float):
        assert np.shape(value) == np.shape(expect.value)
        np.testing.assert_array_equal(np.asarray(value, dtype=np.float64), np.asarray(expect.value, np.float64))
    else:
        assert value == expect.value


# ---------------------------------------------------------------- the same conventions as PyTorch

TORCH_GRADS = [
    ("x**0", lambda x: x ** 0, [0.0, 1.0]),
    ("x**0.5", lambda x: x ** 0.5, [0.0, 1.0]),
    ("x**-1", lambda x: x ** -1.0, [0.0, 2.0]),
    ("x**3", lambda x: x ** 3, [-2.0, 0.0]),
    ("0**x", lambda x: 0.0 ** x, [0.0, 1.0, 2.0]),
    ("2**x", lambda x: 2.0 ** x, [0.0, 1.5]),
    ("(-2)**x", lambda x: (-2.0) ** x, [1.0, 2.0]),
    ("sqrt", lambda x: x.sqrt(), [0.0, 4.0]),
    ("abs", lambda x: x.abs(), [0.0, -1.0]),
    ("max tie", lambda x: x.max(), [3.0, 1.0, 3.0]),
    ("max nan", lambda x: x.max(), [1.0, np.nan, 3.0]),
    ("min nan", lambda x: x.min(), [1.0, np.nan, 3.0]),
    ("maximum", lambda x: x.maximum(x * 0 + 2.0), [1.0, np.nan, 3.0, 2.0]),
    ("minimum", lambda x: x.minimum(x * 0 + 2.0), [1.0, np.nan, 3.0, 2.0]),
]


@pytest.mark.parametrize("name, fn, values", TORCH_GRADS, ids=[r[0] for r in TORCH_GRADS])
def test_edge_gradients_match_pytorch(name, fn, values):
    torch = pytest.importorskip("torch")
    ours = grad(fn, *values)
    t = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    torch_fn = {"maximum": lambda x: torch.maximum(x, x * 0 + 2.0),
                "minimum": lambda x: torch.minimum(x, x * 0 + 2.0)}.get(name, fn)
    torch_fn(t).sum().backward()
    np.testing.assert_array_equal(ours, t.grad.numpy())


def test_power_of_two_tensors_matches_pytorch():
    torch = pytest.importorskip("torch")
    a, b = [0.0, 0.0, 2.0, -2.0, 3.0], [0.0, 2.0, 0.0, 2.0, -1.0]
    ours = grads2(lambda x, y: x ** y, a, b)
    ta = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    (ta ** tb).sum().backward()
    np.testing.assert_array_equal(ours, np.concatenate([ta.grad.numpy(), tb.grad.numpy()]))


def test_float16_sigmoid_matches_pytorch():
    torch = pytest.importorskip("torch")
    v = np.linspace(-20, 20, 81).astype(np.float16)
    ours = mg.sigmoid(mg.Tensor(v)).data
    np.testing.assert_array_equal(ours, torch.sigmoid(torch.tensor(v)).numpy())
