"""Buffer reuse in generated code: write an elementwise result into an array nothing reads any more.

Hand-written numpy BPTT allocates almost nothing per step: ``np.add(a, b, out=a)`` where ``a``
is scratch. ``reuse`` does the same to a block of generated statements (a loop body, or what
runs before or after the loop), from two facts the code generator knows and one it computes:

* ``info``: the shape and dtype of every variable-level name (those are the only candidates);
* ``owned``: the names whose buffer the block may overwrite once dead (arrays the block itself
  allocated, and rows of stacked arrays nothing else needs); anything computed from an array
  the block did not make (a name with no group that is not ``neutral``: a function, a static
  value) may be that array, and is never overwritten;
* liveness: a buffer is dead after a statement when none of the names that may share its memory
  (views: anything computed from it by other than an allocating expression) is read later, or
  escapes the block (``live_out``).

Then ``t = a <op> b`` and ``t = np.<ufunc>(...)`` (with no ``out=``, or ``out=np.empty(...)``)
become ``np.<ufunc>(..., out=c)`` for a dead owned ``c`` of the result's shape and dtype, and
``t`` shares ``c``'s buffer from then on. Elementwise ufuncs allow ``out`` to be an input.
"""
from __future__ import annotations

import ast

import numpy as np

__all__ = ["reuse", "flatten", "with_out", "Groups", "names_in"]

# elements: below this a new array is as cheap as reusing one (numpy keeps small allocations in a
# cache), and ``np.<ufunc>(a, b, out=c)`` costs a keyword call where ``a * b`` costs none
MIN_ELEMENTS = 1024

_UFUNC_OF = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "true_divide"}
_ALLOC = {"empty", "empty_like", "zeros", "zeros_like"}
_VIEWS = {"reshape", "transpose", "swapaxes"}


def names_in(nodes, ctx=None):
    """The ids of the names anywhere in ``nodes`` (a node or a list of them), only those of
    context ``ctx`` (``ast.Load``, ``ast.Store``) if given. ``ast.walk``'s work without its
    generators: it ran for about a third of a small body's compile."""
    found = set()
    stack = list(nodes) if type(nodes) is list else [nodes]
    while stack:
        node = stack.pop()
        if type(node) is ast.Name:
            if ctx is None or isinstance(node.ctx, ctx):
                found.add(node.id)
            continue
        for field in node._fields:
            value = getattr(node, field, None)
            if type(value) is list:
                for v in value:
                    if isinstance(v, ast.AST):
                        stack.append(v)
            elif isinstance(value, ast.AST) and field != "ctx":
                stack.append(value)
    return found


def _loads(node):
    return names_in(node, ast.Load)


def _np_call(expr, names=None):
    """The numpy function name if ``expr`` is ``np.<name>(...)`` (and <name> is in ``names``)."""
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and isinstance(expr.func.value, ast.Name)
            and expr.func.value.id == "np" and (names is None or expr.func.attr in names)):
        return expr.func.attr
    return None


def _is_ufunc_call(expr):
    name = _np_call(expr)
    return name is not None and isinstance(getattr(np, name, None), np.ufunc) and getattr(np, name).nout == 1


def allocates(expr):
    """Does ``expr`` return a new array that no other name refers to?"""
    if isinstance(expr, ast.BinOp):
        return True
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in _VIEWS
            and allocates(expr.func.value)):
        return True                        # a view of a temporary: nothing else holds that memory
    if _np_call(expr, _ALLOC):
        return True
    if _is_ufunc_call(expr):
        out = [k.value for k in expr.keywords if k.arg == "out"]
        return not out or _np_call(out[0], _ALLOC) is not None
    return False


class Groups:
    """Which names may share memory (a group per buffer) and which buffers may be overwritten."""

    def __init__(self):
        self.of = {}           # name -> group id
        self.members = {}      # group id -> set of names
        self.owned = set()     # group ids
        self._next = 0

    def new(self, name, owned):
        self.detach(name)
        g = self._next
        self._next += 1
        self.of[name], self.members[g] = g, {name}
        if owned:
            self.owned.add(g)
        return g

    def detach(self, name):
        g = self.of.pop(name, None)
        if g is not None:
            self.members[g].discard(name)

    def join(self, name, g):
        self.detach(name)
        self.of[name] = g
        self.members[g].add(name)

    def alias(self, name, sources, neutral=frozenset()):
        """``name`` may view any of ``sources``' buffers: one group, owned only if all were, and
        none of them is an array from outside the block (a name with no group, not ``neutral``)."""
        gs = {self.of[s] for s in sources if s in self.of}
        outside = any(s not in self.of and s not in neutral for s in sources)
        self.detach(name)
        if not gs:
            return self.new(name, False)
        if outside:
            for g in gs:
                self.owned.discard(g)
        keep = min(gs)
        for g in gs - {keep}:
            for n in self.members.pop(g):
                self.of[n] = keep
                self.members[keep].add(n)
            if g not in self.owned:
                self.owned.discard(keep)
            self.owned.discard(g)
        self.join(name, keep)
        return keep


def reuse(stmts, info, live_out, prefer=(), groups=None, pinned=(), neutral=frozenset()):
    """Rewrite ``stmts`` (a list of ast statements, changed in place and returned) to reuse dead
    buffers; returns (stmts, groups). ``groups``: the groups names enter with; a ``pinned`` name
    keeps its entry group when the block binds it (a row of a stacked array, a restored value)."""
    groups = groups or Groups()
    prefer = set(prefer)
    last = {}
    for i, st in enumerate(stmts):
        for name in _loads(st):
            last[name] = i
    for name in live_out:
        last[name] = len(stmts) + 1

    def dead_after(g, i):
        return all(last.get(n, -1) <= i for n in groups.members[g])

    for i, st in enumerate(stmts):
        if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
            continue
        target = st.targets[0]
        if not isinstance(target, ast.Name):
            for t in ast.walk(target):
                if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
                    groups.alias(t.id, _loads(st.value), neutral)
            continue
        name, expr = target.id, st.value
        if name in pinned:
            continue
        g = _place(expr, name, i, info, groups, dead_after, prefer)
        if g is not None:
            st.value = g[0]
            groups.join(name, g[1])
        elif allocates(expr):
            groups.new(name, True)
        else:
            groups.alias(name, _loads(expr), neutral)
    return stmts, groups


def _place(expr, name, i, info, groups, dead_after, prefer):
    """(new expression, group) writing ``expr``'s result into a dead owned buffer, or None."""
    want = info.get(name)
    if want is None or want[0] == ():
        return None                        # numpy gives 0-d results as scalars: no buffer to write
    if isinstance(expr, ast.BinOp) and type(expr.op) in _UFUNC_OF:
        if _small(want[0]):
            return None
        args = [expr.left, expr.right]
    elif _is_ufunc_call(expr):
        out = [k.value for k in expr.keywords if k.arg == "out"]
        if out and _np_call(out[0], _ALLOC) is None:
            return None
        if not out and _small(want[0]):      # an explicit allocation is worth replacing at any size
            return None
        args = list(expr.args)
    else:
        return None
    names = [a.id for a in args if isinstance(a, ast.Name)]
    names.sort(key=lambda n: not (groups.members.get(groups.of.get(n), set()) & prefer))
    for c in names:
        g = groups.of.get(c)
        if g is None or g not in groups.owned or info.get(c) != want or not dead_after(g, i):
            continue
        return with_out(expr, ast.Name(c, ast.Load())), g
    return None


def with_out(expr, out):
    """``expr`` (arithmetic, or a ufunc call) as a ufunc call writing into ``out``."""
    if isinstance(expr, ast.BinOp):
        func, args, keywords = ast.Attribute(ast.Name("np", ast.Load()), _UFUNC_OF[type(expr.op)], ast.Load()), \
            [expr.left, expr.right], []
    else:
        func, args, keywords = expr.func, list(expr.args), [k for k in expr.keywords if k.arg != "out"]
    return ast.Call(func, args, keywords + [ast.keyword("out", out)])


def _small(shape):
    return "n" not in shape and int(np.prod(shape)) < MIN_ELEMENTS


def _infer(expr, info):
    """(shape, dtype) of an arithmetic expression over names of known info and number literals,
    or None. A number literal is weakly typed, as numpy treats Python scalars."""
    if isinstance(expr, ast.Name):
        return info.get(expr.id)
    if isinstance(expr, ast.Constant) and isinstance(expr.value, (int, float)) and not isinstance(expr.value, bool):
        return ((), expr.value)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        return _infer(expr.operand, info)
    if isinstance(expr, ast.BinOp) and type(expr.op) in _UFUNC_OF:
        a, b = _infer(expr.left, info), _infer(expr.right, info)
        if a is None or b is None or "n" in a[0] or "n" in b[0]:
            return None
        try:
            shape = np.broadcast_shapes(a[0], b[0])
            dtype = np.result_type(a[1], b[1])
        except (ValueError, TypeError):
            return None
        return tuple(shape), dtype
    return None


def flatten(stmts, info, prefix="_t"):
    """Split nested arithmetic into one operation per statement (``t = a * (b - c * c)`` becomes
    three), naming each intermediate whose shape and dtype are known, so ``reuse`` can place
    each one. Returns the new statement list; ``info`` gains the intermediates."""
    out, count = [], [0]

    def lift(expr):
        if isinstance(expr, ast.BinOp) and type(expr.op) in _UFUNC_OF:
            expr.left, expr.right = lift(expr.left), lift(expr.right)
            known = _infer(expr, info)
            if known is not None and isinstance(known[1], np.dtype) and not _small(known[0]):
                name = f"{prefix}{count[0]}"
                count[0] += 1
                info[name] = known
                out.append(ast.Assign([ast.Name(name, ast.Store())], expr))
                return ast.Name(name, ast.Load())
        return expr

    for st in stmts:
        if (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)
                and isinstance(st.value, ast.BinOp) and type(st.value.op) in _UFUNC_OF):
            st.value.left, st.value.right = lift(st.value.left), lift(st.value.right)
        out.append(st)
    return out
