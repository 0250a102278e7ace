"""The Tensor (an ndarray and the gradient it receives) and the Node (what the graph keeps of
the op that made it)."""
from __future__ import annotations

import operator
import threading

import numpy as np


class _State(threading.local):
    """Per-thread modes: grad recording, anomaly detection, the scan trace being recorded."""
    grad = True
    anomaly = False
    trace = None
    retain_graph = False
    step = None          # the timestep ops are being recorded for (mg.timestep), if any
    recorder = None      # the active mg.record_contributions, if any
    scan_contributions = None   # what a recording scan reports, while it runs


_state = _State()


def _check_not_traced(t, what):
    trace = _state.trace
    if trace is not None and trace.is_traced(t):
        raise RuntimeError(
            f"scan: the body used {what} of a traced tensor. A scan body is traced once and replayed for "
            f"every step, so it must compute with Tensor ops only: Python values read from tensor data "
            f"would be frozen at the first step. Use Tensor ops (and .detach() to stop gradients).")


_DEFAULT_DTYPE = [np.dtype(np.float32)]     # a list, so the functions below rebind nothing global


def get_default_dtype() -> np.dtype:
    """The dtype of Tensors made from Python numbers and lists, of the factories (``mg.zeros``,
    ``mg.randn``...) and of new layers' parameters: float32 unless ``set_default_dtype`` changed it."""
    return _DEFAULT_DTYPE[0]


def set_default_dtype(dtype) -> None:
    """Make ``dtype`` the default dtype (see ``get_default_dtype``), as torch.set_default_dtype.

    It applies to what is made afterwards; existing Tensors and layers keep their dtype, and
    numpy arrays always keep their own. Gradient checks want float64:
    ``mg.set_default_dtype(np.float64)``, or float64 arrays.

    Parameters
    ----------
    dtype : numpy dtype or its name
        float32 or float64.

    Raises
    ------
    TypeError
        For any other dtype (float16 loses too much for training; integers cannot require grad).
    """
    try:
        dt = None if dtype is None else np.dtype(dtype)     # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"set_default_dtype: the default dtype must be float32 or float64, got {dtype!r}")
    _DEFAULT_DTYPE[0] = dt


def _as_array(data, dtype):
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    if isinstance(data, np.ndarray):
        return data
    arr = np.asarray(data)
    if isinstance(data, np.generic):
        return arr
    if arr.dtype.kind in "biu" or arr.dtype == np.float64:    # Python numbers and lists: the default dtype
        arr = arr.astype(_DEFAULT_DTYPE[0], copy=False)
    return arr


class _LastAxis:
    """softmax's default axis: -1, told apart from an explicit ``axis=None`` (all axes) and from
    ``dim=`` (given both, softmax refuses)."""

    def __repr__(self):
        return "-1"


LAST = _LastAxis()


class Node:
    """What the graph keeps of one op's output: its parents (Nodes, or leaf Tensors themselves,
    so every use of a parameter points at the parameter), its vjp, its op's name, the epoch and
    timestep it was recorded at, and its shape and dtype.

    Not the output's data: that belongs to the Tensor the op returned, and goes with it unless a
    vjp saved it. So an unrolled recurrent step keeps what its backward reads, not every
    intermediate (``x_t @ U``, the sums before the gates: about two thirds of an LSTM step's
    arrays). PyTorch's ``grad_fn`` is the same split.
    """

    __slots__ = ("_parents", "_vjp", "_op", "_epoch", "_step", "shape", "dtype", "_pins")

    def __init__(self, parents, vjp, op, epoch, step, shape, dtype, pins=None):
        # engine.apply spells these stores out instead of calling here: ~50 ns an op, ~1% of a tiny LSTM step
        self._parents, self._vjp, self._op, self._epoch, self._step = tuple(parents), vjp, op, epoch, step
        self.shape, self.dtype = shape, dtype
        self._pins = pins      # engine._Hold: the arrays of its leaf operands stay read-only while it lives

    ndim = property(lambda self: len(self.shape))
    op = property(lambda self: self._op, doc="The name of the op.")
    parents = property(lambda self: self._parents,
                       doc="One entry per operand: its Node, the leaf Tensor itself, or None (no gradient).")
    step = property(lambda self: self._step, doc="The timestep its op was recorded in, or None.")

    def __repr__(self):
        return f"Node(op={self._op!r}, shape={self.shape}, dtype={self.dtype}, step={self._step})"


class Tensor:
    """An n-dimensional array that can record the ops applied to it and backpropagate.

    Parameters
    ----------
    data : array_like
        A float ndarray keeps its dtype (and its memory: no copy is made); Python numbers
        and lists take the default dtype (``mg.get_default_dtype()``, float32 unless changed)
        unless ``dtype`` is given.
    requires_grad : bool
        Record ops on this tensor so ``backward`` can compute its gradient (float dtypes only).
    dtype : numpy dtype, optional
    """

    __slots__ = ("_data", "_grad", "requires_grad", "_node", "__weakref__")
    __array_ufunc__ = None          # ndarray <op> Tensor defers to Tensor's reflected operators

    def __array_function__(self, func, types, args, kwargs):
        # np.sum(t) would call t.sum(axis=..., out=...) and fail on a keyword; say what to do instead
        raise TypeError(f"numpy.{func.__name__} does not take minigrad Tensors (it would record no gradient): "
                        f"use the Tensor method or mg.{func.__name__} if there is one, or pass t.numpy() "
                        f"for plain values")

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data._data
        arr = _as_array(data, dtype)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require grad; got dtype {arr.dtype}")
        self._data = arr
        self._grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None           # the Node of the op that made it; None for a leaf

    # -- data and in-place safety
    @property
    def data(self) -> np.ndarray:
        """The ndarray itself (no copy). While a recorded graph may read it (a leaf's array, until
        that graph's backward has run or the graph is freed) it is read-only, so a write through it
        raises numpy's "assignment destination is read-only" instead of changing a gradient
        unseen: write after backward, or with the in-place operators (``x[i] = v``, ``x -= d``)
        under ``mg.no_grad()``, which backward sees as a version change."""
        if _state.trace is not None:
            _check_not_traced(self, ".data")
        _pin_result(self)
        return self._data

    @data.setter
    def data(self, value):
        """Assigning (including ``t.data -= x``) counts as an in-place change: a recorded op that
        saved this tensor's array for backward will refuse to use it afterwards."""
        self._data = np.asarray(value._data if isinstance(value, Tensor) else value)
        self._bump()

    def _bump(self):
        from .engine import _epoch, _note_inplace
        _epoch[0] += 1
        _note_inplace(self._data, _epoch[0])

    def _unlocked(self):
        """A context in which the library changes this tensor's array in place although a graph
        holds it read-only (an optimizer step, a load); the caller then bumps the version."""
        from .engine import writable
        return writable(self._data)

    # -- in-place operators, with PyTorch's semantics
    def __iadd__(self, o): return self._inplace(ops.add, np.add, o, "+=")
    def __isub__(self, o): return self._inplace(ops.subtract, np.subtract, o, "-=")
    def __imul__(self, o): return self._inplace(ops.multiply, np.multiply, o, "*=")
    def __itruediv__(self, o): return self._inplace(ops.divide, np.divide, o, "/=")
    def __ipow__(self, o): return self._inplace(ops.power, np.power, o, "**=")

    def __setitem__(self, index, value):
        index = _raw_index(index)
        self._inplace(lambda x, v: ops.setitem(x, v, index=index), lambda a, v, out: a.__setitem__(index, v),
                      value, "item assignment")

    def _inplace(self, op, write, o, what):
        """Change this tensor in place to ``op(self, o)``. Under ``no_grad`` (or when nothing needs a
        gradient) it writes into the array; otherwise the op is recorded and this tensor takes its
        node, as in PyTorch. Either way the version changes, so a recorded op that saved the old
        values makes backward raise. A leaf that requires grad may change only under no_grad."""
        if _state.trace is not None:
            raise RuntimeError(f"scan: in-place {what} in a scan body; the body is traced once and replayed, "
                               f"so write it out of place (e.g. x = x + d, or mg.where for item assignment)")
        o = o if type(o) is Tensor else _lift(o)
        o_grad = isinstance(o, Tensor) and o.requires_grad
        if _state.grad and self.requires_grad and self._node is None:
            raise RuntimeError(f"{what}: an in-place change of a leaf tensor that requires grad (shape {self.shape}) "
                               f"outside no_grad(); it would cut the tensor from its own gradient. Do it under "
                               f"`with mg.no_grad():` (as an optimizer step is), or on a copy")
        if _state.grad and (self.requires_grad or o_grad):
            old = Tensor.__new__(Tensor)        # the old values: the op's vjp may keep them (PyTorch's clone)
            old._data, old._grad, old.requires_grad, old._node = self._data.copy(), None, self.requires_grad, self._node
            result = op(old, o)
            if result.shape != self.shape or result.dtype != self.dtype:
                raise ValueError(f"{what}: the result has shape {result.shape} and dtype {result.dtype}; an in-place "
                                 f"change must keep the tensor's {self.shape} and {self.dtype}")
            with self._unlocked():
                np.copyto(self._data, result._data)
            self._node, self.requires_grad = result._node, result.requires_grad
        else:
            value = o._data if isinstance(o, Tensor) else o
            try:
                with self._unlocked():
                    write(self._data, value, out=self._data)
            except (ValueError, TypeError, IndexError) as err:
                from .engine import _restated
                raise _restated(err, f"{what}: cannot change a tensor of shape {self.shape} and dtype "
                                     f"{self.dtype} in place: {err}") from err
        self._bump()
        return self

    @property
    def grad(self):
        """The gradient backward accumulated (an ndarray of this tensor's shape), or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        """Assigning checks shape and dtype (as PyTorch does): an optimizer would broadcast a
        gradient of another shape over the parameter without a word."""
        if value is not None:
            value = value._data if isinstance(value, Tensor) else np.asarray(value)
            if value.shape != self._data.shape:
                raise ValueError(f"grad: the assigned gradient has shape {value.shape}, but the tensor has "
                                 f"shape {self._data.shape}")
            if value.dtype != self._data.dtype:
                raise TypeError(f"grad: the assigned gradient has dtype {value.dtype}, but the tensor has "
                                f"dtype {self._data.dtype}")
        self._grad = value

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self._data.dtype.kind != "f":
            raise TypeError(f"requires_grad_: only floating-point tensors can require grad; got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    # -- array attributes
    shape = property(lambda self: self._data.shape)
    ndim = property(lambda self: self._data.ndim)
    dtype = property(lambda self: self._data.dtype)
    size = property(lambda self: _Size(self._data.shape),
                    doc="The number of elements, as numpy's ``.size``; callable as PyTorch's ``size(dim=None)``.")
    T = property(lambda self: ops.transpose(self))
    is_leaf = property(lambda self: self._node is None)
    node = property(lambda self: self._node, doc="The graph's record of the op that made it (None for a leaf).")
    op = property(lambda self: self._op, doc="The name of the op that made this tensor (None for a leaf).")
    step = property(lambda self: None if self._node is None else self._node._step,
                    doc="The timestep its op was recorded in (``mg.timestep``), or None.")

    # -- the graph, read the same way from a Tensor and from a Node (viz and the examples walk it)
    _parents = property(lambda self: () if self._node is None else self._node._parents)
    _vjp = property(lambda self: None if self._node is None else self._node._vjp)
    _op = property(lambda self: None if self._node is None else self._node._op)

    def __len__(self):
        return len(self._data)

    def numel(self) -> int:
        """The number of elements (``size``), PyTorch's name."""
        return self._data.size

    def numpy(self) -> np.ndarray:
        """The ndarray itself (no copy); read-only while a graph may read it, as ``data``."""
        _check_not_traced(self, "numpy()")
        _pin_result(self)
        return self._data

    def item(self):
        _check_not_traced(self, "item()")
        return self._data.item()

    def tolist(self):
        _check_not_traced(self, "tolist()")
        return self._data.tolist()

    def __float__(self):
        _check_not_traced(self, "__float__()")
        return float(self._data)

    def __int__(self):
        _check_not_traced(self, "__int__()")
        return int(self._data)

    def __bool__(self):
        _check_not_traced(self, "__bool__()")
        return bool(self._data)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def detach(self) -> "Tensor":
        """A tensor sharing this one's data, outside any graph (read-only while this one's graph
        may read it, as ``data``; its in-place operators are version changes that graph sees)."""
        if _state.trace is not None:
            return ops.stop_gradient(self)      # inside a scan body: a traced op
        _pin_result(self)
        return Tensor(self._data)

    def zero_grad(self) -> None:
        self._grad = None

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (``grad`` is required unless
        self has one element). The graph's saved arrays are freed unless ``retain_graph``."""
        _backward(self, grad, retain_graph)

    def astype(self, dtype) -> "Tensor":
        return ops.astype(self, dtype=np.dtype(dtype))

    def __repr__(self):
        body = np.array2string(self._data, separator=", ", prefix="Tensor(", threshold=50, precision=4)
        extra = ""
        if self._data.dtype != _DEFAULT_DTYPE[0]:
            extra += f", dtype={self._data.dtype}"
        if self._op is not None:
            extra += f", op={self._op}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"Tensor({body}{extra})"

    # -- arithmetic (numpy broadcasting; right-hand versions for numbers and ndarrays)
    def __add__(self, o): return ops.add(self, o if type(o) is Tensor else _lift(o))
    def __radd__(self, o): return ops.add(_lift(o), self)
    def __sub__(self, o): return ops.subtract(self, o if type(o) is Tensor else _lift(o))
    def __rsub__(self, o): return ops.subtract(_lift(o), self)
    def __mul__(self, o): return ops.multiply(self, o if type(o) is Tensor else _lift(o))
    def __rmul__(self, o): return ops.multiply(_lift(o), self)
    def __truediv__(self, o): return ops.divide(self, _lift(o))
    def __rtruediv__(self, o): return ops.divide(_lift(o), self)
    def __pow__(self, o): return ops.power(self, _lift(o))
    def __rpow__(self, o): return ops.power(_lift(o), self)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __rmatmul__(self, o): return ops.matmul(o, self)
    def __neg__(self): return ops.negative(self)
    def __pos__(self): return self
    def __abs__(self): return ops.absolute(self)

    # comparisons give boolean tensors that carry no gradient
    def __eq__(self, o): return ops.compare(self, _lift(o), op="eq")
    def __ne__(self, o): return ops.compare(self, _lift(o), op="ne")
    def __lt__(self, o): return ops.compare(self, _lift(o), op="lt")
    def __le__(self, o): return ops.compare(self, _lift(o), op="le")
    def __gt__(self, o): return ops.compare(self, _lift(o), op="gt")
    def __ge__(self, o): return ops.compare(self, _lift(o), op="ge")
    __hash__ = object.__hash__

    def __getitem__(self, index):
        return ops.getitem(self, index=_raw_index(index))

    # -- math, reductions and shapes: thin methods over the functions in ops/functional
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def abs(self): return ops.absolute(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)
    def clip(self, lo=None, hi=None): return ops.clip(self, lo=lo, hi=hi)
    def maximum(self, o): return ops.maximum(self, _lift(o))
    def minimum(self, o): return ops.minimum(self, _lift(o))
    def log1p(self): return ops.log1p(self)
    def expm1(self): return ops.expm1(self)
    def sin(self): return ops.sin(self)
    def cos(self): return ops.cos(self)
    def square(self): return ops.multiply(self, self)
    def pow(self, exponent): return self ** exponent

    # reductions and axes: ``dim``/``keepdim`` (PyTorch's names) work wherever ``axis``/``keepdims`` do
    def sum(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.sum(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def max(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.max(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def min(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.min(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmax(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.argmax(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmin(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.argmin(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def mean(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.mean(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def var(self, axis=None, keepdims=None, ddof=None, *, dim=None, keepdim=None, correction=None):
        return functional.var(self, axis, keepdims, ddof, dim=dim, keepdim=keepdim, correction=correction)

    def std(self, axis=None, keepdims=None, ddof=None, *, dim=None, keepdim=None, correction=None):
        return functional.std(self, axis, keepdims, ddof, dim=dim, keepdim=keepdim, correction=correction)

    def logsumexp(self, axis=None, keepdims=None, *, dim=None, keepdim=None):
        return functional.logsumexp(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def softmax(self, axis=LAST, *, dim=None): return functional.softmax(self, axis, dim=dim)
    def log_softmax(self, axis=LAST, *, dim=None): return functional.log_softmax(self, axis, dim=dim)
    def expand_dims(self, axis=None, *, dim=None): return functional.expand_dims(self, axis, dim=dim)
    def unsqueeze(self, dim): return functional.expand_dims(self, dim)
    def squeeze(self, axis=None, *, dim=None): return functional.squeeze(self, axis, dim=dim)
    def flatten(self): return self.reshape(-1)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return ops.reshape(self, shape=tuple(_dim(s, "reshape") for s in shape))

    def view(self, *shape):
        """PyTorch's name for ``reshape`` (a reshape here is a view whenever numpy's is)."""
        return self.reshape(*shape)

    def transpose(self, *axes):
        """Axes in the given order (all reversed if none), as numpy.transpose. (PyTorch's
        ``transpose(d0, d1)`` swaps two axes; its ``permute(*dims)`` is this.)"""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return ops.transpose(self, axes=tuple(axes) if axes else None)

    def permute(self, *dims):
        """The axes in the order ``dims`` (every axis once), as torch.permute."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        if len(dims) != self.ndim:
            raise ValueError(f"permute: dims {tuple(dims)} must name each of the {self.ndim} axes of shape "
                             f"{self.shape} once")
        return ops.transpose(self, axes=tuple(dims))

    def split(self, sections, axis=None, *, dim=None): return functional.split(self, sections, axis, dim=dim)
    def chunk(self, chunks, axis=None, *, dim=None): return functional.chunk(self, chunks, axis, dim=dim)

    # -- copies and dtypes, PyTorch's way
    def clone(self) -> "Tensor":
        """A copy of the data that stays in the graph (its gradient flows to this tensor)."""
        return ops.astype(self, dtype=self.dtype)           # numpy's astype copies, even to the same dtype

    def to(self, dtype) -> "Tensor":
        """This tensor in ``dtype`` (itself if it already has it), recorded so the gradient comes back
        in this dtype. ``to("cpu")`` is itself too: minigrad runs on the CPU with numpy, no devices."""
        if isinstance(dtype, str) and dtype.split(":")[0] in _DEVICES:
            if dtype.split(":")[0] != "cpu":
                raise ValueError(f"to: minigrad runs on the CPU with numpy; there is no device {dtype!r}")
            return self
        dtype = np.dtype(dtype)
        return self if dtype == self.dtype else ops.astype(self, dtype=dtype)

    def float(self) -> "Tensor":
        """``to(float32)``, as torch's ``.float()``."""
        return self.to(np.float32)

    def double(self) -> "Tensor":
        """``to(float64)``, as torch's ``.double()``."""
        return self.to(np.float64)


_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta")


def _wrap(arr):
    """A leaf Tensor of the ndarray ``arr``, without ``Tensor()``'s checks: for the library's own
    results (a scan's outputs, a layer's zero states)."""
    t = Tensor.__new__(Tensor)
    t._data, t._grad, t.requires_grad, t._node = arr, None, False, None
    return t


class _Size(int):
    """``t.size`` is the number of elements (numpy's meaning), and calling it gives PyTorch's:
    ``t.size()`` the shape, ``t.size(dim)`` the length of one axis."""

    def __new__(cls, shape):
        n = 1
        for s in shape:
            n *= s
        self = super().__new__(cls, n)
        self.shape = shape
        return self

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        try:
            return self.shape[operator.index(dim)]
        except IndexError:
            raise IndexError(f"size: dim {dim} is out of range for shape {self.shape}") from None


def _lift(x):
    """Numbers stay weakly typed (a float32 tensor times 2.0 stays float32): numpy scalars and
    0-d arrays are turned into Python numbers so they do not upcast either."""
    if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "biuf"):
        return x.item()
    return x


def _dim(s, op):
    """An integer size: 1.9 is not truncated to 1 (numpy refuses it too)."""
    try:
        return operator.index(s)
    except TypeError:
        raise TypeError(f"{op}: sizes must be integers, got {s!r} ({type(s).__name__})") from None


def _raw(x):
    if isinstance(x, Tensor):
        _check_not_traced(x, "the values (as an index)")   # else frozen at step 0, silently
        return x._data
    return x


def _raw_index(index):
    if type(index) is tuple:
        return tuple([_raw(i) if isinstance(i, Tensor) else i for i in index])
    if isinstance(index, list):
        return np.asarray(index)
    return _raw(index)


from . import functional, ops  # noqa: E402  (the ops are built on Tensor, so they import after it)
from .engine import _pin_result  # noqa: E402
from .engine import backward as _backward  # noqa: E402
