"""minigrad.interop's Keras side (issue 16): from_keras, load_keras_weights, save_keras_weights.

Keras 3 (JAX backend) is the independent reference: converted models predict what Keras predicts
(1e-5, float32) for batch sizes and lengths other than the ones Keras was built with; weight files
go both ways and Keras's own load_weights accepts minigrad's; the Q&A's model keeps its summary.
"""
import os
import re

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")
from keras import layers  # noqa: E402

import minigrad as mg  # noqa: E402
from minigrad import interop, nn  # noqa: E402

F = 6          # features


def randomize_keras(model, seed, scale=0.5):
    """Every weight random (biases too), so no zero or one hides a layout mistake."""
    rng = np.random.default_rng(seed)
    model.set_weights([(scale * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
    return model


def seq(batch=3, time=7, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, time, F)).astype(np.float32)


def ids(batch=3, time=7, seed=0):
    return np.random.default_rng(seed).integers(0, 9, size=(batch, time)).astype(np.int32)


def assert_same_predictions(kmodel, model, x):
    want = kmodel(x, training=False)
    want = [np.asarray(w) for w in (want if isinstance(want, (list, tuple)) else [want])]
    got = model(x)
    got = [g.numpy() for g in (got if isinstance(got, tuple) else (got,))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def sequential(*body, inp=None):
    return keras.Sequential([inp if inp is not None else keras.Input((None, F)), *body])


KERAS_MODELS = {
    "Dense-linear": lambda: sequential(layers.Dense(4)),
    "Dense-nobias-relu": lambda: sequential(layers.Dense(4, use_bias=False, activation="relu")),
    "Dense-tanh-gelu": lambda: sequential(layers.Dense(4, activation="tanh"), layers.Dense(3, activation="gelu")),
    "Dense-softmax": lambda: sequential(layers.Dense(4, activation="softmax")),
    "Dense-leaky": lambda: sequential(layers.Dense(4, activation="leaky_relu")),
    "Activation": lambda: sequential(layers.Activation("sigmoid"), layers.Activation("linear")),
    "Dropout": lambda: sequential(layers.Dropout(0.4)),
    "LayerNormalization": lambda: sequential(layers.LayerNormalization(epsilon=1e-2)),
    "LayerNormalization-noaffine": lambda: sequential(layers.LayerNormalization(center=False, scale=False)),
    "LayerNormalization-scale-only": lambda: sequential(layers.LayerNormalization(center=False)),
    "Embedding": lambda: sequential(layers.Embedding(9, 4), inp=keras.Input((None,), dtype="int32")),
    "LSTM": lambda: sequential(layers.LSTM(5)),
    "LSTM-seq-recurrent-dropout": lambda: sequential(layers.LSTM(5, return_sequences=True, recurrent_dropout=0.3)),
    "LSTM-state": lambda: sequential(layers.LSTM(5, return_state=True)),
    "GRU": lambda: sequential(layers.GRU(5)),
    "GRU-seq": lambda: sequential(layers.GRU(5, return_sequences=True)),
    "SimpleRNN": lambda: sequential(layers.SimpleRNN(5)),
    "SimpleRNN-seq": lambda: sequential(layers.SimpleRNN(5, return_sequences=True)),
    "Bidirectional-LSTM": lambda: sequential(layers.Bidirectional(layers.LSTM(5))),
    "Bidirectional-GRU-seq": lambda: sequential(layers.Bidirectional(layers.GRU(5, return_sequences=True))),
    "Bidirectional-SimpleRNN": lambda: sequential(layers.Bidirectional(layers.SimpleRNN(5))),
    "stack": lambda: sequential(layers.Embedding(9, F), layers.Bidirectional(layers.LSTM(5, return_sequences=True)),
                                layers.LayerNormalization(), layers.GRU(4, return_sequences=True),
                                layers.Dropout(0.2), layers.SimpleRNN(3), layers.Dense(2, activation="softmax"),
                                inp=keras.Input((None,), dtype="int32")),
}


def data_for(kmodel, **kw):
    return ids(**kw) if kmodel.inputs[0].dtype.startswith("int") else seq(**kw)


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_each_layer_converts_with_keras_predictions(name):
    kmodel = randomize_keras(KERAS_MODELS[name](), 1)
    model = interop.from_keras(kmodel)
    assert not model.training
    assert_same_predictions(kmodel, model, data_for(kmodel, batch=2, time=9, seed=3))


def test_a_functional_chain_converts():
    inp = keras.Input((None, F))
    out = layers.Dense(2, activation="sigmoid")(layers.GRU(4, return_sequences=True)(layers.Dropout(0.1)(inp)))
    kmodel = randomize_keras(keras.Model(inp, out), 2)
    model = interop.from_keras(kmodel)
    assert [type(m).__name__ for m in model] == ["Dropout", "GRU", "Linear", "Sigmoid"]
    assert_same_predictions(kmodel, model, seq(seed=4))


# ---------------------------------------------------------------- the Q&A's model

def qa_model():
    return keras.Sequential([keras.Input((None, 100)), layers.LSTM(128), layers.Dropout(0.5),
                             layers.Dense(1, activation="sigmoid")])


def test_the_qa_model_predicts_and_summarizes_as_in_keras():
    kmodel = qa_model()
    model = interop.from_keras(kmodel)
    x = np.random.default_rng(5).standard_normal((8, 15, 100)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), kmodel.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert [layer.count_params() for layer in kmodel.layers] == [117_248, 0, 129]
    text = nn.summary(model, (None, 100))
    rows = [int(n.replace(",", "")) for n in re.findall(r"^\S+ \(\w+\) +\([^)]*\) +([\d,]+)$", text, re.M)]
    assert rows == [117_248, 0, 129, 0]                         # LSTM, Dropout, Linear, Sigmoid
    assert "Total params: 117,377" in text and kmodel.count_params() == 117_377


# ---------------------------------------------------------------- .weights.h5 files both ways

def test_keras_weights_load_into_minigrad(tmp_path):
    kmodel = randomize_keras(KERAS_MODELS["stack"](), 6)
    kmodel.save_weights(tmp_path / "k.weights.h5")
    model = interop.from_keras(KERAS_MODELS["stack"]())         # another Keras model's weights, to be replaced
    interop.load_keras_weights(model, tmp_path / "k.weights.h5")
    assert_same_predictions(kmodel, model, ids(seed=7))


def test_minigrad_weights_load_into_keras(tmp_path):
    model = nn.Sequential(nn.Embedding(9, F), nn.LSTM(F, 5, num_layers=2, bidirectional=True, return_sequences=True),
                          nn.LayerNorm(10), nn.GRU(10, 4), nn.Dropout(0.2), nn.Linear(4, 2), nn.Softmax())
    rng = np.random.default_rng(9)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape).astype(np.float32) * 0.5
    interop.save_keras_weights(model, tmp_path / "m.weights.h5")
    kmodel = sequential(layers.Embedding(9, F), layers.Bidirectional(layers.LSTM(5, return_sequences=True)),
                        layers.Bidirectional(layers.LSTM(5, return_sequences=True)),    # the stacked layer's l1
                        layers.LayerNormalization(epsilon=1e-5), layers.GRU(4), layers.Dropout(0.2),
                        layers.Dense(2, activation="softmax"), inp=keras.Input((None,), dtype="int32"))
    kmodel.load_weights(tmp_path / "m.weights.h5")
    assert_same_predictions(kmodel, model.eval(), ids(seed=8))


MINIGRAD_MODELS = {
    "Linear": lambda: nn.Linear(F, 3), "Linear-nobias": lambda: nn.Linear(F, 3, bias=False),
    "Embedding": lambda: nn.Embedding(9, F), "LayerNorm": lambda: nn.LayerNorm(F),
    "LayerNorm-nobias": lambda: nn.LayerNorm(F, bias=False),
    "LayerNorm-noaffine": lambda: nn.Sequential(nn.LayerNorm(F, elementwise_affine=False), nn.Linear(F, 2)),
    "LSTM-2-bi": lambda: nn.LSTM(F, 4, num_layers=2, bidirectional=True),
    "GRU-2": lambda: nn.GRU(F, 4, num_layers=2), "RNN-bi": lambda: nn.RNN(F, 4, bidirectional=True),
    "mixed": lambda: nn.Sequential(nn.Linear(F, 4), nn.ReLU(), nn.LSTM(4, 3), nn.Dropout(0.1), nn.Linear(3, 2)),
}


@pytest.mark.parametrize("name", sorted(MINIGRAD_MODELS))
def test_each_layer_round_trips_through_a_weights_file(name, tmp_path):
    model, twin = MINIGRAD_MODELS[name](), MINIGRAD_MODELS[name]()
    rng = np.random.default_rng(10)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape).astype(p.dtype)
    interop.save_keras_weights(model, tmp_path / "m.weights.h5")
    interop.load_keras_weights(twin, tmp_path / "m.weights.h5")
    for (k, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def snapshot(model):
    return [p.numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("other, words", [
    (lambda: sequential(layers.LSTM(5), layers.Dense(2, use_bias=False)), ["missing", "layers/dense/vars/1"]),
    (lambda: sequential(layers.LSTM(5), layers.Dense(2), layers.Dense(1)), ["unused", "layers/dense_1/vars/0"]),
    (lambda: sequential(layers.LSTM(4), layers.Dense(2)), ["layers/lstm/cell/vars/0 is (6, 16) in the file, "
                                                           "(6, 20) in the model"]),
    (lambda: sequential(layers.GRU(5), layers.Dense(2)), ["layers/gru/cell/vars/0", "layers/lstm/cell/vars/0"]),
], ids=["no-bias", "extra-layer", "other-units", "other-kind"])
def test_a_file_that_does_not_fit_is_refused_and_nothing_changes(other, words, tmp_path):
    kother = other()
    kother.save_weights(tmp_path / "other.weights.h5")
    model = nn.Sequential(nn.LSTM(F, 5), nn.Linear(5, 2), nn.Sigmoid())
    before = snapshot(model)
    with pytest.raises((KeyError, ValueError)) as e:
        interop.load_keras_weights(model, tmp_path / "other.weights.h5")
    for w in words:
        assert w in str(e.value)
    for a, b in zip(before, snapshot(model)):
        np.testing.assert_array_equal(a, b)


def test_a_layer_without_a_keras_counterpart_writes_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(F, 2), nn.Flatten())
    with pytest.raises(TypeError, match="layer 1, Flatten"):
        interop.save_keras_weights(model, tmp_path / "m.weights.h5")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- what from_keras refuses

@pytest.mark.parametrize("make, error, words", [
    (lambda: sequential(layers.Conv1D(3, 2)), TypeError, ["Conv1D", "layer 0"]),
    (lambda: sequential(layers.LSTM(3, activation="relu")), ValueError, ["activation='relu'"]),
    (lambda: sequential(layers.GRU(3, reset_after=False)), ValueError, ["reset_after=False"]),
    (lambda: sequential(layers.LSTM(3, dropout=0.2)), ValueError, ["dropout=0.2"]),
    (lambda: sequential(layers.LSTM(3, go_backwards=True)), ValueError, ["go_backwards=True"]),
    (lambda: sequential(layers.Bidirectional(layers.LSTM(3), merge_mode="sum")), ValueError, ["merge_mode='sum'"]),
    (lambda: sequential(layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(3, go_backwards=True,
                                                                                        use_bias=False))),
     ValueError, ["configured differently"]),
    (lambda: sequential(layers.Dense(3, activation="elu")), ValueError, ["'elu'"]),
    (lambda: sequential(layers.Embedding(9, 3, mask_zero=True), inp=keras.Input((None,), dtype="int32")),
     ValueError, ["mask_zero=True"]),
], ids=["conv", "relu-lstm", "gru-reset-before", "input-dropout", "go-backwards", "merge-sum", "backward-differs",
         "elu", "mask-zero"])
def test_unsupported_keras_layers_are_named(make, error, words):
    kmodel = make()
    before = [w.copy() for w in kmodel.get_weights()]
    with pytest.raises(error) as e:
        interop.from_keras(kmodel)
    for w in words:
        assert w in str(e.value)
    for a, b in zip(before, kmodel.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_functional_model_that_is_not_a_chain_is_refused():
    inp = keras.Input((None, F))
    a = layers.Dense(3)(inp)
    out = layers.Add()([a, layers.Dense(3)(inp)])
    with pytest.raises(ValueError, match="chain"):
        interop.from_keras(keras.Model(inp, out))


def test_minigrad_is_imported_without_keras_h5py_or_onnx():
    import subprocess
    import sys
    code = ("import sys, minigrad, minigrad.interop, minigrad.onnx; "
            "print(sorted(m for m in ('keras', 'h5py', 'onnx', 'torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]"
    assert mg.interop.from_keras is interop.from_keras
