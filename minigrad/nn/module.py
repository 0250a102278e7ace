"""``Module``: the base of every layer and model; ``Parameter``: a Tensor a module owns.

A module registers what is assigned to its attributes: a ``Parameter`` becomes one of its
parameters, a ``Module`` (or a list/tuple of modules, wrapped in a ``ModuleList``) one of its
children; ``register_buffer`` adds state that is not a parameter (saved, not optimised). Everything
else (``parameters()``, ``state_dict()``, ``train()``...) walks that tree.
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from ..io import CheckpointError, _Archive, _Header
from ..tensor import Tensor, _as_array
from .utils import zero_grads

__all__ = ["Parameter", "Module", "ModuleList", "ModuleDict", "IncompatibleKeys", "functional_call"]


class Parameter(Tensor):
    """A Tensor that a ``Module`` owns and an optimizer updates: it requires grad by default and
    is registered by assigning it to a module attribute. Floating-point dtypes only. Like
    ``Tensor``, it keeps the memory (and dtype) of an ndarray it is given (no copy); Python
    numbers and lists take the default dtype."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        arr = _as_array(data, dtype)
        if arr.dtype.kind != "f":
            raise TypeError(f"Parameter: parameters must have a floating-point dtype, got {arr.dtype}")
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = ("What ``load_state_dict(strict=False)`` skipped: names in the model but not in the state "
                            "(missing_keys), and the reverse (unexpected_keys).")


class _HookHandle:
    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


def _indent(text, n=2):
    lines = text.split("\n")
    return "\n".join([lines[0]] + [" " * n + line for line in lines[1:]])


class Module:
    """Base class for layers and models: subclass it, assign parameters and sub-modules in
    ``__init__`` (after ``super().__init__()``), and define ``forward``.

    Example
    -------
    >>> class MLP(mg.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.hidden = mg.nn.Linear(2, 8)
    ...         self.out = mg.nn.Linear(8, 1)
    ...     def forward(self, x):
    ...         return self.out(self.hidden(x).relu())
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_forward_hooks", {})
        object.__setattr__(self, "training", True)

    # -- registration by attribute assignment
    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        modules = self.__dict__.get("_modules")
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
            value = ModuleList(value)
        if isinstance(value, (Parameter, Module)):
            if params is None:
                raise AttributeError(f"{type(self).__name__}: call super().__init__() at the start of __init__, "
                                     f"before assigning parameters or sub-modules (assigning '{name}')")
            self.__dict__.pop(name, None)
            params.pop(name, None)
            modules.pop(name, None)
            self.__dict__.get("_buffers", {}).pop(name, None)
            (params if isinstance(value, Parameter) else modules)[name] = value
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} to parameter "
                                f"'{name}'; wrap it in mg.nn.Parameter, or assign its array to .{name}.data")
            params[name] = None
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} to sub-module "
                                f"'{name}'; assign a Module (or None)")
            modules[name] = None
        elif name in self.__dict__.get("_buffers", ()):
            self._buffers[name] = _as_buffer(value, type(self).__name__, name)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):   # only called when normal lookup fails
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        if name in d.get("_buffers", ()):
            return d["_buffers"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent.discard(name)
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._modules) | set(self._buffers))

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register a buffer: state that is not a parameter (no gradient, not optimised), read as
        ``self.name``, e.g. running statistics. Assigning ``self.name = value`` later replaces it
        and keeps it a buffer.

        Parameters
        ----------
        name : str
            Not already an attribute, parameter or sub-module; no ``'.'``.
        tensor : Tensor, ndarray or None
            An ndarray is wrapped in a Tensor (no copy); None reserves the name.
        persistent : bool
            Whether ``state_dict()`` holds it (and ``load_state_dict`` expects it).
        """
        where = f"{type(self).__name__}.register_buffer"
        if "_buffers" not in self.__dict__:
            raise AttributeError(f"{where}: call super().__init__() before registering buffers")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{where}: the name must be a non-empty string without '.', got {name!r}")
        if name not in self._buffers and (hasattr(self, name) or name in self._parameters or name in self._modules):
            raise KeyError(f"{where}: '{name}' is already an attribute, parameter or sub-module")
        self._buffers[name] = _as_buffer(tensor, type(self).__name__, name)
        (self._non_persistent.discard if persistent else self._non_persistent.add)(name)

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        """``(dotted_name, Tensor)`` for every buffer (None ones skipped), as ``named_parameters``."""
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, m in mods:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self, recurse: bool = True):
        return [b for _, b in self.named_buffers(recurse=recurse)]

    # -- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in tuple(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, args, output)`` after every forward (a non-None return replaces the
        output). Returns a handle whose ``remove()`` unregisters it."""
        key = object()
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    # -- walking the tree
    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "", _seen=None):
        """``(dotted_name, module)`` for this module (name ``''``) and every descendant, pre-order,
        each module once."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """``(dotted_name, parameter)`` pairs, e.g. ``('layers.0.weight', W)``; a parameter shared
        by several modules appears once, under its first name."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, m in mods:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self, recurse: bool = True):
        return [p for _, p in self.named_parameters(recurse=recurse)]

    # -- modes and gradients
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (``training = mode``) on this module and all descendants."""
        self.training = bool(mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode: ``train(False)`` (Dropout becomes the identity)."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient: ``grad = None`` (the default, as in PyTorch), or with
        ``set_to_none=False`` fill existing gradients with zeros in place."""
        zero_grads(self.parameters(), set_to_none)

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter; frozen ones count as non-trainable."""
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every descendant, then on this module."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- state
    def state_dict(self) -> dict:
        """``{dotted_name: ndarray}``: a copy of every parameter's and persistent buffer's values
        (later updates do not change it)."""
        return {name: np.array(t.data, copy=True) for name, t in self._state_tensors().items()}

    def _state_tensors(self) -> dict:
        """What the state dict holds: the parameters, then the persistent buffers, by dotted name."""
        own = dict(self.named_parameters())
        for mod_name, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    own[f"{mod_name}.{name}" if mod_name else name] = b
        return own

    def load_state_dict(self, state, strict: bool = True, max_bytes: int | None = None) -> IncompatibleKeys:
        """Copy ``state`` (name -> ndarray or Tensor, or the path of a checkpoint) into the parameters.

        Every name, shape and dtype is checked before anything is changed: on a mismatch nothing
        is loaded and :class:`minigrad.CheckpointError` lists every problem. Shapes and dtypes
        must match exactly (no silent casts). With ``strict=False``, names missing from ``state``
        keep their values and names the model lacks are ignored; both lists are returned as
        ``IncompatibleKeys(missing_keys, unexpected_keys)``. Given a path, the checks use the
        archive's headers, before any value is read (``max_bytes`` as in :func:`minigrad.load`).
        """
        if isinstance(state, (str, os.PathLike)):
            with _Archive(state, max_bytes) as archive:
                arrays = archive.headers           # shapes and dtypes only: checked before reading
                result = self._check_state(arrays, strict)
                self._copy_in(archive.read([n for n in arrays if n in self._state_tensors()]))
            return result
        result = self._check_state(state, strict)
        self._copy_in({k: v.data if isinstance(v, Tensor) else np.asarray(v) for k, v in state.items()})
        return result

    def _check_state(self, state, strict):
        """Raise CheckpointError listing every mismatch of ``state`` (values, or headers with
        ``shape`` and ``dtype``) with the parameters; else return the IncompatibleKeys."""
        if not hasattr(state, "items"):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict of name -> array, "
                            f"got {type(state).__name__}")
        own = self._state_tensors()
        arrays, problems = {}, []
        for name, value in state.items():
            if not isinstance(name, str):
                problems.append(f"key {name!r} is not a string")
                continue
            arrays[name] = value if isinstance(value, _Header) else (
                value.data if isinstance(value, Tensor) else np.asarray(value))
        missing = [k for k in own if k not in arrays]
        unexpected = [k for k in arrays if k not in own]
        if strict and missing:
            problems.append(f"missing keys (in the model, not in the state): {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys (in the state, not in the model): {unexpected}")
        for name, p in own.items():
            if name not in arrays:
                continue
            a = arrays[name]
            if a.shape != p.shape:
                problems.append(f"'{name}': shape {a.shape} in the state, {p.shape} in the model")
            if a.dtype != p.dtype:
                problems.append(f"'{name}': dtype {a.dtype} in the state, {p.dtype} in the model")
        if problems:
            raise CheckpointError(f"{type(self).__name__}.load_state_dict: the state does not match the model; "
                                  f"nothing was loaded:\n  " + "\n  ".join(problems))
        return IncompatibleKeys(missing, unexpected)

    def _copy_in(self, arrays):
        for name, p in self._state_tensors().items():
            if name not in arrays:
                continue
            with p._unlocked():             # in place, as the optimizers do; bumping the version makes a
                writable = p.data.flags.writeable     # graph recorded before the load refuse to backward
                if writable:
                    np.copyto(p.data, arrays[name])
            if writable:
                p._bump()
            else:                           # read-only of its own (not by a graph): a new array
                p.data = np.array(arrays[name], dtype=p.dtype, copy=True)

    # -- printing
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in its repr (its configuration)."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        children = [f"({name}): {_indent(repr(m))}" for name, m in self._modules.items()]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = (extra.split("\n") if extra else []) + children
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _as_buffer(value, owner, name):
    if value is None or isinstance(value, Tensor) and not isinstance(value, Parameter):
        return value
    if isinstance(value, np.ndarray):
        return Tensor(value)
    raise TypeError(f"{owner}: buffer '{name}' must be a Tensor, an ndarray or None, got {type(value).__name__}")


class ModuleList(Module):
    """A list of modules, registered as children ``'0'``, ``'1'``, ... A non-empty plain list or
    tuple of modules assigned to a module attribute is wrapped in one automatically (an empty
    list stays a plain list, so to build one up use ``self.layers = ModuleList()`` and append)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: items must be Modules, got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def _key(self, i):
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {n} modules")
        return str(i % n)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)(list(self._modules.values())[i])
        return self._modules[self._key(i)]

    def __setitem__(self, i, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: items must be Modules, got {type(module).__name__}")
        self._modules[self._key(i)] = module

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def functional_call(module: Module, tensors: dict, *args, **kwargs):
    """Call ``module(*args, **kwargs)`` with some parameters temporarily replaced by ``tensors``
    (dotted name -> Tensor), like ``torch.func.functional_call``. The replacements are ordinary
    Tensors, so gradients flow to them; e.g. ``mg.gradcheck(lambda x, W: functional_call(layer,
    {'weight': W}, x), [x, W])`` checks a layer's weight gradient."""
    swapped = []
    try:
        for name, t in tensors.items():
            *path, leaf = name.split(".")
            owner = module
            for part in path:
                owner = owner._modules.get(part)
                if owner is None:
                    break
            if owner is None or leaf not in owner._parameters:
                raise KeyError(f"functional_call: {type(module).__name__} has no parameter '{name}' "
                               f"(it has {[n for n, _ in module.named_parameters()]})")
            swapped.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = t if isinstance(t, Tensor) else Tensor(t)
        return module(*args, **kwargs)
    finally:
        for owner, leaf, p in reversed(swapped):
            owner._parameters[leaf] = p


class ModuleDict(Module):
    """Modules under string keys, registered as children (PyTorch's ``nn.ModuleDict``), in
    insertion order: ``d[key]``, ``d[key] = module``, ``del d[key]``, ``key in d``, ``len``,
    iteration over the keys, ``keys() values() items() update()``. Parameters are named
    ``key.weight`` and so on."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def _check(self, key, module):
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"ModuleDict: keys must be non-empty strings without '.', got {key!r}")
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: '{key}' must be a Module, got {type(module).__name__}")

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(f"ModuleDict: no module '{key}' (keys: {list(self._modules)})")
        return self._modules[key]

    def __setitem__(self, key, module):
        self._check(key, module)
        self._modules[key] = module

    def __delitem__(self, key):
        self[key]                    # noqa: B018  (the KeyError with the keys listed)
        del self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def update(self, modules) -> None:
        """Add (or replace) the modules of a dict or of ``(key, module)`` pairs; all are checked first."""
        pairs = list(modules.items() if hasattr(modules, "items") else modules)
        for key, module in pairs:
            self._check(key, module)
        self._modules.update(pairs)
