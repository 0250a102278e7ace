"""Convert recurrent weights to and from PyTorch's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` layout.

minigrad (like Keras) keeps row-vector weights: ``U`` (input, kH), ``W`` (H, kH). PyTorch keeps
``weight_ih_l0`` (kH, input) and ``weight_hh_l0`` (kH, H), i.e. the transposes, plus two biases,
per layer and direction: ``weight_ih_l1_reverse`` is layer 1's backward direction, whose minigrad
parameters are ``U_l1_reverse``, ``W_l1_reverse``, ``b_l1_reverse``. Torch is not a dependency:
these functions take and return numpy arrays (torch tensors are accepted and converted).

* LSTM and RNN: the gate order is the same (LSTM: i, f, g, o). PyTorch has two biases where
  minigrad has one: they are summed on import, and exported as ``bias_ih = b``, ``bias_hh = 0``
  (the same function; in training, PyTorch's two biases then get equal gradients and drift apart,
  which changes nothing but their split).
* GRU: both biases exist in both. Gate order differs: PyTorch r, z, n; minigrad (Keras) z, r, n.

Loading checks the whole state dict before changing anything: a key the layer does not use (a
``bias=False`` or ``proj_size`` model's, another layer count's or direction's), a key it needs
that is missing, or a shape that does not fit is an error naming every such key.
"""
from __future__ import annotations

import numpy as np

__all__ = ["torch_lstm_state_dict", "load_torch_lstm", "torch_gru_state_dict", "load_torch_gru",
           "torch_rnn_state_dict", "load_torch_rnn"]

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
