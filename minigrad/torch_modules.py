"""The PyTorch module that ``minigrad.interop.to_torch`` makes of a recurrent layer. Imports torch.

PyTorch's ``nn.LSTM`` returns ``(output, (h_n, c_n))``; minigrad's ``LSTM`` returns the last output
or the sequence, and the final states flat only with ``return_state``. ``Recurrent`` wraps the
``batch_first=True`` PyTorch layer and returns what the minigrad layer returns, so a whole
``Sequential`` maps to an ``nn.Sequential`` layer for layer.
"""
from __future__ import annotations

import torch

__all__ = ["Recurrent"]


class Recurrent(torch.nn.Module):
    """A ``batch_first`` ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (``self.rnn``) returning what
    minigrad's layer of the same options returns.

    Parameters
    ----------
    rnn : torch.nn.LSTM | torch.nn.GRU | torch.nn.RNN
        With ``batch_first=True``.
    return_sequences : bool
        Return every output ``(batch, time, D*H)``; otherwise the last one ``(batch, D*H)``: the
        forward direction's output at the last step beside the backward one's at step 0, i.e. the
        last layer's final ``h``.
    return_state : bool
        Return ``(output, h, c)`` (LSTM) or ``(output, h)``: each ``(batch, H)`` for one layer in
        one direction, else ``(layers * directions, batch, H)`` as PyTorch stacks them.
    """

    def __init__(self, rnn: torch.nn.RNNBase, return_sequences: bool = False, return_state: bool = False):
        super().__init__()
        if not rnn.batch_first:
            raise ValueError("Recurrent: the wrapped layer must have batch_first=True, as minigrad's layers do")
        self.rnn, self.return_sequences, self.return_state = rnn, bool(return_sequences), bool(return_state)

    def forward(self, x, initial_state=None, mask=None):
        """``x``: (batch, time, features); ``initial_state`` as minigrad's (``(h, c)`` or ``h``);
        ``mask`` (batch, time) booleans, post-padded (each row True then False), run as a packed
        sequence: zero outputs at padding, final states at each sequence's last step, the backward
        direction from there, as minigrad's mask does. Other masks are a ValueError."""
        if initial_state is not None:
            states = (initial_state,) if torch.is_tensor(initial_state) else tuple(initial_state)
            states = tuple(s.unsqueeze(0) if s.dim() == 2 else s for s in states)
            initial_state = states if isinstance(self.rnn, torch.nn.LSTM) else states[0]
        if mask is None:
            out, state = self.rnn(x, initial_state)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, _lengths(mask, tuple(x.shape[:2])), batch_first=True,
                                                             enforce_sorted=False)
            out, state = self.rnn(packed, initial_state)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        states = state if isinstance(state, tuple) else (state,)
        D = 2 if self.rnn.bidirectional else 1
        if not self.return_sequences:      # the last layer's final h, its directions side by side
            out = torch.cat(list(states[0][-D:]), dim=-1)
        if not self.return_state:
            return out
        if states[0].shape[0] == 1:
            states = tuple(s[0] for s in states)
        return (out, *states)

    def extra_repr(self):
        return f"return_sequences={self.return_sequences}, return_state={self.return_state}"


def _lengths(mask, shape):
    """The lengths (CPU int64) of a post-padded (batch, time) mask, else a ValueError."""
    m = torch.as_tensor(mask)
    if tuple(m.shape) != shape:
        raise ValueError(f"Recurrent: mask must have shape {shape} (batch, time); got {tuple(m.shape)}")
    m = m.to(torch.bool).cpu()
    lengths = m.sum(dim=1)
    if not torch.equal(m, torch.arange(shape[1]) < lengths[:, None]) or bool((lengths == 0).any()):
        raise ValueError("Recurrent: PyTorch's packed sequences take post-padded masks (each row True then False, at "
                         "least one True); this mask is not one")
    return lengths
