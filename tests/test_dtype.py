"""One default dtype: Python numbers and lists, the factories and new layers' parameters follow
``mg.get_default_dtype()`` (float32 to start, as PyTorch and Keras); numpy arrays keep theirs.
An input whose dtype differs from a layer's is cast, whether or not it requires grad."""
import numpy as np
import pytest

import minigrad as mg
from minigrad import nn

# name -> a function making something whose .dtype (or whose parameters' dtype) should follow the default
FOLLOW = {
    "Tensor(list)": lambda: mg.Tensor([1.5, 2.0]),
    "Tensor(int list)": lambda: mg.Tensor([1, 2]),
    "Tensor(number)": lambda: mg.Tensor(2.5),
    "Tensor(bool)": lambda: mg.Tensor(True),
    "tensor(list)": lambda: mg.tensor([[1.0]]),
    "Parameter(list)": lambda: nn.Parameter([1.0, 2.0]),
    "zeros": lambda: mg.zeros(2, 3),
    "ones": lambda: mg.ones((2,)),
    "full": lambda: mg.full((2,), 3.5),
    "randn": lambda: mg.randn(2, 2),
    "rand": lambda: mg.rand(3),
    "arange": lambda: mg.arange(4),
    "init.glorot_uniform": lambda: nn.init.glorot_uniform((2, 3)),
    "init.zeros": lambda: nn.init.zeros((2,)),
    "Linear": lambda: nn.Linear(2, 3),
    "Embedding": lambda: nn.Embedding(5, 2),
    "Embedding(padding_idx)": lambda: nn.Embedding(5, 2, padding_idx=0),
    "LayerNorm": lambda: nn.LayerNorm((2, 3)),
    "LSTM": lambda: nn.LSTM(2, 3),
    "GRU": lambda: nn.GRU(2, 3, unroll=True),
    "RNN": lambda: nn.RNN(2, 3),
    "LSTMCell": lambda: nn.LSTMCell(2, 3),
    "GRUCell": lambda: nn.GRUCell(2, 3),
    "RNNCell": lambda: nn.RNNCell(2, 3),
}

# these keep their own dtype whatever the default
KEEP = {
    "Tensor(float32 array)": (lambda: mg.Tensor(np.ones(2, np.float32)), np.float32),
    "Tensor(float64 array)": (lambda: mg.Tensor(np.ones(2, np.float64)), np.float64),
    "Tensor(int array)": (lambda: mg.Tensor(np.arange(3)), np.arange(3).dtype),
    "Tensor(numpy float64 scalar)": (lambda: mg.Tensor(np.float64(1.0)), np.float64),
    "Tensor(list, dtype=float64)": (lambda: mg.Tensor([1.0], dtype=np.float64), np.float64),
    "zeros(dtype=float64)": (lambda: mg.zeros(2, dtype=np.float64), np.float64),
    "randn(dtype=float32)": (lambda: mg.randn(2, dtype=np.float32), np.float32),
    "zeros_like(float64)": (lambda: mg.zeros_like(np.ones(2)), np.float64),
    "Linear(dtype=float64)": (lambda: nn.Linear(2, 2, dtype=np.float64), np.float64),
    "LSTM(dtype=float32)": (lambda: nn.LSTM(2, 2, dtype=np.float32), np.float32),
    "Parameter(float64 array)": (lambda: nn.Parameter(np.ones(2)), np.float64),
}


def dtypes_of(made):
    if isinstance(made, nn.Module):
        return {p.dtype for p in made.parameters()}
    return {made.dtype}


def test_the_default_starts_as_float32():
    assert mg.get_default_dtype() == np.float32


@pytest.mark.parametrize("name", FOLLOW)
@pytest.mark.parametrize("default", [np.float32, np.float64])
def test_numbers_factories_and_layers_follow_the_default(name, default):
    assert dtypes_of(FOLLOW[name]()) == {np.dtype(np.float32)}        # before
    mg.set_default_dtype(default)
    assert mg.get_default_dtype() == default
    assert dtypes_of(FOLLOW[name]()) == {np.dtype(default)}           # after


@pytest.mark.parametrize("name", KEEP)
@pytest.mark.parametrize("default", [np.float32, np.float64])
def test_arrays_and_explicit_dtypes_keep_theirs(name, default):
    make, dtype = KEEP[name]
    mg.set_default_dtype(default)
    assert dtypes_of(make()) == {np.dtype(dtype)}


def test_a_layer_keeps_the_dtype_it_was_built_with():
    layer = nn.Linear(2, 2)
    mg.set_default_dtype(np.float64)
    assert layer.weight.dtype == np.float32 and layer(mg.Tensor([[1.0, 2.0]])).dtype == np.float32


@pytest.mark.parametrize("bad", [np.float16, np.int64, "int32", None, "not a dtype", complex])
def test_only_float32_and_float64_can_be_the_default(bad):
    with pytest.raises(TypeError, match="set_default_dtype: the default dtype must be float32 or float64"):
        mg.set_default_dtype(bad)
    assert mg.get_default_dtype() == np.float32                       # unchanged


def test_dtype_strings_are_accepted():
    mg.set_default_dtype("float64")
    assert mg.zeros(1).dtype == np.float64


LAYERS = {
    "Linear": (lambda dt: nn.Linear(3, 2, dtype=dt), (4, 3)),
    "LSTM": (lambda dt: nn.LSTM(3, 2, dtype=dt), (4, 5, 3)),
    "GRU unrolled": (lambda dt: nn.GRU(3, 2, unroll=True, dtype=dt), (4, 5, 3)),
    "RNNCell": (lambda dt: nn.RNNCell(3, 2, dtype=dt), (4, 3)),
    "LayerNorm": (lambda dt: nn.LayerNorm(3, dtype=dt), (4, 3)),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("layer_dtype, input_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_a_mismatched_input_is_cast_whether_or_not_it_requires_grad(name, layer_dtype, input_dtype):
    make, shape = LAYERS[name]
    layer = make(layer_dtype)
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype)
    want = layer(x.astype(layer_dtype)).numpy()
    for requires_grad in (False, True):
        t = mg.Tensor(x, requires_grad=requires_grad)
        out = layer(t)
        assert out.dtype == layer_dtype
        np.testing.assert_array_equal(out.numpy(), want)
    out.sum().backward()
    assert t.grad.dtype == input_dtype and t.grad.shape == shape
    ref = mg.Tensor(x.astype(layer_dtype), requires_grad=True)        # the gradient is the cast-back one
    layer(ref).sum().backward()
    np.testing.assert_array_equal(t.grad, ref.grad.astype(input_dtype))


def test_a_non_numeric_input_is_a_clear_error():
    with pytest.raises(TypeError, match=r"Linear\(3, 2\): input must be numeric, got dtype <U1"):
        nn.Linear(3, 2)(np.array([["a", "b", "c"]]))


@pytest.mark.parametrize("default", [np.float32, np.float64])
def test_summary_feeds_a_parameter_free_model_the_default_dtype(default):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x

    mg.set_default_dtype(default)
    nn.summary(Probe(), (3,))
    assert set(seen) == {np.dtype(default)}
