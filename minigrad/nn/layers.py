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
from ..functional import one_of
from ..tensor import Tensor, get_default_dtype
from . import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "LayerNorm", "Flatten", "Identity", "Dropout", "ReLU", "Tanh", "Sigmoid", "GELU",
           "LeakyReLU", "Softmax", "Sequential"]


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
    """A lookup table: integer indices of any shape ``S`` give vectors of shape ``S + (embedding_dim,)``.

    Built on integer-array indexing of ``weight`` (``num_embeddings, embedding_dim``), whose
    gradient scatters with accumulation: an index that occurs k times in a batch gets k
    contributions. Initialisation: ``uniform(-0.05, 0.05)`` (Keras's default). With
    ``padding_idx`` (PyTorch's meaning) that row starts at zero and gets no gradient: lookups
    of it read its value as a constant.
    """

    input_dtype = np.int64   # what summary() feeds it

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, dtype=None):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", "Embedding")
        self.dtype = float_dtype(dtype, "Embedding")
        n = self.num_embeddings
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                    or not -n <= padding_idx < n:
                raise ValueError(f"Embedding: padding_idx must be an integer in [-{n}, {n}), got {padding_idx!r}")
            padding_idx = int(padding_idx) % n
        self.padding_idx = padding_idx
        weight = init.uniform((n, self.embedding_dim), -0.05, 0.05, dtype=self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, indices):
        idx = indices.data if isinstance(indices, Tensor) else np.asarray(indices)
        name = f"Embedding({self.num_embeddings}, {self.embedding_dim})"
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{name}: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"{name}: index {bad} is out of range [0, {self.num_embeddings})")
        rows = self.weight[idx]
        if self.padding_idx is None or not np.any(idx == self.padding_idx):
            return rows
        keep = (idx != self.padding_idx)[..., None]
        return ops.where(keep, rows, ops.stop_gradient(rows))

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` axes (PyTorch's
    ``nn.LayerNorm``): ``(x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance.
    ``weight`` (ones) and ``bias`` (zeros) have ``normalized_shape``, under PyTorch's names;
    ``elementwise_affine=False`` leaves both out, ``bias=False`` only the bias."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.normalized_shape = tuple(_positive_int(n, "normalized_shape", "LayerNorm") for n in shape)
        if not self.normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must name at least one axis, got ()")
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be positive, got {eps!r}")
        self.eps = float(eps)
        self.dtype = float_dtype(dtype, "LayerNorm")
        affine = bool(elementwise_affine)
        self.weight = Parameter(init.ones(self.normalized_shape, self.dtype)) if affine else None
        self.bias = Parameter(init.zeros(self.normalized_shape, self.dtype)) if affine and bias else None

    def forward(self, x):
        x = as_input(x, self.dtype, f"LayerNorm({self.normalized_shape})")
        try:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        except ValueError as err:
            raise ValueError(f"LayerNorm({self.normalized_shape}): {err}") from None

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class Flatten(Module):
    """Axes ``start_dim`` to ``end_dim`` merged into one (PyTorch's defaults: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        nd, start, end = x.ndim, self.start_dim, self.end_dim
        if not (-nd <= start < nd and -nd <= end < nd) or start % nd > end % nd:
            raise ValueError(f"Flatten: start_dim={start} and end_dim={end} do not name a range of the axes "
                             f"of shape {x.shape}")
        start, end = start % nd, end % nd
        return x.reshape(x.shape[:start] + (int(np.prod(x.shape[start:end + 1])),) + x.shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input unchanged (arguments are accepted and ignored, as PyTorch's)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


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


class GELU(Module):
    """``x * Phi(x)`` (see :func:`minigrad.nn.functional.gelu`): the exact erf form by default,
    PyTorch's, or ``approximate="tanh"``."""

    def __init__(self, approximate: str = "none", dtype=None):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


class LeakyReLU(Module):
    """``x`` where positive, ``negative_slope * x`` elsewhere."""

    def __init__(self, negative_slope: float = 0.01, dtype=None):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    """``softmax`` along ``dim`` (``axis`` is the same argument; -1 by default, as Keras's)."""

    def __init__(self, dim: int | None = None, *, axis: int | None = None, dtype=None):
        super().__init__()
        self.dim = one_of("Softmax", axis, dim, ("axis", "dim"), -1)

    def forward(self, x):
        return F.softmax(x if isinstance(x, Tensor) else Tensor(x), dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


def _describe(layer):
    """``Type(config)`` on one line, e.g. ``LSTM(8, 16, dtype=float32, return_state=True)``."""
    return f"{type(layer).__name__}({layer.extra_repr()})"


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
        layers = list(self._modules.items())
        for i, (name, layer) in enumerate(layers):
            x = layer(x)
            if isinstance(x, (tuple, list)) and i + 1 < len(layers):
                raise TypeError(
                    f"Sequential: layer {name}, {_describe(layer)}, returned a {type(x).__name__} of {len(x)} "
                    f"values, but the next layer, {_describe(layers[i + 1][1])}, takes one tensor. A layer with "
                    f"several outputs (e.g. return_state=True) can only be last in a Sequential; otherwise write "
                    f"a Module whose forward picks the output it needs")
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
