"""Export a minigrad model to ONNX: ``minigrad.onnx.export(model, example_input, path)``.

Needs the ``onnx`` package (``pip install onnx``; onnxruntime to run the file). The same layers as
``minigrad.interop.to_torch``: a ``Sequential`` (or one layer) of ``Linear``, ``Embedding``,
``LayerNorm``, ``Dropout``, ``Flatten``, ``Identity``, the activations and ``LSTM`` / ``GRU`` /
``RNN`` (stacked, bidirectional), which become ONNX's own ``LSTM`` / ``GRU`` / ``RNN`` operators:

* ONNX's gate order is i, o, f, c for the LSTM (minigrad's i, f, g, o) and z, r, h for the GRU
  (minigrad's z, r, n); weights are stored (directions, gates * H, features), the transposes of
  minigrad's ``U`` and ``W``, and the bias as ``Wb | Rb``: minigrad's one LSTM/RNN bias is ``Wb``
  with ``Rb`` zero, the GRU's two biases are ``Wb`` and ``Rb``, with ``linear_before_reset=1``
  (the reset gate applied after the recurrent product, as in minigrad and PyTorch).
* onnxruntime runs recurrent operators time-major only (``layout=0``): the exported graph
  transposes around them. The batch and time axes of the input are dynamic.
* A mask is exported as ONNX's ``sequence_lens``: ``export(..., mask=example_mask)`` adds an
  input ``sequence_lens`` (batch,) int32 that every recurrent layer reads, the ONNX form of a
  post-padded mask (each row True then False). Any other mask cannot be expressed: refused.

The file holds inference behaviour: dropout is the identity, whatever the model's mode. It
keeps the model's dtype; onnxruntime (1.32) runs its LSTM / GRU / RNN kernels in float32 only
("LSTM operator does not support double yet"), so export a float32 model to serve it there.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["export"]

OPSET = 17          # LayerNormalization's first opset


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("minigrad.onnx.export needs the onnx package: pip install onnx "
                          "(or pip install minigrad[interop])") from None
    return onnx


class _Graph:
    """The nodes and initializers being built, with fresh names."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype, self.nodes, self.inits, self.n = onnx, np.dtype(dtype), [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, array, hint, dtype=None):
        name = self.name(hint)
        arr = np.asarray(array, dtype=self.dtype if dtype is None else dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type, inputs, hint=None, n_out=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs


# ---------------------------------------------------------------- layers without time

def _linear(g, m, x, info):
    y = g.op("MatMul", [x, g.const(m.weight.data, "weight")])
    return g.op("Add", [y, g.const(m.bias.data, "bias")]) if m.bias is not None else y


def _embedding(g, m, x, info):
    return g.op("Gather", [g.const(m.weight.data, "weight"), x], axis=0)


def _layer_norm(g, m, x, info):
    shape = m.normalized_shape
    scale = m.weight.data if m.weight is not None else np.ones(shape)
    bias = m.bias.data if m.bias is not None else np.zeros(shape)
    return g.op("LayerNormalization", [x, g.const(scale, "scale"), g.const(bias, "bias")], axis=-len(shape),
                epsilon=m.eps)


def _gelu(g, m, x, info):
    half_x = g.op("Mul", [x, g.const(0.5, "half")])
    if m.approximate == "tanh":        # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, "c")])])
        t = g.op("Tanh", [g.op("Mul", [inner, g.const(np.sqrt(2 / np.pi), "c")])])
    else:                              # x/2 (1 + erf(x / sqrt 2))
        t = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2), "c")])])
    return g.op("Mul", [half_x, g.op("Add", [t, g.const(1.0, "one")])])


def _flatten(g, m, x, info):
    nd = info["ndim"]
    start, end = m.start_dim % nd, m.end_dim % nd
    shape = g.op("Shape", [x])
    parts = [g.op("Slice", [shape, g.const([0], "s", np.int64), g.const([start], "e", np.int64)]),
             g.const([-1], "minus_one", np.int64),
             g.op("Slice", [shape, g.const([end + 1], "s", np.int64), g.const([nd], "e", np.int64)])]
    return g.op("Reshape", [x, g.op("Concat", parts, axis=0)])


# ---------------------------------------------------------------- recurrent layers

# minigrad's gate blocks -> ONNX's: LSTM i, f, g, o -> i, o, f, c; GRU and RNN: the same order
_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [0, 1, 2], "RNN": [0]}


def _onnx_weights(layer, names, kind):
    """W (D, kH, in), R (D, kH, H), B (D, 2kH) for one layer's directions, in ONNX's gate order."""
    order, H = _GATES[kind], layer.hidden_size

    def reorder(a):              # a: (..., kH) in minigrad's blocks
        blocks = np.split(a, len(order), axis=-1)
        return np.concatenate([blocks[i] for i in order], axis=-1)

    Ws, Rs, Bs = [], [], []
    for U, W, b in ((getattr(layer, n).data for n in ns) for ns in names):
        Ws.append(reorder(U).T)
        Rs.append(reorder(W).T)
        wb, rb = (b[0], b[1]) if kind == "GRU" else (b, np.zeros_like(b))
        Bs.append(np.concatenate([reorder(wb), reorder(rb)]))
    assert Ws[0].shape[0] == len(order) * H
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


def _directions_side_by_side(g, t, batch_axis_first):
    """(D, batch, H) -> (batch, D*H), or Y (time, D, batch, H) -> (time, batch, D*H)."""
    perm = [1, 0, 2] if batch_axis_first else [0, 2, 1, 3]
    shape = [0, -1] if batch_axis_first else [0, 0, -1]
    return g.op("Reshape", [g.op("Transpose", [t], perm=perm), g.const(shape, "shape", np.int64)])


def _recurrent(g, m, x, info):
    kind = type(m).__name__
    D = m.directions
    seq = g.op("Transpose", [x], perm=[1, 0, 2])                   # time-major, as onnxruntime needs
    lens = info.get("sequence_lens", "")
    finals = []
    for layer in range(m.num_layers):
        names = m._names[layer * D:(layer + 1) * D]
        W, R, B = _onnx_weights(m, names, kind)
        attrs = dict(hidden_size=m.hidden_size, direction="bidirectional" if D == 2 else "forward")
        if kind == "GRU":
            attrs["linear_before_reset"] = 1
        n_out = 3 if kind == "LSTM" else 2
        outs = g.op(kind, [seq, g.const(W, "W"), g.const(R, "R"), g.const(B, "B"), lens], kind.lower(),
                    n_out=n_out, **attrs)
        Y, states = outs[0], outs[1:]
        finals.append(states)
        if m.return_sequences or layer < m.num_layers - 1:
            seq = _directions_side_by_side(g, Y, batch_axis_first=False)     # (time, batch, D*H)
    if m.return_sequences:
        out = g.op("Transpose", [seq], perm=[1, 0, 2])
    else:
        out = _directions_side_by_side(g, finals[-1][0], batch_axis_first=True)
    if not m.return_state:
        return out
    stacked = [g.op("Concat", [f[k] for f in finals], axis=0) if len(finals) > 1 else finals[0][k]
               for k in range(len(finals[0]))]                       # (layers * D, batch, H)
    if m.num_layers * D == 1:
        stacked = [g.op("Squeeze", [s, g.const([0], "axes", np.int64)]) for s in stacked]
    return (out, *stacked)


def _table():
    from . import nn

    def simple(op_type, **attrs):
        return lambda g, m, x, info: g.op(op_type, [x], **attrs)

    return {nn.Linear: _linear, nn.Embedding: _embedding, nn.LayerNorm: _layer_norm, nn.GELU: _gelu,
            nn.Flatten: _flatten, nn.LSTM: _recurrent, nn.GRU: _recurrent, nn.RNN: _recurrent,
            nn.Dropout: simple("Identity"), nn.Identity: simple("Identity"), nn.ReLU: simple("Relu"),
            nn.Tanh: simple("Tanh"), nn.Sigmoid: simple("Sigmoid"),
            nn.LeakyReLU: lambda g, m, x, info: g.op("LeakyRelu", [x], alpha=m.negative_slope),
            nn.Softmax: lambda g, m, x, info: g.op("Softmax", [x], axis=m.dim)}


# ---------------------------------------------------------------- export

def _layers(model, table):
    """``[(path, layer)]`` of the model, every one of a supported type (exact: a subclass may
    compute something else), else a TypeError naming it."""
    from . import nn
    if type(model) is not nn.Sequential:
        items = [("the model", model)]
    else:
        items = [(f"the Sequential[{name!r}]", m) for name, m in model._modules.items()]
    for path, m in items:
        if type(m) not in table:
            names = sorted({t.__name__ for t in table} | {"Sequential"})
            raise TypeError(f"minigrad.onnx.export: {path} is a {type(m).__module__}.{type(m).__name__}, which "
                            f"cannot be exported (nothing was written); supported: {', '.join(names)}")
    return items


def _sequence_lens(mask, shape):
    """The lengths (batch,) int32 of a post-padded (batch, time) mask, else a ValueError."""
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf" or m.shape != tuple(shape[:2]) or not np.isin(m, (0, 1)).all():
        raise ValueError(f"minigrad.onnx.export: mask must be (batch, time) booleans matching the input's first "
                         f"two axes {tuple(shape[:2])}; got shape {m.shape}, dtype {m.dtype}")
    m = m.astype(bool)
    lengths = m.sum(axis=1)
    post = np.arange(m.shape[1]) < lengths[:, None]
    if not (post == m).all():
        row = int(np.nonzero((post != m).any(axis=1))[0][0])
        raise ValueError(f"minigrad.onnx.export: ONNX's recurrent operators take sequence lengths, i.e. post-padded "
                         f"masks (each row True then False); row {row} of the mask, {m[row].astype(int).tolist()}, "
                         f"is not one. Move the padding to the end of each sequence to export it")
    if (lengths == 0).any():
        raise ValueError("minigrad.onnx.export: a sequence of length 0 (a mask row without True) cannot be exported")
    return lengths.astype(np.int32)


def _trace_ranks(items, x, lengths):
    """Run the layers on the example (no graph, inference mode) for what the export needs: each
    layer's input rank, and the outputs' dtypes and ranks."""
    from . import nn
    from .engine import no_grad
    mask = None if lengths is None else np.arange(x.shape[1]) < lengths[:, None]
    modes = [(sub, sub.training) for _, m in items for sub in m.modules()]
    ranks = []
    try:
        for sub, _ in modes:
            sub.training = False
        with no_grad():
            for _, m in items:
                ranks.append(np.ndim(x.data) if hasattr(x, "data") else np.ndim(x))
                recurrent = isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))
                x = m(x, mask=mask) if recurrent and mask is not None else m(x)
    finally:
        for sub, mode in modes:
            sub.training = mode
    return ranks, x if isinstance(x, tuple) else (x,)


def _model_dtype(model):
    from .tensor import get_default_dtype
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        raise ValueError(f"minigrad.onnx.export: the model's parameters have several dtypes "
                         f"{sorted(map(str, dtypes))}; cast them to one first")
    return dtypes.pop() if dtypes else get_default_dtype()


def export(model, example_input, path, *, mask=None):
    """Write ``model`` as an ONNX file (opset 17) that computes what it computes in inference mode.

    Parameters
    ----------
    model : minigrad.nn.Module
        A ``Sequential`` (or a single layer) of the supported layers (see the module docstring).
    example_input : array_like
        A batch the model accepts, (batch, ...) floats, or integer token ids for a leading
        ``Embedding``. It fixes the input's dtype and rank; its batch axis (and time axis, for
        3-d input or token ids of shape (batch, time)) are dynamic in the file.
    path : str or os.PathLike
        Where to write; replaced whole, and only once everything has been built and checked.
    mask : array_like, optional
        A (batch, time) post-padded example mask: the file then takes a second input,
        ``sequence_lens`` (batch,) int32, read by every recurrent layer as minigrad reads the mask.

    Returns
    -------
    onnx.ModelProto
        The model written, checked with ``onnx.checker.check_model(full_check=True)``.
    """
    onnx = _import_onnx()
    from .tensor import Tensor
    table = _table()
    items = _layers(model, table)
    x = np.asarray(example_input.data if isinstance(example_input, Tensor) else example_input)
    if x.ndim < 2 or x.dtype.kind not in "biuf":
        raise ValueError(f"minigrad.onnx.export: example_input must be a numeric batch of rank >= 2, got shape "
                         f"{x.shape}, dtype {x.dtype}")
    dtype = _model_dtype(model)
    x = x.astype(np.int64 if x.dtype.kind in "biu" else dtype)
    lengths = None if mask is None else _sequence_lens(mask, x.shape)
    ranks, outputs = _trace_ranks(items, x, lengths)

    g = _Graph(onnx, dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype
    n_dynamic = 2 if x.ndim >= 3 or x.dtype.kind == "i" else 1      # (batch, features): time is not there
    dims = ["batch", "time"][:n_dynamic] + list(x.shape[n_dynamic:])
    inputs = [onnx.helper.make_tensor_value_info("input", elem(x.dtype), dims)]
    info = {}
    if lengths is not None:
        inputs.append(onnx.helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32, ["batch"]))
        info["sequence_lens"] = "sequence_lens"
    t = "input"
    for (_, m), ndim in zip(items, ranks):
        t = table[type(m)](g, m, t, dict(info, ndim=ndim))
    names = ["output"] + [f"state_{k}" for k in range(1, len(outputs))]
    for src, name in zip(t if isinstance(t, tuple) else (t,), names):
        g.nodes.append(onnx.helper.make_node("Identity", [src], [name]))
    outs = [onnx.helper.make_tensor_value_info(n, elem(o.dtype), [None] * o.ndim) for n, o in zip(names, outputs)]
    graph = onnx.helper.make_graph(g.nodes, "minigrad", inputs, outs, g.inits)
    # IR version 9 (onnx 1.15's): what the runtimes of opset 17's time read; newer ones read it too
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="minigrad", ir_version=9)
    onnx.checker.check_model(proto, full_check=True)
    _write(proto.SerializeToString(), os.fspath(path))
    return proto


def _write(data, path):
    """Replace ``path`` whole: a temporary file beside it, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
