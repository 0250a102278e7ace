"""minigrad.optim: optimizers with PyTorch's update rules and state dicts (optimizer.py)."""
from .optimizer import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW"]
