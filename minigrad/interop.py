"""Convert recurrent weights to and from PyTorch's ``nn.LSTM`` / ``nn.GRU`` layout.

minigrad (like Keras) keeps row-vector weights: ``U`` (input, kH), ``W`` (H, kH). PyTorch keeps
``weight_ih_l0`` (kH, input) and ``weight_hh_l0`` (kH, H), i.e. the transposes, plus two biases.
Torch is not a dependency: these functions take and return numpy arrays (torch tensors are
accepted and converted).

* LSTM: gate order i, f, g, o in both. PyTorch has two biases where minigrad has one: they are
  summed on import, and exported as ``bias_ih_l0 = b``, ``bias_hh_l0 = 0``.
* GRU: both biases exist in both. Gate order differs: PyTorch r, z, n; minigrad (Keras) z, r, n.
"""
from __future__ import annotations

import numpy as np

__all__ = ["torch_lstm_state_dict", "load_torch_lstm", "torch_gru_state_dict", "load_torch_gru"]

_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _array(v):
    if hasattr(v, "detach"):                # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _fetch(state_dict, layer, k, who):
    missing = [key for key in _KEYS if key not in state_dict]
    if missing:
        raise KeyError(f"{who}: state_dict lacks {missing} (a single-layer, unidirectional "
                       f"PyTorch layout is expected; got keys {sorted(state_dict)})")
    I, H = layer.input_size, layer.hidden_size
    want = {"weight_ih_l0": (k * H, I), "weight_hh_l0": (k * H, H), "bias_ih_l0": (k * H,), "bias_hh_l0": (k * H,)}
    arrays = {}
    for key in _KEYS:
        a = _array(state_dict[key])
        if a.shape != want[key]:
            raise ValueError(f"{who}: {key} must have shape {want[key]} for input {I}, hidden {H}; got {a.shape}")
        arrays[key] = a.astype(np.float64)
    return arrays


def _swap_rz(a, H, axis=0):
    """Reorder gate blocks between PyTorch's (r, z, n) and Keras's (z, r, n); its own inverse."""
    r, z, n = np.split(a, [H, 2 * H], axis=axis)
    return np.concatenate([z, r, n], axis=axis)


def torch_lstm_state_dict(lstm) -> dict:
    """PyTorch ``nn.LSTM`` weights (numpy arrays) equal to the minigrad ``lstm``'s."""
    U, W, b = (p.data for p in (lstm.U, lstm.W, lstm.b))
    return {"weight_ih_l0": U.T.copy(), "weight_hh_l0": W.T.copy(), "bias_ih_l0": b.copy(),
            "bias_hh_l0": np.zeros_like(b)}


def load_torch_lstm(lstm, state_dict) -> None:
    """Set the minigrad ``lstm`` (an ``LSTM`` or ``LSTMCell``) from PyTorch ``nn.LSTM`` weights;
    the two biases are summed. Everything is checked before anything changes."""
    a = _fetch(state_dict, lstm, 4, "load_torch_lstm")
    lstm.set_weights([a["weight_ih_l0"].T, a["weight_hh_l0"].T, a["bias_ih_l0"] + a["bias_hh_l0"]])


def torch_gru_state_dict(gru) -> dict:
    """PyTorch ``nn.GRU`` weights (numpy arrays) equal to the minigrad ``gru``'s."""
    H = gru.hidden_size
    U, W, b = (p.data for p in (gru.U, gru.W, gru.b))
    return {"weight_ih_l0": _swap_rz(U, H, axis=1).T.copy(), "weight_hh_l0": _swap_rz(W, H, axis=1).T.copy(),
            "bias_ih_l0": _swap_rz(b[0], H).copy(), "bias_hh_l0": _swap_rz(b[1], H).copy()}


def load_torch_gru(gru, state_dict) -> None:
    """Set the minigrad ``gru`` (a ``GRU`` or ``GRUCell``) from PyTorch ``nn.GRU`` weights."""
    H = gru.hidden_size
    a = _fetch(state_dict, gru, 3, "load_torch_gru")
    gru.set_weights([_swap_rz(a["weight_ih_l0"].T, H, axis=1), _swap_rz(a["weight_hh_l0"].T, H, axis=1),
                     np.stack([_swap_rz(a["bias_ih_l0"], H), _swap_rz(a["bias_hh_l0"], H)])])
