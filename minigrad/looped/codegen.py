"""The numpy backend: a program's loop as generated straight-line numpy, built as syntax trees.

What runs once per call (the ``once`` and ``hoisted`` stages) is a handful of primitive calls:
the interpreter's own code runs them. The loop is where per-step overhead lives, so for it this
module generates two Python functions from the program:

* ``forward``: one loop whose body is every loop equation's forward, inlined from the
  primitive's source (``inline.py``), saving what the reverse loop will read;
* ``backward``: one loop, steps in reverse, whose body is every equation's vjp, inlined, with
  gradients summed under rules decided now (the first contribution is bound, later ones added;
  in place only into an array this step allocated), then, after the loop, each deferred weight
  gradient as one product over the stacked steps.

A primitive that cannot be inlined is called, its vjp closure saved per step. Every generated
statement is an ``ast`` node; nothing edits source text. The functions are compiled once per
program structure and shared (``backends.py``); the values (constants, static arrays, what the
body reads) are bound at every call.
"""
from __future__ import annotations

import ast
import threading

import numpy as np

from .. import ops
from ..gradients import FreshGrad, IndexedGrad, OuterGrad, add_into, dense
from ..tensor import _state
from .buffers import _UFUNC_OF, Groups, _is_ufunc_call, _np_call, flatten, names_in, reuse, with_out
from .inline import NotInlinable, copy_tree, foldable, source_of
from .interpret import Interpreter
from .passes import batched_static
from .program import Var

__all__ = ["compile_numpy", "Compiled"]

for _helper in (ops._is_basic, ops._float, ops._is_half, ops._exp_floor, ops._exp_floor_like):
    foldable(_helper)


# ---------------------------------------------------------------------------- syntax helpers

def _load(name):
    return ast.Name(name, ast.Load())


def _store(name):
    return ast.Name(name, ast.Store())


def _assign(target, value):
    if isinstance(target, str):
        target = _store(target)
    return ast.Assign([target], value)


def _call(func, *args, **kwargs):
    func = _load(func) if isinstance(func, str) else func
    return ast.Call(func, list(args), [ast.keyword(k, v) for k, v in kwargs.items()])


def _attr(name, attr):
    return ast.Attribute(_load(name), attr, ast.Load())


def _item(name, index, ctx=ast.Load):
    index = _load(index) if isinstance(index, str) else index
    return ast.Subscript(_load(name) if isinstance(name, str) else name, index, ctx())


def _tuple(names, ctx=ast.Load):
    return ast.Tuple([ast.Name(n, ctx()) for n in names], ctx())


def _const(value):
    return ast.Constant(value)


def _unpack(names, source):
    """``(a, b, c,) = source`` (nothing when there are no names)."""
    return [_assign(_tuple(names, ast.Store), _load(source))] if names else []


def _names(nodes, ctx):
    """The names read (ctx=ast.Load) or bound (ast.Store) anywhere in ``nodes``."""
    return names_in(nodes, ctx)


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping):
        self.mapping = mapping

    def visit_Name(self, node):
        new = self.mapping.get(node.id)
        return ast.copy_location(ast.Name(new, node.ctx), node) if new else node


def _fresh(expr):
    """Does evaluating ``expr`` allocate a new array nothing else holds (arithmetic, a ufunc call)?"""
    if isinstance(expr, ast.BinOp):
        return True
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        return not isinstance(expr.operand, ast.Constant)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and isinstance(expr.func.value, ast.Name):
        fn = getattr(np, expr.func.attr, None) if expr.func.value.id == "np" else None
        return isinstance(fn, np.ufunc) and not any(k.arg == "out" for k in expr.keywords)
    return False


# ---------------------------------------------------------------------------- one equation

class _Code:
    """An equation's generated code in one context (``loop``, ``hoisted``): its forward
    statements and, when inlined, its vjp (``inl``); called otherwise (``inl is None``)."""

    __slots__ = ("k", "eqn", "inl", "fwd", "ctx")

    def __init__(self, k, eqn, inl, fwd, ctx):
        self.k, self.eqn, self.inl, self.fwd, self.ctx = k, eqn, inl, fwd, ctx


class _Builder:
    """Inlines a program's equations, for the loop (per step) and before it (all steps stacked)."""

    def __init__(self, prog, interp):
        self.prog, self.interp = prog, interp
        self.ns = {"np": np, "_fit": dense, "_add_into": add_into, "_stack": _stack_steps, "_IndexedGrad": IndexedGrad}
        self.binders = {}            # name -> function(prog) giving this call's value
        self.constants, self.keep = {}, []
        self.reads = []              # (name, object, where): globals the inlined code captured
        self.env_ids = [v.id for v in prog.reads] + [e.out.id for e in prog.eqns if e.stage == "once"]
        self.stacked_ids = list(interp.loop_reads_stacked)
        self.vars = {v.id: v for v in (*prog.carry_in, *prog.xs_in, *prog.reads, *(e.out for e in prog.eqns))}
        self.hoisted = [self._inline(k, e, "hoisted") for k, e in enumerate(prog.eqns) if e.stage == "hoisted"]
        self.loop = [self._inline(k, e, "loop") for k, e in enumerate(prog.eqns) if e.stage == "loop"]
        self.loop_info = {self.name(v): (tuple(v.shape), v.dtype) for v in self.vars.values()
                          if v.id not in self.env_ids}
        self.loop_info.update({f"g{v.id}": (tuple(v.shape), v.dtype) for v in self.vars.values()})
        self.pro_info = {f"H{v.id}": (("n",) + tuple(v.shape), v.dtype) for v in self.vars.values()
                         if v.id not in self.env_ids}
        self.deferred = {}           # k -> eqn k's vjp for its deferred operand, on all steps stacked
        for c in self.loop:
            if c.eqn.deferred and c.inl is not None:
                stacked = self._inline_deferred(c.k, c.eqn)
                if stacked is not None:
                    self.deferred[c.k] = stacked

    # -- names
    def name(self, v, ctx="loop"):
        """The name of a variable's value: per step in the loop, stacked before and after it."""
        if v.id in self.env_ids:
            return f"e{v.id}"
        if ctx != "loop":
            return f"H{v.id}"
        if v.id in self.stacked_ids:
            return f"h{v.id}"
        return f"c{v.id}" if v.role == "carry" else f"v{v.id}"

    def neutral(self):
        """Names in generated code that hold no array a block could overwrite: functions, modules
        and dtypes, static arguments, the loop's counters."""
        names = {n for n, v in self.ns.items() if not isinstance(v, np.ndarray)} | {"i", "t0", "n"}
        return names | {n for n in self.binders if not (n.startswith("K") and "_" in n and n[1].isdigit())}

    def info_with_constants(self):
        """(shape, dtype) of every name a loop body uses whose shape and dtype are known here."""
        info = dict(self.loop_info)
        for name, value in self.ns.items():
            if isinstance(value, np.ndarray):
                info[name] = (value.shape, value.dtype)
        return info

    def _operand(self, k, j, x, dtype, ctx):
        if isinstance(x, Var):
            return self.name(x, ctx)
        name = f"K{k}_{j}"

        def get(prog, k=k, j=j, dtype=dtype):
            value = prog.eqns[k].inputs[j].value
            if isinstance(value, (int, float)) and not isinstance(value, bool) and dtype.kind == "f":
                return np.asarray(value, dtype)      # a 0-d array of the op's dtype: faster ufunc calls
            return value
        self.binders[name] = get
        return name

    def _constant(self, value):
        """A name for a compile-time object without a literal form (a dtype, a constant array)."""
        key = ("array", id(value)) if isinstance(value, np.ndarray) else (type(value), value)
        name = self.constants.get(key)
        if name is None:
            name = self.constants[key] = f"C_obj{len(self.constants)}"
            self.ns[name] = value
            self.keep.append(value)          # an array's id stays its own while the program lives
        return name

    def _literal(self, dtype):
        if dtype.kind != "f":
            return None

        def name_of(value):
            name = f"C_{dtype.name}_{value!r}".replace(".", "p").replace("-", "m").replace("+", "")
            self.ns[name] = np.asarray(value, dtype)
            return name
        return name_of

    # -- inlining
    def _static(self, e, ctx):
        """The static arguments for a context (a leading full slice on an index, stacked)."""
        if ctx == "loop":
            return e.static_dict
        return batched_static(e, [isinstance(x, Var) and x.id not in self.env_ids for x in e.inputs])

    def _instantiate(self, k, e, operands, needs, ctx, g_name):
        static = dict(self._static(e, ctx))
        if e.prim.wants_needs:
            static["needs_grad"] = needs
        shapes, ranks, dtypes = {}, {}, {}
        for x, name in zip(e.inputs, operands):
            if isinstance(x, Var):
                stacked = ctx != "loop" and x.id not in self.env_ids
                ranks[name], dtypes[name] = len(x.shape) + stacked, x.dtype
                if not stacked:
                    shapes[name] = x.shape
        src = source_of(e.prim.fn)
        prefix = f"_{k}{ctx[0]}_"
        inl = src.instantiate(prefix, operands, static, self.ns, shapes, ranks, self._literal(e.out.dtype), g_name,
                              dtypes, self._constant)
        for r in inl.reads:
            if r[2] is not None and not any(r[0] == q[0] and r[2] is q[2] for q in self.reads):
                self.reads.append(r)
        grads = inl.grads if isinstance(inl.grads, list) else [inl.grads]
        used = _names(inl.fwd + inl.vjp + [inl.out] + [g for g in grads if g is not None], ast.Load)
        for name, renamed in src.static_names(prefix).items():
            if renamed in used:
                self.binders[renamed] = lambda prog, k=k, name=name, ctx=ctx, d=src.kwdefaults: self._static(
                    prog.eqns[k], ctx).get(name, d.get(name))
        return inl

    def _inline(self, k, e, ctx):
        operands = [self._operand(k, j, x, e.out.dtype, ctx) for j, x in enumerate(e.inputs)]
        deferred = e.deferred if ctx == "loop" else ()
        needs = tuple(isinstance(x, Var) and x.requires_grad and j not in deferred for j, x in enumerate(e.inputs))
        out = self.name(e.out, ctx)
        g_name = f"g{e.out.id}" if ctx == "loop" else f"GH{e.out.id}"
        try:
            inl = self._instantiate(k, e, operands, needs, ctx, g_name)
        except NotInlinable:
            self.ns[f"P{k}"] = e.prim.fn
            kw = f"KW{k}{ctx[0]}"
            self.binders[kw] = lambda prog, k=k, ctx=ctx, needs=needs: (
                dict(self._static(prog.eqns[k], ctx), needs_grad=needs) if prog.eqns[k].prim.wants_needs
                else self._static(prog.eqns[k], ctx))
            call = ast.Call(_load(f"P{k}"), [_load(o) for o in operands], [ast.keyword(None, _load(kw))])
            return _Code(k, e, None, [_assign(_tuple([out, f"F{k}{ctx[0]}"], ast.Store), call)], ctx)
        if isinstance(inl.out, ast.Name) and inl.out.id.startswith(f"_{k}{ctx[0]}_"):
            ren = _Rename({inl.out.id: out})          # the op's own local is the value: no alias
            inl.fwd = [ren.visit(s) for s in inl.fwd]
            inl.vjp = [ren.visit(s) for s in inl.vjp]
            inl.grads = ([g if g is None else ren.visit(g) for g in inl.grads] if isinstance(inl.grads, list)
                         else ren.visit(inl.grads))
            return _Code(k, e, inl, inl.fwd, ctx)
        return _Code(k, e, inl, inl.fwd + [_assign(out, inl.out)], ctx)

    def _inline_deferred(self, k, e):
        """Eqn k's vjp for its deferred operand only, on the stacked other operand and gradient."""
        (j,) = e.deferred
        names = [f"DA{k}" if i != j else self.name(x) for i, x in enumerate(e.inputs)]
        needs = tuple(i == j for i in range(len(e.inputs)))
        try:
            inl = self._instantiate(k, e, names, needs, "deferred", f"DGS{k}")
        except NotInlinable:
            return None
        grads = inl.grads if isinstance(inl.grads, list) else [inl.grads]
        needed = _names(inl.vjp + [g for g in grads if g is not None], ast.Load)
        kept = []
        for stmt in reversed(inl.fwd):         # only what the vjp reads: never the stacked product itself
            if _names([stmt], ast.Store) & needed:
                if not isinstance(stmt, ast.Assign):
                    return None
                kept.append(stmt)
                needed |= _names([stmt.value], ast.Load)
        inl.fwd = kept[::-1]
        return inl


def _stack_steps(arrays):
    """np.stack(arrays), without a copy when they are evenly spaced rows of one array (steps'
    values a buffer-reusing loop wrote into the rows of a hoisted array)."""
    first, n = arrays[0], len(arrays)
    base = first.base
    if n > 1 and base is not None:
        shape, strides = first.shape, first.strides
        if all(a.base is base and a.shape == shape and a.strides == strides for a in arrays):
            start = first.ctypes.data
            step = arrays[1].ctypes.data - start
            if step > 0 and arrays[-1].ctypes.data == start + (n - 1) * step and _disjoint((n,) + shape,
                                                                                         (step,) + strides):
                return np.lib.stride_tricks.as_strided(first, (n,) + shape, (step,) + strides)
    return np.stack(arrays)


def _disjoint(shape, strides):
    """Whether a strided layout gives every element its own address."""
    reach = 0
    for stride, n in sorted(zip(strides, shape)):
        if n == 1:
            continue
        if stride <= reach:
            return False
        reach = stride * (n - 1) + reach
    return True


# ---------------------------------------------------------------------------- the forward

def _prologue(b):
    """Before the loop: the segment's xs, and every hoisted equation on all its steps at once."""
    body = [_assign(_tuple([f"H{x.id}" for x in b.prog.xs_in], ast.Store), _load("X"))] if b.prog.xs_in else []
    for c in b.hoisted:
        body += copy_tree(c.fwd)           # passes rewrite statements: never the builder's own
    return body


def _loop_body(b, keep, write_y, saved):
    loop = [_assign(f"h{i}", _item(f"H{i}", "i")) for i in b.stacked_ids]
    for c in b.loop:
        loop += copy_tree(c.fwd)
    prog = b.prog
    if write_y:
        t = ast.BinOp(_load("t0"), ast.Add(), _load("i"))
        loop += [_assign(_item(f"Y{n}", t, ast.Store), _load(b.name(v))) for n, v in enumerate(prog.ys_out)]
    if keep:
        loop += [ast.Expr(_call(f"S_{s}a", _load(s))) for s in saved]
        loop += [ast.Expr(_call(f"DL{k}a", _load(b.name(prog.eqns[k].inputs[0])))) for k in b.deferred]
    carry = [b.name(v) for v in prog.carry_in]
    if carry:
        loop.append(_assign(_tuple(carry, ast.Store), _tuple([b.name(v) for v in prog.carry_out])))
    return loop


def _forward_source(b, keep, write_y, saved, values):
    """``forward(K, E, X, C, Y, t0, n) -> (carry, saved)``, with its buffer groups at the end of a step."""
    prog = b.prog
    carry = [b.name(v) for v in prog.carry_in]
    head = _unpack(list(b.binders), "K") + _unpack([f"e{i}" for i in b.env_ids], "E") + _unpack(carry, "C")
    if write_y:
        head += _unpack([f"Y{n}" for n in range(len(prog.ys_out))], "Y")
    pro = _prologue(b)
    _, made = reuse(pro, b.pro_info, live_out=set(values) | {f"H{i}" for i in b.stacked_ids}, neutral=b.neutral())
    lists = ([f"S_{s}" for s in saved] + [f"DL{k}" for k in b.deferred]) if keep else []
    for name in lists:
        pro += [_assign(name, ast.List([], ast.Load())), _assign(f"{name}a", _attr(name, "append"))]
    info = b.info_with_constants()
    loop = flatten(_loop_body(b, keep, write_y, saved), info, "_f")
    rows = {f"h{i}" for i in b.stacked_ids}
    groups = Groups()
    for r in rows:                      # a row of an array made here that nothing else reads may take a step's values
        g = made.of.get(f"H{r[1:]}")
        groups.new(r, g is not None and g in made.owned and f"H{r[1:]}" not in values)
    outs = {b.name(v) for v in (*prog.carry_out, *prog.ys_out)}
    _, groups = reuse(loop, info, live_out=outs | set(saved), groups=groups, pinned=rows,
                      neutral=b.neutral())
    if write_y:
        loop = _place_ys(loop, info)
    body = head + pro + [ast.For(_store("i"), _call("range", _load("n")), loop or [ast.Pass()], [])]
    body.append(ast.Return(ast.Tuple([_tuple(carry), _tuple(lists + (values if keep else []))], ast.Load())))
    return _function("forward", ["K", "E", "X", "C", "Y", "t0", "n"], body), groups


def _place_ys(loop, info):
    """Compute each y_t straight into its row of the output (``np.<ufunc>(..., out=Y[t])``)
    instead of copying it there, when the statement that makes it is elementwise arithmetic."""
    defining, out = {}, []
    for st in loop:
        target = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else None
        if isinstance(target, ast.Name):
            defining[target.id] = st
        if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                and target.value.id.startswith("Y") and isinstance(st.value, ast.Name)):
            d = defining.get(st.value.id)
            value = d.value if d is not None else None
            if value is not None and info.get(st.value.id) and info[st.value.id][0] != () and (
                    (isinstance(value, ast.BinOp) and type(value.op) in _UFUNC_OF) or _is_ufunc_call(value)):
                row = ast.Subscript(target.value, target.slice, ast.Load())
                d.value = with_out(value, row)
                defining.pop(st.value.id)
                continue
        out.append(st)
    return out


def _function(name, params, body):
    args = ast.arguments([], [ast.arg(p) for p in params], None, [], [], None, [])
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    return ast.FunctionDef(name, args, body, [], None, None, **extra)


# ---------------------------------------------------------------------------- the reverse

class _Reverse:
    """Writes the reverse pass: one step of the loop (``loop``), then after it (``post``) the
    deferred products and the hoisted equations' vjps on stacked gradients. How each gradient is
    summed is decided here: ``have`` maps a variable with a gradient so far (in the step, or
    stacked) to whether this code allocated its array (and may add into it in place)."""

    def __init__(self, b, pattern):
        self.b, self.pattern = b, pattern
        self.pre, self.loop, self.post = [], [], []
        self.have = {}           # per-step gradients g{id}
        self.have_h = {}         # stacked gradients GH{id}
        self.ge = {}             # env var id -> accumulator GE{id}, summed over all steps
        self.ge_owned = set()    # env var ids whose accumulator this code allocated
        self.escape = set()      # names stored beyond the step (lists, the next step's carry gradient)
        self.aliased = set()     # gradients bound to a second name
        self.root = {}           # a gradient name bound to another's array -> that first name
        self.lists = {}          # per-step list name -> the gradient it keeps a step's array of
        self.phase = "loop"

    def _shape(self, v, stacked):
        dims = [_load("n")] if stacked else []
        return ast.Tuple(dims + [_const(d) for d in v.shape], ast.Load()), _load(self.b._constant(v.dtype))

    def add(self, x, expr, kind, certain=False):
        """Add a contribution ``expr`` of ``kind`` (dense, indexed, outer, runtime) to x's gradient."""
        if x.id in self.b.env_ids:
            return self._add_env(x, expr, kind)
        stacked = self.phase != "loop"
        have, g = (self.have_h, f"GH{x.id}") if stacked else (self.have, f"g{x.id}")
        out = self.post if stacked else self.loop
        shape, dtype = self._shape(x, stacked)
        if kind == "outer":
            expr, kind, certain = _outer_expr(expr), "dense", not stacked
        if kind == "indexed":
            index, grad = expr
            if x.id not in have:
                out.append(_assign(g, _call(_attr("np", "zeros"), shape, dtype)))
            elif not have[x.id]:
                out.append(_assign(g, _call(_attr(g, "copy"))))
            out.append(ast.AugAssign(_item(g, index, ast.Store), ast.Add(), grad))
            have[x.id] = True
            return
        fresh = kind == "dense" and _fresh(expr)
        if isinstance(expr, ast.Name):
            self.aliased.add(expr.id)                  # two names for one array from here on
            if x.id not in have and not stacked:
                self.root[g] = self.root.get(expr.id, expr.id)
        if not certain:
            expr = _call("_fit", expr, shape, dtype)
        if x.id not in have:
            out.append(_assign(g, expr))
            have[x.id] = fresh and certain
        elif have[x.id]:
            out.append(ast.AugAssign(_store(g), ast.Add(), expr))
        else:
            out.append(_assign(g, ast.BinOp(_load(g), ast.Add(), expr)))
            have[x.id] = True
            self.root.pop(g, None)                     # a new array: no longer the one it was bound to

    def _add_env(self, x, expr, kind):
        """A read value's gradient, summed over all steps: zeros before the loop when a step adds
        to it, else bound by its first contribution after the loop."""
        exact = kind == "outer"                  # a.T @ g: already the weight's shape and dtype
        if exact:
            expr, kind = _outer_expr(expr), "dense"
        ge = self.ge.get(x.id)
        shape, dtype = self._shape(x, False)
        out = self.loop if self.phase == "loop" else self.post
        if ge is None:
            ge = self.ge[x.id] = f"GE{x.id}"
            if self.phase == "loop" or kind == "indexed":
                self.pre.append(_assign(ge, _call(_attr("np", "zeros"), shape, dtype)))
                self.ge_owned.add(x.id)
            else:
                out.append(_assign(ge, _call("_fit", expr, shape, dtype)))
                if _fresh(expr):
                    self.ge_owned.add(x.id)
                return
        elif x.id not in self.ge_owned:         # not ours to add into: the sum is a new array
            total = (ast.BinOp(_load(ge), ast.Add(), _call("_fit", expr, shape, dtype)) if kind != "indexed"
                     else _call("_add_into", _call(_attr(ge, "copy")), _call("_IndexedGrad", *expr), shape, dtype))
            out.append(_assign(ge, total))
            self.ge_owned.add(x.id)
            return
        if kind == "indexed":
            out.append(ast.AugAssign(_item(ge, expr[0], ast.Store), ast.Add(), expr[1]))
        elif exact:
            out.append(ast.AugAssign(_store(ge), ast.Add(), expr))
        else:
            out.append(_assign(ge, _call("_add_into", _load(ge), expr, shape, dtype)))

    def seed(self):
        prog = self.b.prog
        for j, v in enumerate(prog.carry_out):
            if v.requires_grad:
                self.add(v, _load(f"gc{j}"), "dense", certain=True)
        for n, v in enumerate(prog.ys_out):
            if self.pattern[n] and v.requires_grad:
                self.add(v, _item(f"GY{n}", "i"), "dense", certain=True)

    def vjp(self, c):
        """The vjp of ``c``'s equation, once its output's gradient is complete."""
        e, k, stacked = c.eqn, c.k, self.phase != "loop"
        have, out = (self.have_h, self.post) if stacked else (self.have, self.loop)
        g = f"GH{e.out.id}" if stacked else f"g{e.out.id}"
        if e.out.id not in have:
            return                                      # no gradient reaches it
        if c.inl is None:
            out.append(_assign(f"R{k}", _call(f"F{k}{c.ctx[0]}", _load(g))))
            grads, kinds = [_item(f"R{k}", _const(j)) for j in range(len(e.inputs))], None
        else:
            out += copy_tree(c.inl.vjp)
            grads, kinds = copy_tree(c.inl.grads), True
            if not isinstance(grads, list):
                out.append(_assign(f"R{k}", grads))
                grads, kinds = [_item(f"R{k}", _const(j)) for j in range(len(e.inputs))], None
        deferred = e.deferred if k in self.b.deferred and not stacked else ()
        for j, (x, gj) in enumerate(zip(e.inputs, grads)):
            if gj is None or not isinstance(x, Var) or not x.requires_grad or j in deferred:
                continue
            kind = self._kind(gj) if kinds else "runtime"
            if kind in ("indexed", "outer"):
                gj = (gj.args[0], gj.args[1])
            self.add(x, gj, kind, certain=kinds is not None and not stacked and _certain(e, j))
        if deferred:
            self.lists[f"DG{k}"] = g

    def _kind(self, g):
        if isinstance(g, ast.Call) and isinstance(g.func, ast.Name) and len(g.args) == 2 and not g.keywords:
            obj = self.b.ns.get(g.func.id)
            if obj is IndexedGrad:
                return "indexed"
            if obj is OuterGrad:
                return "outer"
        return "dense"

    def drain(self):
        """End of a step: the carry's gradient for the step before, and the stacked values' rows."""
        prog = self.b.prog
        for j, v in enumerate(prog.carry_in):
            if v.id in self.have:
                self.loop.append(_assign(f"gc{j}", _load(f"g{v.id}")))
                self.escape.add(f"g{v.id}")
            else:
                self.pre.append(_assign(f"Z{j}", _call(_attr("np", "zeros"), *self._shape(v, False))))
                self.loop.append(_assign(f"gc{j}", _load(f"Z{j}")))
        for i in self.b.stacked_ids:
            if i in self.have:
                self.lists[f"LH{i}"] = f"g{i}"
        self.same = {}                                 # list name -> an earlier list holding the same arrays
        kept = {}
        for name, g in self.lists.items():
            root = self.root.get(g, g)
            if root in kept:
                self.same[name] = kept[root]
                continue
            kept[root] = name
            self.pre.append(_assign(name, ast.BinOp(ast.List([_const(None)], ast.Load()), ast.Mult(), _load("n"))))
            self.loop.append(_assign(_item(name, "i", ast.Store), _load(g)))
            self.escape.add(g)

    def after_loop(self):
        """The stacked rows, the deferred products, then the hoisted equations' vjps."""
        self.phase = "stacked"
        stacked = {}                                   # list name -> the name of its stacked array

        def stack(name):
            first = self.same.get(name, name)
            if first not in stacked:
                stacked[first] = f"ST_{first}"
                self.post.append(_assign(stacked[first], _call("_stack", _load(first))))
            return _load(stacked[first])
        for i in self.b.stacked_ids:
            if i in self.have:
                self.add(self.b.vars[i], stack(f"LH{i}"), "dense", certain=True)
        for k, inl in self.b.deferred.items():
            e = self.b.prog.eqns[k]
            if e.out.id not in self.have:
                continue
            (j,) = e.deferred
            self.post.append(_assign(f"DA{k}", _call("_stack", _load(f"DL{k}"))))
            self.post.append(_assign(f"DGS{k}", stack(f"DG{k}")))
            self.post += copy_tree(inl.fwd + inl.vjp)
            grads = copy_tree(inl.grads)
            g = grads[j] if isinstance(grads, list) else _item(grads, _const(j))
            kind = self._kind(g) if isinstance(grads, list) else "runtime"
            self._add_env(e.inputs[j], (g.args[0], g.args[1]) if kind in ("indexed", "outer") else g, kind)
        for c in reversed(self.b.hoisted):
            if c.eqn.out.requires_grad:
                self.vjp(c)


def _outer_expr(pair):
    """``OuterGrad(a, g)`` multiplied out: ``a.T @ g``."""
    return ast.BinOp(ast.Attribute(pair[0], "T", ast.Load()), ast.MatMult(), pair[1])


def _certain(e, j):
    """Is the gradient a vjp returns for operand j already of that operand's shape and dtype?"""
    x = e.inputs[j]
    same = all((isinstance(o, Var) and o.dtype == e.out.dtype)
               or (not isinstance(o, Var) and isinstance(o.value, (int, float)) and not isinstance(o.value, bool))
               for o in e.inputs)
    if e.prim.batch == ops.MATMUL:
        return same and len(e.inputs) == 2 and all(isinstance(o, Var) and len(o.shape) == 2 for o in e.inputs)
    return same and e.prim.batch == ops.ELEMENTWISE and x.shape == e.out.shape


def _reverse(b, pattern):
    r = _Reverse(b, pattern)
    r.seed()
    for c in reversed(b.loop):
        if c.eqn.out.requires_grad:
            r.vjp(c)
    r.drain()
    r.after_loop()
    return r


def _disjoint_slices(b, shape, indices):
    """Do these static indices (names bound per call, values fixed by the structure) write each
    element of an array of ``shape`` at most once?"""
    hits = np.zeros(shape, np.int8)
    for index in indices:
        if not (isinstance(index, ast.Name) and index.id in b.binders):
            return False
        try:
            hits[b.binders[index.id](b.prog)] += 1
        except (IndexError, TypeError, ValueError):
            return False
    return bool((hits <= 1).all())


def _one_buffer_for_slices(r, b):
    """A step's gradient built from slices that do not overlap (an LSTM's gates) needs no zeros
    per step: one zeroed buffer before the loop, each slice assigned at every step (the same
    slices: what no slice writes stays zero). Only for a gradient that never gets a second name
    or leaves the step, so the next step may overwrite it."""
    loop = r.loop
    for i, st in enumerate(loop):
        if not (isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name) and _np_call(st.value, {"zeros"})):
            continue
        g = st.targets[0].id
        if g in r.aliased or g in r.escape or len(st.value.args) != 2:
            continue
        adds = [j for j in range(i + 1, len(loop)) if isinstance(loop[j], ast.AugAssign)
                and isinstance(loop[j].target, ast.Subscript) and isinstance(loop[j].target.value, ast.Name)
                and loop[j].target.value.id == g]
        if not adds or any(g in _names([loop[j]], ast.Load) for j in range(i + 1, adds[-1]) if j not in adds):
            continue
        if not _disjoint_slices(b, ast.literal_eval(st.value.args[0]), [loop[j].target.slice for j in adds]):
            continue
        r.pre.append(_assign(f"ZB_{g}", _call(_attr("np", "zeros"), *st.value.args)))
        loop[i] = _assign(g, _load(f"ZB_{g}"))
        for j in adds:
            loop[j] = _assign(loop[j].target, loop[j].value)


def _backward_source(b, pattern, consume, saved, values, groups=None, r=None):
    """``backward(K, E, S, GC, GY, n) -> (carry grads, xs grads, env grads)``; ``r``: the reverse
    pass for ``pattern`` if it was already written (to learn what the forward must save)."""
    prog = b.prog
    r = r or _reverse(b, pattern)
    _one_buffer_for_slices(r, b)
    reads = _names(r.loop, ast.Load)
    rows = sorted(n for n in reads if n.startswith("h") and n[1:].isdigit())
    restored = [s for s in saved if s in reads]
    restore = [_assign(n, _item(f"H{n[1:]}", "i")) for n in rows]
    restore += [_assign(s, _call(_attr(f"S_{s}", "pop")) if consume else _item(f"S_{s}", "i")) for s in restored]
    loop = restore + r.loop
    if groups is not None and consume:
        info = b.info_with_constants()
        loop = flatten(loop, info, "_b")
        entry, pinned = _entry_groups(b, groups, rows, restored, r.post)
        reuse(loop, info, live_out=r.escape, prefer=set(rows) | set(restored), groups=entry, pinned=pinned,
              neutral=b.neutral())
    body = _unpack(list(b.binders), "K") + _unpack([f"e{i}" for i in b.env_ids], "E")
    body += _unpack([f"S_{s}" for s in saved] + [f"DL{k}" for k in b.deferred] + values, "S")
    body += _unpack([f"gc{j}" for j in range(len(prog.carry_in))], "GC")
    body += _unpack([f"GY{n}" for n in range(len(prog.ys_out)) if pattern[n]], "GY")
    body += r.pre
    body.append(ast.For(_store("i"), _call("range", ast.BinOp(_load("n"), ast.Sub(), _const(1)), _const(-1),
                                           _const(-1)), loop or [ast.Pass()], []))
    body += r.post
    gx = [f"GH{x.id}" if x.id in r.have_h else None for x in prog.xs_in]
    ge = [r.ge.get(i) for i in b.env_ids]
    result = [_tuple([f"gc{j}" for j in range(len(prog.carry_in))])]
    result += [ast.Tuple([_load(n) if n else _const(None) for n in names], ast.Load()) for names in (gx, ge)]
    body.append(ast.Return(ast.Tuple(result, ast.Load())))
    return _function("backward", ["K", "E", "S", "GC", "GY", "n"], body), r


def _entry_groups(b, fwd, rows, restored, post):
    """The buffer groups a reverse step starts from: restored values and rows share memory as they
    did at the end of the forward step; a buffer may be overwritten once dead if the forward owned
    it and nothing outlives the step with it (a carry, a list kept for after the loop, a stacked
    array the hoisted vjps read)."""
    groups = Groups()
    outs = {b.name(v) for v in (*b.prog.carry_out, *b.prog.ys_out)}       # the caller holds these
    outs |= {b.name(b.prog.eqns[k].inputs[0]) for k in b.deferred}
    post_reads = _names(post, ast.Load)
    by_group = {}
    for name in [*rows, *restored]:
        by_group.setdefault(fwd.of.get(name, name), []).append(name)
    for g, names in by_group.items():
        ok = (g in fwd.owned and not (fwd.members[g] & outs)
              and not any(f"H{n[1:]}" in post_reads for n in names if n in rows))
        gid = groups.new(names[0], ok)
        for n in names[1:]:
            groups.join(n, gid)
    return groups, set(rows) | set(restored)


def _saved(b, r):
    """What the reverse pass reads of the forward: per-step values (lists), and values computed
    before the loop (the stacked arrays whose rows it reads, what the hoisted vjps read)."""
    fwd = _names([s for c in b.loop for s in c.fwd], ast.Store) | {b.name(v) for v in b.prog.carry_in}
    rows = {f"h{i}" for i in b.stacked_ids}
    loop_reads = _names(r.loop, ast.Load)
    steps = sorted((loop_reads & fwd) - rows - _names(r.loop, ast.Store))
    pro = _names(_prologue(b), ast.Store)
    wanted = _names(r.post, ast.Load) | {f"H{n[1:]}" for n in loop_reads & rows}
    return steps, sorted(wanted & pro)


def _locate(tree):
    """``ast.fix_missing_locations`` (a node without a position takes its parent's), without its
    recursion through generators: that took a fifth of compiling a body."""
    stack = [(tree, 1, 0, 1, 0)]
    while stack:
        node, line, col, end_line, end_col = stack.pop()
        if "lineno" in node._attributes:
            if not hasattr(node, "lineno"):
                node.lineno = line
            else:
                line = node.lineno
            if getattr(node, "end_lineno", None) is None:
                node.end_lineno = end_line
            else:
                end_line = node.end_lineno
            if not hasattr(node, "col_offset"):
                node.col_offset = col
            else:
                col = node.col_offset
            if getattr(node, "end_col_offset", None) is None:
                node.end_col_offset = end_col
            else:
                end_col = node.end_col_offset
        for field in node._fields:
            value = getattr(node, field, None)
            if type(value) is list:
                stack.extend((v, line, col, end_line, end_col) for v in value if isinstance(v, ast.AST))
            elif isinstance(value, ast.AST):
                stack.append((value, line, col, end_line, end_col))
    return tree


# ---------------------------------------------------------------------------- the runner

class Compiled(Interpreter):
    """The numpy backend: the interpreter's once stage, then generated code for the rest."""

    name = "numpy"

    def __init__(self, prog):
        super().__init__(prog)
        self.b = b = _Builder(prog, self)
        self.lock = threading.Lock()
        self.functions, self.trees, self.env_owned = {}, {}, {}
        self._bound = None
        full = tuple(True for _ in prog.ys_out)
        r = _reverse(b, full)
        self.saved, self.values = _saved(b, r)
        tree, self.groups = _forward_source(b, True, True, self.saved, self.values)
        self.functions[("forward", True, True)] = self._compile(tree, ("forward", True, True))
        key = ("backward", full, True)
        tree, r = _backward_source(b, full, True, self.saved, self.values, self.groups, r)
        self.env_owned[key], self.functions[key] = r.ge_owned, self._compile(tree, key)

    def function(self, kind, *variant):
        """The generated function for a variant (forward: keep, write_y; backward: pattern, consume)."""
        key = (kind, *variant)
        fn = self.functions.get(key)
        if fn is None:
            with self.lock:
                fn = self.functions.get(key)
                if fn is None:
                    if kind == "forward":
                        tree = _forward_source(self.b, *variant, self.saved, self.values)[0]
                    else:
                        tree, r = _backward_source(self.b, *variant, self.saved, self.values, self.groups)
                        self.env_owned[key] = r.ge_owned
                    fn = self.functions[key] = self._compile(tree, key)
        return fn

    def _compile(self, tree, key):
        module = _locate(ast.Module([tree], []))
        ns = dict(self.b.ns)
        exec(compile(module, f"<scan {tree.name}>", "exec"), ns)
        self.trees[key] = module
        return ns[tree.name]

    @property
    def sources(self):
        """The generated functions' source text, by variant (unparsed when asked: a reader's)."""
        return {key: ast.unparse(module) for key, module in list(self.trees.items())}

    def fresh(self):
        """Are the globals the inlined code captured still bound to the same objects?"""
        for name, obj, where in self.b.reads:
            if where is None:
                continue
            current = where.get(name, _MISSING) if isinstance(where, dict) else where.cell_contents
            if current is not obj:
                return False
        return True

    def outputs(self, prog, T, carry):
        """As the interpreter's; but a ys that is also the next carry gets one more row, row 0 a
        copy of the initial carry: every carry the steps see is then a row of that array, and the
        deferred weight gradient stacks them without a copy."""
        Y, used = [], set()
        carry = list(carry)
        for v in prog.ys_out:
            j = next((j for j, c in enumerate(prog.carry_out) if c is v and j not in used), None)
            if j is None or carry[j].shape != v.shape or carry[j].dtype != v.dtype:
                Y.append(np.empty((T,) + v.shape, v.dtype))
                continue
            used.add(j)
            full = np.empty((T + 1,) + v.shape, v.dtype)
            full[0] = carry[j]
            carry[j] = full[0]
            Y.append(full[1:])
        return Y, carry

    def start(self, prog, reads, xs, T, need):
        run = super().start(prog, reads, xs, T, need)
        last = self._bound                  # a layer's calls share one program: bind its values once
        if last is not None and last[0] is prog:
            run.K = last[1]
        else:
            run.K = tuple([get(prog) for get in self.b.binders.values()])
            self._bound = (prog, run.K)
        run.E = tuple(run.env[i] for i in self.b.env_ids)
        return run

    def forward(self, run, t0, t1, carry, keep, Y=None):
        need = run.need and keep
        fn = self.function("forward", need, Y is not None)
        X = tuple(x[t0:t1] for x in run.xs)
        carry, saved = fn(run.K, run.E, X, tuple(carry), Y, t0, t1 - t0)
        return list(carry), (saved if keep else None)

    def backward(self, run, t0, t1, saved, g_carry, GY):
        prog, n = run.prog, t1 - t0
        pattern = tuple(g is not None and v.requires_grad for g, v in zip(GY, prog.ys_out))
        key = ("backward", pattern, not _state.retain_graph)
        fn = self.function(*key)
        owned = self.env_owned[key]
        GC = tuple(g if g is not None else np.zeros(v.shape, v.dtype) for g, v in zip(g_carry, prog.carry_out))
        gys = tuple(GY[j][t0:t1] for j in range(len(GY)) if pattern[j])
        gc, gx, ge = fn(run.K, run.E, saved, GC, gys, n)
        for x, g in zip(prog.xs_in, gx):
            if g is not None:
                run.xgrads.add(x.id, IndexedGrad(slice(t0, t1), g), (run.T,) + x.shape, x.dtype)
        for i, g in zip(self.b.env_ids, ge):
            if g is not None:
                v = self.b.vars[i]
                run.cross.add(i, FreshGrad(g) if i in owned else g, v.shape, v.dtype, "scan", None, True)
        return list(gc)


_MISSING = object()


def compile_numpy(prog):
    """The numpy backend for ``prog``; the interpreter (with the reason in ``.fallback``) if
    generating code fails, so a body the plain loop runs never fails here."""
    try:
        return Compiled(prog)
    except Exception as err:            # noqa: BLE001  (the interpreter runs every program)
        runner = Interpreter(prog)
        runner.fallback = f"{type(err).__name__}: {err}"
        return runner
