"""minigrad.onnx.export (issue 16): files that pass onnx.checker and that onnxruntime, an independent
implementation of ONNX's LSTM / GRU / RNN operators, runs to minigrad's outputs (1e-5, float32) for
batch sizes and lengths other than the example's; masks as sequence lengths; clear refusals.
"""
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn

try:
    import onnx
    import onnxruntime as ort
except ImportError:
    onnx = ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="onnx and onnxruntime are optional (minigrad[interop])")

F32 = np.float32
I, H = 4, 5


def randomize(model, seed, scale=0.6):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = (scale * rng.standard_normal(p.shape)).astype(p.dtype)
    return model


def floats(batch, time, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, time, I)).astype(F32)


def tokens(batch, time, seed=0):
    return np.random.default_rng(seed).integers(0, 7, size=(batch, time))


def run(path, x, **extra):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x, **extra})


def minigrad_outputs(model, x, mask=None):
    model.eval()
    x = mg.Tensor(x)
    y = model(x) if mask is None else model(x, mask=mask)
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def assert_close(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


LAYERS = {
    "Linear": (lambda: nn.Linear(I, 3), floats),
    "Linear-nobias": (lambda: nn.Linear(I, 3, bias=False), floats),
    "Embedding": (lambda: nn.Embedding(7, I), tokens),
    "LayerNorm": (lambda: nn.LayerNorm(I, eps=1e-3), floats),
    "LayerNorm-2axes-noaffine": (lambda: nn.LayerNorm((3, I), elementwise_affine=False), lambda b, t, seed=0:
                                 floats(b, 3, seed) if t is None else floats(b, 3, seed)),
    "Dropout": (lambda: nn.Dropout(0.5), floats),
    "ReLU": (nn.ReLU, floats), "Tanh": (nn.Tanh, floats), "Sigmoid": (nn.Sigmoid, floats),
    "GELU": (nn.GELU, floats), "GELU-tanh": (lambda: nn.GELU("tanh"), floats),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), floats), "Softmax": (lambda: nn.Softmax(dim=1), floats),
    "Flatten": (nn.Flatten, floats), "Flatten-middle": (lambda: nn.Flatten(0, 1), floats),
    "Identity": (nn.Identity, floats),
}
for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    _n = _cls.__name__
    LAYERS[_n] = (lambda c=_cls: c(I, H), floats)
    LAYERS[_n + "-seq"] = (lambda c=_cls: c(I, H, return_sequences=True), floats)
    LAYERS[_n + "-state"] = (lambda c=_cls: c(I, H, return_state=True), floats)
    LAYERS[_n + "-bi-2"] = (lambda c=_cls: c(I, H, num_layers=2, bidirectional=True), floats)
    LAYERS[_n + "-bi-2-seq-state"] = (lambda c=_cls: c(I, H, num_layers=2, bidirectional=True, return_sequences=True,
                                                       return_state=True), floats)


@needs_onnx
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_runs_in_onnxruntime_as_in_minigrad(name, tmp_path):
    make, data = LAYERS[name]
    model = randomize(make(), 1)
    path = tmp_path / "m.onnx"
    proto = mg.onnx.export(model, data(3, 6), path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)          # the file, read back
    assert proto.SerializeToString() == path.read_bytes()
    x = data(2, 9, seed=5)                               # another batch size and length: dynamic axes
    assert_close(run(path, x), minigrad_outputs(model, x))


@needs_onnx
@pytest.mark.parametrize("cls, op", [(nn.LSTM, "LSTM"), (nn.GRU, "GRU"), (nn.RNN, "RNN")])
def test_recurrent_layers_are_onnx_operators_with_dynamic_batch_and_time(cls, op, tmp_path):
    proto = mg.onnx.export(cls(I, H, num_layers=2, bidirectional=True), floats(2, 3), tmp_path / "m.onnx")
    nodes = [n for n in proto.graph.node if n.op_type == op]
    assert len(nodes) == 2                               # one per stacked layer, not unrolled
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == H
    assert attrs.get("linear_before_reset", 0) == (1 if op == "GRU" else 0)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "time"] and dims[2].dim_value == I


@needs_onnx
def test_a_whole_classifier(tmp_path):
    model = randomize(nn.Sequential(
        nn.Embedding(7, I), nn.LSTM(I, H, num_layers=2, bidirectional=True, return_sequences=True),
        nn.LayerNorm(2 * H), nn.Dropout(0.3), nn.Linear(2 * H, 6), nn.GELU(), nn.GRU(6, H, bidirectional=True),
        nn.Linear(2 * H, 3), nn.Softmax()), 2)
    model.train()
    mg.onnx.export(model, tokens(4, 5), tmp_path / "m.onnx")
    assert model.training and model[3].training       # export leaves the mode as it was
    x = tokens(3, 11, seed=9)
    assert_close(run(tmp_path / "m.onnx", x), minigrad_outputs(model, x))


@needs_onnx
def test_a_model_of_vectors_has_a_dynamic_batch_and_fixed_features(tmp_path):
    model = randomize(nn.Sequential(nn.Linear(I, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 2)), 6)
    proto = mg.onnx.export(model, np.ones((3, I), F32), tmp_path / "m.onnx")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == I
    x = np.random.default_rng(1).standard_normal((7, I)).astype(F32)
    assert_close(run(tmp_path / "m.onnx", x), minigrad_outputs(model, x))


# ---------------------------------------------------------------- masks as sequence lengths

def post_padded(lengths, time):
    return np.arange(time) < np.asarray(lengths)[:, None]


@needs_onnx
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("seq", [False, True])
def test_a_post_padded_mask_is_exported_as_sequence_lengths(cls, seq, tmp_path):
    layer = randomize(cls(I, H, num_layers=2, bidirectional=True, return_sequences=seq, return_state=True), 3)
    path = tmp_path / "m.onnx"
    proto = mg.onnx.export(layer, floats(3, 6), path, mask=post_padded([6, 4, 1], 6))
    assert [i.name for i in proto.graph.input] == ["input", "sequence_lens"]
    lengths = np.array([7, 2, 5, 1], np.int32)
    x = floats(4, 7, seed=4)
    want = minigrad_outputs(layer, x, mask=post_padded(lengths, 7))
    assert_close(run(path, x, sequence_lens=lengths), want)


@needs_onnx
def test_a_masked_sequential_reads_the_lengths_in_every_recurrent_layer(tmp_path):
    model = randomize(nn.Sequential(nn.LSTM(I, H, return_sequences=True), nn.Linear(H, 3), nn.GRU(3, H)), 4)
    mg.onnx.export(model, floats(2, 5), tmp_path / "m.onnx", mask=post_padded([5, 3], 5))
    lengths = np.array([2, 6, 4], np.int32)
    x = floats(3, 6, seed=7)
    mask = post_padded(lengths, 6)
    want = model[2](model[1](model[0](x, mask=mask)), mask=mask).numpy()
    assert_close(run(tmp_path / "m.onnx", x, sequence_lens=lengths), [want])


@needs_onnx
@pytest.mark.parametrize("mask, words", [
    (np.array([[True, True, True], [False, True, True]]), ["row 1", "[0, 1, 1]", "post-padded"]),
    (np.array([[True, False, True], [True, True, True]]), ["row 0", "[1, 0, 1]"]),
    (np.array([[True, True, True], [False, False, False]]), ["length 0"]),
    (np.ones((2, 4), bool), ["(2, 3)"]),
    (np.full((2, 3), 0.5), ["booleans"]),
], ids=["pre-padded", "hole", "empty", "shape", "not-boolean"])
def test_masks_onnx_cannot_express_are_refused_and_nothing_is_written(mask, words, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"earlier")
    with pytest.raises(ValueError) as e:
        mg.onnx.export(nn.LSTM(I, H), floats(2, 3), path, mask=mask)
    for w in words:
        assert w in str(e.value)
    assert path.read_bytes() == b"earlier"


# ---------------------------------------------------------------- refusals

class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


@needs_onnx
@pytest.mark.parametrize("model, error, words", [
    (nn.Sequential(nn.Linear(I, 3), Doubler()), TypeError, ["Sequential['1']", "Doubler", "supported"]),
    (nn.LSTMCell(I, H), TypeError, ["LSTMCell"]),
    (nn.Sequential(nn.Linear(I, 3, dtype=np.float64), nn.Linear(3, 2)), ValueError, ["several dtypes"]),
], ids=["custom", "cell", "mixed-dtypes"])
def test_what_cannot_be_exported_is_a_clear_error_and_nothing_is_written(model, error, words, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(error) as e:
        mg.onnx.export(model, floats(2, 3), path)
    for w in words:
        assert w in str(e.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_without_onnx_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)        # import onnx now raises ImportError
    with pytest.raises(ImportError, match="pip install onnx"):
        mg.onnx.export(nn.Linear(I, 3), floats(2, 3), tmp_path / "m.onnx")
