"""A Keras-style summary table: one row per layer with its output shape and parameter count.

Output shapes are measured, not declared: the model runs forward (in eval mode, under
``no_grad``) on zeros twice, with every unknown axis (the batch axis and each ``None`` in
``input_shape``) set to 2 and then to 3. An output axis whose size differs between the runs
depends on an unknown axis and is printed as ``None``. So any Module works, including ones
that know nothing about summaries.
"""
from __future__ import annotations

import re

import numpy as np

from ..engine import no_grad
from ..tensor import Tensor, get_default_dtype
from .module import Module

__all__ = ["summary"]

_DUMMY_SIZES = (2, 3)


def _snake(name: str) -> str:
    """Keras's layer naming: ``LSTM -> lstm``, ``LSTMCell -> lstm_cell``, ``Linear -> linear``."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _shape_of(out):
    if isinstance(out, (Tensor, np.ndarray)):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return [_shape_of(o) for o in out]
    return "?"


def _merge(a, b):
    """Combine the shapes of the two runs: axes that changed become None."""
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return tuple(x if x == y else None for x, y in zip(a, b, strict=True))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [_merge(x, y) for x, y in zip(a, b, strict=True)]
    return "?"


def _format_shape(s):
    if isinstance(s, list):
        return "[" + ", ".join(_format_shape(x) for x in s) + "]"
    return str(s)


def _count(params):
    return sum(int(p.size) for p in params)


def _check_input_shape(input_shape):
    if isinstance(input_shape, (int, np.integer)) or input_shape is None:
        input_shape = (input_shape,)
    shape = tuple(input_shape)
    for d in shape:
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0):
            raise ValueError(f"summary: input_shape must hold positive integers or None (batch axis excluded), "
                             f"got {input_shape!r}")
    return shape


def _input_dtype(model, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    first_leaf = next((m for m in model.modules() if not any(True for _ in m.children())), model)
    if getattr(first_leaf, "input_dtype", None) is not None:
        return np.dtype(first_leaf.input_dtype)
    params = model.parameters()
    return params[0].dtype if params else get_default_dtype()


def summary(model: Module, input_shape, dtype=None) -> str:
    """The Keras-style summary of ``model`` as a string.

    Parameters
    ----------
    model : Module
        One row per layer of a Sequential, or per direct child of another Module (plus a row for
        the model's own parameters if it has any outside its children); a module with no
        children is one row.
    input_shape : tuple
        The input's shape without the batch axis; ``None`` marks an axis of any size (e.g. a
        sequence length).
    dtype : numpy dtype, optional
        The dummy input's dtype. By default the first layer's ``input_dtype`` if it declares
        one (``Embedding``: int64), else the dtype of the model's first parameter, else the default dtype.

    Returns
    -------
    str
        Rows ``name (Type)`` (the attribute name the model gave the layer, or for a Sequential's
        numbered layers Keras's names: ``lstm``, ``dropout``, ``lstm_1``...), ``Output Shape``
        (``None`` for the batch axis and every axis that follows an unknown input axis),
        ``Param #``; then ``Total params``, ``Trainable params`` (parameters with
        ``requires_grad``) and ``Non-trainable params``, with thousands separators. A layer the
        forward never called shows ``unused``; one called several times with different output
        shapes shows ``multiple``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: expected a Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    dtype = _input_dtype(model, dtype)

    attrs = {id(m): name for name, m in model.named_children()}
    rows = list(model.children()) or [model]
    seen_params = {id(p) for m in rows if m is not model for p in m.parameters()}
    own = [p for p in model.parameters() if id(p) not in seen_params]
    if own and rows[0] is not model:
        rows.append(model)

    calls = {id(m): [] for m in rows}
    handles = [m.register_forward_hook(lambda mod, args, out: calls[id(mod)].append(_shape_of(out)))
               for m in rows if m is not model]
    modes = [(m, m.training) for m in model.modules()]
    runs = []
    try:
        model.eval()
        with no_grad():
            for n in _DUMMY_SIZES:
                x_shape = (n,) + tuple(n if d is None else d for d in shape)
                for c in calls.values():
                    c.clear()
                try:
                    out = model(Tensor(np.zeros(x_shape, dtype)))
                except Exception as err:
                    raise RuntimeError(f"summary: {type(model).__name__} failed on a zero input of shape {x_shape} "
                                       f"and dtype {dtype}: {type(err).__name__}: {err}") from err
                calls[id(model)] = [_shape_of(out)]
                runs.append({k: list(v) for k, v in calls.items()})
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    table = []
    counts = {}
    for m in rows:
        kind = type(m).__name__
        name = attrs.get(id(m), "")      # the attribute name the model gave the layer, if it gave one
        if not name or name.isdigit():   # Sequential's '0', '1', ...: Keras's names, lstm, lstm_1, ...
            base = _snake(kind)
            k = counts.get(base, 0)
            counts[base] = k + 1
            name = base if k == 0 else f"{base}_{k}"
        a, b = runs[0][id(m)], runs[1][id(m)]
        if m is model and own and len(rows) > 1:
            out_shape = "-"
            n_params = _count(own)
        else:
            if not a or len(a) != len(b):
                out_shape = "unused" if not a else "multiple"
            else:
                merged = [_merge(x, y) for x, y in zip(a, b, strict=True)]
                out_shape = _format_shape(merged[0]) if all(s == merged[0] for s in merged) else "multiple"
            n_params = _count(m.parameters())
        table.append((f"{name} ({kind})", out_shape, str(n_params)))

    params = model.parameters()
    total = _count(params)
    trainable = _count(p for p in params if p.requires_grad)

    heads = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(29, max(len(r[0]) for r in table) + 2),
              max(26, max(len(r[1]) for r in table) + 2),
              max(10, max(len(r[2]) for r in table) + 1)]
    width = sum(widths)

    def line(cells):
        return "".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [f'Model: "{_snake(type(model).__name__)}"', "_" * width, line(heads), "=" * width]
    for i, row in enumerate(table):
        out.append(line(row))
        out.append("=" * width if i == len(table) - 1 else "_" * width)
    out += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", "_" * width]
    return "\n".join(out)
