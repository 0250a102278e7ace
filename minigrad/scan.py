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
import re
from collections import OrderedDict

import numpy as np

from .engine import FreshGrad, IndexedGrad, OuterGrad, _freed, active_trace, is_grad_enabled, unbroadcast
from .inline import NotInlinable, source_of
from .ops import ELEMENTWISE, INDEX, MATMUL, _is_basic
from .tensor import Node, Tensor, _state

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
    prev = _state.trace
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
        return ("array", value.shape, value.dtype)
    return type(value)


_ATOMS = {bool, int, float, str, type(None), type(Ellipsis)}


def _freeze(v):
    """A hashable stand-in for a static keyword argument, equal exactly when the code it folds
    into would be the same (arrays count by shape and dtype: their values are bound per call)."""
    t = type(v)
    if t in _ATOMS or isinstance(v, np.dtype):
        return v
    if t is tuple:
        return tuple([_freeze(e) for e in v])
    if t is slice:
        return (slice, v.start, v.stop, v.step)
    if t is np.ndarray:
        return ("array", v.shape, v.dtype)
    if isinstance(v, np.generic):
        return v.item()
    return ("object", t, repr(v))


def _structure(tr, carry_out, ys_out, grad_mode):
    """The cache key: everything the generated code depends on, and no value it binds per call."""
    vars_ = tr.vars
    head = tuple([(kind, t._data.shape, t._data.dtype, t.requires_grad) for kind, t in vars_ if kind != "op"])
    body = tuple([(prim, tuple([r if type(r) is int else _const_key(r.value) for r in refs]),
                   tuple([(k, _freeze(v)) for k, v in kwargs.items()]), out,
                   vars_[out][1]._data.shape, vars_[out][1]._data.dtype, vars_[out][1].requires_grad)
                  for prim, refs, kwargs, out in tr.ops])
    return head, body, tuple(carry_out), tuple(ys_out), grad_mode


def _cast(x, dtype):
    return np.asarray(x).astype(dtype, copy=False)


def _batched_index(index):
    return (slice(None),) + (index if isinstance(index, tuple) else (index,))


class _Program:
    """The compiled forward of one traced structure, and its backward per pattern of output grads.

    Names in the generated code: ``I{v}`` a loop-invariant value, ``H{v}`` a value stacked over
    time (xs and hoisted ops) and ``h{v}`` its slice at step t, ``v{v}`` (or the inlined op's own
    local) a per-step value; gradients ``G{v}`` per step, ``GH{v}`` stacked, ``GI{v}`` invariant.
    """

    def __init__(self, tr, carry_out, ys_out, recording=False, like=None):
        """Compile from a trace, or (``like``: a program of the same structure) from what that
        program learnt of its trace, which no call then needs to keep (see ``_replay_recording``)."""
        self.recording = recording     # step by step, reporting each step's contributions
        if like is not None:
            self.vars, self.ops, self.trial, fresh, sharing = like.analysis
        else:
            self.vars = [(kind, t.shape, t.dtype, t.requires_grad) for kind, t in tr.vars]
            self.ops = list(tr.ops)
        self.carry_in = [v for v, (kind, *_) in enumerate(self.vars) if kind == "carry"]
        self.x_in = [v for v, (kind, *_) in enumerate(self.vars) if kind == "x"]
        self.outside = [v for v, (kind, *_) in enumerate(self.vars) if kind == "outside"]
        self.carry_out, self.ys_out = carry_out, ys_out
        self.ns = {"np": np, "_ub": unbroadcast, "_cast": _cast, "_report": _report, "_stack_steps": _stack_steps}
        self.binders = {}              # name -> fn(trace) -> value, bound afresh at every call
        self.name = {}                 # per-step source name of a step var, when not v{v}
        self._classify()
        if like is None:
            self._trial(tr)
            fresh, sharing = self._memory(tr)
        self.fresh, self.sharing = set(fresh), sharing
        self.analysis = (self.vars, self.ops, self.trial, fresh, sharing)
        self._instantiate()
        self.saved, self.stacked, self.kept = [], [], []
        self.backwards = {}
        full = self._backward_source(tuple(True for _ in ys_out), consume=True)
        self._forward_source(full)

    # ------------------------------------------------------------------ analysis
    def _classify(self):
        """Each var is invariant (inv), stacked over time before the loop (hoist), or per step."""
        cls = {v: {"carry": "step", "x": "hoist", "outside": "inv"}.get(kind)
               for v, (kind, *_) in enumerate(self.vars)}
        live = set(self.carry_out) | set(self.ys_out)
        for _prim, refs, _kwargs, out in reversed(self.ops):
            if out in live:
                live.update(r for r in refs if isinstance(r, int))
        self.live_ops, self.mode = [], {}
        for k, (prim, refs, kwargs, out) in enumerate(self.ops):
            ins = {cls[r] for r in refs if isinstance(r, int)}
            if "step" in ins or self.recording:
                m = "step"
            elif "hoist" in ins:
                m = "hoist" if self._batchable(prim, refs, kwargs, out, cls) else "step"
            else:
                m = "inv"
            cls[out] = self.mode[k] = m
            if out in live:
                self.live_ops.append(k)
        self.cls = cls

    def _batchable(self, prim, refs, kwargs, out, cls):
        """Can the op run once on all steps stacked (a leading time axis on its stacked operands)?"""
        ndim = lambda v: len(self.vars[v][1])
        stacked = [r for r in refs if isinstance(r, int) and cls[r] == "hoist"]
        if not prim.builtin:
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
        """Run each recorded vjp once on ones, to learn every gradient's shape, dtype and None-ness,
        and whether it is a fresh array (safe to accumulate into in place)."""
        self.trial = {}
        for k, (_prim, refs, _kwargs, out) in enumerate(tr.ops):
            t = tr.vars[out][1]
            if t._vjp is None or t._vjp is _freed:
                continue
            g = np.ones(t.shape, t.dtype)
            try:
                res = t._vjp(g)
            except Exception:
                continue
            seen = [g, t._data] + [tr.vars[r][1]._data for r in refs if isinstance(r, int)]
            info = []
            for r in res:
                if r is None or isinstance(r, (IndexedGrad, OuterGrad)):
                    info.append(None if r is None else "indexed" if isinstance(r, IndexedGrad) else "outer")
                    continue
                r = np.asarray(r)
                fresh = (r.flags.owndata and r.flags.writeable and r.ndim > 0
                         and not any(np.shares_memory(r, a) for a in seen))
                info.append((r.shape, r.dtype, fresh))
            self.trial[k] = info

    @staticmethod
    def _memory(tr):
        """Vars whose value is an array the op allocated (not a view of anything), reusable as
        out= once nothing reads them, nor any var sharing their memory (a slice, a reshape, an
        identity); and those groups of vars sharing memory."""
        fresh, sharing = set(), {}
        for _prim, refs, _kw, out in tr.ops:
            data = tr.vars[out][1]._data
            shared = [r for r in refs if isinstance(r, int) and np.shares_memory(data, tr.vars[r][1]._data)]
            for r in shared:
                group = sharing.get(r, {r}) | sharing.get(out, {out})
                for m in group:
                    sharing[m] = group
            if data.flags.owndata and data.ndim > 0 and not shared:
                fresh.add(out)
        return fresh, sharing

    # ------------------------------------------------------------------ instantiation
    def _ref(self, r, ctx):
        c = self.cls[r]
        if c == "inv":
            return f"I{r}"
        if c == "hoist":
            return f"h{r}" if ctx == "step" else f"H{r}"
        return self.name.get(r, f"v{r}") if ctx == "step" else f"D{r}"

    def _bind(self, name, getter):
        self.binders[name] = getter
        return name

    def _constant(self, value):
        """Bind a compile-time value that has no literal form (a dtype, a constant array) to a name."""
        name = f"C_obj{len([n for n in self.ns if n.startswith('C_obj')])}"
        for existing, v in self.ns.items():
            if existing.startswith("C_obj") and type(v) is type(value) and (
                    v is value if type(v) is np.ndarray else v == value):
                return existing
        self.ns[name] = value
        return name

    def _literal(self, dtype):
        def name_of(value):
            name = f"C_{dtype.name}_{value!r}".replace(".", "p").replace("-", "m").replace("+", "")
            self.ns[name] = np.asarray(value, dtype)
            return name
        return name_of if dtype.kind == "f" else None

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

    def _g_name(self, k, ctx):
        out = self.ops[k][3]
        return {"step": f"G{out}", "hoist": f"GH{out}", "inv": f"GI{out}", "defer": f"DGS{k}"}[ctx]

    def _inline(self, k, ctx, needs):
        """Instantiate op k's source for a context; fall back to a call when it cannot be inlined.
        Returns (forward lines, output expression, vjp lines, vjp result, inlined?)."""
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
        shapes, ranks, dtypes = {}, {}, {}
        for r, expr in zip(refs, operands):
            if isinstance(r, int):
                shape = self.vars[r][1]
                dtypes[expr] = self.vars[r][2]
                if stacked and self.cls[r] != "inv":
                    ranks[expr] = len(shape) + 1
                else:
                    ranks[expr] = len(shape)
                    shapes[expr] = shape
        g_name = self._g_name(k, ctx)
        try:
            if not prim.builtin:
                raise NotInlinable("user primitives are called, not inlined")
            src = source_of(prim.fn)
            fwd, out_expr, vjp_lines, result, _ = src.instantiate(
                prefix, operands, static, self.ns, shapes, ranks, self._literal(self.vars[out][2]), g_name, dtypes,
                self._constant)
            for name, renamed in src.static_names(prefix).items():
                self._bind(renamed, lambda tr, k=k, name=name, batched=batched, d=src.kwdefaults:
                           _batched_index(tr.ops[k][2][name]) if batched and name == "index"
                           else tr.ops[k][2].get(name, d.get(name)))
            return fwd, out_expr, vjp_lines, result, True
        except NotInlinable:
            self.ns[f"P{k}"] = prim.fn
            kw = self._bind(f"KW{k}", lambda tr, k=k: dict(tr.ops[k][2]))
            args = ", ".join(operands + [f"**{kw}"])
            return [f"{prefix}o, {prefix}vjp = P{k}({args})"], f"np.asarray({prefix}o)", [], \
                f"{prefix}vjp({g_name})", False

    def _instantiate(self):
        """Inline every live op for its context; split off the weight gradients that can be
        deferred to one product after the loop (a per-step matmul with a loop-invariant matrix)."""
        self.code, self.deferred, self.step_needs = {}, {}, {}
        called = []
        for k in self.live_ops:
            prim, refs, kwargs, out = self.ops[k]
            needs = self._needs(k)
            if (self.mode[k] == "step" and prim.batch == MATMUL and prim.builtin and len(refs) == 2
                    and not self.recording):
                for i, r in enumerate(refs):
                    other = refs[1 - i]
                    if (needs[i] and isinstance(r, int) and self.cls[r] == "inv" and len(self.vars[r][1]) == 2
                            and isinstance(other, int) and len(self.vars[other][1]) >= 2):
                        dcode = self._inline(k, "defer", [j == i for j in range(2)])
                        if dcode[4] and not dcode[0] and not dcode[2]:
                            self.deferred[k] = (i, dcode)
                            needs = [n and j != i for j, n in enumerate(needs)]
                            self.step_needs[k] = needs      # the per-step vjp leaves operand i out
                        break
            self.code[k] = code = self._inline(k, self.mode[k], needs)
            if k in self.deferred and not code[4]:
                del self.deferred[k]       # the per-step call would count the deferred gradient twice
                del self.step_needs[k]
                self.code[k] = self._inline(k, self.mode[k], self._needs(k))
            if not code[4]:
                called.append(k)
            out_expr = code[1]
            if self.mode[k] == "step" and out_expr.isidentifier() and out_expr.startswith(f"_{k}s_"):
                self.name[out] = out_expr      # the op's own local is the value: no alias to save twice

        # a called (not inlined) vjp closure may keep its inputs and output: never write into them
        for k in called:
            self.fresh -= {r for r in self.ops[k][1] if isinstance(r, int)} | {self.ops[k][3]}

    # ------------------------------------------------------------------ backward
    def _backward_source(self, ys_present, consume):
        """Source of the reverse pass for one pattern of given ys gradients."""
        em = _Emitter(self, consume)
        for j, v in enumerate(self.carry_out):
            if self.vars[v][3]:
                em.add(v, f"gc{j}", "step", fresh=False)
        for n, v in enumerate(self.ys_out):
            if ys_present[n] and self.vars[v][3]:
                em.add(v, f"GY{n}[t]", "step", fresh=False)
        restore_at = len(em.B)
        for k in reversed([k for k in self.live_ops if self.mode[k] == "step"]):
            out = self.ops[k][3]
            if em.has(out):
                em.consume(out)
                em.vjp(k, self.code[k], "step", needs=self.step_needs.get(k))
                if k in self.deferred:
                    em.defer_lists.append((k, em.stack(out)))
        for v in self.cls:
            if self.cls[v] == "hoist" and em.has(v):
                em.consume(v)
                em.P.append(f"GH{v} = {em.stack(v)}")
                em.stacked_g.add(v)
        for j, v in enumerate(self.carry_in):
            if em.has(v):
                em.consume(v)
                em.B.append(f"gc{j} = G{v}")
            else:
                em.B.append(f"gc{j} = Z{j}")
        em.finish_allocations()
        # names the loop body reads that the forward loop defined: restored per step
        loads, stores = _names("\n".join(em.B))
        restored = []
        for name in sorted(loads - stores):
            if name[0] == "h" and name[1:].isdigit():
                restored.append(f"{name} = H{name[1:]}[t]")
            elif name in self._step_names():
                restored.append(f"{name} = S_{name}.pop()" if consume else f"{name} = S_{name}[t]")
                if name not in self.saved:
                    self.saved.append(name)
        em.B[restore_at:restore_at] = restored
        for k, stacked in em.defer_lists:
            i, code = self.deferred[k]
            other = self.ops[k][1][1 - i]
            if self.cls[other] == "step":
                em.P.append(f"D{other} = _stack_steps(Q{other})")
                if other not in self.stacked:
                    self.stacked.append(other)
            em.P.insert(0, f"DGS{k} = {stacked}")
            em.vjp(k, code, "defer", needs=[j == i for j in range(2)])
        for k in reversed(self.live_ops):
            out = self.ops[k][3]
            if self.mode[k] == "hoist" and out in em.stacked_g:
                em.vjp(k, self.code[k], "hoist")
        for k in reversed(self.live_ops):
            out = self.ops[k][3]
            if self.mode[k] == "inv" and out in em.inv_g:
                em.vjp(k, self.code[k], "inv")
        body = ["K_UNPACK", "KEPT_UNPACK", "SAVED_UNPACK"]
        body += [f"gc{j} = GC[{j}]" for j in range(len(self.carry_in))]
        body += [f"Z{j} = np.zeros({self.vars[v][1]!r}, np.{self.vars[v][2].name})"
                 for j, v in enumerate(self.carry_in)]
        body += [f"GY{n} = GY[{n}]" for n in range(len(self.ys_out)) if ys_present[n]]
        body += em.L
        body.append("for t in range(T - 1, -1, -1):")
        body += ["    " + line for line in (em.B or ["pass"])]
        body += em.P0 + em.P
        body.append(f"return {_tuple(f'gc{j}' for j in range(len(self.carry_in)))}, "
                    f"{_tuple(f'GH{v}' if v in em.stacked_g else 'None' for v in self.x_in)}, "
                    f"{_tuple(f'GI{v}' if v in em.inv_g else 'None' for v in self.outside)}")
        return body

    def _step_names(self):
        """Names the forward loop body assigns (op locals and step vars)."""
        names = {f"v{v}" for v in self.carry_in}
        for k in self.live_ops:
            if self.mode[k] == "step":
                names.add(self._ref(self.ops[k][3], "step"))
                for line in self.code[k][0]:
                    names |= _names(line)[1]
        return names

    def _finish(self, body, name, signature):
        unpack = {"K_UNPACK": f"{_tuple(self.binders)} = K" if self.binders else "pass",
                  "KEPT_UNPACK": f"{_tuple(self.kept)} = KEPT" if self.kept else "pass",
                  "SAVED_UNPACK": f"{_tuple(self._saved_names())} = SAVED" if self._saved_names() else "pass"}
        lines = [f"def {name}({signature}):"] + ["    " + unpack.get(line, line) for line in body]
        src = "\n".join(lines)
        ns = dict(self.ns)
        exec(compile(src, f"<scan {name}>", "exec"), ns)
        fn = ns[name]
        fn.source = src
        return fn

    def _saved_names(self):
        return [f"S_{n}" for n in self.saved] + [f"Q{v}" for v in self.stacked]

    # ------------------------------------------------------------------ forward
    def _forward_source(self, full_backward):
        pre, loop = [], []
        for k in self.live_ops:
            fwd, out_expr = self.code[k][0], self.code[k][1]
            mode, out = self.mode[k], self.ops[k][3]
            target = {"inv": f"I{out}", "hoist": f"H{out}", "step": self._ref(out, "step")}[mode]
            lines = fwd + ([] if target == out_expr else [f"{target} = {out_expr}"])
            (loop if mode == "step" else pre).extend(lines)
        # what the backward reads from before the loop is kept; what it restores per step, saved
        defined = set().union(*(_names(line)[1] for line in pre)) if pre else set()
        defined |= {f"H{v}" for v in self.x_in} | {f"I{v}" for v in self.outside}
        self.kept = sorted(defined & _names("\n".join(full_backward).replace("_UNPACK", "_X"))[0])
        for name in self.saved:
            pre += [f"S_{name} = []", f"S_{name}a = S_{name}.append"]
        for v in self.stacked:
            pre += [f"Q{v} = []", f"Q{v}a = Q{v}.append"]
        for n in range(len(self.ys_out)):
            pre += [f"Y{n} = []", f"Y{n}a = Y{n}.append"]
        carry_next = [self._ref(v, "step") for v in self.carry_out]
        ys_refs = [self._ref(v, "step") for v in self.ys_out]
        uses = _names("\n".join(loop + carry_next + ys_refs))[0] if loop or carry_next or ys_refs else set()
        loop = [f"{n} = H{n[1:]}[t]" for n in sorted(uses) if n[0] == "h" and n[1:].isdigit()] + loop
        loop += [f"Q{v}a(v{v})" for v in self.stacked]
        loop += [f"S_{name}a({name})" for name in self.saved]
        loop += [f"Y{n}a({ref})" for n, ref in enumerate(ys_refs)]
        if self.carry_in:
            loop.append(f"{', '.join(f'v{v}' for v in self.carry_in)} = {', '.join(carry_next)}")
        placed = self._place_ys(loop, ys_refs)
        ys_return = {n: f"Y{n}" for n in placed}
        for n in placed:
            shape, dtype = self.vars[self.ys_out[n]][1], self.vars[self.ys_out[n]][2]
            alloc = f"Y{n} = np.empty((T,) + {shape!r}, np.{dtype.name})"
            carry = [j for j, ref in enumerate(carry_next) if ref == ys_refs[n]]
            if carry:   # y_t is the next carry: row 0 holds init, so every carry value is a row of Y
                j = carry[0]
                alloc = (f"Y{n} = np.empty((T + 1,) + {shape!r}, np.{dtype.name}); Y{n}[0] = INIT[{j}]; "
                         f"v{self.carry_in[j]} = Y{n}[0]")
                loop = [b.replace(f"= Y{n}[t];", f"= Y{n}[t + 1];") for b in loop]
                ys_return[n] = f"Y{n}[1:]"
            pre = [alloc if b == f"Y{n} = []" else b for b in pre if b != f"Y{n}a = Y{n}.append"]
            loop.remove(f"Y{n}a({ys_refs[n]})")
        pre = self._reuse_dead(pre)
        loop = self._reuse_dead(loop, loop=True, before=pre)
        body = ["K_UNPACK"]
        body += [f"I{v} = OUT[{j}]" for j, v in enumerate(self.outside)]
        body += [f"H{v} = XS[{j}]" for j, v in enumerate(self.x_in)]
        body += [f"v{v} = INIT[{j}]" for j, v in enumerate(self.carry_in)]
        body += pre
        body.append("for t in range(T):")
        body += ["    " + line for line in (loop or ["pass"])]
        body.append(f"return {_tuple(f'v{v}.copy()' if placed else f'v{v}' for v in self.carry_in)}, "
                    f"{_tuple(ys_return.get(n, f'np.stack(Y{n})') for n in range(len(self.ys_out)))}, "
                    f"{_tuple(self.kept)}, {_tuple(self._saved_names())}")
        used = _names("\n".join(body + full_backward).replace("_UNPACK", "_X"))[0]
        self.binders = {n: g for n, g in self.binders.items() if n in used}     # folded ones are not
        self.forward = self._finish(body, "forward", "K, OUT, XS, INIT, T")
        self.backwards[(tuple(True for _ in self.ys_out), True)] = self._finish(full_backward, "backward",
                                                                             "K, KEPT, SAVED, T, GC, GY")

    def _place_ys(self, loop, ys_refs):
        """Write each y_t computed as a fresh ``a <op> b`` straight into its slot of the (T, ...)
        output with ``out=`` (no list, no stack at the end). Returns the ys placed."""
        placed = []
        for n, ref in enumerate(ys_refs):
            v = self.ys_out[n]
            if self.cls[v] != "step" or ys_refs.count(ref) > 1 or v not in self.fresh:
                continue
            for i, line in enumerate(loop):
                target, _, expr = line.partition(" = ")
                if target != ref:
                    continue
                node = ast.parse(expr, mode="eval").body
                if isinstance(node, ast.BinOp) and type(node.op) in _ELEMENTWISE_UFUNC:
                    loop[i] = f"{ref} = Y{n}[t]; {_with_out(node, ref)}"
                    placed.append(n)
                break
        return placed

    def _reuse_dead(self, lines, loop=False, before=()):
        """Write into arrays nothing reads any more, instead of allocating, as hand-written numpy
        does: ``x = a <op> b`` becomes ``np.<op>(a, b, out=a)`` and ``y = np.empty_like(a, dtype=d)``
        becomes ``y = a`` when ``a`` is scratch (an array an op allocated, or in the loop the step's
        slice of a hoisted array nothing else reads), has the right shape and dtype, and neither it
        nor anything sharing its memory is read afterwards (or saved or kept for backward)."""
        names_of = {}                    # var -> its names in these lines
        for v in range(len(self.vars)):
            names_of[v] = {f"v{v}", f"H{v}", f"I{v}", self.name.get(v, f"v{v}"), f"h{v}"}
        scratch = {}                     # name -> var, for names whose array may be overwritten
        for v in self.fresh:
            c = self.cls[v]
            scratch[f"v{v}" if c == "step" else f"H{v}" if c == "hoist" else f"I{v}"] = v
            if c == "step":
                scratch[self.name.get(v, f"v{v}")] = v
        keep = set(self.saved) | set(self.kept) | {f"v{v}" for v in self.carry_in}
        bound = {}                       # names bound to the same array before these lines (x = y)
        for line in before:
            target, _, expr = line.partition(" = ")
            if _ and target.isidentifier() and expr.isidentifier():
                merged = bound.get(target, {target}) | bound.get(expr, {expr})
                for n in merged:
                    bound[n] = merged
        if loop:                         # per-step slices of hoisted arrays read by nothing else
            every = "\n".join(lines)
            for v in self.fresh:
                if (self.cls[v] == "hoist" and not bound.get(f"H{v}", {f"H{v}"}) & keep
                        and every.count(f"H{v}") == 1 and len(self.sharing.get(v, {v})) == 1):
                    scratch[f"h{v}"] = v
        out = list(lines)
        group = {}                       # a name -> every name bound to the same array

        def merge(a, b):
            merged = group.get(a, {a}) | group.get(b, {b})
            for n in merged:
                group[n] = merged

        def dead_after(i, name, v):
            names = set(group.get(name, {name}))
            for m in self.sharing.get(v, {v}):
                names |= names_of[m]
            return not (names & keep) and not any(names & _names(later)[0] for later in out[i + 1:])

        for line in out:                 # values placed in an output buffer are not scratch
            if "; " in line:
                scratch.pop(line.partition(" = ")[0], None)
        for i, line in enumerate(out):
            target, _, expr = line.partition(" = ")
            if not _ or not target.isidentifier() or "; " in line:
                continue
            if expr.isidentifier():
                merge(target, expr)
                continue
            node = ast.parse(expr, mode="eval").body
            new = _fresh_out(node)             # y = np.<ufunc>(..., out=np.empty_like(a, dtype=d))
            if new is not None:
                name, dtype_name = new
                v = next((scratch[n] for n in group.get(name, {name}) if n in scratch), None)
                dtype = self.ns.get(dtype_name)
                if v is not None and dtype == self.vars[v][2] and dead_after(i, name, v):
                    out[i] = line.replace(f"np.empty_like({name}, dtype={dtype_name})", name)
                    merge(target, name)
                continue
            if not (re.fullmatch(r"[vHI]\d+", target) and isinstance(node, ast.BinOp)
                    and type(node.op) in _ELEMENTWISE_UFUNC):
                continue
            result = self.vars[int(target[1:])]
            sides = [s.id for s in (node.left, node.right) if isinstance(s, ast.Name)]
            for name in sorted(sides, key=lambda n: n[0] != "h"):     # a hoisted slice first: no step alloc
                v = scratch.get(name)
                if (v is None or self.vars[v][1] != result[1] or self.vars[v][2] != result[2]
                        or (target[0] == "v" and self.cls[v] == "inv") or not dead_after(i, name, v)):
                    continue
                out[i] = f"{target} = {_with_out(node, name)}"
                merge(target, name)
                break
        return out

    def backward(self, ys_present, consume):
        key = (ys_present, consume)
        fn = self.backwards.get(key)
        if fn is None:
            saved, stacked = list(self.saved), list(self.stacked)
            body = self._backward_source(ys_present, consume)
            # a pattern with fewer output gradients reads a subset of what the forward saved
            assert set(self.saved) <= set(saved) and set(self.stacked) <= set(stacked)
            self.saved, self.stacked = saved, stacked
            fn = self.backwards[key] = self._finish(body, "backward", "K, KEPT, SAVED, T, GC, GY")
        return fn

    def bind(self, tr):
        return tuple(get(tr) for get in self.binders.values())


class _Emitter:
    """Writes the reverse pass: L before the loop, B the loop body (one step, t descending), P
    after it. Tracks, per step, which gradients exist and which the loop owns (fresh arrays it
    may add into in place) and, for gradients built from slices, whether the slices cover the
    whole buffer (then it need not be zeroed)."""

    def __init__(self, prog, consume=True):
        self.p, self.consuming = prog, consume
        self.L, self.B, self.P, self.P0 = [], [], [], []     # P0: right after the loop, before P
        self.assigned, self.owned = set(), set()
        self.stacked_g, self.owned_stacked, self.inv_g = set(), set(), set()
        self.defer_lists = []
        self.pending = {}          # var -> slices of its gradient not yet written (see consume)
        self.alias = {}            # var -> the var whose gradient array its gradient is (G6 = G9)
        self.created = {}          # var -> line of B that computes its gradient as a fresh a <op> b
        self.stacks = {}           # var -> name of the (T, ...) buffer its per-step gradients go to
        self.buffers = {}          # var -> allocation of a slice-built gradient, maybe reusable

    def add(self, r, expr, ctx, fresh, op=None):
        """Add the gradient ``expr`` into var r's gradient."""
        p = self.p
        shape, dtype = p.vars[r][1], p.vars[r][2]
        c = p.cls[r]
        if c == "inv" and ctx == "step" and p.recording and p.vars[r][0] == "outside":
            self._inv(r, ctx)
            self.B += [f"_c = _ub({expr}, {shape!r})", f"GI{r} += _c", f"_report({r}, t, _c, {op!r})"]
        elif c == "inv":
            self._inv(r, ctx)
            self.B.append(f"GI{r} += _ub({expr}, {shape!r})") if ctx == "step" else \
                self.P.append(f"GI{r} += _ub({expr}, {shape!r})")
        elif ctx == "step":
            if r not in self.assigned:
                self.assigned.add(r)
                if re.fullmatch(r"G\d+", expr):
                    self.alias[r] = self.alias.get(int(expr[1:]), int(expr[1:]))
                elif fresh:
                    self.created[r] = len(self.B)
                self.B.append(f"G{r} = {expr}")
                if fresh:
                    self.owned.add(r)
            elif r in self.owned:
                self.B.append(f"G{r} += {expr}")
            else:
                self.B.append(f"G{r} = G{r} + {expr}")
                self.owned.add(r)
                self.alias.pop(r, None)
        else:
            full = f"(T,) + {shape!r}"
            if r not in self.stacked_g:
                self.stacked_g.add(r)
                self.P.append(f"GH{r} = _cast(_ub({expr}, {full}), np.{dtype.name})")
            elif r in self.owned_stacked:
                self.P.append(f"GH{r} += _ub({expr}, {full})")
            else:
                self.P.append(f"GH{r} = GH{r} + _ub({expr}, {full})")
                self.owned_stacked.add(r)

    def add_indexed(self, r, index_src, index_value, g_src, ctx, op=None):
        """Add a gradient that is ``g`` at ``index`` and zero elsewhere, in place."""
        p = self.p
        shape, dtype = p.vars[r][1], p.vars[r][2]
        c = p.cls[r]
        if c == "inv" and ctx == "step" and p.recording and p.vars[r][0] == "outside":
            self._inv(r, ctx)
            self.B += [f"GI{r}[{index_src}] += {g_src}", f"_report({r}, t, {g_src}, {op!r}, {index_src}, GI{r})"]
        elif c == "inv":
            self._inv(r, ctx)
            (self.B if ctx == "step" else self.P).append(f"GI{r}[{index_src}] += {g_src}")
        elif ctx == "step":
            # Held back until the gradient is read, so full-size contributions land first and
            # the slices are added into their result instead of into a zeroed buffer.
            self.pending.setdefault(r, []).append((index_src, index_value, g_src))
        else:
            if r not in self.stacked_g:
                self.stacked_g.add(r)
                self.owned_stacked.add(r)
                self.P.append(f"GH{r} = np.zeros((T,) + {shape!r}, np.{dtype.name})")
            elif r not in self.owned_stacked:
                self.P.append(f"GH{r} = np.array(GH{r})")
                self.owned_stacked.add(r)
            self.P.append(f"GH{r}[{index_src}] += {g_src}")

    def _inv(self, r, ctx):
        """Allocate invariant var r's gradient: before the loop if a step adds to it, else just
        before the first addition after the loop (all step contributions are emitted first), so
        it does not sit in memory through the loop."""
        if r not in self.inv_g:
            self.inv_g.add(r)
            shape, dtype = self.p.vars[r][1], self.p.vars[r][2]
            (self.L if ctx == "step" else self.P).append(f"GI{r} = np.zeros({shape!r}, np.{dtype.name})")

    def has(self, r):
        """Does var r have a gradient in this step (so far)?"""
        return r in self.assigned or r in self.pending

    def consume(self, r):
        """Var r's gradient is complete and about to be read: write its held-back slices."""
        writes = self.pending.pop(r, None)
        if not writes:
            return
        shape, dtype = self.p.vars[r][1], self.p.vars[r][2]
        if r in self.assigned:
            if r not in self.owned:
                self.B.append(f"G{r} = np.array(G{r})")
                self.owned.add(r)
            self.B += [f"G{r}[{src}] += {g}" for src, _, g in writes]
            return
        self.assigned.add(r)
        self.owned.add(r)
        covered = np.zeros(shape, bool)
        lines, overlap = [], False
        for src, value, g in writes:
            first = not covered[value].any()
            overlap = overlap or not first
            covered[value] = True
            lines.append(f"G{r}[{src}] {'=' if first else '+='} {g}")
        if covered.all() and not overlap:
            self.B.append(f"G{r} = np.empty({shape!r}, np.{dtype.name})")
        elif not overlap:           # the same zeros may serve every step if nothing keeps G{r}
            self.B.append(f"G{r} = @BUF{r}@")
            self.buffers[r] = f"np.zeros({shape!r}, np.{dtype.name})"
        else:
            self.B.append(f"G{r} = np.zeros({shape!r}, np.{dtype.name})")
        self.B += lines

    def stack(self, r):
        """The name of a (T, ...) buffer holding var r's gradient at every step (r's gradient is
        complete here). Aliases share one buffer; a gradient computed fresh as ``a <op> b`` is
        written into its slot directly (``out=``), otherwise it is copied there."""
        root = self.alias.get(r, r)
        if root not in self.stacks:
            shape, dtype = self.p.vars[root][1], self.p.vars[root][2]
            self.stacks[root] = f"SB{root}"
            self.L.append(f"SB{root} = np.empty((T,) + {shape!r}, np.{dtype.name})")
            self.B.append(f"@STACK{root}@")
        return self.stacks[root]

    def _place_stacks(self):
        for root, name in self.stacks.items():
            line = self.created.get(root)
            node = ast.parse(self.B[line].split(" = ", 1)[1], mode="eval").body if line is not None else None
            if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_UFUNC:
                into = self._dying_saved(root, line, node)
                if into is not None:        # the step's gradient takes the place of a value that dies here
                    self.B[line] = f"G{root} = {into}; {_with_out(node, f'G{root}')}; SL{root}.append(G{root})"
                    self.L = [f"SL{root} = []" if b.startswith(f"{name} = np.empty(") else b for b in self.L]
                    self.P0.append(f"{name} = _stack_steps(SL{root}[::-1])")
                else:
                    self.B[line] = f"G{root} = {name}[t]; {_with_out(node, f'G{root}')}"
                copy = "pass"
            else:
                copy = f"{name}[t] = G{root}"
            self.B = [copy if b == f"@STACK{root}@" else b for b in self.B]     # same length: indices hold
        self.B = [b for b in self.B if b != "pass"]

    def _dying_saved(self, root, line, node):
        """A value saved by the forward and restored this step that ``node`` reads and nothing reads
        after it (nor anything sharing its memory): its buffer may receive root's gradient. Only
        when the backward consumes what the forward saved (no retain_graph), never a carry."""
        p = self.p
        if not self.consuming:
            return None
        step_names = p._step_names()
        var_of = {p._ref(v, "step"): v for v in p.cls if p.cls[v] == "step"}
        # carries flow into the next step; ys may be rows of the output the caller holds
        carried = {f"v{v}" for v in p.carry_in} | {p._ref(m, "step") for v in (*p.carry_out, *p.ys_out)
                                                     for m in p.sharing.get(v, {v}) if p.cls.get(m) == "step"}
        later = set().union(*(_names(b)[0] for b in self.B[line + 1:] if not b.startswith("@")))
        for n in ast.walk(node):
            name = n.id if isinstance(n, ast.Name) else None
            v = var_of.get(name)
            if (v is None or name not in step_names or name in carried or v not in p.fresh
                    or p.vars[v][1] != p.vars[root][1] or p.vars[v][2] != p.vars[root][2]):
                continue
            names = {p._ref(m, "step") for m in p.sharing.get(v, {v}) if p.cls.get(m) == "step"} | {name}
            if not names & later and not names & carried:
                return name
        return None

    def finish_allocations(self):
        """A slice-built gradient only read by arithmetic in its step reuses one zeroed buffer:
        its unwritten part stays zero and its written part is overwritten every step."""
        self._place_stacks()
        escaping = set()
        for line in self.B:
            tree = ast.parse(re.sub(r"@BUF(\d+)@", r"BUF_\1", line))
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    child._parent = node
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id[:1] == "G":
                    parent = getattr(node, "_parent", None)
                    if not (isinstance(parent, (ast.BinOp, ast.UnaryOp))
                            or (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store))
                            or (isinstance(parent, ast.Call) and node in parent.args
                                and ast.unparse(parent.func) in _ARITHMETIC)):
                        escaping.add(node.id)
        for i, line in enumerate(self.B):
            if "@BUF" in line:
                r = int(line.split("@BUF")[1].split("@")[0])
                if f"G{r}" in escaping:
                    self.B[i] = line.replace(f"@BUF{r}@", self.buffers[r])
                else:
                    self.L.append(f"ZB{r} = {self.buffers[r]}")
                    self.B[i] = line.replace(f"@BUF{r}@", f"ZB{r}")

    def vjp(self, k, code, ctx, needs=None):
        """The vjp of op k (its output gradient is complete), adding into its operands' gradients."""
        p = self.p
        prim, refs, kwargs, out = p.ops[k]
        fwd, out_expr, vjp_lines, result, inlined = code
        lines = self.B if ctx == "step" else self.P
        lines.extend(vjp_lines)
        needs = needs or p._needs(k)
        trial = p.trial.get(k)
        if isinstance(result, str):
            lines.append(f"_{k}{ctx[0]}_r = {result}")
            result = [f"_{k}{ctx[0]}_r[{i}]" for i in range(len(refs))]
        for i, (r, expr) in enumerate(zip(refs, result)):
            if expr is None or not isinstance(r, int) or not needs[i] or not p.vars[r][3]:
                continue
            info = trial[i] if trial is not None else ("unknown",)
            if ctx == "step" and info is None:
                continue
            dense = _outer(expr, p.ns)                     # OuterGrad(a, g) -> a.T @ g, fresh
            if dense != expr:
                expr, info = dense, (p.vars[r][1], p.vars[r][2], True)
            index = _indexed(expr, p.ns)
            if index is not None:
                value = kwargs["index"] if ctx == "step" else _batched_index(kwargs["index"])
                self.add_indexed(r, index[0], value, index[1], ctx, prim.name)
                continue
            if info in ("indexed", "outer", ("unknown",)):      # not inlined: check at run time
                lines.append(f"_gi = {expr}")
                lines.append(f"if _gi.__class__ is _IndexedGrad: _gi = _gi.dense({p.vars[r][1]!r}, "
                             f"np.{p.vars[r][2].name})")
                lines.append("if _gi.__class__ is _OuterGrad: _gi = _gi.dense()")
                p.ns["_IndexedGrad"], p.ns["_OuterGrad"] = IndexedGrad, OuterGrad
                expr, info = "_gi", None
            fresh = False
            if ctx == "step" and p.cls[r] != "inv":
                shape, dtype = p.vars[r][1], p.vars[r][2]
                if info is None or info[0] != shape:
                    expr = f"_ub({expr}, {shape!r})"
                if info is None or info[1] != dtype:
                    expr = f"_cast({expr}, np.{dtype.name})"
                fresh = info is not None and info[2]
            self.add(r, expr, ctx, fresh, prim.name)


def _fresh_out(node):
    """(a, d) if ``node`` is a numpy ufunc call whose ``out=`` is ``np.empty_like(a, dtype=d)``
    (a name, and a named dtype): a new buffer that may be ``a`` itself when ``a`` is dead."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(getattr(np, node.func.attr, None), np.ufunc)):
        return None
    outs = [k.value for k in node.keywords if k.arg == "out"]
    alloc = outs[0] if outs else None
    if (isinstance(alloc, ast.Call) and ast.unparse(alloc.func) == "np.empty_like" and len(alloc.args) == 1
            and isinstance(alloc.args[0], ast.Name) and [k.arg for k in alloc.keywords] == ["dtype"]
            and isinstance(alloc.keywords[0].value, ast.Name)):
        return alloc.args[0].id, alloc.keywords[0].value.id
    return None


# the binary operators a generated line may rewrite as a ufunc call with out=
_ELEMENTWISE_UFUNC = {ast.Add: "np.add", ast.Sub: "np.subtract", ast.Mult: "np.multiply", ast.Div: "np.true_divide"}
_BINARY_UFUNC = {**_ELEMENTWISE_UFUNC, ast.MatMult: "np.matmul"}
_ARITHMETIC = set(_BINARY_UFUNC.values())       # calls whose results are fresh


def _with_out(node, out):
    """The source of the BinOp ``node`` (an operator in ``_BINARY_UFUNC``) as a ufunc writing into ``out``."""
    return f"{_BINARY_UFUNC[type(node.op)]}({ast.unparse(node.left)}, {ast.unparse(node.right)}, out={out})"


def _lazy_args(expr, ns, cls):
    """The source of ``a`` and ``b`` if ``expr`` is ``cls(a, b)`` (IndexedGrad, OuterGrad), else None."""
    if cls.__name__ not in expr:
        return None
    node = ast.parse(expr, mode="eval").body
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and ns.get(node.func.id) is cls
            and len(node.args) == 2 and not node.keywords):
        return ast.unparse(node.args[0]), ast.unparse(node.args[1])
    return None


def _outer(expr, ns):
    """``a.T @ g`` for ``OuterGrad(a, g)`` (a deferred weight gradient, multiplied out here)."""
    args = _lazy_args(expr, ns, OuterGrad)
    return expr if args is None else f"{args[0]}.T @ {args[1]}"


def _indexed(expr, ns):
    """(index source, gradient source) if ``expr`` is ``IndexedGrad(index, g)``, else None."""
    return _lazy_args(expr, ns, IndexedGrad)


def _stack_steps(arrays):
    """np.stack(arrays), without a copy when they are evenly spaced rows of one array (what the
    forward saved as rows of a hoisted or output buffer, then overwritten with the step's gradient;
    a hoisted buffer of a batch-major input is a time-major view, its rows strided).

    Rows of one base reach here in step order or as the same row every step: a traced body cannot
    choose a row by the step index, only the generated code slices by t. So checking the base,
    shapes and strides of all of them and the addresses of the first, second and last suffices
    (an address costs ~1 us to read; T of them would cost more than the copy at small sizes)."""
    first, n = arrays[0], len(arrays)
    base = first.base
    if n > 1 and base is not None:
        shape, strides = first.shape, first.strides
        if all(a.base is base and a.shape == shape and a.strides == strides for a in arrays):
            start = first.ctypes.data
            step = arrays[1].ctypes.data - start
            if arrays[-1].ctypes.data == start + (n - 1) * step and _disjoint((n,) + shape, (step,) + strides):
                return np.lib.stride_tricks.as_strided(first, (n,) + shape, (step,) + strides)
    return np.stack(arrays)


def _disjoint(shape, strides):
    """Whether a strided layout gives every element its own address: taken by increasing
    stride, each axis steps past the whole extent of the ones before it. (Rows of a time-major
    view of a batch-major buffer pass, as do consecutive rows of a contiguous one.)"""
    reach = 0
    for stride, n in sorted(zip(strides, shape)):
        if n == 1:
            continue
        if stride <= reach:
            return False
        reach = stride * (n - 1) + reach
    return True


def _names(src):
    """(names loaded, names stored) in a piece of source."""
    loads, stores = set(), set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
    return loads, stores


def _tuple(names):
    names = list(names)
    return f"({', '.join(names)}{',' if names else ''})"


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
    equals the plain Python loop above, forward and backward, which is how it is tested, with one
    documented difference: a random draw inside the body (``Dropout``) is made once per call, when
    the body is traced, and the same mask serves every step (as Keras's recurrent dropout does).
    """
    return _scan(fn, init, xs, length)


class TraceMemo:
    """The last trace of a caller whose body reads nothing but what it names: the recurrent
    layers, whose body reads the cell function and the layer's parameters. Passed to ``_scan``
    with those (``statics`` compared by value, ``reads`` by identity, and their shapes, dtypes and
    requires_grad), it lets a call with the same ones and the same input structure reuse the
    compiled program and the trace's bindings instead of tracing again (~50 us at tiny size,
    ~0.2 ms at medium). Anything else, a rebinding of a parameter included, traces afresh.
    ``scan`` itself never uses one: it cannot know what an arbitrary body reads."""

    __slots__ = ("statics", "reads", "entry")

    def __init__(self):
        self.statics, self.reads, self.entry = None, (), None

    def __copy__(self):
        return TraceMemo()          # a copied layer has parameters of its own: it traces afresh

    def __deepcopy__(self, _memo):
        return TraceMemo()

    def get(self, statics, reads):
        if self.entry is not None and statics == self.statics and len(reads) == len(self.reads) \
                and all(a is b for a, b in zip(reads, self.reads)):
            return self.entry
        return None

    def put(self, statics, reads, entry):
        self.statics, self.reads, self.entry = statics, tuple(reads), entry


def _scan(fn, init, xs, length, memo=None, statics=None, reads=()):
    if active_trace() is not None:
        raise NotImplementedError("scan: a scan inside a scan body is not supported; unroll the inner loop")
    init_flat, carry_struct = _flatten(init, "init")
    if carry_struct is None:
        raise TypeError("scan: init must be a Tensor or a tuple of Tensors")
    xs_flat, xs_struct = _flatten(xs, "xs")
    if not xs_flat and length is None:
        raise ValueError("scan: pass xs (time on axis 0) or length= to say how many steps to run")
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
    entry = None
    if memo is not None:
        statics = (statics, grad_mode, carry_struct, xs_struct,     # a step's shapes: any length will do
                   tuple([(t._data.shape, t._data.dtype, t.requires_grad) for t in (*init_flat, *reads)]),
                   tuple([(t._data.shape[1:], t._data.dtype, t.requires_grad) for t in xs_flat]))
        entry = memo.get(statics, reads)
    if entry is None:
        # A carry needs grad if init does or the body makes it so (it reads a parameter): assume
        # it does, which is right for every recurrent layer and saves a second trace; a carry
        # that turns out not to only costs a gradient nobody reads.
        carry_rg = [grad_mode and t.dtype.kind == "f" for t in init_flat]
        while True:
            tr, carry_out, ys_out, ys_struct, out_rg = _trace(fn, init_flat, xs_flat, xs_struct, carry_struct,
                                                              carry_rg)
            new_rg = [a or b for a, b in zip(carry_rg, out_rg)]
            if new_rg == carry_rg:
                break
            carry_rg = new_rg
        key = _structure(tr, carry_out, ys_out, grad_mode)
        prog = _program(key, tr, carry_out, ys_out)
        # what binding this call's values and a recording backward need: not the trace, whose
        # step-0 arrays would stay alive (the constants it bound are in tr.ops)
        entry = (prog, key, _Ops(tr.ops), carry_out, ys_out, ys_struct, [tr.vars[v][1] for v in prog.outside])
        if memo is not None:
            memo.put(statics, reads, entry)
    prog, key, ops, carry_out, ys_out, ys_struct, outside = entry
    K = prog.bind(ops)
    arrays = ([t._data for t in outside], [x._data for x in xs_flat], [c._data for c in init_flat])
    carry, ys, kept, saved = prog.forward(K, *arrays, T)
    inputs = init_flat + xs_flat + outside
    need = grad_mode and any(t.requires_grad for t in inputs)
    outs = [Tensor(np.asarray(a)) for a in (*carry, *ys)]
    if need:
        _record(prog, K, kept, saved, T, inputs, outs, len(carry), (prog, key, ops, carry_out, ys_out, arrays))
    new_carry = _unflatten(outs[:len(carry)], carry_struct)
    ys_t = _unflatten(outs[len(carry):], ys_struct)
    return new_carry, ys_t


def _program(key, tr, carry_out, ys_out, recording=False, like=None):
    """The compiled program for a trace's structure, from the cache or newly built (from the trace,
    or from ``like``, a program of the same structure)."""
    key = (key, recording)
    prog = _cache.get(key)
    if prog is None:
        prog = _Program(tr, carry_out, ys_out, recording, like)
        _cache[key] = prog
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return prog


def _record(prog, K, kept, saved, T, inputs, outs, n_carry, replay):
    """One graph node for the whole loop: a hub holding the inputs and the backward, and each
    output a thin node that hands its gradient to the hub."""
    box = [None] * len(outs)
    carry_like = [(t._data.shape, t._data.dtype) for t in outs[:n_carry]]   # not the outputs: they own their data

    def hub_vjp(_):
        gc = [box[j] if box[j] is not None else np.zeros(*carry_like[j]) for j in range(n_carry)]
        gy = [box[n_carry + n] for n in range(len(outs) - n_carry)]
        box[:] = [None] * len(box)
        pattern = tuple(g is not None for g in gy)
        recorder = _state.recorder
        if recorder is not None and any(id(t) in recorder.watch for t in inputs):
            grads = _replay_recording(recorder, replay, inputs, T, gc, gy, pattern)
        else:
            g_init, g_xs, g_out = prog.backward(pattern, not _state.retain_graph)(K, kept, saved, T, gc, gy)
            # the outside tensors' gradients are buffers the program allocated (GI = np.zeros)
            grads = (*g_init, *g_xs, *[g if g is None else FreshGrad(g) for g in g_out])
        return grads

    hub_vjp.reports_contributions = True
    from .engine import _epoch, _pin_leaves
    pins = _pin_leaves(inputs) if _state.trace is None else None      # leaves read-only while it lives
    hub = Node([(t._node or t) if t.requires_grad else None for t in inputs], hub_vjp, "scan", _epoch[0],
               _state.step, (0,), np.dtype(np.float64), pins)
    empty = np.empty(0)
    for n, t in enumerate(outs):
        def take(g, n=n):
            box[n] = g if box[n] is None else box[n] + g
            return (empty,)
        t.requires_grad = True
        t._node = Node((hub,), take, "scan.output", hub._epoch, hub._step, t._data.shape, t._data.dtype)


def _replay_recording(recorder, replay, inputs, T, gc, gy, pattern):
    """Backward through a scan while contributions are being recorded: rerun the loop compiled
    step by step (no hoisting, no deferred products), reporting each step's share of every
    outside tensor's gradient. The gradients returned are the same."""
    main, key, ops, carry_out, ys_out, arrays = replay
    prog = _program(key, None, carry_out, ys_out, recording=True, like=main)
    K = prog.bind(ops)
    _, _, kept, saved = prog.forward(K, *arrays, T)
    found = []
    _state.scan_contributions = found
    try:
        g_init, g_xs, g_out = prog.backward(pattern, True)(K, kept, saved, T, gc, gy)
    finally:
        _state.scan_contributions = None
    tensor_of = {v: t for v, t in zip(prog.outside, inputs[len(inputs) - len(prog.outside):])}
    for v, t, grad, op in found:
        if id(tensor_of[v]) in recorder.watch:
            recorder.add(tensor_of[v], op, t, grad)
    n_init = len(g_init)
    for i, g in enumerate((*g_init, *g_xs)):
        x = inputs[i]
        if g is not None and id(x) in recorder.watch:
            recorder.add(x, "scan", None if i < n_init else "all", g)
    return (*g_init, *g_xs, *g_out)


class _Ops:
    """A trace's ops without its vars: all that binding a program's per-call values reads."""
    __slots__ = ("ops",)

    def __init__(self, ops):
        self.ops = ops


def _report(v, t, grad, op, index=None, like=None):
    """Called by recording programs for every per-step contribution to an outside tensor."""
    if index is not None:
        grad = IndexedGrad(index, grad).dense(like.shape, like.dtype)
    _state.scan_contributions.append((v, t, np.array(grad), op))
