"""minigrad.optim: optimizers with PyTorch's update rules and state dicts (optimizer.py), and
learning-rate schedules (lr_scheduler.py)."""
from . import lr_scheduler
from .optimizer import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "lr_scheduler"]
