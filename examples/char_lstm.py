"""A character-level language model: it reads Shakespeare one character at a time and learns to
predict the next one, then writes some of its own.

Model: Embedding(characters, 32) -> LSTM(32, 128, return_sequences) -> Linear(128, characters),
trained with softmax cross-entropy on the next character.

Truncated backpropagation through time (TBPTT). The text is cut into ``--batch`` parallel
streams read left to right in chunks of ``--seq-len`` characters. Each chunk starts from the
LSTM state (h, c) the previous chunk ended with, *detached*: its values carry the context across
chunks, but the graph (and so backpropagation) stops at the chunk boundary, so memory and time
per step stay fixed however long the text is (``return_state=True`` hands the state back).

``--unroll`` records every timestep's ops in the graph instead of one ``scan`` node: the same
numbers, more graph, slower.

The text, ``data/coriolanus.txt`` (7 KB), is the opening of William Shakespeare's *Coriolanus*
(Act I, Scene 1; first printed 1623, public domain), in the plain-text form of the "tiny
Shakespeare" corpus that Andrej Karpathy's char-rnn made popular for exactly this exercise.

Run:  python examples/char_lstm.py [--quick] [--unroll] [--train-steps 600]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import minigrad as mg
from minigrad.nn import LSTM, Embedding, Linear, Module
from minigrad.nn.functional import cross_entropy
from minigrad.progress import progress

TEXT = Path(__file__).resolve().parent / "data" / "coriolanus.txt"


class CharLSTM(Module):
    def __init__(self, vocab, embed, hidden, unroll=False):
        super().__init__()
        self.embed = Embedding(vocab, embed)
        self.lstm = LSTM(embed, hidden, return_sequences=True, return_state=True, unroll=unroll)
        self.head = Linear(hidden, vocab)

    def forward(self, idx, state=None):
        """``idx``: (batch, time) character indices. Returns the next-character logits
        (batch, time, vocab) and the final LSTM state ``(h, c)``."""
        out, h, c = self.lstm(self.embed(idx), initial_state=state)
        return self.head(out), (h, c)


def sample(model, prime, chars, index, length, rng, temperature=0.8):
    """Generate ``length`` characters after ``prime``, one at a time, feeding each back in."""
    model.eval()
    with mg.no_grad():
        logits, state = model(np.array([[index[ch] for ch in prime]]))
        out = []
        for _ in range(length):
            z = logits.data[0, -1].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(chars), p=p / p.sum()))
            out.append(chars[nxt])
            logits, state = model(np.array([[nxt]]), state)   # one step, from the carried state
    model.train()
    return prime + "".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model and a handful of steps (for CI)")
    parser.add_argument("--unroll", action="store_true", help="unrolled graph instead of the looped one")
    parser.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default 600; 15 quick)")
    parser.add_argument("--seq-len", type=int, default=None, help="characters per TBPTT chunk (default 48; 16 quick)")
    parser.add_argument("--batch", type=int, default=32, help="parallel text streams (default 32)")
    parser.add_argument("--hidden", type=int, default=None, help="LSTM units (default 128; 32 quick)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.train_steps or (15 if args.quick else 600)
    seq_len = args.seq_len or (16 if args.quick else 48)
    hidden = args.hidden or (32 if args.quick else 128)
    every = -(-steps // 4)                                 # print and sample 4 times (ceil)

    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int64)
    print(f"{len(text):,} characters of Coriolanus, {len(chars)} distinct; a uniform guess scores "
          f"cross-entropy ln({len(chars)}) = {np.log(len(chars)):.2f}")

    # The batch's streams: row b reads data[b * n : (b + 1) * n], so consecutive chunks of a
    # row continue one another and the carried state makes sense.
    n = (len(data) - 1) // args.batch
    inputs = data[:args.batch * n].reshape(args.batch, n)
    targets = data[1:args.batch * n + 1].reshape(args.batch, n)

    mg.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = CharLSTM(len(chars), 32, hidden, unroll=args.unroll)
    optimizer = mg.optim.Adam(model.parameters(), lr=args.lr)

    state, pos, losses = None, 0, []
    start = time.perf_counter()
    bar = progress(range(1, steps + 1), desc="training")
    for step in bar:
        if pos + seq_len > n:                              # end of the streams: start over, fresh state
            state, pos = None, 0
        x, y = inputs[:, pos:pos + seq_len], targets[:, pos:pos + seq_len]
        pos += seq_len

        optimizer.zero_grad()
        logits, (h, c) = model(x, state)
        loss = cross_entropy(logits, y)
        loss.backward()
        mg.nn.clip_grad_norm_(model.parameters(), 5.0)    # recurrent nets: keep a rare large gradient in check
        optimizer.step()
        state = (h.detach(), c.detach())                   # TBPTT: keep the values, cut the graph
        losses.append(loss.item())
        bar.set_postfix(loss=losses[-1])

        if step % every == 0 or step == steps:
            window = losses[-every:]
            print(f"\nstep {step}: loss {np.mean(window):.3f} (mean of the last {len(window)} steps)")
            print("  | " + sample(model, "First Citizen:\n", chars, index, 120 if args.quick else 200, rng)
                  .replace("\n", "\n  | "))
    seconds = time.perf_counter() - start

    first, last = losses[0], float(np.mean(losses[-every:]))
    mode = "unrolled" if args.unroll else "looped"
    print(f"\nloss {first:.3f} at step 1 -> {last:.3f} over the last {min(every, steps)} steps "
          f"({steps} steps, {seconds:.1f} s, {mode} LSTM(32, {hidden}))")
    if not last < first:
        print("FAIL: the loss did not decrease")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
