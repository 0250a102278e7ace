"""Inline a primitive's own source into generated code.

``scan``'s loop compiler does not replay primitives one call at a time: it pastes each
primitive's forward statements and vjp expressions, renamed, into one straight-line loop
body. This module takes a primitive written in the library's shape

    def op(x, *, static=...):
        ...statements...
        return out, lambda g: (grad_x,)        # or a nested ``def vjp(g): ...; return (...)``

renames its locals apart, binds its parameters, folds what is known at compile time
(static keyword arguments, operand ranks and shapes, ``needs_grad``, pure helpers marked
``@compile_time``) and hands back the pieces as source text.
"""
from __future__ import annotations

import ast
import builtins
import copy
import inspect
import textwrap
import warnings

__all__ = ["compile_time", "NotInlinable", "Source", "source_of"]

_MISSING = object()
try:
    from numpy import ufunc as _ufunc
except ImportError:          # pragma: no cover
    _ufunc = ()


def compile_time(fn):
    """Mark a pure helper of primitives: the loop compiler may call it at compile time when
    all its arguments are known (e.g. whether an index is basic)."""
    fn._compile_time = True
    return fn


class NotInlinable(Exception):
    """The primitive's source is not of the inlinable shape; scan calls it step by step instead."""


_LITERAL_TYPES = (type(None), bool, int, float, str)


def _literal(value):
    """An AST node for ``value`` if it is a plain literal (or tuple of them), else None."""
    if isinstance(value, _LITERAL_TYPES):
        return ast.Constant(value)
    if isinstance(value, tuple):
        elts = [_literal(v) for v in value]
        if all(e is not None for e in elts):
            return ast.Tuple(elts=elts, ctx=ast.Load())
    return None


def _value(node, known, dtypes=None):
    """The compile-time value of ``node``, or _MISSING."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id, _MISSING)
    if isinstance(node, ast.Attribute) and node.attr == "dtype" and isinstance(node.value, ast.Name):
        return (dtypes or {}).get(node.value.id, _MISSING)
    if isinstance(node, ast.Tuple):
        vals = [_value(e, known) for e in node.elts]
        return _MISSING if any(v is _MISSING for v in vals) else tuple(vals)
    return _MISSING


class _Folder(ast.NodeTransformer):
    """Rename names and fold what is known: conditions, ranks, shapes, pure helper calls."""

    def __init__(self, rename, known, shapes, ranks, functions, literal=None, dtypes=None, constant=None):
        self.rename, self.known, self.shapes, self.ranks, self.functions = rename, known, shapes, ranks, functions
        self.literal, self.dtypes, self.constant = literal, dtypes or {}, constant

    def _number(self, node):
        """A numeric literal operand of arithmetic becomes a named 0-d array of the op's dtype:
        a ufunc call with one is about twice as fast as with a Python float."""
        if (self.literal is not None and isinstance(node, ast.Constant)
                and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)):
            return ast.copy_location(ast.Name(id=self.literal(node.value), ctx=ast.Load()), node)
        return node

    def visit_BinOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant):
            return self._fold(node)
        node.left, node.right = self._number(node.left), self._number(node.right)
        return node

    def visit_AugAssign(self, node):
        node = self.generic_visit(node)
        node.value = self._number(node.value)
        return node

    def visit_Name(self, node):
        new = self.rename.get(node.id, node.id)
        if isinstance(node.ctx, ast.Load) and new in self.known:
            lit = _literal(self.known[new])
            if lit is not None:
                return ast.copy_location(lit, node)
        return ast.copy_location(ast.Name(id=new, ctx=node.ctx), node)

    def visit_arg(self, node):
        node.arg = self.rename.get(node.arg, node.arg)
        return node

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and isinstance(node.ctx, ast.Load):
            name = self.rename.get(node.value.id, node.value.id)
            if node.attr == "ndim" and name in self.ranks:
                return ast.copy_location(ast.Constant(self.ranks[name]), node)
            if node.attr == "shape" and name in self.shapes:
                return ast.copy_location(_literal(self.shapes[name]), node)
        return self.generic_visit(node)

    def _fold(self, node):
        """Evaluate a node whose operands are all compile-time literals."""
        try:
            with warnings.catch_warnings():       # e.g. `-0.5 is not None`: fine to evaluate here
                warnings.simplefilter("ignore")
                value = eval(compile(ast.fix_missing_locations(ast.Expression(node)), "<fold>", "eval"),
                             {"__builtins__": {}}, {})
        except Exception:
            return node
        lit = _literal(value)
        return ast.copy_location(lit, node) if lit is not None else node

    def _all_const(self, nodes):
        return all(isinstance(n, ast.Constant) or (isinstance(n, ast.Tuple) and self._all_const(n.elts))
                   for n in nodes)

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        return self._fold(node) if self._all_const([node.left, *node.comparators]) else node

    def visit_BoolOp(self, node):
        node = self.generic_visit(node)
        return self._fold(node) if self._all_const(node.values) else node

    def visit_UnaryOp(self, node):
        node = self.generic_visit(node)
        return self._fold(node) if isinstance(node.operand, ast.Constant) else node

    def visit_Subscript(self, node):
        node = self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and self._all_const([node.value, node.slice]):
            return self._fold(node)
        return node

    def visit_IfExp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        return node

    def visit_Call(self, node):
        fn = self.functions.get(self.rename.get(node.func.id, node.func.id)) if isinstance(node.func, ast.Name) \
            else None
        if getattr(fn, "_compile_time", False):           # fold before .dtype arguments are visited
            renamed = self.rename.get(node.func.id, node.func.id)
            args = [self.visit(a) if not (isinstance(a, ast.Attribute) and a.attr == "dtype") else
                    ast.Attribute(value=self.visit(a.value), attr="dtype", ctx=ast.Load()) for a in node.args]
            vals = [_value(a, self.known, self.dtypes) for a in args]
            if all(v is not _MISSING for v in vals) and not node.keywords:
                value = fn(*vals)
                lit = _literal(value)
                if lit is None and self.constant is not None:       # e.g. a dtype: bound by name
                    lit = ast.Name(id=self.constant(value), ctx=ast.Load())
                    self.known[lit.id] = value                      # and known, for calls around it
                if lit is not None:
                    return ast.copy_location(lit, node)
            node.args = args
            node.func = ast.copy_location(ast.Name(id=renamed, ctx=ast.Load()), node.func)
            return node
        node = self.generic_visit(node)
        if (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                and isinstance(self.functions.get(node.func.value.id), type(ast))      # np.<ufunc>(...)
                and isinstance(getattr(self.functions[node.func.value.id], node.func.attr, None), _ufunc)):
            node.args = [self._number(a) for a in node.args]
        fn = self.functions.get(node.func.id) if isinstance(node.func, ast.Name) else None
        if getattr(fn, "_compile_time", False):
            args = [_value(a, self.known, self.dtypes) for a in node.args]
            kwargs = {k.arg: _value(k.value, self.known, self.dtypes) for k in node.keywords}
            if all(a is not _MISSING for a in args) and all(v is not _MISSING for v in kwargs.values()):
                lit = _literal(fn(*args, **kwargs))
                if lit is not None:
                    return ast.copy_location(lit, node)
        return node


def _fold_block(stmts, folder):
    """Fold a statement list: an ``if`` on a known condition keeps one branch; an assignment of
    a known literal to plain names becomes knowledge instead of code."""
    out = []
    for stmt in stmts:
        if out and isinstance(out[-1], ast.Return):
            break                                  # the rest of the block is unreachable
        if isinstance(stmt, ast.If):
            test = folder.visit(stmt.test)
            if isinstance(test, ast.Constant):
                out.extend(_fold_block(stmt.body if test.value else stmt.orelse, folder))
                continue
            stmt.test = test
            stmt.body = _fold_block(stmt.body, folder) or [ast.Pass()]
            stmt.orelse = _fold_block(stmt.orelse, folder)
            out.append(stmt)
            continue
        if isinstance(stmt, ast.FunctionDef):
            stmt.args.args = [ast.arg(arg=folder.rename.get(a.arg, a.arg)) for a in stmt.args.args]
            stmt.name = folder.rename.get(stmt.name, stmt.name)
            stmt.body = _fold_block(stmt.body, folder)
            out.append(stmt)
            continue
        stmt = folder.visit(stmt)
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and _value(stmt.value, folder.known) is not _MISSING):
            target, value = stmt.targets[0], _value(stmt.value, folder.known)
            names = [target] if isinstance(target, ast.Name) else getattr(target, "elts", None)
            if names and all(isinstance(n, ast.Name) for n in names) and all(
                    folder.single.get(n.id) for n in names):
                vals = [value] if isinstance(target, ast.Name) else list(value)
                if len(vals) == len(names):
                    for n, v in zip(names, vals):
                        folder.known[n.id] = v
                    continue
        out.append(stmt)
    return out


class Source:
    """A primitive's parsed source; ``instantiate`` produces renamed, folded code for one use."""

    def __init__(self, fn):
        try:
            src = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError) as err:
            raise NotInlinable(str(err)) from None
        fdef = ast.parse(src).body[0]
        if not isinstance(fdef, ast.FunctionDef) or fdef.args.posonlyargs or fdef.args.kwarg:
            raise NotInlinable("unsupported signature")
        body = list(fdef.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]                                       # docstring
        for node in ast.walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Global, ast.Nonlocal, ast.ClassDef,
                                 ast.AsyncFunctionDef, ast.Await, ast.Try, ast.With, ast.While, ast.For)):
                raise NotInlinable(f"{type(node).__name__} in body")
        self.fn = fn
        self.body = body
        self.params = [a.arg for a in fdef.args.args]
        self.vararg = fdef.args.vararg.arg if fdef.args.vararg else None
        self.kwonly = [a.arg for a in fdef.args.kwonlyargs]
        self.kwdefaults = dict(fn.__kwdefaults__ or {})
        local = set(self.params) | set(self.kwonly) | ({self.vararg} if self.vararg else set())
        counts = {}
        for node in ast.walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                local.add(node.id)
                counts[node.id] = counts.get(node.id, 0) + 1
            elif isinstance(node, ast.arg):
                local.add(node.arg)
                counts[node.arg] = counts.get(node.arg, 0) + 2     # parameters of lambdas/defs: not constants
            elif isinstance(node, ast.FunctionDef):
                local.add(node.name)
                counts[node.name] = 2
        for p in local & (set(self.params) | set(self.kwonly)):
            counts[p] = counts.get(p, 0) + 1
        self.locals = local
        self.assigned_once = {n for n, c in counts.items() if c == 1}
        self.reassigned = {p for p in self.params if counts.get(p, 0) > 1}
        closure = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
        loads = {n.id for n in ast.walk(ast.Module(body=body, type_ignores=[]))
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        self.outer = {}
        for name in loads - local:
            if name in closure:
                self.outer[name] = closure[name]
            elif name in fn.__globals__:
                self.outer[name] = fn.__globals__[name]
            elif hasattr(builtins, name):
                self.outer[name] = getattr(builtins, name)
            else:
                raise NotInlinable(f"unknown name {name!r}")

    def instantiate(self, prefix, operands, static, namespace, shapes=None, ranks=None, literal=None, g_name=None,
                    dtypes=None, constant=None):
        """Code for one use of the primitive.

        operands: one source expression (a variable name) per positional operand.
        static: keyword argument values (known at compile time; also bound by name at run time
            as ``<prefix>kw_<name>`` by the caller, see ``static_names``).
        namespace: dict of names visible to the generated code; the primitive's globals are
            added to it (renamed if a different object already holds the name).
        shapes / ranks: compile-time shapes and ranks of the operand variables, for folding.
        literal: maps a numeric literal used in arithmetic to the name of a constant (see _number).
        g_name: the name the vjp's cotangent argument should have (default: renamed apart).
        Returns (forward_lines, out_expr, vjp_lines, vjp_result, g_name), vjp_result being a list
        of per-operand expressions (None for no gradient) or a single tuple-valued expression.
        """
        rename = {name: f"{prefix}{name}" for name in self.locals}
        known = {}
        for name in self.kwonly:
            value = static.get(name, self.kwdefaults.get(name, _MISSING))
            if value is _MISSING:
                raise NotInlinable(f"missing keyword {name}")
            known[rename[name]] = value
        functions = {}
        for name, obj in self.outer.items():
            target = name
            n = 0
            while target in namespace and namespace[target] is not obj:
                n += 1
                target = f"{name}_{n}"
            namespace[target] = obj
            rename[name] = target
            functions[target] = obj
        prelude = []
        n_fixed = len(self.params)
        if self.vararg is None and len(operands) != n_fixed:
            raise NotInlinable("operand count")
        for name, expr in zip(self.params, operands[:n_fixed]):
            if name in self.reassigned:
                prelude.append(f"{rename[name]} = {expr}")
            else:
                rename[name] = expr
        if self.vararg is not None:
            prelude.append(f"{rename[self.vararg]} = ({', '.join(operands[n_fixed:])},)")
        folder = _Folder(rename, known, dict(shapes or {}), dict(ranks or {}), functions, literal, dtypes, constant)
        folder.single = {rename.get(n, n): True for n in self.assigned_once}
        body = _fold_block(copy.deepcopy(self.body), folder)
        if not body or not isinstance(body[-1], ast.Return):
            raise NotInlinable("body does not end in a return")
        ret = body[-1].value
        fwd = body[:-1]
        if not isinstance(ret, ast.Tuple) or len(ret.elts) != 2:
            raise NotInlinable("return is not (out, vjp)")
        out_expr, vjp = ret.elts
        if isinstance(vjp, ast.Lambda):
            if len(vjp.args.args) != 1:
                raise NotInlinable("vjp takes one argument")
            g, vjp_stmts, result = vjp.args.args[0].arg, [], vjp.body
        elif isinstance(vjp, ast.Name):
            defs = [s for s in fwd if isinstance(s, ast.FunctionDef) and s.name == vjp.id]
            if len(defs) != 1 or len(defs[0].args.args) != 1 or not isinstance(defs[0].body[-1], ast.Return):
                raise NotInlinable("vjp is not a nested def ending in return")
            fwd = [s for s in fwd if s is not defs[0]]
            g, vjp_stmts, result = defs[0].args.args[0].arg, defs[0].body[:-1], defs[0].body[-1].value
        else:
            raise NotInlinable("vjp is neither a lambda nor a nested def")
        for node in ast.walk(ast.Module(body=fwd + vjp_stmts, type_ignores=[])):
            if isinstance(node, (ast.FunctionDef, ast.Return)):
                raise NotInlinable("nested function or early return")
        if g_name is not None and g_name != g:             # name the cotangent as the caller asks
            swap = _Folder({g: g_name}, {}, {}, {}, {})
            vjp_stmts = [swap.visit(st) for st in vjp_stmts]
            result = swap.visit(result)
            g = g_name
        if isinstance(result, ast.Tuple):
            result = [None if isinstance(e, ast.Constant) and e.value is None else ast.unparse(e)
                      for e in result.elts]
        else:
            result = ast.unparse(result)
        fwd_lines = prelude + [ast.unparse(s) for s in fwd]
        vjp_lines = [ast.unparse(s) for s in vjp_stmts]
        return fwd_lines, ast.unparse(out_expr), vjp_lines, result, g

    def static_names(self, prefix):
        return {name: f"{prefix}{name}" for name in self.kwonly}


_sources = {}


def source_of(fn):
    """The parsed Source of ``fn`` (cached), or raise NotInlinable."""
    src = _sources.get(fn)
    if src is None:
        try:
            src = Source(fn)
        except NotInlinable as err:
            src = err
        _sources[fn] = src
    if isinstance(src, NotInlinable):
        raise src
    return src
