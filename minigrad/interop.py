"""minigrad models and weights to and from PyTorch and Keras.

Whole models: ``to_torch(model)`` and ``from_torch(module)``; ``from_keras(keras_model)`` and
Keras 3 ``.weights.h5`` files (``load_keras_weights``, ``save_keras_weights``). Each imports torch,
keras or h5py only when called. Below: PyTorch's recurrent weight layout.

minigrad (like Keras) keeps row-vector weights: ``U`` (input, kH), ``W`` (H, kH). PyTorch keeps
``weight_ih_l0`` (kH, input) and ``weight_hh_l0`` (kH, H), i.e. the transposes, plus two biases,
per layer and direction: ``weight_ih_l1_reverse`` is layer 1's backward direction, whose minigrad
parameters are ``U_l1_reverse``, ``W_l1_reverse``, ``b_l1_reverse``. Torch is not a dependency:
these functions take and return numpy arrays (torch tensors are accepted and converted).

* LSTM and RNN: the gate order is the same (LSTM: i, f, g, o). PyTorch has two biases where
  minigrad has one: they are summed on import, and exported as ``bias_ih = b``, ``bias_hh = 0``.
  Trained with both biases free, PyTorch would move their sum by twice SGD's step, and Adam,
  clipping and weight decay treat two biases differently from one: ``to_torch`` therefore
  freezes ``bias_hh`` at zero (``requires_grad=False``), and training continues identically.
* GRU: both biases exist in both. Gate order differs: PyTorch r, z, n; minigrad (Keras) z, r, n.

Loading checks the whole state dict before changing anything: a key the layer does not use (a
``bias=False`` or ``proj_size`` model's, another layer count's or direction's), a key it needs
that is missing, or a shape that does not fit is an error naming every such key.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["to_torch", "from_torch", "from_keras", "load_keras_weights", "save_keras_weights",
           "torch_lstm_state_dict", "load_torch_lstm", "torch_gru_state_dict", "load_torch_gru", "torch_rnn_state_dict",
           "load_torch_rnn"]

_BLOCKS = {"lstm": 4, "gru": 3, "rnn": 1}


def _array(v):
    if hasattr(v, "detach"):                # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _layout(layer, k):
    """PyTorch's keys and shapes for ``layer``, one dict per layer and direction, in the order of
    ``layer.get_weights()`` (l0, l0_reverse, l1, ...). A cell is one layer, one direction."""
    I, H = layer.input_size, layer.hidden_size
    L, D = layer.num_layers, layer.directions
    sets = []
    for i in range(L * D):
        sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
        size = I if i < D else D * H
        sets.append({"weight_ih" + sfx: (k * H, size), "weight_hh" + sfx: (k * H, H),
                     "bias_ih" + sfx: (k * H,), "bias_hh" + sfx: (k * H,)})
    return sets


def _fetch(state_dict, layer, kind, who):
    """The state dict's arrays (float64) in ``_layout``'s order, after checking every key and shape."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"{who}: expected a state dict (name -> array), got {type(state_dict).__name__}")
    sets = _layout(layer, _BLOCKS[kind])
    want = {key: shape for s in sets for key, shape in s.items()}
    missing = [key for key in want if key not in state_dict]
    unused = [key for key in state_dict if key not in want]
    if missing or unused:
        raise KeyError(f"{who}: the state dict does not fit {type(layer).__name__}({layer.extra_repr()}); nothing "
                       f"was loaded: missing keys {missing}, unused keys {unused} (a PyTorch "
                       f"{kind.upper()} with the same input_size, hidden_size, num_layers, bidirectional "
                       f"and bias=True is expected)")
    arrays = {key: _array(state_dict[key]) for key in want}
    bad = [f"{key} must have shape {want[key]}, got {a.shape}" for key, a in arrays.items() if a.shape != want[key]]
    if bad:
        raise ValueError(f"{who}: for input {layer.input_size}, hidden {layer.hidden_size}, nothing was loaded: "
                         + "; ".join(bad))
    return [[arrays[key].astype(np.float64) for key in s] for s in sets]


def _swap_rz(a, H, axis=0):
    """Reorder gate blocks between PyTorch's (r, z, n) and Keras's (z, r, n); its own inverse."""
    r, z, n = np.split(a, [H, 2 * H], axis=axis)
    return np.concatenate([z, r, n], axis=axis)


def _export(layer, kind):
    H, weights, out = layer.hidden_size, layer.get_weights(), {}
    for i, keys in enumerate(_layout(layer, _BLOCKS[kind])):
        U, W, b = weights[3 * i:3 * i + 3]
        if kind == "gru":
            U, W, b = _swap_rz(U, H, axis=1), _swap_rz(W, H, axis=1), _swap_rz(b, H, axis=1)
            biases = (b[0], b[1])
        else:
            biases = (b, np.zeros_like(b))
        out.update(zip(keys, (U.T.copy(), W.T.copy(), *biases)))
    return out


def _load(layer, state_dict, kind, who):
    H, weights = layer.hidden_size, []
    for w_ih, w_hh, b_ih, b_hh in _fetch(state_dict, layer, kind, who):
        if kind == "gru":
            weights += [_swap_rz(w_ih.T, H, axis=1), _swap_rz(w_hh.T, H, axis=1),
                        np.stack([_swap_rz(b_ih, H), _swap_rz(b_hh, H)])]
        else:
            weights += [w_ih.T, w_hh.T, b_ih + b_hh]
    layer.set_weights(weights)          # checks every shape again before it changes anything


def torch_lstm_state_dict(lstm) -> dict:
    """PyTorch ``nn.LSTM`` weights (numpy arrays, every layer and direction) equal to the minigrad
    ``lstm``'s (an ``LSTM`` or ``LSTMCell``): ``bias_ih`` holds minigrad's bias, ``bias_hh`` zeros."""
    return _export(lstm, "lstm")


def load_torch_lstm(lstm, state_dict) -> None:
    """Set the minigrad ``lstm`` (an ``LSTM`` or ``LSTMCell``) from PyTorch ``nn.LSTM`` weights
    with the same sizes, layers and directions; the two biases are summed. Everything is checked
    before anything changes."""
    _load(lstm, state_dict, "lstm", "load_torch_lstm")


def torch_gru_state_dict(gru) -> dict:
    """PyTorch ``nn.GRU`` weights (numpy arrays) equal to the minigrad ``gru``'s."""
    return _export(gru, "gru")


def load_torch_gru(gru, state_dict) -> None:
    """Set the minigrad ``gru`` (a ``GRU`` or ``GRUCell``) from PyTorch ``nn.GRU`` weights."""
    _load(gru, state_dict, "gru", "load_torch_gru")


def torch_rnn_state_dict(rnn) -> dict:
    """PyTorch ``nn.RNN`` (tanh) weights equal to the minigrad ``rnn``'s: ``bias_hh`` is zeros."""
    return _export(rnn, "rnn")


def load_torch_rnn(rnn, state_dict) -> None:
    """Set the minigrad ``rnn`` (an ``RNN`` or ``RNNCell``) from PyTorch ``nn.RNN`` weights (tanh
    nonlinearity); the two biases are summed."""
    _load(rnn, state_dict, "rnn", "load_torch_rnn")


# ---------------------------------------------------------------- whole models: to_torch, from_torch

def _import_torch(who):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{who} needs PyTorch: pip install torch (or pip install minigrad[interop])") from None
    return torch


def _tensor(torch, a, requires_grad=True):
    return torch.nn.Parameter(torch.from_numpy(np.array(a)), requires_grad=requires_grad)


_TORCH_RECURRENT = {"LSTM": ("lstm", torch_lstm_state_dict), "GRU": ("gru", torch_gru_state_dict),
                    "RNN": ("rnn", torch_rnn_state_dict)}


def _recurrent_to_torch(torch, layer, path):
    if layer.recurrent_dropout:
        raise ValueError(f"to_torch: layer {path}, {type(layer).__name__}, has recurrent_dropout="
                         f"{layer.recurrent_dropout}, which PyTorch's layers do not have; set it to 0 first")
    from .torch_modules import Recurrent
    kind, export = _TORCH_RECURRENT[type(layer).__name__]
    cls = getattr(torch.nn, type(layer).__name__)
    rnn = cls(layer.input_size, layer.hidden_size, num_layers=layer.num_layers, bidirectional=layer.bidirectional,
              dropout=layer.dropout, batch_first=True, dtype=_torch_dtype(torch, layer.dtype))
    state = {k: torch.from_numpy(v) for k, v in export(layer).items()}
    rnn.load_state_dict(state, strict=True)
    if kind != "gru":       # minigrad has one bias: bias_hh stays zero so training sees one bias too
        for name, p in rnn.named_parameters():
            if name.startswith("bias_hh"):
                p.requires_grad_(False)
    return Recurrent(rnn, layer.return_sequences, layer.return_state)


def _torch_dtype(torch, dtype):
    return getattr(torch, np.dtype(dtype).name)


def _linear_to_torch(torch, m, path):
    t = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=_torch_dtype(torch, m.dtype))
    t.weight = _tensor(torch, m.weight.data.T)
    if m.bias is not None:
        t.bias = _tensor(torch, m.bias.data)
    return t


def _embedding_to_torch(torch, m, path):
    t = torch.nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx,
                           dtype=_torch_dtype(torch, m.dtype))
    t.weight = _tensor(torch, m.weight.data)
    return t


def _layer_norm_to_torch(torch, m, path):
    t = torch.nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.weight is not None,
                           bias=m.bias is not None, dtype=_torch_dtype(torch, m.dtype))
    if m.weight is not None:
        t.weight = _tensor(torch, m.weight.data)
    if m.bias is not None:
        t.bias = _tensor(torch, m.bias.data)
    return t


def _to_torch_table(torch):
    """minigrad layer type -> function(torch, layer, path) -> torch module (exact types only: a
    subclass may compute something else in its forward)."""
    from . import nn
    tnn = torch.nn
    return {
        nn.Linear: _linear_to_torch, nn.Embedding: _embedding_to_torch, nn.LayerNorm: _layer_norm_to_torch,
        nn.LSTM: _recurrent_to_torch, nn.GRU: _recurrent_to_torch, nn.RNN: _recurrent_to_torch,
        nn.Dropout: lambda torch, m, path: tnn.Dropout(m.p),
        nn.ReLU: lambda torch, m, path: tnn.ReLU(), nn.Tanh: lambda torch, m, path: tnn.Tanh(),
        nn.Sigmoid: lambda torch, m, path: tnn.Sigmoid(), nn.Identity: lambda torch, m, path: tnn.Identity(),
        nn.GELU: lambda torch, m, path: tnn.GELU(approximate=m.approximate),
        nn.LeakyReLU: lambda torch, m, path: tnn.LeakyReLU(m.negative_slope),
        nn.Softmax: lambda torch, m, path: tnn.Softmax(dim=m.dim),
        nn.Flatten: lambda torch, m, path: tnn.Flatten(m.start_dim, m.end_dim),
    }


def _unsupported(who, path, obj, table):
    names = sorted({t.__name__ for t in table} | {"Sequential"})
    return TypeError(f"{who}: {path} is a {type(obj).__module__}.{type(obj).__name__}, which {who} cannot convert "
                     f"(nothing was changed); supported: {', '.join(names)}, and Sequentials of them")


def to_torch(model):
    """An equivalent ``torch.nn.Module``, weights copied (float32 or float64, as the model's).

    ``Sequential`` becomes ``nn.Sequential`` (children keep their names); ``Linear``,
    ``Embedding``, ``LayerNorm``, ``Dropout``, ``Flatten``, ``Identity`` and the activations
    become their ``torch.nn`` namesakes (``Linear``'s weight transposed). ``LSTM``/``GRU``/``RNN``
    (stacked and bidirectional too) become :class:`minigrad.torch_modules.Recurrent`, a
    ``batch_first`` ``nn.LSTM``/... that returns what the minigrad layer returns (last output or
    sequence, states with ``return_state``; ``mask=`` a post-padded mask, run as a packed
    sequence). minigrad's LSTM and RNN have one bias where PyTorch's
    have two: ``bias_ih`` holds it and ``bias_hh`` is zero with ``requires_grad=False``, so that
    optimizers (Adam, clipping, weight decay) see one bias, as in minigrad, and training goes on
    identically. Anything else (a custom Module, a cell, ``recurrent_dropout``) is a TypeError or
    ValueError naming it; the minigrad model is never changed.
    """
    torch = _import_torch("to_torch")
    from . import nn
    table = _to_torch_table(torch)

    def convert(m, path):
        if type(m) is nn.Sequential:
            return torch.nn.Sequential(OrderedDict((name, convert(c, f"{path}[{name!r}]"))
                                                   for name, c in m._modules.items()))
        if type(m) not in table:
            raise _unsupported("to_torch", path, m, table)
        out = table[type(m)](torch, m, path)
        return out.train(m.training)

    return convert(model, "the model" if type(model) is not nn.Sequential else "the Sequential").train(model.training)


def _recurrent_from_torch(rnn, path, return_sequences=True, return_state=True):
    from . import nn
    torch = _import_torch("from_torch")
    kind = type(rnn).__name__
    if not rnn.batch_first:
        raise ValueError(f"from_torch: {path}, {kind}, has batch_first=False; minigrad's layers take (batch, time, "
                         f"features): build it with batch_first=True")
    if getattr(rnn, "proj_size", 0) or not rnn.bias or getattr(rnn, "nonlinearity", "tanh") != "tanh":
        raise ValueError(f"from_torch: {path}, {rnn}, has options minigrad's {kind} lacks (proj_size, bias=False "
                         f"or nonlinearity='relu')")
    dtype = np.dtype(str(next(rnn.parameters()).dtype).replace("torch.", ""))
    layer = getattr(nn, kind)(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers,
                              bidirectional=rnn.bidirectional, dropout=rnn.dropout, dtype=dtype,
                              return_sequences=return_sequences, return_state=return_state)
    with torch.no_grad():
        _load(layer, rnn.state_dict(), _TORCH_RECURRENT[kind][0], "from_torch")
    return layer.train(rnn.training)


def _from_torch_table(torch, model_dtype):
    """torch layer type -> function(layer, path) -> minigrad layer. A layer without parameters (a
    LayerNorm without affine) takes ``model_dtype``: the whole module's, or the default one."""
    from . import nn
    from .torch_modules import Recurrent
    tnn = torch.nn

    def dtype(p):
        return np.dtype(str(p.dtype).replace("torch.", ""))

    def arr(p):
        return p.detach().cpu().numpy().copy()

    def linear(t, path):
        m = nn.Linear(t.in_features, t.out_features, bias=t.bias is not None, dtype=dtype(t.weight))
        m.weight.data = arr(t.weight).T.copy()
        if t.bias is not None:
            m.bias.data = arr(t.bias)
        return m

    def embedding(t, path):
        if t.max_norm is not None or t.scale_grad_by_freq or t.sparse:
            raise ValueError(f"from_torch: {path}, {t}, uses max_norm, scale_grad_by_freq or sparse, "
                             f"which minigrad's Embedding lacks")
        m = nn.Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx, dtype=dtype(t.weight))
        m.weight.data = arr(t.weight)
        return m

    def layer_norm(t, path):
        affine = t.weight is not None
        m = nn.LayerNorm(t.normalized_shape, eps=t.eps, elementwise_affine=affine, bias=t.bias is not None,
                         dtype=dtype(t.weight) if affine else model_dtype)
        if affine:
            m.weight.data = arr(t.weight)
        if t.bias is not None:
            m.bias.data = arr(t.bias)
        return m

    def softmax(t, path):
        if t.dim is None:
            raise ValueError(f"from_torch: {path}, {t}, has dim=None (PyTorch guesses it); give dim")
        return nn.Softmax(dim=t.dim)

    return {
        tnn.Linear: linear, tnn.Embedding: embedding, tnn.LayerNorm: layer_norm, tnn.Softmax: softmax,
        tnn.LSTM: _recurrent_from_torch, tnn.GRU: _recurrent_from_torch, tnn.RNN: _recurrent_from_torch,
        Recurrent: lambda t, path: _recurrent_from_torch(t.rnn, path, t.return_sequences, t.return_state),
        tnn.Dropout: lambda t, path: nn.Dropout(t.p), tnn.ReLU: lambda t, path: nn.ReLU(),
        tnn.Tanh: lambda t, path: nn.Tanh(), tnn.Sigmoid: lambda t, path: nn.Sigmoid(),
        tnn.Identity: lambda t, path: nn.Identity(), tnn.GELU: lambda t, path: nn.GELU(t.approximate),
        tnn.LeakyReLU: lambda t, path: nn.LeakyReLU(t.negative_slope),
        tnn.Flatten: lambda t, path: nn.Flatten(t.start_dim, t.end_dim),
    }


def from_torch(module, dtype=None):
    """The minigrad model equivalent to the PyTorch ``module``, weights copied: the reverse of
    :func:`to_torch` for the same layers (``nn.Sequential`` and ``torch_modules.Recurrent`` included).

    A bare ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` must be ``batch_first=True``; it becomes a layer
    with ``return_sequences=True, return_state=True``, which returns ``(out, h, c)`` where
    PyTorch returns ``(out, (h, c))``. The LSTM's and RNN's two biases are summed. Anything else
    (a custom Module, ``proj_size``, ``nonlinearity='relu'``, ``Embedding(max_norm=...)``) is a
    TypeError or ValueError naming it; the PyTorch module is never changed. A layer without
    parameters that has a dtype in minigrad (``LayerNorm(elementwise_affine=False)``) takes the
    dtype of the module's parameters, or ``dtype`` if given, or the default dtype if there are
    none or several.
    """
    torch = _import_torch("from_torch")
    from . import nn
    dtypes = {str(p.dtype).replace("torch.", "") for p in module.parameters()}
    model_dtype = dtype if dtype is not None else dtypes.pop() if len(dtypes) == 1 else None
    table = _from_torch_table(torch, model_dtype)

    def convert(t, path):
        if type(t) is torch.nn.Sequential:
            return nn.Sequential(OrderedDict((name, convert(c, f"{path}[{name!r}]"))
                                             for name, c in t._modules.items()))
        if type(t) not in table:
            raise _unsupported("from_torch", path, t, table)
        return table[type(t)](t, path).train(t.training)

    return convert(module, "the module" if type(module) is not torch.nn.Sequential else "the Sequential")


# ---------------------------------------------------------------- Keras: from_keras, .weights.h5 files

_KERAS_ACTIVATIONS = {"linear": None, "relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU",
                      "softmax": "Softmax", "leaky_relu": "LeakyReLU"}


def _keras_activation(name, path):
    """The minigrad layer for a Keras activation name (None for 'linear'), else a ValueError."""
    from . import nn
    if not isinstance(name, str) or name not in _KERAS_ACTIVATIONS:
        raise ValueError(f"from_keras: {path} uses the activation {name!r}, which minigrad does not have; "
                         f"supported: {', '.join(_KERAS_ACTIVATIONS)}")
    kind = _KERAS_ACTIVATIONS[name]
    if kind is None:
        return None
    # Keras 3's defaults: gelu exact (approximate=False), leaky_relu negative_slope=0.2, softmax on the last axis
    return {"GELU": lambda: nn.GELU(), "LeakyReLU": lambda: nn.LeakyReLU(0.2),
            "Softmax": lambda: nn.Softmax(dim=-1)}.get(kind, getattr(nn, kind))()


def _keras_recurrent(layer, path, bidirectional=False):
    """A minigrad LSTM / GRU / RNN from a Keras LSTM / GRU / SimpleRNN (or a Bidirectional's pair)."""
    from . import nn
    fwd = layer.forward_layer if bidirectional else layer
    kind = type(fwd).__name__
    c = fwd.get_config()
    bad = [f"{k}={c.get(k)!r}" for k, ok in (
        ("activation", "tanh"), ("recurrent_activation", "sigmoid"), ("use_bias", True), ("go_backwards", False),
        ("stateful", False), ("dropout", 0.0), ("reset_after", True)) if k in c and c[k] != ok]
    if bad:
        raise ValueError(f"from_keras: {path}, {kind}, has {', '.join(bad)}, which minigrad's layer does not "
                         f"compute (it has tanh and sigmoid, a bias, no input dropout: put a Dropout before it, "
                         f"and for a GRU reset_after=True)")
    if bidirectional:
        back = {k: v for k, v in layer.backward_layer.get_config().items() if k not in ("name", "go_backwards")}
        same = back == {k: v for k, v in c.items() if k not in ("name", "go_backwards")}
        if layer.merge_mode != "concat" or c.get("return_state") or not same:
            raise ValueError(f"from_keras: {path}, Bidirectional, has merge_mode={layer.merge_mode!r}, "
                             f"return_state={c.get('return_state')}, a backward layer configured "
                             f"{'alike' if same else 'differently'}: only merge_mode='concat', no states and two "
                             f"alike directions convert")
    weights = layer.get_weights()
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.RNN}[kind]
    m = cls(weights[0].shape[0], c["units"], bidirectional=bidirectional, return_sequences=c["return_sequences"],
            return_state=c["return_state"], recurrent_dropout=c["recurrent_dropout"], dtype=weights[0].dtype)
    m.set_weights(weights)          # Keras's layout and gate order are minigrad's; forward then backward
    return [m]


def _keras_layer_norm(layer, path):
    from . import nn
    c = layer.get_config()
    axis = c["axis"] if isinstance(c["axis"], (list, tuple)) else [c["axis"]]
    ndim = len(layer.input.shape) if hasattr(layer, "input") else None
    if len(axis) != 1 or (axis[0] != -1 and axis[0] != (ndim or 0) - 1) or c.get("rms_scaling") \
            or (c["center"] and not c["scale"]):
        raise ValueError(f"from_keras: {path}, LayerNormalization(axis={c['axis']}, center={c['center']}, "
                         f"scale={c['scale']}, rms_scaling={c.get('rms_scaling')}): minigrad's LayerNorm "
                         f"normalizes the last axis, with a scale whenever it has an offset")
    weights = layer.get_weights()
    features = weights[0].shape[0] if weights else layer.input.shape[-1]
    m = nn.LayerNorm(features, eps=c["epsilon"], elementwise_affine=c["scale"], bias=c["center"],
                     dtype=weights[0].dtype if weights else None)
    for p, w in zip([p for p in (m.weight, m.bias) if p is not None], weights):
        p.data = w.copy()
    return [m]


def _keras_dense(layer, path):
    from . import nn
    c = layer.get_config()
    weights = layer.get_weights()
    m = nn.Linear(*weights[0].shape, bias=c["use_bias"], dtype=weights[0].dtype)
    m.weight.data = weights[0].copy()
    if c["use_bias"]:
        m.bias.data = weights[1].copy()
    act = _keras_activation(c["activation"], path)
    return [m] if act is None else [m, act]


def _keras_embedding(layer, path):
    from . import nn
    if layer.get_config().get("mask_zero"):
        raise ValueError(f"from_keras: {path}, Embedding(mask_zero=True): a minigrad Sequential passes no mask "
                         f"on; build it with mask_zero=False and give the recurrent layer mask= yourself")
    (w,) = layer.get_weights()
    m = nn.Embedding(*w.shape, dtype=w.dtype)
    m.weight.data = w.copy()
    return [m]


def _keras_table():
    from . import nn
    return {
        "InputLayer": lambda layer, path: [], "Dense": _keras_dense, "Embedding": _keras_embedding,
        "LayerNormalization": _keras_layer_norm, "LSTM": _keras_recurrent, "GRU": _keras_recurrent,
        "SimpleRNN": _keras_recurrent,
        "Bidirectional": lambda layer, path: _keras_recurrent(layer, path, bidirectional=True),
        "Dropout": lambda layer, path: [nn.Dropout(layer.get_config()["rate"])],
        "Activation": lambda layer, path: [a for a in [_keras_activation(layer.get_config()["activation"], path)]
                                           if a is not None] or [nn.Identity()],
    }


def _keras_chain(model):
    """The layers of a Keras Sequential, or of a functional model that is a chain, else a ValueError."""
    layers = list(model.layers)
    if type(model).__name__ == "Sequential":
        return layers
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"from_keras: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         f"only a chain of layers (one input, one output) converts")
    body = [layer for layer in layers if type(layer).__name__ != "InputLayer"]
    prev = model.inputs[0]
    for layer in body:
        nodes = getattr(layer, "_inbound_nodes", [])
        if len(nodes) != 1 or layer.input is not prev:
            raise ValueError(f"from_keras: layer {layer.name!r} does not read the previous layer's output alone: "
                             f"only a chain of layers converts")
        prev = layer.output
    return body


def from_keras(keras_model):
    """The minigrad model equivalent to a Keras 3 ``Sequential`` (or a functional model that is a
    chain), weights included (float32, as Keras's).

    ``Input``/``InputLayer`` (dropped), ``Embedding``, ``Dense`` (a ``Linear`` followed by its
    activation: linear, relu, tanh, sigmoid, gelu, softmax, leaky_relu), ``Activation``,
    ``Dropout``, ``LayerNormalization`` (last axis), ``LSTM``, ``GRU(reset_after=True)``,
    ``SimpleRNN`` (tanh; ``return_sequences``, ``return_state``, ``recurrent_dropout``) and
    ``Bidirectional`` (``merge_mode='concat'``) of those. Keras's recurrent weights are minigrad's
    (same layout and gate order). Anything else is a TypeError or ValueError naming the layer; the
    Keras model is never changed. The result is in eval mode, as Keras's ``predict``.
    """
    from . import nn
    table = _keras_table()
    out = []
    for i, layer in enumerate(_keras_chain(keras_model)):
        kind = type(layer).__name__
        path = f"layer {i} ({layer.name!r})"
        if kind not in table:
            raise TypeError(f"from_keras: {path} is a Keras {kind}, which from_keras cannot convert; supported: "
                            f"{', '.join(sorted(table))}")
        out += table[kind](layer, path)
    return nn.Sequential(*out).eval()


def _import_h5py(who):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{who} needs h5py: pip install h5py (or pip install minigrad[interop])") from None
    return h5py


def _keras_entries(model, who):
    """``[(path in a .weights.h5 file, Parameter)]`` for ``model``: the paths Keras 3 gives the
    variables of a Sequential of the same structure. Keras names a container's layers by class
    (``dense``, ``dense_1``, ``lstm``...; a recurrent layer's under ``cell``, a Bidirectional's under
    ``forward_layer`` / ``backward_layer``), so weighted layers match by position; a stacked
    minigrad layer is that many Keras layers."""
    from . import nn
    layers = list(model) if type(model) is nn.Sequential else [model]
    used, entries = {}, []

    def group(snake):
        used[snake] = used.get(snake, -1) + 1
        return f"layers/{snake}" + (f"_{used[snake]}" if used[snake] else "")

    def add(prefix, params):
        entries.extend((f"{prefix}/vars/{k}", p) for k, p in enumerate(p for p in params if p is not None))

    weightless = (nn.Dropout, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.Softmax, nn.Identity)
    for i, m in enumerate(layers):
        if type(m) is nn.Linear:
            add(group("dense"), (m.weight, m.bias))
        elif type(m) is nn.Embedding:
            add(group("embedding"), (m.weight,))
        elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            add(group("layer_normalization"), (m.weight, m.bias))
        elif type(m) in (nn.LSTM, nn.GRU, nn.RNN):
            snake = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple_rnn"}[type(m).__name__]
            sets = m._weight_sets()
            for layer in range(m.num_layers):
                if m.bidirectional:
                    g = group("bidirectional")
                    add(f"{g}/forward_layer/cell", sets[2 * layer])
                    add(f"{g}/backward_layer/cell", sets[2 * layer + 1])
                else:
                    add(f"{group(snake)}/cell", sets[layer])
        elif type(m) not in weightless:
            raise TypeError(f"{who}: layer {i}, {type(m).__name__}, has no Keras counterpart here (nothing was "
                            f"changed); supported: Linear, Embedding, LayerNorm (one axis), LSTM, GRU, RNN and "
                            f"the layers without weights")
    return entries


def load_keras_weights(model, path) -> None:
    """Load a Keras 3 ``.weights.h5`` file (``keras_model.save_weights``) into a minigrad model of
    the same structure (see :func:`from_keras`; a ``Dense`` with an activation is a ``Linear``
    followed by that activation; layers without weights match by position). Every name and shape
    is checked before anything changes: a variable the file lacks, one the model has no place for,
    or a shape that differs is an error naming each one. Needs h5py.
    """
    h5py = _import_h5py("load_keras_weights")
    entries = _keras_entries(model, "load_keras_weights")
    with h5py.File(path, "r") as f:
        stored = {}
        if "layers" in f:
            f["layers"].visititems(lambda name, obj: stored.__setitem__(f"layers/{name}", obj)
                                   if isinstance(obj, h5py.Dataset) else None)
        want = dict(entries)
        missing = [k for k in want if k not in stored]
        unused = [k for k in stored if k not in want]
        if missing or unused:
            raise KeyError(f"load_keras_weights: {path} does not fit the model; nothing was loaded: missing "
                           f"{missing}, unused {unused}")
        bad = [f"{k} is {stored[k].shape} in the file, {p.shape} in the model" for k, p in entries
               if stored[k].shape != p.shape]
        if bad:
            raise ValueError("load_keras_weights: nothing was loaded: " + "; ".join(bad))
        arrays = [np.asarray(stored[k][()], dtype=p.dtype) for k, p in entries]
    for (_, p), a in zip(entries, arrays):
        p.data = a                  # a new array, and a version change a graph recorded before sees


def save_keras_weights(model, path) -> None:
    """Write the model's weights as a Keras 3 ``.weights.h5`` file that ``load_weights`` of a
    Keras model of the same structure accepts (the file is replaced whole). Needs h5py."""
    import os
    h5py = _import_h5py("save_keras_weights")
    entries = _keras_entries(model, "save_keras_weights")
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            for key, p in entries:
                f.create_dataset(key, data=p.data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
