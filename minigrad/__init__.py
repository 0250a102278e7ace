"""minigrad: a small, honest deep-learning framework on numpy.

``import minigrad as mg``: ``mg.Tensor`` with reverse-mode autodiff, ``mg.primitive`` for ops
(the library's and yours), ``mg.gradcheck``, ``mg.scan`` for looped recurrences, ``mg.nn``,
``mg.optim``, ``mg.data``, ``mg.save`` / ``mg.load``, ``mg.to_dot`` / ``mg.draw`` (a picture of the graph).
"""
# ruff: noqa: F401, I001  (this file is the public namespace; nn comes after what it builds on)
from . import allocator      # first: sets malloc up for repeated large steps (see its docstring)
from .tensor import Node, Tensor, get_default_dtype, set_default_dtype
from . import ops
from .engine import (Contribution, detect_anomaly, enable_grad, graph_size, is_grad_enabled, no_grad, primitive,
                     record_contributions, set_grad_enabled, timestep, unbroadcast)
from .functional import (arange, argmax, argmin, cat, chunk, clip, concatenate, expand_dims, full, log_softmax,
                         logsumexp, maximum, mean, minimum, ones, ones_like, rand, randn, reshape, softmax, split,
                         squeeze, stack, std, tensor, transpose, unsqueeze, var, where, zeros, zeros_like)
from .functional import max, min, sum  # noqa: A004
from .ops import absolute as abs  # noqa: A001
from .ops import cos, erf, exp, expm1, log, log1p, matmul, relu, sigmoid, sin, sqrt, tanh
from .gradcheck import GradcheckError, gradcheck
from .looped import scan, scan_program
from .io import CheckpointError, load, save
from .viz import draw, to_dot
from .random import get_rng, manual_seed, seed
from . import data, nn, optim, interop, onnx

__version__ = "0.1.0"
