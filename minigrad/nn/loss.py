"""Losses as modules: ``loss_fn = CrossEntropyLoss(); loss = loss_fn(logits, targets)``.

Each wraps the function of the same name in :mod:`minigrad.nn.functional` (see there for the
formulas, shapes and dtypes), with ``reduction`` fixed at construction.
"""
from __future__ import annotations

from . import functional as F
from .module import Module

__all__ = ["MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = F.check_reduction(reduction, type(self).__name__)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error: :func:`~minigrad.nn.functional.mse_loss`."""

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities: :func:`~minigrad.nn.functional.binary_cross_entropy`."""

    def __init__(self, reduction: str = "mean", eps: float = 1e-12):
        super().__init__(reduction)
        self.eps = eps

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.reduction, self.eps)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits, stable for any logit:
    :func:`~minigrad.nn.functional.binary_cross_entropy_with_logits`."""

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy with integer targets, classes on the last axis:
    :func:`~minigrad.nn.functional.cross_entropy`."""

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.reduction)
