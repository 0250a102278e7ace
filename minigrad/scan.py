"""``mg.scan``: a recurrence recorded as one graph node, run as generated straight-line numpy.

``scan(fn, init, xs)`` computes what this loop computes (the contract of JAX's ``lax.scan``)::

    carry, ys = init, []
    for t in range(T):
        carry, y = fn(carry, xs[t])
        ys.append(y)
    return carry, stack(ys)

but records it in the graph as one node, whatever T is. At each call the body is traced
(run eagerly once, on step 0, while the primitives it applies are recorded), then compiled:
each primitive's own source (``ops.py``) is inlined into a forward loop and a reverse loop of
plain numpy statements (see ``inline.py``), so no per-step Tensor or graph node exists, and
the memory kept for backward is just the per-step arrays the vjps read. Two rewrites make it
as fast as hand-written numpy BPTT:

* hoisting: ops that do not depend on the carry (the input projection ``x_t U + b``) run once,
  on all steps stacked, before the loop; their backward runs once after it;
* deferral: the gradient of a loop-invariant weight in a per-step product (``h_{t-1} W``) is
  one product over all steps, after the loop, instead of T small ones.

Compiled code is cached on the *structure* of the trace (ops, shapes, dtypes, wiring), never on
values: the tensors the body reads from outside and all constants are bound afresh at every
call, so rebinding them can never leave a stale trace behind. Python control flow in the body
that depends on tensor values is fixed at trace time, which is why reading a traced tensor's
values (``.data``, ``.item()``, ``bool()``) inside a body is an error.
"""
from __future__ import annotations

import ast
from collections import OrderedDict

import numpy as np

from .engine import _freed, active_trace, is_grad_enabled, unbroadcast
from .inline import NotInlinable, source_of
from .ops import ELEMENTWISE, INDEX, MATMUL, _is_basic
from .tensor import Tensor, _state

__all__ = ["scan"]


class _Const:
    """A non-Tensor operand (a number or an ndarray): bound per call, never compiled in."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Trace:
    """What the body did on step 0: variables (carry, x, outside tensors, op outputs) and ops."""

    def __init__(self):
        self.vars = []          # (kind, tensor); kind in carry, x, outside, op
        self.var_of = {}        # id(tensor) -> var index (tensors are kept alive in self.vars)
        self.ops = []           # (prim, refs, kwargs, out var); a ref is a var index or a _Const

    def add(self, kind, t):
        self.var_of[id(t)] = len(self.vars)
        self.vars.append((kind, t))
        return len(self.vars) - 1

    def var(self, t):
        v = self.var_of.get(id(t))
        return self.add("outside", t) if v is None else v

    def is_traced(self, t):
        v = self.var_of.get(id(t))
        return v is not None and self.vars[v][0] != "outside"

    def record(self, prim, args, kwargs, out):
        refs = [self.var(a) if isinstance(a, Tensor) else _Const(a) for a in args]
        self.ops.append((prim, refs, dict(kwargs), self.add("op", out)))


def _flatten(tree, what):
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        return [_tensor(t, what) for t in tree], len(tree)
    return [_tensor(tree, what)], -1


def _tensor(t, what):
    if isinstance(t, Tensor):
        return t
    if isinstance(t, (np.ndarray, float, int, np.generic)):
        return Tensor(t)
    raise TypeError(f"scan: {what} must be Tensors (or a tuple of them); got {type(t).__name__}")


def _unflatten(flat, struct):
    if struct is None:
        return None
    return flat[0] if struct == -1 else tuple(flat)


def _trace(fn, init, xs, xs_struct, carry_struct, carry_rg):
    tr = _Trace()
    carry_in = [Tensor(c._data, requires_grad=rg) for c, rg in zip(init, carry_rg)]
    x_in = [Tensor(x._data[0], requires_grad=x.requires_grad and is_grad_enabled()) for x in xs]
    for t in carry_in:
        tr.add("carry", t)
    for t in x_in:
        tr.add("x", t)
    prev = getattr(_state, "trace", None)
    _state.trace = tr
    try:
        out = fn(_unflatten(carry_in, carry_struct), _unflatten(x_in, xs_struct))
    finally:
        _state.trace = prev
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("scan: fn must return a pair (carry, y)")
    new_carry, struct = _flatten(out[0], "the carry fn returns")
    if struct != carry_struct:
        raise TypeError(f"scan: fn returned a carry of {len(new_carry)} tensors (structure {struct}), "
                        f"but init has {len(init)} (structure {carry_struct})")
    for j, (a, b) in enumerate(zip(init, new_carry)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise TypeError(f"scan: carry {j} must keep its shape and dtype: init is {a.shape} {a.dtype}, "
                            f"fn returned {b.shape} {b.dtype}")
    ys, ys_struct = _flatten(out[1], "the ys fn returns")
    carry_out = [tr.var(t) for t in new_carry]
    ys_out = [tr.var(t) for t in ys]
    return tr, carry_out, ys_out, ys_struct, [t.requires_grad for t in new_carry]


def _const_key(value):
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.dtype.str)
    return (type(value).__name__,)


def _static_key(kwargs):
    return tuple((k, _const_key(v) if isinstance(v, np.ndarray) or _has_array(v) else repr(v))
                 for k, v in sorted(kwargs.items()))


def _has_array(v):
    return isinstance(v, tuple) and any(isinstance(e, np.ndarray) or _has_array(e) for e in v)


def _structure(tr, carry_out, ys_out, grad_mode):
    head = tuple((kind, t.shape, t.dtype.str, t.requires_grad) for kind, t in tr.vars if kind != "op")
    body = tuple((prim, tuple(r if isinstance(r, int) else _const_key(r.value) for r in refs),
                  _static_key(kwargs), out, tr.vars[out][1].shape, tr.vars[out][1].dtype.str,
                  tr.vars[out][1].requires_grad)
                 for prim, refs, kwargs, out in tr.ops)
    return head, body, tuple(carry_out), tuple(ys_out), grad_mode


def _cast(x, dtype):
    return np.asarray(x).astype(dtype, copy=False)


def _batched_index(index):
    return (slice(None),) + (index if isinstance(index, tuple) else (index,))


class _Program:
    """The compiled forward of one traced structure, and its backward per pattern of output grads."""

    def __init__(self, tr, carry_out, ys_out):
        self.vars = [(kind, t.shape, t.dtype, t.requires_grad) for kind, t in tr.vars]
        self.ops = [(prim, refs, kwargs, out) for prim, refs, kwargs, out in tr.ops]
        self.carry_in = [v for v, (kind, *_) in enumerate(self.vars) if kind == "carry"]
        self.x_in = [v for v, (kind, *_) in enumerate(self.vars) if kind == "x"]
        self.outside = [v for v, (kind, *_) in enumerate(self.vars) if kind == "outside"]
        self.carry_out, self.ys_out = carry_out, ys_out
        self.ns = {"np": np, "_ub": unbroadcast, "_cast": _cast}
        self.binders = []              # (name, fn(trace) -> value), bound at every call
        self._classify()
        self._trial(tr)
        self._instantiate()
        self.backwards = {}
        full = self._backward_source(tuple(True for _ in ys_out), consume=True)
        self._forward_source(full)

    # ------------------------------------------------------------------ analysis
    def _classify(self):
        """Each var is invariant (inv), stacked over time before the loop (hoist), or per step."""
        cls = {}
        for v, (kind, *_) in enumerate(self.vars):
            cls[v] = {"carry": "step", "x": "hoist", "outside": "inv"}.get(kind)
        live = set(self.carry_out) | set(self.ys_out)
        for _prim, refs, _kwargs, out in reversed(self.ops):
            if out in live:
                live.update(r for r in refs if isinstance(r, int))
        self.live_ops = []
        self.mode = {}
        for k, (prim, refs, kwargs, out) in enumerate(self.ops):
            ins = {cls[r] for r in refs if isinstance(r, int)}
            if "step" in ins:
                m = "step"
            elif "hoist" in ins:
                m = "hoist" if self._batchable(prim, refs, kwargs, out, cls) else "step"
            else:
                m = "inv"
            cls[out] = m
            self.mode[k] = m
            if out in live:
                self.live_ops.append(k)
        self.cls = cls

    def _batchable(self, prim, refs, kwargs, out, cls):
        ndim = lambda v: len(self.vars[v][1])
        stacked = [r for r in refs if isinstance(r, int) and cls[r] == "hoist"]
        if prim.builtin is False:
            return False
        if prim.batch == ELEMENTWISE:
            return all(ndim(r) == ndim(out) for r in stacked)
        if prim.batch == MATMUL:
            return all(ndim(r) >= 2 for r in refs if isinstance(r, int))
        if prim.batch == INDEX:
            return _is_basic(kwargs["index"])
        return False

    def _needs(self, k):
        prim, refs, kwargs, out = self.ops[k]
        if "needs_grad" in kwargs:
            return list(kwargs["needs_grad"])
        return [isinstance(r, int) and self.vars[r][3] for r in refs]

    def _trial(self, tr):
        """Run each recorded vjp once on ones, to learn every gradient's shape, dtype, None-ness."""
        self.trial = {}
        for k, (*_, out) in enumerate(tr.ops):
            t = tr.vars[out][1]
            if t._vjp is None or t._vjp is _freed:
                continue
            try:
                res = t._vjp(np.ones(t.shape, t.dtype))
            except Exception:
                continue
            self.trial[k] = [None if g is None else (np.shape(g), np.asarray(g).dtype) for g in res]

    # ------------------------------------------------------------------ code pieces
    def _ref(self, r, ctx):
        """The source name of var ``r`` in a context: per step, stacked (hoist/defer), or invariant."""
        c = self.cls[r]
        if c == "inv":
            return f"I{r}"
        if c == "hoist":
            return f"h{r}" if ctx == "step" else f"H{r}"
        return f"v{r}" if ctx == "step" else f"D{r}"

    def _bind(self, name, getter):
        self.binders.append((name, getter))
        return name

    def _operand(self, k, i, r, ctx):
        if isinstance(r, int):
            return self._ref(r, ctx)
        dtype = self.vars[self.ops[k][3]][2]

        def get(tr, k=k, i=i, dtype=dtype):
            value = tr.ops[k][1][i].value
            if isinstance(value, (int, float)) and not isinstance(value, bool) and dtype.kind == "f":
                return np.asarray(value, dtype)      # a 0-d array of the op's dtype: faster ufunc calls
            return value
        return self._bind(f"K{k}_{i}", get)

    def _inline(self, k, ctx, needs):
        """Instantiate op k's source for a context; fall back to a call when it cannot be inlined."""
        prim, refs, kwargs, out = self.ops[k]
        prefix = f"_{k}{ctx[0]}_"
        operands = [self._operand(k, i, r, ctx) for i, r in enumerate(refs)]
        static = dict(kwargs)
        if "needs_grad" in static:
            static["needs_grad"] = tuple(needs)
        batched = ctx in ("hoist", "defer") and prim.batch == INDEX
        if batched:
            static["index"] = _batched_index(static["index"])
        stacked = ctx in ("hoist", "defer")
        shapes, ranks = {}, {}
        for r, expr in zip(refs, operands):
            if isinstance(r, int):
                shape = self.vars[r][1]
                if stacked and self.cls[r] != "inv":
                    ranks[expr] = len(shape) + 1
                else:
                    ranks[expr] = len(shape)
                    shapes[expr] = shape
        try:
            if not prim.builtin:
                raise NotInlinable("user primitives are called, not inlined")
            src = source_of(prim.fn)
            code = src.instantiate(prefix, operands, static, self.ns, shapes, ranks)
            for name, renamed in src.static_names(prefix).items():
                self._bind(renamed, lambda tr, k=k, name=name, batched=batched:
                           _batched_index(tr.ops[k][2][name]) if batched and name == "index"
                           else tr.ops[k][2].get(name, source_of(tr.ops[k][0].fn).kwdefaults.get(name)))
            return code
        except NotInlinable:
            self.fallback.add((k, ctx))
            fn_name = f"P{k}"
            self.ns[fn_name] = prim.fn
            kw = self._bind(f"KW{k}", lambda tr, k=k: dict(tr.ops[k][2]))
            line = f"{prefix}o, {prefix}vjp = {fn_name}({', '.join(operands)}{', ' if operands else ''}**{kw})"
            return [line], f"np.asarray({prefix}o)", [], f"{prefix}vjp({prefix}g)", f"{prefix}g"

    def _instantiate(self):
        """Per-step ops, with the weight gradients that can be deferred split off."""
        self.code = {}
        self.deferred = {}             # op -> (operand index, deferred code)
        self.fallback = set()          # (op, context) pairs called rather than inlined
        for k in self.live_ops:
            prim, refs, kwargs, out = self.ops[k]
            needs = self._needs(k)
            if self.mode[k] == "step" and prim.batch == MATMUL and len(refs) == 2 and prim.builtin:
                for i, r in enumerate(refs):
                    other = refs[1 - i]
                    if (needs[i] and isinstance(r, int) and self.cls[r] == "inv" and len(self.vars[r][1]) == 2
                            and isinstance(other, int) and len(self.vars[other][1]) >= 2):
                        only = [j == i for j in range(2)]
                        dcode = self._inline(k, "defer", only)
                        if not dcode[0] and not dcode[2] and (k, "defer") not in self.fallback:
                            self.deferred[k] = (i, dcode)
                            needs = [n and j != i for j, n in enumerate(needs)]
                        break
            self.code[k] = self._inline(k, self.mode[k], needs)
            if k in self.deferred and (k, self.mode[k]) in self.fallback:
                raise AssertionError(f"scan: op {k} deferred but not inlined")   # the masks would double count

    # ------------------------------------------------------------------ backward
    def _backward_source(self, ys_present, consume):
        """Source of the reverse loop for one pattern of given ys gradients."""
        L = []              # statements before the loop
        B = []              # loop body
        P = []              # after the loop
        assigned = set()    # per-step G names assigned so far in this iteration
        stacked_g = set()   # hoist vars with a stacked gradient GH
        inv_g = set()       # invariant vars with an accumulator GI
        defer_lists = []

        def fix(expr, k, i, r, ctx):
            shape, dtype = self.vars[r][1], self.vars[r][2]
            if ctx != "step" or self.cls[r] == "inv":
                return expr                      # reduced by the accumulation below
            info = self.trial.get(k)
            if info is None or info[i] is None:
                return f"_cast(_ub({expr}, {shape!r}), np.{dtype.name})"
            if info[i][0] != shape:
                expr = f"_ub({expr}, {shape!r})"
            if info[i][1] != dtype:
                expr = f"_cast({expr}, np.{dtype.name})"
            return expr

        def contribute(r, expr, ctx, lines):
            c = self.cls[r]
            shape, dtype = self.vars[r][1], self.vars[r][2]
            if c == "inv":
                if r not in inv_g:
                    inv_g.add(r)
                    L.append(f"GI{r} = np.zeros({shape!r}, np.{dtype.name})")
                lines.append(f"GI{r} += _ub({expr}, {shape!r})")
            elif ctx == "step":
                if r in assigned:
                    lines.append(f"G{r} = G{r} + {expr}")
                else:
                    assigned.add(r)
                    lines.append(f"G{r} = {expr}")
            else:                                # stacked, after the loop
                full = f"(T,) + {shape!r}"
                if r in stacked_g:
                    lines.append(f"GH{r} = GH{r} + _ub({expr}, {full})")
                else:
                    stacked_g.add(r)
                    lines.append(f"GH{r} = _cast(_ub({expr}, {full}), np.{dtype.name})")

        def emit_vjp(k, code, ctx, gname, lines, needs_override=None):
            prim, refs, kwargs, out = self.ops[k]
            fwd, out_expr, vjp_lines, result, g = code
            lines.append(f"{g} = {gname}")
            lines.extend(vjp_lines)
            needs = needs_override or self._needs(k)
            if isinstance(result, str):
                lines.append(f"_{k}{ctx[0]}_r = {result}")
                result = [f"_{k}{ctx[0]}_r[{i}]" for i in range(len(refs))]
            for i, (r, expr) in enumerate(zip(refs, result)):
                if expr is None or not isinstance(r, int) or not needs[i] or not self.vars[r][3]:
                    continue
                if ctx == "step" and k in self.trial and self.trial[k][i] is None:
                    continue
                contribute(r, fix(expr, k, i, r, ctx), ctx, lines)

        for j, v in enumerate(self.carry_out):
            if self.vars[v][3]:
                contribute(v, f"gc{j}", "step", B)
        for n, v in enumerate(self.ys_out):
            if ys_present[n] and self.vars[v][3]:
                contribute(v, f"GY{n}[t]", "step", B)
        step_ops = [k for k in self.live_ops if self.mode[k] == "step"]
        restore_at = len(B)
        restored = []
        for k in reversed(step_ops):
            out = self.ops[k][3]
            if out not in assigned:
                continue
            emit_vjp(k, self.code[k], "step", f"G{out}", B)
            if k in self.deferred:
                B.append(f"DG{k}a(G{out})")
                defer_lists.append(k)
        per_step_stacks = [v for v in self.x_in + [v for v in self.cls if self.cls[v] == "hoist"]
                           if v in assigned]
        per_step_stacks = list(dict.fromkeys(per_step_stacks))
        for v in per_step_stacks:
            L.append(f"GL{v} = []")
            L.append(f"GL{v}a = GL{v}.append")
            B.append(f"GL{v}a(G{v})")
        for j, v in enumerate(self.carry_in):
            if v in assigned:
                B.append(f"gc{j} = G{v}")
            else:
                B.append(f"gc{j} = Z{j}")
        # names the loop body reads that the forward loop defined: restored per step
        body_src = "\n".join(B)
        loads = {n.id for n in ast.walk(ast.parse(body_src)) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Load)} if B else set()
        stores = {n.id for n in ast.walk(ast.parse(body_src)) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Store)} if B else set()
        for name in sorted(loads - stores):
            if name.startswith("h") and name[1:].isdigit():
                restored.append(f"{name} = H{name[1:]}[t]")
            elif name in self.step_names_all():
                restored.append(f"{name} = S_{name}.pop()" if consume else f"{name} = S_{name}[t]")
        B[restore_at:restore_at] = restored
        self._saved_needed = getattr(self, "_saved_needed", set()) | {
            r.split(" = ")[0] for r in restored if not r.startswith("h")}
        for k in defer_lists:
            L.append(f"DG{k} = []")
            L.append(f"DG{k}a = DG{k}.append")
        for v in per_step_stacks:
            P.append(f"GH{v} = np.stack(GL{v}[::-1])")
            stacked_g.add(v)
        for k in defer_lists:
            i, (fwd, out_expr, vjp_lines, result, g) = self.deferred[k]
            refs = self.ops[k][1]
            other = refs[1 - i]
            if self.cls[other] == "step":
                P.append(f"D{other} = np.stack(Q{other})")
                self._stack_needed = getattr(self, "_stack_needed", set()) | {other}
            emit_vjp(k, self.deferred[k][1], "defer", f"np.stack(DG{k}[::-1])", P,
                     needs_override=[j == i for j in range(2)])
        for k in reversed(self.live_ops):
            out = self.ops[k][3]
            if self.mode[k] == "hoist" and out in stacked_g:
                emit_vjp(k, self.code[k], "hoist", f"GH{out}", P)
        for k in reversed(self.live_ops):
            out = self.ops[k][3]
            if self.mode[k] == "inv" and out in inv_g:
                emit_vjp(k, self.code[k], "inv", f"GI{out}", P)
        head = ["def backward(K, KEPT, SAVED, T, GC, GY):"]
        body = [f"({', '.join(n for n, _ in self.binders)},) = K" if self.binders else "pass"]
        body.append("KEPT_UNPACK")
        body.append("SAVED_UNPACK")
        body += [f"gc{j} = GC[{j}]" for j in range(len(self.carry_in))]
        body += [f"Z{j} = np.zeros({self.vars[v][1]!r}, np.{self.vars[v][2].name})"
                 for j, v in enumerate(self.carry_in)]
        body += [f"GY{n} = GY[{n}]" for n in range(len(self.ys_out)) if ys_present[n]]
        body += L
        body.append("for t in range(T - 1, -1, -1):")
        body += ["    " + line for line in (B or ["pass"])]
        body += P
        ret_x = ", ".join(f"GH{v}" if v in stacked_g else "None" for v in self.x_in)
        ret_o = ", ".join(f"GI{v}" if v in inv_g else "None" for v in self.outside)
        ret_c = ", ".join(f"gc{j}" for j in range(len(self.carry_in)))
        body.append(f"return ({ret_c}{',' if ret_c else ''}), ({ret_x}{',' if ret_x else ''}), "
                    f"({ret_o}{',' if ret_o else ''})")
        return head, body

    def step_names_all(self):
        """Names the forward loop body assigns (op locals and step vars), per step."""
        if not hasattr(self, "_step_names"):
            names = {f"v{v}" for v in self.carry_in}
            for k in self.live_ops:
                if self.mode[k] != "step":
                    continue
                fwd, out_expr, *_ = self.code[k]
                names.add(f"v{self.ops[k][3]}")
                for line in fwd:
                    for n in ast.walk(ast.parse(line)):
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                            names.add(n.id)
            self._step_names = names
        return self._step_names

    def _finish_backward(self, head, body):
        kept = [n for n in self.kept]
        saved = sorted(self._saved_needed)
        saved_names = [f"S_{n}" for n in saved] + [f"Q{v}" for v in self.stacked]
        unpack = {"KEPT_UNPACK": f"({', '.join(kept)},) = KEPT" if kept else "pass",
                  "SAVED_UNPACK": f"({', '.join(saved_names)},) = SAVED" if saved_names else "pass"}
        body = [unpack.get(line, line) for line in body]
        return self._compile(head + ["    " + line for line in body], "backward")

    # ------------------------------------------------------------------ forward
    def _forward_source(self, full_backward):
        head, bbody = full_backward
        L, B = [], []
        for k in self.live_ops:
            fwd, out_expr, *_ = self.code[k]
            target = {"inv": "I", "hoist": "H", "step": "v"}[self.mode[k]] + str(self.ops[k][3])
            (B if self.mode[k] == "step" else L).extend(fwd + [f"{target} = {out_expr}"])
        # what backward reads from before the loop: kept; what it restores per step: saved
        pre_defined = set()
        for line in L:
            for n in ast.walk(ast.parse(line)):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    pre_defined.add(n.id)
        pre_defined |= {f"H{v}" for v in self.x_in} | {f"I{v}" for v in self.outside}
        bsrc = "\n".join(bbody).replace("KEPT_UNPACK", "pass").replace("SAVED_UNPACK", "pass")
        bloads = {n.id for n in ast.walk(ast.parse("def f():\n" + "\n".join("    " + s for s in bsrc.split("\n"))))
                  if isinstance(n, ast.Name)}
        self.kept = sorted(n for n in pre_defined if n in bloads)
        self.stacked = sorted(getattr(self, "_stack_needed", set()))
        saved = sorted(self._saved_needed)
        for name in saved:
            L.append(f"S_{name} = []")
            L.append(f"S_{name}a = S_{name}.append")
        for v in self.stacked:
            L.append(f"Q{v} = []")
            L.append(f"Q{v}a = Q{v}.append")
        for n in range(len(self.ys_out)):
            L.append(f"Y{n} = []")
            L.append(f"Y{n}a = Y{n}.append")
        uses = set()
        for line in B:
            uses |= {n.id for n in ast.walk(ast.parse(line)) if isinstance(n, ast.Name)}
        carry_next = [self._ref(v, "step") for v in self.carry_out]
        ys_refs = [self._ref(v, "step") for v in self.ys_out]
        uses |= set(carry_next) | set(ys_refs)
        slices = [f"{name} = H{name[1:]}[t]" for name in sorted(uses) if name[0] == "h" and name[1:].isdigit()]
        loop = slices + B
        loop += [f"Q{v}a(v{v})" for v in self.stacked]
        loop += [f"S_{name}a({name})" for name in saved]
        loop += [f"Y{n}a({ref})" for n, ref in enumerate(ys_refs)]
        if self.carry_in:
            loop.append(f"{', '.join(f'v{v}' for v in self.carry_in)} = {', '.join(carry_next)}")
        body = [f"({', '.join(n for n, _ in self.binders)},) = K" if self.binders else "pass"]
        body += [f"I{v} = OUT[{j}]" for j, v in enumerate(self.outside)]
        body += [f"H{v} = XS[{j}]" for j, v in enumerate(self.x_in)]
        body += [f"v{v} = INIT[{j}]" for j, v in enumerate(self.carry_in)]
        body += L
        body.append("for t in range(T):")
        body += ["    " + line for line in (loop or ["pass"])]
        ys = ", ".join(f"np.stack(Y{n})" for n in range(len(self.ys_out)))
        carry = ", ".join(f"v{v}" for v in self.carry_in)
        kept = ", ".join(self.kept)
        saved_t = ", ".join([f"S_{n}" for n in saved] + [f"Q{v}" for v in self.stacked])
        body.append(f"return ({carry}{',' if carry else ''}), ({ys}{',' if ys else ''}), "
                    f"({kept}{',' if kept else ''}), ({saved_t}{',' if saved_t else ''})")
        self.forward = self._compile(["def forward(K, OUT, XS, INIT, T):"] + ["    " + s for s in body], "forward")
        self.backwards[(tuple(True for _ in self.ys_out), True)] = self._finish_backward(head, bbody)

    def backward(self, ys_present, consume):
        key = (ys_present, consume)
        fn = self.backwards.get(key)
        if fn is None:
            saved_before = set(self._saved_needed)
            head, body = self._backward_source(ys_present, consume)
            self._saved_needed = saved_before     # a subset of the full pattern's, by construction
            fn = self.backwards[key] = self._finish_backward(head, body)
        return fn

    def _compile(self, lines, name):
        src = "\n".join(lines)
        code = compile(src, f"<scan {name}>", "exec")
        ns = dict(self.ns)
        exec(code, ns)
        fn = ns[name]
        fn.source = src
        return fn

    def bind(self, tr):
        return tuple(get(tr) for _, get in self.binders)


_cache = OrderedDict()
_CACHE_SIZE = 128


def scan(fn, init, xs=None, length=None):
    """Run ``fn(carry, x_t) -> (carry, y_t)`` over time as one graph node.

    Parameters
    ----------
    fn : callable
        The body. ``carry`` is a Tensor or tuple of Tensors of fixed shapes and dtypes; ``x_t``
        is ``xs[t]`` (a Tensor, a tuple of them, or None). It must compute with Tensor ops (any
        tensor it reads from outside, such as parameters, gets its gradient), and may not read
        traced values into Python (that would fix them at step 0).
    init : Tensor or tuple of Tensors
    xs : Tensor, tuple of Tensors, or None
        Time on axis 0.
    length : int, optional
        The number of steps when ``xs`` is None.

    Returns
    -------
    (final_carry, ys) with ys stacked on axis 0 (None when fn returns no y).

    Gradients flow to ``init``, ``xs`` and every tensor the body uses from outside. The result
    equals the plain Python loop above, forward and backward, which is how it is tested.
    """
    if active_trace() is not None:
        raise NotImplementedError("scan: a scan inside a scan body is not supported; unroll the inner loop")
    init_flat, carry_struct = _flatten(init, "init")
    if carry_struct is None:
        raise TypeError("scan: init must be a Tensor or a tuple of Tensors")
    xs_flat, xs_struct = _flatten(xs, "xs")
    lengths = {x.shape[0] if x.ndim else None for x in xs_flat}
    if None in lengths:
        raise ValueError("scan: every xs must have a time axis (axis 0)")
    if length is not None:
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ValueError(f"scan: xs (and length) disagree on the number of steps: {sorted(lengths)}")
    T = lengths.pop()
    if T < 1:
        raise ValueError("scan: needs at least one step")

    grad_mode = is_grad_enabled()
    carry_rg = [t.requires_grad and grad_mode for t in init_flat]
    while True:                       # a carry needs grad if init does or the body makes it so
        tr, carry_out, ys_out, ys_struct, out_rg = _trace(fn, init_flat, xs_flat, xs_struct, carry_struct, carry_rg)
        new_rg = [a or b for a, b in zip(carry_rg, out_rg)]
        if new_rg == carry_rg:
            break
        carry_rg = new_rg

    key = _structure(tr, carry_out, ys_out, grad_mode)
    prog = _cache.get(key)
    if prog is None:
        prog = _Program(tr, carry_out, ys_out)
        _cache[key] = prog
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    K = prog.bind(tr)
    outside = [tr.vars[v][1] for v in prog.outside]
    carry, ys, kept, saved = prog.forward(K, [t._data for t in outside], [x._data for x in xs_flat],
                                          [c._data for c in init_flat], T)
    inputs = init_flat + xs_flat + outside
    need = grad_mode and any(t.requires_grad for t in inputs)
    outs = [Tensor(np.asarray(a)) for a in (*carry, *ys)]
    if need:
        _record(prog, K, kept, saved, T, inputs, outs, len(carry))
    new_carry = _unflatten(outs[:len(carry)], carry_struct)
    ys_t = _unflatten(outs[len(carry):], ys_struct)
    return new_carry, ys_t


def _record(prog, K, kept, saved, T, inputs, outs, n_carry):
    """One graph node for the whole loop: a hub holding the inputs and the backward, and each
    output a thin node that hands its gradient to the hub."""
    box = [None] * len(outs)

    def hub_vjp(_):
        gc = [box[j] if box[j] is not None else np.zeros_like(outs[j]._data) for j in range(n_carry)]
        gy = [box[n_carry + n] for n in range(len(outs) - n_carry)]
        box[:] = [None] * len(box)
        consume = not getattr(_state, "retain_graph", False)
        bwd = prog.backward(tuple(g is not None for g in gy), consume)
        g_init, g_xs, g_out = bwd(K, kept, saved, T, gc, gy)
        return (*g_init, *g_xs, *g_out)

    hub = Tensor(np.empty(0))
    hub.requires_grad = True
    hub._parents = tuple(t if t.requires_grad else None for t in inputs)
    hub._vjp = hub_vjp
    hub._op = "scan"
    from .engine import _epoch
    hub._epoch = _epoch[0]
    empty = np.empty(0)
    for n, t in enumerate(outs):
        def take(g, n=n):
            box[n] = g if box[n] is None else box[n] + g
            return (empty,)
        t.requires_grad = True
        t._parents = (hub,)
        t._vjp = take
        t._op = "scan.output"
        t._epoch = hub._epoch
