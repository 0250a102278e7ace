"""Layers built from Tensor ops only: none has a gradient of its own.

Parameters take the layer's ``dtype``: by default ``mg.get_default_dtype()`` (float32 unless
``mg.set_default_dtype`` changed it) when the layer is built. An input of another dtype is cast
to the layer's, as Keras does, whether or not it requires grad: a Tensor in a graph through a
recorded cast, so its gradient comes back in its own dtype. (PyTorch raises instead.)
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import ops
from ..tensor import Tensor, get_default_dtype
from . import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "Dropout", "ReLU", "Tanh", "Sigmoid", "Sequential"]


def float_dtype(dtype, layer: str) -> np.dtype:
    """A layer's parameter dtype: ``dtype``, or the default dtype if None; floating point only."""
    dtype = get_default_dtype() if dtype is None else np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"{layer}: dtype must be a floating-point type, got {dtype}")
    return dtype


def _positive_int(value, what, layer):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(value)


def as_input(x, dtype, layer: str) -> Tensor:
    """``x`` as a Tensor of the layer's float ``dtype``. One rule whether or not ``x`` requires
    grad: another numeric dtype is cast (a Tensor by the recorded ``astype``, so its gradient
    comes back in its own dtype); a non-numeric one is a TypeError naming the layer."""
    if not isinstance(x, Tensor):
        x = Tensor(np.asarray(x))          # an ndarray keeps its dtype, to be cast below
    if x.dtype == dtype:
        return x
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{layer}: input must be numeric, got dtype {x.dtype}")
    return ops.astype(x, dtype=dtype)


class Linear(Module):
    """``y = x @ weight + bias``, with ``weight`` of shape ``(in_features, out_features)`` (Keras's
    layout; PyTorch stores the transpose) and ``bias`` of shape ``(out_features,)``.

    Initialisation: weight Glorot-uniform, bias zeros (Keras's ``Dense`` defaults). Input
    ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        self.dtype = float_dtype(dtype, "Linear")
        self.weight = Parameter(init.glorot_uniform((self.in_features, self.out_features), dtype=self.dtype))
        self.bias = Parameter(init.zeros((self.out_features,), dtype=self.dtype)) if bias else None

    def forward(self, x):
        x = as_input(x, self.dtype, self._name())
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._name()}: input shape {x.shape} does not end in in_features="
                             f"{self.in_features}")
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y

    def _name(self):
        return f"Linear({self.in_features}, {self.out_features})"

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: integer indices of any shape ``S`` give vectors of shape ``S + (dim,)``.

    Built on integer-array indexing of ``weight`` (``num_embeddings, dim``), whose gradient
    scatters with accumulation: an index that occurs k times in a batch gets k contributions.
    Initialisation: ``uniform(-0.05, 0.05)`` (Keras's default).
    """

    input_dtype = np.int64   # what summary() feeds it

    def __init__(self, num_embeddings: int, dim: int, dtype=None):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.dim = _positive_int(dim, "dim", "Embedding")
        self.dtype = float_dtype(dtype, "Embedding")
        self.weight = Parameter(init.uniform((self.num_embeddings, self.dim), -0.05, 0.05, dtype=self.dtype))

    def forward(self, indices):
        idx = indices.data if isinstance(indices, Tensor) else np.asarray(indices)
        name = f"Embedding({self.num_embeddings}, {self.dim})"
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{name}: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"{name}: index {bad} is out of range [0, {self.num_embeddings})")
        return self.weight[idx]

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.dim}"


class Dropout(Module):
    """Inverted dropout: in training mode each element is zeroed with probability ``p`` and the
    survivors are scaled by ``1 / (1 - p)``, so eval mode (where it is the identity) needs no
    rescaling. The mask comes from the shared generator (``mg.seed``). ``dtype`` is accepted for
    a uniform layer signature; the output keeps its input's dtype."""

    def __init__(self, p: float = 0.5, dtype=None):
        super().__init__()
        if not (isinstance(p, (int, float, np.floating)) and 0 <= p < 1):
            raise ValueError(f"Dropout: p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class _Activation(Module):
    """A parameter-free elementwise layer. ``dtype`` is accepted for a uniform layer signature;
    the output keeps its input's dtype."""

    fn = None

    def __init__(self, dtype=None):
        super().__init__()

    def forward(self, x):
        return type(self).fn(x if isinstance(x, Tensor) else Tensor(x))


class ReLU(_Activation):
    """``max(x, 0)``."""
    fn = staticmethod(ops.relu)


class Tanh(_Activation):
    """``tanh(x)``."""
    fn = staticmethod(ops.tanh)


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))`` (computed without overflow)."""
    fn = staticmethod(ops.sigmoid)


class Sequential(Module):
    """Layers applied in order: ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))``. Children are
    named ``'0'``, ``'1'``, ... (or by the keys of a single OrderedDict argument). Supports
    ``len``, iteration, indexing (a slice gives a Sequential) and ``append``."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (dict, OrderedDict)):
            items = list(layers[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(layers)]
        for name, m in items:
            self._check(m, name)
            self._modules[str(name)] = m

    @staticmethod
    def _check(m, name):
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: layer {name} is a {type(m).__name__}, not a Module")

    def append(self, layer: Module) -> "Sequential":
        self._check(layer, len(self))
        self._modules[str(len(self._modules))] = layer
        return self

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x

    def __getitem__(self, i):
        layers = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*layers[i])
        if not -len(layers) <= i < len(layers):
            raise IndexError(f"Sequential: index {i} out of range for {len(layers)} layers")
        return layers[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def summary(self, input_shape, dtype=None) -> None:
        """Print the Keras-style table of :func:`minigrad.nn.summary`."""
        from .summary import summary
        print(summary(self, input_shape, dtype=dtype))
