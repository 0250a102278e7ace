"""Pictures of the graph behind a tensor: Graphviz DOT source, and rendering it.

``to_dot(t)`` needs nothing but minigrad; ``draw(t, "graph.svg")`` also needs Graphviz's ``dot``
executable (``apt-get install graphviz``, ``brew install graphviz``, ``conda install graphviz``).

What the picture shows, with data flowing downwards:

* an ellipse per op, labelled with the op's name and, for ops recorded inside a recurrent step
  (``mg.timestep``, which the unrolled layers use), the step: ``matmul | t=2``; each step's
  ops are framed together (hover over an op in an SVG for its output's shape and dtype);
* a box per leaf tensor with its shape; Parameters are filled and, when ``params`` names them,
  labelled with their dotted names (``0.U``);
* a ``scan`` hub, the looped graph's single node for a whole recurrence, as one box
  ``scan (loop over T steps)``; the thin per-output nodes ``scan`` hangs its outputs on are
  drawn as edges from the hub.

A tensor used by several ops has one node with an edge to each: in the unrolled LSTM, one ``U``
with an edge to every step's ``x_t @ U``, which is what parameter sharing looks like.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .io import atomic_write
from .tensor import Tensor

__all__ = ["to_dot", "draw"]

_PARAM_STYLE = 'shape=box, style="filled,rounded", fillcolor="#cfe2ff", color="#1f4e99", penwidth=1.5'
_LEAF_STYLE = 'shape=box, style=rounded, color="#555555"'
_OP_STYLE = 'shape=ellipse, color="#555555"'
_SCAN_STYLE = 'shape=box3d, style=filled, fillcolor="#ffe8a3", color="#8a6d00", penwidth=1.5'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ("," if t.ndim == 1 else "") + ")"


def _scan_steps(hub: Tensor):
    """The number of steps of a ``scan`` hub (None once its backward has run)."""
    steps = getattr(hub._vjp, "T", None)
    return steps if isinstance(steps, int) else None


def _names(params):
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):          # a Module
        params = dict(params.named_parameters())
    return {id(t): str(name) for name, t in dict(params).items()}


def _through(t: Tensor) -> Tensor:
    """What a node stands for in the picture: a scan output is its hub."""
    if t._op == "scan.output" and t._parents and t._parents[0] is not None:
        return t._parents[0]
    return t


def to_dot(tensor: Tensor, params=None, rankdir: str = "TB") -> str:
    """The graph behind ``tensor`` as Graphviz DOT source.

    Parameters
    ----------
    tensor : Tensor
        Usually a loss, before ``backward`` (which frees the graph's saved arrays but keeps its
        structure, so after it works too, except that a scan's step count is then unknown).
    params : mapping name -> Tensor, or a Module, optional
        Names for leaves, e.g. ``dict(model.named_parameters())`` or the model itself. Tensors
        named here are drawn as parameters; ``mg.nn.Parameter`` objects are too, named or not.
    rankdir : ``"TB"`` or ``"LR"``
        Top to bottom (default) or left to right.

    Returns
    -------
    str
        ``digraph minigrad { ... }``: one node per tensor (a scan's outputs folded into its hub),
        one edge per use, from input to op.

    The walk is iterative, so graphs of any depth work (drawing 100k nodes is another matter).
    """
    from .nn.module import Parameter

    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dot: expected a Tensor, got {type(tensor).__name__}")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"to_dot: rankdir must be 'TB', 'LR', 'BT' or 'RL', got {rankdir!r}")
    names = _names(params)

    root = _through(tensor)
    ids = {id(root): 0}                 # id(tensor) -> node number, in discovery order
    order = [root]
    edges = []                          # (from node, to node): one per use
    stack = [root]
    while stack:
        t = stack.pop()
        for p in t._parents:
            if p is None:
                continue
            p = _through(p)
            k = ids.get(id(p))
            if k is None:
                k = ids[id(p)] = len(order)
                order.append(p)
                stack.append(p)
            edges.append((k, ids[id(t)]))

    lines = ["digraph minigrad {",
             f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [color="#666666", arrowsize=0.7];']
    clusters = {}                       # timestep -> lines of its nodes, drawn in a frame
    for n, t in enumerate(order):
        extra = ", peripheries=2" if n == 0 else ""
        step = t.step if t._op is not None else None
        if t._op == "scan":
            steps = _scan_steps(t)
            label = f"scan (loop over {steps} steps)" if steps is not None else "scan (loop)"
            style = _SCAN_STYLE
        elif t._op is not None:
            label = t._op if step is None else f"{t._op} | t={step}"
            if n == 0:
                label += f"\n{_shape(t)}"
            style = _OP_STYLE + f", tooltip={_quote(f'{_shape(t)} {t.dtype}')}"
        elif id(t) in names or isinstance(t, Parameter):
            label = f"{names[id(t)]}\n{_shape(t)}" if id(t) in names else f"Parameter\n{_shape(t)}"
            style = _PARAM_STYLE
        else:
            label = _shape(t)
            style = _LEAF_STYLE
        node = f"n{n} [label={_quote(label)}, {style}{extra}];"
        if step is None:
            lines.append("  " + node)
        else:
            clusters.setdefault(step, []).append("    " + node)
    for k, (step, nodes) in enumerate(sorted(clusters.items(), key=lambda kv: str(kv[0]))):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f'    label={_quote(f"timestep {step}")}; style="rounded,filled"; fillcolor="#f4f4f4"; '
                     f'color="#bbbbbb"; fontname="Helvetica"; fontsize=10;')
        lines.extend(nodes)
        lines.append("  }")
    for a, b in edges:
        lines.append(f"  n{a} -> n{b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


_INSTALL_HINT = ("Graphviz's 'dot' executable was not found on PATH. Install Graphviz (Debian/Ubuntu: "
                 "'apt-get install graphviz'; macOS: 'brew install graphviz'; conda: 'conda install graphviz'), "
                 "or write the DOT source yourself with mg.to_dot(tensor) and render it elsewhere "
                 "(e.g. an online Graphviz viewer).")


def draw(tensor: Tensor, path, params=None, format: str | None = None, rankdir: str = "TB") -> str:
    """Render the graph behind ``tensor`` to ``path`` with Graphviz's ``dot``.

    Parameters
    ----------
    tensor, params, rankdir
        As in :func:`to_dot`.
    path : str or os.PathLike
        Where to write. It is written atomically (a temporary file in the same folder, then a
        rename), so a failed render never leaves a truncated picture behind.
    format : str, optional
        ``"svg"``, ``"png"``, ``"pdf"``... (anything ``dot -T`` knows), or ``"dot"`` for the
        source itself (no Graphviz needed). By default the path's extension, else ``"svg"``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    RuntimeError
        When ``dot`` is not installed (saying how to install it), or when it fails.
    """
    path = os.fspath(path)
    if format is None:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        format = ext or "svg"
    source = to_dot(tensor, params=params, rankdir=rankdir)
    if format in ("dot", "gv"):
        data = source.encode()
    else:
        exe = shutil.which("dot")
        if exe is None:
            raise RuntimeError(f"draw: cannot render to {format!r}. {_INSTALL_HINT}")
        result = subprocess.run([exe, f"-T{format}"], input=source.encode(), capture_output=True, check=False)
        if result.returncode != 0 or not result.stdout:
            err = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"draw: Graphviz 'dot -T{format}' failed (exit {result.returncode}): {err}")
        data = result.stdout
    atomic_write(path, lambda f: f.write(data))     # the mode open() would give; through symbolic links
    return path
