"""Inline a primitive's own source into generated code, as syntax trees.

The numpy code generator does not call primitives one step at a time where it can avoid it:
it places each primitive's forward statements and vjp expressions, renamed, into one
straight-line loop body. This module takes a primitive written in the usual shape

    def op(x, *, static=...):
        ...statements...
        return out, lambda g: (grad_x,)        # or a nested ``def vjp(g): ...; return (...)``

renames its locals apart, binds its parameters, folds what is known at compile time (static
keyword arguments, operand ranks and shapes, ``needs_grad``, pure helpers registered with
``foldable``) and hands back the pieces as ``ast`` nodes. A primitive of any other shape, or
whose source no longer matches the function Python runs (a file edited since import), is
``NotInlinable``: the generator calls it instead.

A primitive is parsed and folded once per set of compile-time facts (``_Template``, kept by its
``Source``, reused while every global it read is still bound to the same object); each use gets
a copy under its own names. The globals a use reads are listed in ``Inlined.reads``, so a
compiled program can check, at every call, that none was rebound since.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import textwrap
import threading
import types
import warnings

import numpy as np

__all__ = ["foldable", "NotInlinable", "Source", "source_of", "copy_tree", "clear_templates"]

_MISSING = object()


_FOLDABLE = set()


def foldable(fn):
    """Register ``fn`` as a pure helper: a call of it whose arguments are all known when code
    is generated is evaluated then (e.g. whether an index is basic)."""
    _FOLDABLE.add(fn)
    return fn


def _is_foldable(fn):
    try:
        return fn in _FOLDABLE
    except TypeError:          # unhashable
        return False


class NotInlinable(Exception):
    """The primitive's source is not of the inlinable shape; scan calls it step by step instead."""


_LITERAL_TYPES = (type(None), bool, int, float, str)


def _literal(value):
    """An AST node for ``value`` if it is a plain literal (or tuple of them), else None."""
    if type(value) in _LITERAL_TYPES:          # exactly: a numpy float64 is a float, but no literal
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

    def __init__(self, rename, known, shapes, ranks, functions, literal=None, dtypes=None, constant=None, bind=None,
                 depth=0):
        self.rename, self.known, self.shapes, self.ranks, self.functions = rename, known, shapes, ranks, functions
        self.literal, self.dtypes, self.constant, self.bind, self.depth = literal, dtypes or {}, constant, bind, depth

    def _number(self, node):
        """A numeric literal operand of arithmetic becomes a named 0-d array of the op's dtype:
        a ufunc call with one is about twice as fast as with a Python float."""
        if (self.literal is not None and isinstance(node, ast.Constant)
                and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)):
            return ast.copy_location(ast.Name(id=self.literal(node.value), ctx=ast.Load()), node)
        return node

    def visit_BinOp(self, node):
        node = self.generic_visit(node)
        if self._all_const([node.left, node.right]):
            return self._fold(node)
        if not any(isinstance(side, (ast.Tuple, ast.List, ast.JoinedStr)) or (
                isinstance(side, ast.Constant) and not isinstance(side.value, (int, float)))
                for side in (node.left, node.right)):     # arithmetic on arrays, not on a tuple
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
        if self._all_const(node.values):
            return self._fold(node)
        stop = isinstance(node.op, ast.Or)          # a known value decides or drops out, left to right
        values = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                if bool(v.value) == stop:
                    return v if not values else ast.copy_location(ast.BoolOp(node.op, values + [v]), node)
                continue
            values.append(v)
        if not values:
            return node
        return values[0] if len(values) == 1 else ast.copy_location(ast.BoolOp(node.op, values), node)

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
        if _is_foldable(fn):           # fold before .dtype arguments are visited
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
                and isinstance(getattr(self.functions[node.func.value.id], node.func.attr, None), np.ufunc)):
            node.args = [self._number(a) for a in node.args]
        fn = self.functions.get(node.func.id) if isinstance(node.func, ast.Name) else None
        if _is_foldable(fn):
            args = [_value(a, self.known, self.dtypes) for a in node.args]
            kwargs = {k.arg: _value(k.value, self.known, self.dtypes) for k in node.keywords}
            if all(a is not _MISSING for a in args) and all(v is not _MISSING for v in kwargs.values()):
                lit = _literal(fn(*args, **kwargs))
                if lit is not None:
                    return ast.copy_location(lit, node)
        elif isinstance(fn, types.FunctionType) and self.bind is not None and self.depth < 3:
            expr = self._inline_helper(fn, node)
            if expr is not None:
                return ast.copy_location(expr, node)
        return node

    def _inline_helper(self, fn, node):
        """``fn(args)`` as the expression it returns, when what is known here folds its body to a
        single ``return`` (matmul's gradient helper for two matrices); else None."""
        try:
            helper = source_of(fn, helper=True)
        except NotInlinable:
            return None
        if node.keywords or len(node.args) != len(helper.params):
            return None
        rename, known = {}, {}
        for name, arg in zip(helper.params, node.args):
            if isinstance(arg, ast.Name):
                rename[name] = arg.id
            elif isinstance(arg, ast.Constant):
                rename[name] = f"_h{self.depth}_{name}"
                known[rename[name]] = arg.value
            else:
                return None
        functions = dict(self.functions)
        for name, obj, where in helper._outer():
            rename[name] = self.bind(name, obj, where)
            functions[rename[name]] = obj
        inner = _Folder(rename, known, self.shapes, self.ranks, functions, self.literal, self.dtypes, self.constant,
                        self.bind, self.depth + 1)
        inner.single = {}
        body = _fold_block(helper._body(ast.parse(helper.src).body[0]), inner)
        if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
            names = {n.id for n in ast.walk(body[0].value) if isinstance(n, ast.Name)}
            if not names & (helper.locals - set(helper.params)):
                return body[0].value
        return None


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


def _same_code(a, b):
    """Do two code objects run the same instructions (line numbers aside)?"""
    if (a.co_code != b.co_code or a.co_names != b.co_names or a.co_varnames != b.co_varnames
            or a.co_freevars != b.co_freevars or len(a.co_consts) != len(b.co_consts)):
        return False
    for x, y in zip(a.co_consts, b.co_consts):
        if hasattr(x, "co_code"):
            if not (hasattr(y, "co_code") and _same_code(x, y)):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


_module_codes = {}


def _code_in_file(fn):
    """The code object the current text of ``fn``'s file compiles to for ``fn`` (found by name and
    first line), or None. Compiled as the whole file, as Python compiled it on import (the same
    names imported, the same ``__future__`` flags)."""
    filename = fn.__code__.co_filename
    linecache.checkcache(filename)
    text = "".join(linecache.getlines(filename))
    if not text:
        return None
    with _lock:
        code = _module_codes.get(filename)
    if code is None or code[0] != text:
        try:
            module = compile(text, filename, "exec", dont_inherit=True)
        except SyntaxError:
            return None
        code = (text, module)
        with _lock:
            _module_codes[filename] = code
    stack = [code[1]]
    while stack:
        c = stack.pop()
        if c.co_name == fn.__code__.co_name and c.co_firstlineno == fn.__code__.co_firstlineno:
            return c
        stack.extend(k for k in c.co_consts if hasattr(k, "co_code"))
    return None


def _check_source(fn):
    """Raise NotInlinable unless ``fn``'s file, as it is now, compiles to ``fn``'s own code: a file
    edited since it was imported must not be inlined in place of what eager mode runs."""
    code = _code_in_file(fn)
    if code is None or not _same_code(code, fn.__code__):
        raise NotInlinable("its source does not match the function Python runs (edited since import?)")


class Inlined:
    """One use of a primitive: forward statements, the output expression, vjp statements and the
    vjp's per-operand gradient expressions (None: no gradient), all ``ast`` nodes; ``reads``:
    (name, object, where) for every global or closure value the code uses."""

    __slots__ = ("fwd", "out", "vjp", "grads", "g", "reads")

    def __init__(self, fwd, out, vjp, grads, g, reads):
        self.fwd, self.out, self.vjp, self.grads, self.g, self.reads = fwd, out, vjp, grads, g, reads


class _Template:
    """A primitive's code folded for one set of compile-time facts (static arguments, operand
    ranks, shapes and dtypes), under placeholder names: ``$name`` for its local ``name``,
    ``$$o<i>`` for operand i, and ``$$g<i>``, ``$$l<i>``, ``$$c<i>`` for the i-th global it binds
    (``reads``), numeric literal (``literals``) and folded constant (``constants``) it names.
    ``Source.instantiate`` copies it under a use's names; it is never changed, so threads share it."""

    __slots__ = ("fwd", "out", "vjp", "grads", "g", "reads", "literals", "constants")

    def __init__(self, fwd, out, vjp, grads, g, reads, literals, constants):
        self.fwd, self.out, self.vjp, self.grads, self.g = fwd, out, vjp, grads, g
        self.reads, self.literals, self.constants = tuple(reads), tuple(literals), tuple(constants)


_NO_NAMES = {}
_TEMPLATES = 64         # templates kept per primitive (the oldest goes first)
_KEYED = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis), type, np.generic, np.dtype)


def _frozen(value):
    """A hashable key for a static argument that tells apart what folds differently (1, 1.0 and
    True; a float32 and a float64 scalar; 0.0 and -0.0); TypeError for a value of any other kind."""
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, tuple):
        return ("tuple",) + tuple(_frozen(v) for v in value)
    if isinstance(value, slice):
        return ("slice", _frozen(value.start), _frozen(value.stop), _frozen(value.step))
    if not isinstance(value, _KEYED) or (isinstance(value, np.generic) and value.dtype.kind not in "biufc"):
        raise TypeError(type(value).__name__)
    if value != value:
        raise TypeError("nan")       # never equal to itself: would miss every time
    if isinstance(value, (float, complex, np.inexact)):
        return (type(value), repr(value))     # -0.0 == 0.0, but they fold to different literals
    return (type(value), value)


def _still_bound(reads):
    """Is every (name, object, where) a template read still what ``where`` holds under ``name``?"""
    for name, obj, where in reads:
        if isinstance(where, dict):
            current = where.get(name, _MISSING)
        elif where is None:
            current = getattr(builtins, name, _MISSING)
        else:
            try:
                current = where.cell_contents
            except ValueError:          # an emptied cell
                return False
        if current is not obj:
            return False
    return True


def copy_tree(node, names=_NO_NAMES):
    """A copy of a syntax tree (a node, a list of them, or None) with the names in ``names``
    replaced: one pass that copies and renames, so a cached template is never changed. (About
    ten times faster than ``copy.deepcopy``, which also copies every node's memo dict.)"""
    if type(node) is list:
        return [copy_tree(n, names) for n in node]
    if not isinstance(node, ast.AST) or isinstance(node, ast.expr_context):
        return node
    new = node.__class__.__new__(node.__class__)
    for field in node._fields:
        value = getattr(node, field, None)
        setattr(new, field, copy_tree(value, names) if isinstance(value, (list, ast.AST)) else value)
    for attr in node._attributes:
        if hasattr(node, attr):
            setattr(new, attr, getattr(node, attr))
    if type(new) is ast.Name:
        new.id = names.get(new.id, new.id)
    elif type(new) is ast.arg:
        new.arg = names.get(new.arg, new.arg)
    elif type(new) is ast.FunctionDef:
        new.name = names.get(new.name, new.name)
    return new


class Source:
    """A primitive's source, checked against its code, and its folded templates (see
    ``_Template``): one parse and fold per set of compile-time facts, a copy per use."""

    def __init__(self, fn, helper=False):
        if getattr(fn, "__wrapped__", None) is not None:     # getsource would read the wrapped function's
            raise NotInlinable("a wrapper: its source is not the code that runs")
        try:
            src = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError) as err:
            raise NotInlinable(str(err)) from None
        fdef = ast.parse(src).body[0]
        if not isinstance(fdef, ast.FunctionDef) or fdef.args.posonlyargs or fdef.args.kwarg:
            raise NotInlinable("unsupported signature")
        if fdef.name != fn.__code__.co_name:
            raise NotInlinable("its source is another function's")
        if helper and (fdef.args.vararg or fdef.args.kwonlyargs or fdef.args.defaults):
            raise NotInlinable("a helper takes plain positional parameters")
        _check_source(fn)
        body = self._body(fdef)
        for node in ast.walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Global, ast.Nonlocal, ast.ClassDef,
                                 ast.AsyncFunctionDef, ast.Await, ast.Try, ast.With, ast.While, ast.For)):
                raise NotInlinable(f"{type(node).__name__} in body")
        self.fn, self.src = fn, src
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
        self.free = sorted({n.id for n in ast.walk(ast.Module(body=body, type_ignores=[]))
                            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - local)
        self._templates = {}     # key of the compile-time facts -> _Template

    @staticmethod
    def _body(fdef):
        body = list(fdef.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]                                       # docstring
        return body

    def _outer(self):
        """The current value of every name the body reads from outside: (name, object, where)."""
        fn = self.fn
        closure = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        found = []
        for name in self.free:
            if name in closure:
                found.append((name, closure[name].cell_contents, closure[name]))
            elif name in fn.__globals__:
                found.append((name, fn.__globals__[name], fn.__globals__))
            elif hasattr(builtins, name):
                found.append((name, getattr(builtins, name), None))
            else:
                raise NotInlinable(f"unknown name {name!r}")
        return found

    def instantiate(self, prefix, operands, static, namespace, shapes=None, ranks=None, literal=None, g_name=None,
                    dtypes=None, constant=None):
        """Code for one use of the primitive.

        operands: one variable name per positional operand. static: keyword argument values
        (known now). namespace: names visible to the generated code; the primitive's globals are
        added (renamed if another object holds the name). shapes / ranks / dtypes: what is known
        of the operand variables, for folding. literal: maps a numeric literal in arithmetic to
        the name of a constant (see _number). g_name: the name the vjp's cotangent should have.
        """
        t = self._template(operands, static, shapes or {}, ranks or {}, dtypes or {}, literal is not None,
                           constant is not None)
        names = {f"${n}": f"{prefix}{n}" for n in self.locals}
        names.update((f"$$o{i}", o) for i, o in enumerate(operands))
        reads = []
        for i, (name, obj, where) in enumerate(t.reads):
            target = name
            n = 0
            while target in namespace and namespace[target] is not obj:
                n += 1
                target = f"{name}_{n}"
            namespace[target] = obj
            reads.append((name, obj, where))
            names[f"$$g{i}"] = target
        names.update((f"$$l{i}", literal(v)) for i, v in enumerate(t.literals))
        names.update((f"$$c{i}", constant(v)) for i, v in enumerate(t.constants))
        fwd, out = copy_tree(t.fwd, names), copy_tree(t.out, names)
        g = names[t.g] = names[t.g] if g_name is None else g_name      # the cotangent: in the vjp only
        return Inlined(fwd, out, copy_tree(t.vjp, names), copy_tree(t.grads, names), g, reads)

    def _template(self, operands, static, shapes, ranks, dtypes, literal, constant):
        """The primitive folded for these compile-time facts, from the cache while every global
        it read is still bound to the same object (else folded afresh)."""
        facts = tuple((ranks.get(o), shapes.get(o), dtypes.get(o)) for o in operands)
        try:
            key = (_frozen(static), facts, literal, constant)
        except TypeError:
            key = None                   # a static value without a safe key (an array): this use only
        if key is not None:
            with _lock:
                t = self._templates.get(key)
            if t is not None and _still_bound(t.reads):
                return t
        t = self._fold(facts, static, literal, constant)
        if key is not None:
            with _lock:
                if len(self._templates) >= _TEMPLATES:
                    self._templates.pop(next(iter(self._templates)))
                self._templates[key] = t
        return t

    def _fold(self, facts, static, literal, constant):
        """Parse and fold the primitive for ``facts`` (rank, shape, dtype per operand) and ``static``,
        under placeholder names (see ``_Template``)."""
        body = self._body(ast.parse(self.src).body[0])
        rename = {name: f"${name}" for name in self.locals}
        known = {}
        for name in self.kwonly:
            value = static.get(name, self.kwdefaults.get(name, _MISSING))
            if value is _MISSING:
                raise NotInlinable(f"missing keyword {name}")
            known[rename[name]] = value
        reads, literals, constants = [], [], []

        def bind(name, obj, where):
            reads.append((name, obj, where))
            return f"$$g{len(reads) - 1}"

        def named(values, kind):
            return lambda value: values.append(value) or f"$${kind}{len(values) - 1}"
        functions = {}
        for name, obj, where in self._outer():
            rename[name] = target = bind(name, obj, where)
            functions[target] = obj
        operands = [f"$$o{i}" for i in range(len(facts))]
        prelude = []
        n_fixed = len(self.params)
        if self.vararg is None and len(operands) != n_fixed:
            raise NotInlinable("operand count")
        for name, expr in zip(self.params, operands[:n_fixed]):
            if name in self.reassigned:
                prelude.append(ast.Assign([ast.Name(rename[name], ast.Store())], ast.Name(expr, ast.Load())))
            else:
                rename[name] = expr
        if self.vararg is not None:
            prelude.append(ast.Assign([ast.Name(rename[self.vararg], ast.Store())],
                                      ast.Tuple([ast.Name(o, ast.Load()) for o in operands[n_fixed:]], ast.Load())))
        ranks, shapes, dtypes = ({o: f[i] for o, f in zip(operands, facts) if f[i] is not None} for i in range(3))
        folder = _Folder(rename, known, shapes, ranks, functions, named(literals, "l") if literal else None, dtypes,
                         named(constants, "c") if constant else None, bind)
        folder.single = {rename.get(n, n): True for n in self.assigned_once}
        fwd, out_expr, vjp_stmts, result, g = self._split(_fold_block(body, folder))
        if isinstance(result, ast.Tuple):
            result = [None if isinstance(e, ast.Constant) and e.value is None else e for e in result.elts]
        return _Template(prelude + fwd, out_expr, vjp_stmts, result, g, reads, literals, constants)

    @staticmethod
    def _split(body):
        """(forward statements, output expression, vjp statements, vjp result, cotangent name)."""
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
            if isinstance(node, (ast.FunctionDef, ast.Return, ast.Lambda)):
                raise NotInlinable("nested function or early return")
        return fwd, out_expr, vjp_stmts, result, g

    def static_names(self, prefix):
        return {name: f"{prefix}{name}" for name in self.kwonly}


_sources = {}
_lock = threading.Lock()


def clear_templates():
    """Forget every primitive's folded templates (a benchmark's cold start)."""
    with _lock:
        for src in _sources.values():
            if type(src) is not tuple:
                src._templates.clear()


def source_of(fn, helper=False):
    """The checked Source of ``fn`` (cached), or raise NotInlinable."""
    with _lock:
        src = _sources.get((fn, helper))
    if src is None:
        try:
            src = Source(fn, helper)
        except NotInlinable as err:
            src = err.args
        with _lock:
            _sources[(fn, helper)] = src
    if type(src) is tuple:      # the reason, not the exception: a kept traceback would keep its frames' arrays
        raise NotInlinable(*src)
    return src
