"""The numba backend: a program's forward and reverse loops as two compiled functions.

Generated from the ``Program`` (never from a primitive's source): each loop equation becomes a
few statements of a numba function, built as syntax trees.

* Elementwise equations (``lowering.RULES``) become loop nests over their elements; consecutive
  ones of one shape share a nest, their intermediate values scalars that never reach memory
  unless something else reads them (fusion).
* ``matmul`` of two 2-D values is a loop nest in place when small (the shapes are the program's,
  so this is decided here), else a call of ``kernels.mm`` (BLAS); a basic ``getitem`` is a view;
  ``sum`` a nest that accumulates.
* Every array the loops touch is allocated before the call, so the loops allocate nothing: the
  carries live in one (n + 1, ...) array per carry (row t the carry step t reads, row t + 1 the
  one it writes), values the reverse loop reads in (n, ...) arrays, the rest in one buffer each.

The reverse loop runs every vjp of the step in reverse order, summing each value's gradient in
its buffer (the first contribution that covers it overwrites, others add). What runs once per
call (the ``once`` and ``hoisted`` stages, a deferred weight gradient as one product over the
stacked steps) runs as in the interpreter, on numpy. A program with anything this backend cannot
express raises ``Unsupported`` here, and ``compile_jit`` hands it to the numpy backend.

The generated source holds no sizes (loop bounds are read from the arrays): one compiled
function serves every batch size and length with the same broadcasting pattern and the same
products on the same side of ``SMALL``, and the disk cache (``diskcache.py``) keys it by its text.
The loops call nothing LLVM cannot see into (no ``fill``, no product kernel below ``SMALL``):
after such a call it reloads every array's shape and data pointer in every nest that follows.
"""
from __future__ import annotations

import ast
import threading

import numpy as np

from ..gradients import GradTable
from ..ops import compare, getitem, matmul, where
from ..ops import sum as _sum
from ..tensor import _state
from .interpret import Interpreter
from .lowering import RULES, E, sigmoid_floor, snapshot_current
from .passes import defer
from .program import Const, Var

__all__ = ["Unsupported", "JitRunner", "compile_jit", "available"]

RULES_WHERE, RULES_COMPARE = where.prim, compare.prim
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.bool_): "b1"}


class Unsupported(Exception):
    """The program holds something the numba backend cannot express (said in the message)."""


def available():
    """numba's version, or None when it is not installed."""
    try:
        import numba
    except ImportError:
        return None
    return numba.__version__


# ---------------------------------------------------------------------------- syntax helpers

def _n(name):
    return ast.Name(name, ast.Load())


def _st(name):
    return ast.Name(name, ast.Store())


def _sub(arr, idx, ctx=ast.Load):
    if isinstance(idx, tuple):
        idx = ast.Tuple([i if isinstance(i, ast.AST) else ast.Constant(i) for i in idx], ast.Load())
    return ast.Subscript(_n(arr) if isinstance(arr, str) else arr, idx, ctx())


def _assign(target, value):
    return ast.Assign([_st(target) if isinstance(target, str) else target], value)


def _expr_call(fn, *args):
    return ast.Expr(ast.Call(_n(fn), [a if isinstance(a, ast.AST) else ast.Constant(a) for a in args], []))


def _T(name):
    """``name.T``."""
    return ast.Attribute(_n(name), "T", ast.Load())


def _zero(name, rank):
    """``name[...] = 0`` as a nest (a call of ``fill`` would make LLVM reload every array after it)."""
    idx = tuple(_n(f"i{d}") for d in range(rank))
    return _nest(name, rank, [_assign(_sub(name, idx, ast.Store), ast.Constant(0))])


SMALL = 1 << 12      # multiply-adds: a product up to this size is a loop nest, above it BLAS. Measured in
#                      numba: 1x16x64 loop 0.08 us, BLAS 0.17; 1x64x256 loop 1.17, BLAS 0.87; 4x32x128 loop 1.16,
#                      BLAS 0.44. In place, not a call: a loop holding a call of a function LLVM does not inline
#                      reloads every array's shape and data after it (an LSTM step: 0.78 us against 1.0).


def _product(a, b, out, acc, macs):
    """``out (+)= a @ b`` (a, b: expressions of 2-D arrays of any layout; out: a name), as a loop
    nest when it is at most ``SMALL`` multiply-adds (``macs``), else a call of ``kernels.mm``."""
    if macs > SMALL:
        return [_expr_call("mm", a, b, _n(out), acc)]
    i, p, j, scalar = _n("mi"), _n("mp"), _n("mj"), f"a_{out}"     # a scalar per product: each its dtype
    row = []
    if not acc:
        row += [ast.For(_st("mj"), _range(_n(out), 1), [_assign(_sub(out, (i, j), ast.Store), ast.Constant(0))], [])]
    update = ast.AugAssign(_sub(out, (i, j), ast.Store), ast.Add(), ast.BinOp(_n(scalar), ast.Mult(), _sub(b, (p, j))))
    row.append(ast.For(_st("mp"), _range(a, 1), [_assign(scalar, _sub(a, (i, p))),
                                                 ast.For(_st("mj"), _range(_n(out), 1), [update], [])], []))
    return [ast.For(_st("mi"), _range(_n(out), 0), row, [])]


def _range(arr, d):
    """``range(arr.shape[d])``."""
    return ast.Call(_n("range"), [_sub(ast.Attribute(arr, "shape", ast.Load()), ast.Constant(d))], [])


def _nest(ref, rank, body):
    """``for i0 in range(ref.shape[0]): for i1 ...: body`` (no loop at rank 0)."""
    for d in reversed(range(rank)):
        body = [ast.For(_st(f"i{d}"), _range(_n(ref), d), body, [])]
    return body


def _index_ast(index):
    """A basic index (ints, slices, Ellipsis) as a syntax tree."""
    parts = index if isinstance(index, tuple) else (index,)
    out = []
    for p in parts:
        if p is Ellipsis:
            out.append(ast.Constant(Ellipsis))
        elif isinstance(p, slice):
            if not all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
                       for v in (p.start, p.stop, p.step)):
                raise Unsupported(f"getitem: slice {p!r}")
            out.append(ast.Slice(*(None if v is None else ast.Constant(int(v)) for v in (p.start, p.stop, p.step))))
        elif isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            out.append(ast.Constant(int(p)))
        else:
            raise Unsupported(f"getitem: index {p!r}")
    return ast.Tuple(out, ast.Load())


def _broadcast_index(shape, full):
    """The index of an operand of ``shape`` inside a nest over ``full`` (numpy's broadcasting:
    right-aligned, a dimension of 1 against a longer one read at 0)."""
    lead = len(full) - len(shape)
    return tuple(0 if (s == 1 and full[lead + d] != 1) else _n(f"i{lead + d}") for d, s in enumerate(shape))


def _through_view(index, base_shape, idx):
    """The index into the base of element ``idx`` of ``base[index]`` (a basic index: ints, slices,
    Ellipsis). A nest reads a view through its base: a C-contiguous array at fixed offsets, which
    LLVM vectorises; a view's own strides are unknown to it (an LSTM's gate slices: 0.78 us a
    step against 0.38 with the vectorised exp and tanh)."""
    parts = list(index) if isinstance(index, tuple) else [index]
    for k, part in enumerate(parts):
        if part is Ellipsis:
            parts[k:k + 1] = [slice(None)] * (len(base_shape) - len(parts) + 1)
            break
    parts += [slice(None)] * (len(base_shape) - len(parts))
    out, rest = [], iter(idx)
    for part, n in zip(parts, base_shape):
        if isinstance(part, slice):
            start, _, step = part.indices(n)
            i = next(rest)
            if not isinstance(i, ast.AST):
                i = ast.Constant(i)
            if isinstance(i, ast.Constant):
                out.append(ast.Constant(start + step * i.value))
            else:
                scaled = i if step == 1 else ast.BinOp(i, ast.Mult(), ast.Constant(step))
                out.append(scaled if start == 0 else ast.BinOp(scaled, ast.Add(), ast.Constant(start)))
        else:
            out.append(ast.Constant(int(part) % n))
    return tuple(out)


class _Literal:
    """``k(value)``: a literal in one dtype; ``k.floor``: sigmoid's floor in it."""

    def __init__(self, dtype):
        self.code = DTYPES[dtype]
        self.bits = self.code[1:]         # kernels' exp32, tanh64...
        self.floor = self(sigmoid_floor(dtype)) if dtype.kind == "f" else None

    def __call__(self, value):
        return E(ast.Call(_n(self.code), [ast.Constant(float(value))], []))


def _names_in(exprs):
    return {n.id for e in exprs if e is not None for n in ast.walk(e.node) if isinstance(n, ast.Name)}


# ---------------------------------------------------------------------------- the plan

class _Plan:
    """What the generated loops need to know, decided once per program: each loop equation's
    kind, the fusion groups, where each value lives, which values the reverse loop reads."""

    def __init__(self, prog, interp):
        self.prog, self.loop = prog, interp.loop
        self.vars = {v.id: v for v in (*prog.carry_in, *prog.xs_in, *prog.reads, *(e.out for e in prog.eqns))}
        self.carry_ix = {v.id: j for j, v in enumerate(prog.carry_in)}
        self.stacked = {k: i for i, k in enumerate(interp.loop_reads_stacked)}
        loop_ids = {e.out.id for e in self.loop}
        env = [v.id for v in prog.reads] + [e.out.id for e in prog.eqns if e.stage == "once"]
        self.env_ids = set(env)
        used = {x.id for e in self.loop for x in e.vars_in()} | {v.id for v in (*prog.carry_out, *prog.ys_out)}
        self.env = {k: i for i, k in enumerate(i for i in env if i in used)}
        self.consts = [(i, j) for i, e in enumerate(prog.eqns) if e.stage == "loop"
                       for j, x in enumerate(e.inputs) if isinstance(x, Const)]
        self.const_of = {pos: m for m, pos in enumerate(self.consts)}
        self.position = {id(e): i for i, e in enumerate(prog.eqns)}
        for v in (*prog.carry_in, *prog.ys_out, *(self.vars[i] for i in self.stacked)):
            if not v.shape:
                raise Unsupported("a carry, ys or step input of rank 0 (a row of a stacked array is a scalar)")
        self.kinds = [self._kind(e) for e in self.loop]
        self.views = {e.out.id: e for e, k in zip(self.loop, self.kinds) if k == "view"}
        self.groups = self._groups()
        self.read_back = self._read_back()
        self.homes = self._homes(loop_ids)

    def _kind(self, e):
        for v in (*e.vars_in(), e.out):
            if v.dtype not in DTYPES:
                raise Unsupported(f"{e.prim.name}: dtype {v.dtype}")
            if not v.shape and v.role != "read" and (v.role != "local" or v.id not in self.env_ids):
                raise Unsupported(f"{e.prim.name}: a per-step value of rank 0 (a row of a stacked array is a scalar)")
        for x in e.inputs:
            if isinstance(x, Const):
                kind = np.asarray(x.value).dtype
                if not (np.ndim(x.value) == 0 or isinstance(x.value, np.ndarray)) or \
                        (kind not in DTYPES and kind.kind not in "iu"):
                    raise Unsupported(f"{e.prim.name}: an operand of type {type(x.value).__name__} ({kind})")
        if e.prim is matmul.prim:
            shapes = [x.shape for x in e.vars_in()]
            if len(e.vars_in()) != 2 or any(len(s) != 2 for s in shapes) or \
                    any(x.dtype != e.out.dtype for x in e.vars_in()):
                raise Unsupported("matmul: only of two 2-D values of its output's dtype")
            return "mm"
        if e.prim is getitem.prim:
            if not isinstance(e.inputs[0], Var):
                raise Unsupported("getitem of a constant")
            _index_ast(e.static_dict["index"])
            return "view"
        if e.prim is _sum.prim:
            if not isinstance(e.inputs[0], Var) or e.out.dtype.kind != "f" or e.inputs[0].dtype != e.out.dtype:
                raise Unsupported("sum: of a float value in its own dtype only")
            return "sum"
        rule = RULES.get(e.prim)
        if rule is None:
            raise Unsupported(f"primitive {e.prim.name}")
        extra = set(e.static_dict) - set(rule.static)
        if extra:
            raise Unsupported(f"{e.prim.name}: static {sorted(extra)}")
        for name in ("lo", "hi"):
            v = e.static_dict.get(name)
            if v is not None and not isinstance(v, (int, float, np.integer, np.floating)):
                raise Unsupported(f"{e.prim.name}: {name}={v!r}")
        return "ew"

    def _groups(self):
        """Runs of consecutive elementwise equations of one output shape (index lists)."""
        groups, cur = [], []
        for i, (e, k) in enumerate(zip(self.loop, self.kinds)):
            if k == "ew" and cur and self.loop[cur[-1]].out.shape == e.out.shape:
                cur.append(i)
                continue
            if cur:
                groups.append(cur)
            cur = [i] if k == "ew" else []
            if k != "ew":
                groups.append([i])
        if cur:
            groups.append(cur)
        return groups

    def needs(self, e, x):
        """Does ``e``'s vjp produce a gradient for operand ``x``?"""
        return isinstance(x, Var) and x.requires_grad and e.out.requires_grad

    def vjp_exprs(self, e, k, g, y, operands):
        """The rule's vjp, None for operands that need no gradient."""
        static = {n: v for n, v in e.static if n != "needs_grad"}
        grads = RULES[e.prim].vjp(k, g, y, *operands, **static)
        return [gi if self.needs(e, x) else None for gi, x in zip(grads, e.inputs)]

    def _read_back(self):
        """The ids of the values the reverse loop (and the deferred products) read."""
        need = set()
        for e, kind in zip(self.loop, self.kinds):
            if not e.out.requires_grad:
                continue
            if kind == "ew" and RULES[e.prim].grad:
                names = _names_in(self.vjp_exprs(e, _Literal(e.out.dtype), E(_n("g")), E(_n("y")),
                                                 [E(_n(f"a{j}")) for j in range(len(e.inputs))]))
                need.update(x.id for j, x in enumerate(e.inputs) if f"a{j}" in names and isinstance(x, Var))
                if "y" in names:
                    need.add(e.out.id)
            elif kind == "mm":
                a, b = e.inputs
                if self.needs(e, b):
                    need.add(a.id)
                if self.needs(e, a):
                    need.add(b.id)
        stack = list(need)
        while stack:                       # a view is read through its base
            i = stack.pop()
            if i in self.views:
                base = self.views[i].inputs[0].id
                if base not in need:
                    need.add(base)
                    stack.append(base)
        return need

    def _homes(self, loop_ids):
        """Where each loop value lives in a step: ('carry', j) the row t + 1 of carry j's array;
        ('ys', k) row t of the ys; ('saved',) its own (n, ...) array; ('temp',) one buffer;
        ('view',) a view of its base; None: a scalar of its fusion group only."""
        prog, homes = self.prog, {}
        outside = {x.id for e, k in zip(self.loop, self.kinds) if k != "ew" for x in e.vars_in()}
        group_of = {self.loop[i].out.id: n for n, g in enumerate(self.groups) for i in g}
        for e in self.loop:
            for x in e.vars_in():
                if x.id in group_of and group_of[x.id] != group_of.get(e.out.id):
                    outside.add(x.id)
        outside |= {v.id for v in (*prog.carry_out, *prog.ys_out)}
        for j, v in enumerate(prog.carry_out):
            if v.id in loop_ids and v.id not in self.views and v.id not in homes:
                homes[v.id] = ("carry", j)
        for k, v in enumerate(prog.ys_out):
            if v.id in loop_ids and v.id not in self.views and v.id not in homes:
                homes[v.id] = ("ys", k)
        for e in self.loop:
            i = e.out.id
            if i in homes:
                continue
            if i in self.views:
                homes[i] = ("view",)
            elif i in self.read_back:
                homes[i] = ("saved",)
            elif i in outside or e.prim is matmul.prim or e.prim is _sum.prim:
                homes[i] = ("temp",)
            else:
                homes[i] = None
        return homes


# ---------------------------------------------------------------------------- the generated loops

class _Gen:
    """Builds the forward and reverse functions' syntax trees from a plan."""

    def __init__(self, plan):
        self.p = plan
        prog = plan.prog
        self.n_carry, self.n_ys = len(prog.carry_in), len(prog.ys_out)
        self.saved = sorted(i for i, h in plan.homes.items() if h == ("saved",))
        self.temps = sorted(i for i, h in plan.homes.items() if h == ("temp",))
        self.deferred_outs = {e.out.id: e for e in sorted((e for e in plan.loop if e.deferred), key=lambda e: e.out.id)}
        self.grads = sorted(e.out.id for e in plan.loop if e.out.requires_grad and e.out.id not in self.deferred_outs)
        self.env_t = {}      # env id -> position of its transpose among the reverse loop's arguments

    # -------------------------------------------------------------- shared pieces
    def fwd_params(self):
        p = self.p
        return (["n"] + [f"HC{j}" for j in range(self.n_carry)] + [f"X{i}" for i in range(len(p.stacked))]
                + [f"E{i}" for i in range(len(p.env))] + [f"K{m}" for m in range(len(p.consts))]
                + [f"S{i}" for i in self.saved] + [f"Y{k}" for k in range(self.n_ys)])

    def home(self, u):
        """The expression of value ``u`` in step t (the same in both loops)."""
        p = self.p
        if u.id in p.carry_ix:
            return _sub(f"HC{p.carry_ix[u.id]}", _n("t"))
        if u.id in p.stacked:
            return _sub(f"X{p.stacked[u.id]}", _n("t"))
        if u.id in p.env:
            return _n(f"E{p.env[u.id]}")
        h = p.homes[u.id]
        if h[0] == "carry":
            return _sub(f"HC{h[1]}", ast.BinOp(_n("t"), ast.Add(), ast.Constant(1)))
        if h[0] == "ys":
            return _sub(f"Y{h[1]}", _n("t"))
        if h[0] == "saved":
            return _sub(f"S{u.id}", _n("t"))
        if h[0] == "temp":
            return _n(f"B{u.id}")
        e = p.views[u.id]
        return _sub(f"v{e.inputs[0].id}", _index_ast(e.static_dict["index"]))

    def operand(self, e, j, full, scalars, dtype):
        """Operand j of ``e`` read inside a nest over ``full``, cast to ``dtype``."""
        x = e.inputs[j]
        if isinstance(x, Var):
            if x.id in scalars:
                node, have = _n(f"s{x.id}"), x.dtype
            else:
                node, have = _sub(*self._read(x, _broadcast_index(x.shape, full))), x.dtype
        else:
            m = self.p.const_of[(self.p.position[id(e)], j)]
            value = np.asarray(x.value)
            node, have = _sub(f"K{m}", _broadcast_index(value.shape, full)), value.dtype
        if e.prim is RULES_WHERE and j == 0:
            return E(node) if have == np.bool_ else E(node).ne(0)
        if dtype is None or have == dtype:
            return E(node)
        return E(ast.Call(_n(DTYPES[dtype]), [node], []))

    def _read(self, x, idx):
        """(array name, index) of element ``idx`` of ``x``; a view through its base."""
        e = self.p.views.get(x.id)
        while e is not None:
            base = e.inputs[0]
            idx = _through_view(e.static_dict["index"], base.shape, idx)
            x, e = base, self.p.views.get(base.id)
        return f"v{x.id}", idx

    def compute_dtype(self, e):
        if e.prim is RULES_COMPARE:
            return np.result_type(*[x.dtype if isinstance(x, Var) else x.value for x in e.inputs])
        return e.out.dtype

    @staticmethod
    def _function(name, params, body):
        args = ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in params], kwonlyargs=[], kw_defaults=[],
                             defaults=[])
        return ast.FunctionDef(name, args, body or [ast.Pass()], [], None)

    # -------------------------------------------------------------- forward
    def forward(self):
        p, prog = self.p, self.p.prog
        pre = [_assign(f"v{i}", _n(f"E{k}")) for i, k in p.env.items()]
        body = [_assign(f"v{v.id}", self.home(v)) for v in prog.carry_in]
        body += [_assign(f"v{i}", self.home(p.vars[i])) for i in p.stacked]
        for group in p.groups:
            body += self._fwd_group([p.loop[i] for i in group], p.kinds[group[0]])
        for j, v in enumerate(prog.carry_out):
            if p.homes.get(v.id) != ("carry", j):
                body += self._copy(self.home_of_carry_row(j), v)
        for k, v in enumerate(prog.ys_out):
            if p.homes.get(v.id) != ("ys", k):
                body += self._copy(_sub(f"Y{k}", _n("t")), v)
        loop = ast.For(_st("t"), ast.Call(_n("range"), [_n("n")], []), body, [])
        params = self.fwd_params() + [f"B{i}" for i in self.temps]
        return self._function("forward", params, pre + [loop])

    def home_of_carry_row(self, j):
        return _sub(f"HC{j}", ast.BinOp(_n("t"), ast.Add(), ast.Constant(1)))

    def _copy(self, dest, v, src=None):
        """``dest[...] = v`` (same shape), as a nest."""
        rank = len(v.shape)
        idx = tuple(_n(f"i{d}") for d in range(rank))
        src = _n(f"v{v.id}") if src is None else src
        return [_assign("dst", dest), *_nest("dst", rank, [_assign(_sub("dst", idx, ast.Store), _sub(src, idx))])]

    def _bind(self, e):
        h = self.p.homes.get(e.out.id)
        return [] if h is None else [_assign(f"v{e.out.id}", self.home(e.out))]

    def _fwd_group(self, eqns, kind):
        if kind == "view":
            return self._bind(eqns[0])
        e = eqns[0]
        if kind == "mm":
            a, b = e.inputs
            return self._bind(e) + _product(_n(f"v{a.id}"), _n(f"v{b.id}"), f"v{e.out.id}", False, _macs(e))
        if kind == "sum":
            return self._bind(e) + self._fwd_sum(e)
        out = []
        full = e.out.shape
        idx = tuple(_n(f"i{d}") for d in range(len(full)))
        inner, scalars = [], set()
        for e in eqns:
            out += self._bind(e)
            dtype = self.compute_dtype(e)
            k = _Literal(e.out.dtype) if e.out.dtype.kind == "f" else None
            operands = [self.operand(e, j, full, scalars, dtype) for j in range(len(e.inputs))]
            static = {n: v for n, v in e.static if n != "needs_grad"}
            value = RULES[e.prim].fwd(k, *operands, **static).node
            if e.out.dtype != dtype and e.out.dtype.kind == "f":
                value = ast.Call(_n(DTYPES[e.out.dtype]), [value], [])
            inner.append(_assign(f"s{e.out.id}", value))
            scalars.add(e.out.id)
            if self.p.homes.get(e.out.id) is not None:
                inner.append(_assign(_sub(f"v{e.out.id}", idx, ast.Store), _n(f"s{e.out.id}")))
        return out + _nest(self._shape_ref(eqns), len(full), inner)

    def _shape_ref(self, eqns):
        """An array of the group's shape to take loop bounds from (a member with a home, or an
        operand of that shape)."""
        for e in eqns:
            if self.p.homes.get(e.out.id) is not None:
                return f"v{e.out.id}"
        for e in eqns:
            for x in e.vars_in():
                if x.shape == e.out.shape and self.p.homes.get(x.id, ()) is not None:
                    return f"v{x.id}"
        raise Unsupported("an elementwise run whose shape no array holds")

    def _axes(self, e):
        x = e.inputs[0]
        axis = e.static_dict.get("axis")
        if axis is None:
            return tuple(range(len(x.shape)))
        axes = axis if isinstance(axis, tuple) else (axis,)
        return tuple(sorted(a % len(x.shape) for a in axes))

    def _sum_index(self, e):
        axes, keep = self._axes(e), e.static_dict.get("keepdims", False)
        x = e.inputs[0]
        if keep:
            return tuple(0 if d in axes else _n(f"i{d}") for d in range(len(x.shape)))
        return tuple(_n(f"i{d}") for d in range(len(x.shape)) if d not in axes)

    def _fwd_sum(self, e):
        x, o = e.inputs[0], e.out.id
        idx = tuple(_n(f"i{d}") for d in range(len(x.shape)))
        add = ast.AugAssign(_sub(f"v{o}", self._sum_index(e), ast.Store), ast.Add(), _sub(f"v{x.id}", idx))
        return _zero(f"v{o}", len(e.out.shape)) + _nest(f"v{x.id}", len(x.shape), [add])

    # -------------------------------------------------------------- backward
    def bwd_params(self):
        p = self.p
        return (self.fwd_params() + [f"GC{j}" for j in range(self.n_carry)] + [f"GY{k}" for k in range(self.n_ys)]
                + [f"GI{j}" for j in range(self.n_carry)] + [f"GX{i}" for i in range(len(p.stacked))]
                + [f"GE{i}" for i in range(len(p.env))] + [f"GD{i}" for i in self.deferred_outs]
                + [f"G{i}" for i in self.grads] + [f"ET{k}" for k in range(len(self.env_t))])

    def backward(self):
        p, prog = self.p, self.p.prog
        self.init, self.reached = set(), set()
        pre = [_assign(f"v{i}", _n(f"E{k}")) for i, k in p.env.items()]
        pre += [_assign(f"g{i}", _n(f"GE{k}")) for i, k in p.env.items()]
        body = self._bwd_bind()
        for j, v in enumerate(prog.carry_out):
            if v.requires_grad:
                body += self._seed(v, _n(f"GC{j}"))
        for k, v in enumerate(prog.ys_out):
            if v.requires_grad:
                body += self._seed(v, _sub(f"GY{k}", _n("t")))
        body += self._vjps()
        for j, v in enumerate(prog.carry_in):
            if v.id in self.init:
                body += self._copy(_n(f"GC{j}"), v, _n(f"g{v.id}"))
            else:
                body += _zero(f"GC{j}", len(v.shape))
        back = ast.Call(_n("range"), [ast.BinOp(_n("n"), ast.Sub(), ast.Constant(1)), ast.Constant(-1),
                                      ast.Constant(-1)], [])
        loop = ast.For(_st("t"), back, body, [])
        params = self.bwd_params() + [f"B{i}" for i in self.temps]
        return self._function("backward", params, pre + [loop])

    def _bwd_bind(self):
        """Bind step t's forward values the vjps read, and each gradient's buffer."""
        p, prog, out = self.p, self.p.prog, []
        for v in (*prog.carry_in, *(p.vars[i] for i in p.stacked)):
            out.append(_assign(f"v{v.id}", self.home(v)))
        for e in p.loop:                  # in program order: a view's base is bound before it
            h = p.homes.get(e.out.id)
            if e.out.id in p.read_back and h is not None and h[0] != "temp":
                out.append(_assign(f"v{e.out.id}", self.home(e.out)))
        for j, v in enumerate(prog.carry_in):
            out.append(_assign(f"g{v.id}", _n(f"GI{j}")))
        for i, k in p.stacked.items():
            out.append(_assign(f"g{i}", _sub(f"GX{k}", _n("t"))))
        for i in self.deferred_outs:
            out.append(_assign(f"g{i}", _sub(f"GD{i}", _n("t"))))
        for i in self.grads:
            out.append(_assign(f"g{i}", _n(f"G{i}")))
        self.init = set()
        return out

    def _first(self, u, full, pre):
        """The assignment for a contribution to ``u``'s gradient: overwrite if it is the step's
        first and covers the whole buffer; else add (after zeroing the buffer if it is the first)."""
        self.reached.add(u.id)
        if u.id in self.p.env:
            return True
        if u.id in self.init:
            return True
        self.init.add(u.id)
        if full:
            return False
        pre += _zero(f"g{u.id}", len(u.shape))
        return True

    def _put(self, u, idx, value, acc):
        target = _sub(f"g{u.id}", idx, ast.Store)
        return ast.AugAssign(target, ast.Add(), value) if acc else ast.Assign([target], value)

    def _seed(self, u, src):
        pre = []
        acc = self._first(u, True, pre)
        rank = len(u.shape)
        idx = tuple(_n(f"i{d}") for d in range(rank))
        return pre + _nest(f"g{u.id}", rank, [self._put(u, idx, _sub(src, idx), acc)])

    def _vjp_view(self, e):
        base, pre = e.inputs[0], []
        acc = self._first(base, False, pre)
        assert acc
        rank = len(e.out.shape)
        idx = tuple(_n(f"i{d}") for d in range(rank))
        w = _assign(f"w{e.out.id}", _sub(f"g{base.id}", _index_ast(e.static_dict["index"])))
        add = ast.AugAssign(_sub(f"w{e.out.id}", idx, ast.Store), ast.Add(), _sub(f"g{e.out.id}", idx))
        return pre + [w] + _nest(f"g{e.out.id}", rank, [add])

    def _vjp_mm(self, e):
        a, b = e.inputs
        g, out, macs = _n(f"g{e.out.id}"), [], _macs(e)
        if self.p.needs(e, a) and 0 not in e.deferred:
            acc = self._first(a, True, out)
            if b.id in self.p.env:           # its transpose, made once per call: a product along rows
                self.env_t.setdefault(b.id, len(self.env_t))
                out += _product(g, _n(f"ET{self.env_t[b.id]}"), f"g{a.id}", acc, macs)
            else:
                out += _product(g, _T(f"v{b.id}"), f"g{a.id}", acc, macs)
        if self.p.needs(e, b) and 1 not in e.deferred:
            acc = self._first(b, True, out)
            out += _product(_T(f"v{a.id}"), g, f"g{b.id}", acc, macs)
        return out

    def _vjp_sum(self, e):
        x, pre = e.inputs[0], []
        if not self.p.needs(e, x):
            return []
        acc = self._first(x, True, pre)
        rank = len(x.shape)
        idx = tuple(_n(f"i{d}") for d in range(rank))
        return pre + _nest(f"g{x.id}", rank, [self._put(x, idx, _sub(f"g{e.out.id}", self._sum_index(e)), acc)])

    def _vjps(self):
        """The step's vjps in reverse order. Consecutive elementwise ones over one shape share a
        nest (backward fusion: a nest's fixed cost, its bounds and alias checks, is most of a
        small one's time). Element i of the nest then runs each vjp's element i in order, which
        is their order: a gradient a vjp reads is complete at element i once the vjps of its
        value's users (all earlier in reverse order) have run there; a gradient summed over a
        broadcast axis belongs to a value of another shape, whose vjp is in another nest."""
        out, shape, pre, inner = [], None, [], []

        def flush():
            if inner:
                out.extend(pre + _nest(ref, len(shape), list(inner)))
            pre.clear(), inner.clear()
        for e, kind in reversed(list(zip(self.p.loop, self.p.kinds))):
            if not (e.out.requires_grad and e.out.id in self.init):
                continue
            if kind != "ew":
                flush()
                out += getattr(self, f"_vjp_{kind}")(e)
            elif RULES[e.prim].grad:
                if e.out.shape != shape:
                    flush()
                    shape, ref = e.out.shape, f"g{e.out.id}"
                inner += self._vjp_ew(e, pre)
        flush()
        return out

    def _vjp_ew(self, e, pre):
        """One elementwise vjp's statements inside a nest over its output's elements (zeroing a
        buffer it adds into first goes to ``pre``, before the nest)."""
        full = e.out.shape
        idx = tuple(_n(f"i{d}") for d in range(len(full)))
        dtype = self.compute_dtype(e)
        k = _Literal(e.out.dtype)
        operands = [self.operand(e, j, full, (), dtype) for j in range(len(e.inputs))]
        y = E(_sub(f"v{e.out.id}", idx)) if e.out.id in self.p.read_back else E(_n("unused"))
        grads = self.p.vjp_exprs(e, k, E(_n("gs")), y, operands)
        inner = [_assign("gs", _sub(f"g{e.out.id}", idx))]
        for x, gi in zip(e.inputs, grads):
            if gi is None:
                continue
            acc = self._first(x, x.shape == full, pre)
            inner.append(self._put(x, _broadcast_index(x.shape, full), gi.node, acc))
        return inner


# ---------------------------------------------------------------------------- the runner

HEADER = """import math
import numpy as np
from minigrad.looped.kernels import mm, exp32, exp64, tanh32, tanh64
f32, f64, b1 = np.float32, np.float64, np.bool_
"""


class _Tape(tuple):
    """A segment's saved arrays: the hoisted stage's values and tape, then the compiled forward's
    carries, stacked inputs, saved values and ys (a tuple, so ``saved_arrays`` finds them)."""

    __slots__ = ()
    H = property(lambda self: self[0])
    htape = property(lambda self: self[1])
    HC = property(lambda self: self[2])
    X = property(lambda self: self[3])
    S = property(lambda self: self[4])
    Y = property(lambda self: self[5])


class JitRunner(Interpreter):
    """The numba backend: the interpreter's once and hoisted stages, compiled loops for the rest."""

    name = "numba"
    owns_carry = True           # copied out of the carries' history (forward)

    def __init__(self, prog):
        # Nothing is hoisted: a step's input product runs inside the compiled loop, where it
        # costs less than a call of numpy does outside it (its weight's gradient stays deferred).
        prog = defer(prog.replace(eqns=tuple(e.but(stage="loop") if e.stage == "hoisted" else e for e in prog.eqns)))
        super().__init__(prog)
        if not snapshot_current():
            raise Unsupported("a helper of ops.py that the lowering rules mirror is rebound")
        self.plan = plan = _Plan(prog, self)
        self.gen = gen = _Gen(plan)
        fwd, bwd = gen.forward(), gen.backward()
        self.reached = gen.reached
        module = ast.fix_missing_locations(ast.Module([fwd, bwd], []))
        self.source = HEADER + ast.unparse(module) + "\n"
        self.signatures = (self._signature(gen.fwd_params() + [f"B{i}" for i in gen.temps], True),
                           self._signature(gen.bwd_params() + [f"B{i}" for i in gen.temps], False))
        self.kernels = None
        self._local = threading.local()
        self._mirrored = [(prim, prim.fn) for prim in {e.prim for e in self.loop} if prim in RULES]
        self._bound = None
        like = lambda vs: [(v.shape, v.dtype) for v in vs]          # noqa: E731
        v = plan.vars
        # what each call allocates, and which gradients it hands on, worked out once
        self._like = {"carry": like(prog.carry_in), "saved": like(v[i] for i in gen.saved),
                      "ys": like(prog.ys_out), "stacked": like(v[i] for i in plan.stacked),
                      "env": like(v[i] for i in plan.env), "deferred": like(v[i] for i in gen.deferred_outs)}
        self._reached_stacked = [(k, i, v[i].shape, v[i].dtype) for i, k in plan.stacked.items()
                                 if i in self.reached]
        self._reached_env = [(k, i) for i, k in plan.env.items() if i in self.reached]
        self._reached_deferred = [(k, e.inputs[0], e.inputs[1]) for k, (i, e) in enumerate(gen.deferred_outs.items())
                                  if i in self.reached]
        self._carry_reached = [v.id in self.reached for v in prog.carry_in]
        self._transposed = [plan.env[i] for i in gen.env_t]          # the env values the reverse loop reads as .T

    def compile(self):
        """Compile (or load from the disk cache) the two loops; returns self."""
        if self.kernels is None:
            from .diskcache import load
            self.kernels = load(self.source, self.signatures)
        return self

    def fresh(self):
        """Does ``ops`` still bind what the lowering rules of this program's primitives mirror?"""
        for prim, fn in self._mirrored:
            if prim.fn is not fn:
                return False
        return snapshot_current()

    # -------------------------------------------------------------- types
    def _array_type(self, name, writable):
        p = self.plan
        kind, rest = name.rstrip("0123456789"), name[len(name.rstrip("0123456789")):]
        i = int(rest) if rest else None
        prog = p.prog
        if kind in ("HC", "GC", "GI"):
            v, lead = prog.carry_in[i], kind == "HC"
        elif kind in ("X", "GX"):
            v, lead = p.vars[next(k for k, m in p.stacked.items() if m == i)], True
        elif kind in ("E", "GE"):
            v, lead = p.vars[next(k for k, m in p.env.items() if m == i)], False
        elif kind == "ET":
            v = p.vars[next(k for k, m in self.gen.env_t.items() if m == i)]
            return _nb_array(v.dtype, 2, True)
        elif kind in ("Y", "GY"):
            v, lead = prog.ys_out[i], True
        elif kind == "K":
            a, b = p.consts[i]
            value = np.asarray(prog.eqns[a].inputs[b].value)
            return _nb_array(value.dtype, value.ndim, not writable)
        else:                          # S, GD: stacked per-step values; B, G: one step's
            v, lead = p.vars[i], kind in ("S", "GD")
        readonly = kind in ("X", "E", "GY") or (not writable and kind in ("HC", "S", "Y"))
        return _nb_array(v.dtype, len(v.shape) + lead, readonly)

    def _signature(self, params, forward):
        from numba import types
        return types.void(types.intp, *[self._array_type(name, forward) for name in params[1:]])

    # -------------------------------------------------------------- running
    def start(self, prog, reads, xs, T, need):
        run = super().start(prog, reads, xs, T, need)
        bound = self._bound                 # a layer's calls share one program: bind its constants once
        if bound is None or bound[0] is not prog:
            bound = self._bound = (prog, [_contiguous(prog.eqns[i].inputs[j].value) for i, j in self.plan.consts])
        run.K = bound[1]
        env = run.env
        run.E = [_contiguous(env[i]) for i in self.plan.env]
        return run

    def _scratch(self):
        """One step's buffers (the forward's temporaries, the reverse loop's per-step gradients):
        they never outlive a call of the compiled loops, so each thread keeps one set."""
        s = getattr(self._local, "buffers", None)
        if s is None:
            p, gen = self.plan, self.gen
            s = self._local.buffers = (
                [np.empty(p.vars[i].shape, p.vars[i].dtype) for i in gen.temps],
                [np.empty(p.vars[i].shape, p.vars[i].dtype) for i in gen.grads],
                [np.empty(shape, dtype) for shape, dtype in self._like["carry"]])
        return s

    def forward(self, run, t0, t1, carry, keep, Y=None):
        if _state.anomaly:           # the interpreter checks every vjp's gradient
            return super().forward(run, t0, t1, carry, keep, Y)
        need, n, like = run.need and keep, t1 - t0, self._like
        H, htape = self._hoist(run, t0, t1, need)
        HC = []
        for c, (shape, dtype) in zip(carry, like["carry"]):
            h = np.empty((n + 1,) + shape, dtype)
            h[0] = c
            HC.append(h)
        X = [_contiguous(H[i]) for i in self.plan.stacked]
        S = [np.empty((n,) + shape, dtype) for shape, dtype in like["saved"]]
        Ys = [Y[k][t0:t1] for k in range(len(Y))] if Y is not None else \
            [np.empty((n,) + shape, dtype) for shape, dtype in like["ys"]]
        self.compile().kernels[0](n, *HC, *X, *run.E, *run.K, *S, *Ys, *self._scratch()[0])
        # the final carry is copied out of the history, which it would otherwise keep alive
        return [h[n].copy() for h in HC], (_Tape((H, htape, HC, X, S, Ys)) if keep else None)

    def backward(self, run, t0, t1, tape, g_carry, GY):
        if not isinstance(tape, _Tape):
            return super().backward(run, t0, t1, tape, g_carry, GY)
        n, like = t1 - t0, self._like
        GC = [np.zeros(shape, dtype) if g is None else np.array(g, dtype, order="C")
              for g, (shape, dtype) in zip(g_carry, like["carry"])]
        GYs = [np.zeros((n,) + shape, dtype) if g is None else np.ascontiguousarray(g[t0:t1], dtype)
               for g, (shape, dtype) in zip(GY, like["ys"])]
        GX = [np.empty((n,) + shape, dtype) for shape, dtype in like["stacked"]]
        GE = [np.zeros(shape, dtype) for shape, dtype in like["env"]]
        GD = [np.empty((n,) + shape, dtype) for shape, dtype in like["deferred"]]
        B, G, GI = self._scratch()
        E = run.E
        ET = [np.ascontiguousarray(E[k].T) for k in self._transposed]
        self.kernels[1](n, *tape.HC, *tape.X, *E, *run.K, *tape.S, *tape.Y, *GC, *GYs, *GI, *GX, *GE, *GD,
                        *G, *ET, *B)
        cross = run.cross
        for k, i in self._reached_env:
            cross.put(i, GE[k], "scan")
        for k, a, w in self._reached_deferred:
            A, D = self._stacked(a, tape), GD[k]
            gw = np.dot(A.reshape(-1, A.shape[-1]).T, D.reshape(-1, D.shape[-1]))   # 2-D: dot costs less than @
            cross.put(w.id, gw if gw.dtype == w.dtype else gw.astype(w.dtype), "scan")
        if tape.htape or self._reached_stacked:
            hgrads = GradTable(_state.anomaly)
            for k, i, shape, dtype in self._reached_stacked:
                hgrads.add(i, GX[k], (n,) + shape, dtype)
            self._hoisted_backward(run, t0, t1, tape.htape, hgrads)
        return [g if r else None for g, r in zip(GC, self._carry_reached)]

    def _stacked(self, v, tape):
        """Value ``v`` over the segment's steps, as one (n, ...) array (a view where it can)."""
        p = self.plan
        if v.id in p.carry_ix:
            return tape.HC[p.carry_ix[v.id]][:-1]
        if v.id in p.stacked:
            return tape.X[p.stacked[v.id]]
        h = p.homes[v.id]
        if h[0] == "carry":
            return tape.HC[h[1]][1:]
        if h[0] == "ys":
            return tape.Y[h[1]]
        if h[0] == "saved":
            return tape.S[self.gen.saved.index(v.id)]
        e = p.views[v.id]
        index = e.static_dict["index"]
        return self._stacked(e.inputs[0], tape)[(slice(None),) + (index if isinstance(index, tuple) else (index,))]


def _macs(e):
    """The multiply-adds of the product ``e`` (each of its vjp's two products has as many)."""
    (m, k), n = e.inputs[0].shape, e.inputs[1].shape[1]
    return m * k * n


def _contiguous(a):
    """``a`` as a C-contiguous array of its own rank (``np.ascontiguousarray`` makes a 0-d array 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _nb_array(dtype, ndim, readonly):
    from numba import from_dtype, types
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C", readonly=readonly)


def compile_jit(prog):
    """The numba backend for ``prog``, compiled; the numpy backend (the reason in ``.fallback``)
    for a program it cannot express or numba fails to compile."""
    from .codegen import compile_numpy
    try:
        return JitRunner(prog).compile()
    except Exception as err:            # noqa: BLE001  (Unsupported, or numba failing to compile: numpy runs it)
        runner = compile_numpy(prog)
        runner.fallback = f"numba: {err}" if isinstance(err, Unsupported) else \
            f"numba: could not compile ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        return runner
