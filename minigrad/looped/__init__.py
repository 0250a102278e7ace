"""The looped construct, a module per stage: ``trace`` (body -> Program), ``passes`` (Program ->
Program), the backends ``interpret`` and ``codegen`` (numpy generated from syntax trees), and
``node`` (``mg.scan``: one graph node for the whole loop)."""
from .node import scan, scan_program
from .program import Const, Eqn, Program, Var

__all__ = ["scan", "scan_program", "Program", "Eqn", "Var", "Const"]
