"""Layers, losses, containers and training helpers built on minigrad's Tensor ops.

``Module``/``Parameter`` (module.py), layers (layers.py), initialisers (init.py), losses as
functions (functional.py) and modules (loss.py), ``clip_grad_norm_`` (utils.py), ``summary``
(summary.py), ``fit`` / ``evaluate`` / ``predict`` (training.py) with ``History`` and the callbacks
(callbacks.py), and the recurrent layers (recurrent.py).
"""
from . import functional, init, utils
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint
from .layers import (
    GELU,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .module import IncompatibleKeys, Module, ModuleDict, ModuleList, Parameter, functional_call
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, gru_step, lstm_step, rnn_step
from .summary import summary
from .training import evaluate, fit, predict
from .utils import clip_grad_norm_

__all__ = ["Module", "Parameter", "ModuleList", "ModuleDict", "IncompatibleKeys", "functional_call", "Linear",
           "Embedding", "LayerNorm", "Flatten", "Identity", "Dropout", "ReLU", "Tanh", "Sigmoid", "GELU", "LeakyReLU",
           "Softmax", "Sequential", "MSELoss", "BCELoss", "BCEWithLogitsLoss",
           "CrossEntropyLoss", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "lstm_step", "gru_step",
           "rnn_step", "summary", "fit", "evaluate", "predict", "History", "Callback", "EarlyStopping",
           "ModelCheckpoint", "clip_grad_norm_", "functional", "init", "utils"]
