"""n-digit addition as an endless stream: every training example is fresh.

Token layout (n_digits = 8, answer most significant digit first):

    s 1 2 3 4 5 6 7 8 + 8 7 6 5 4 3 2 1 = 0 9 9 9 9 9 9 9 9 e
    ^ start            ^ plus            ^ equals            ^ end

    vocabulary: 0-9 are digits 0-9, then s=10, e=11, +=12, ==13 (14 tokens)
    29 tokens, 28 predicted: a7..a0 + b7..b0 = c8..c0 e

With `reverse_answer` the sum is written least significant digit first (c0..c8), which lets a causal
model produce each digit after the carry it depends on.

Aleatoric floor, in bits per predicted position (operands uniform on [10^(n-1), 10^n - 1]):
a7 and b7 cost log2 9 (no leading zero), the other 14 operand digits log2 10 each, everything from
`+` on is determined by what came before (floor 0). For n = 8 that is 2 (log2 9 + 7 log2 10) = 52.85
bits per example; with `leading_zeros` (operands uniform on [0, 10^n - 1]) it is 16 log2 10 = 53.15.

The stream never yields a held-out pair: colliding rows are redrawn. This conditions the operand law on
"not held out", which moves the floor by about n_heldout / 10^(2n) of a bit (1e-13 for n = 8).
"""

from __future__ import annotations

import numpy as np

from lab.tasks.base import Batch, Task, log2, rng_for

DIGITS = [str(i) for i in range(10)]
S, E, PLUS, EQ = 10, 11, 12, 13


class Addition(Task):
    def __init__(
        self,
        n_digits: int = 8,
        leading_zeros: bool = False,
        reverse_answer: bool = False,
        loss_on: str = "all",
        n_heldout: int = 2000,
        seed: int = 0,
    ):
        self.n = n_digits
        self.leading_zeros = leading_zeros
        self.reverse_answer = reverse_answer
        self.seed = seed
        self.lo = 0 if leading_zeros else 10 ** (n_digits - 1)
        self.hi = 10**n_digits - 1
        n = n_digits

        self.vocab = DIGITS + ["s", "e", "+", "="]
        self.seq_len = 3 * n + 5
        self.answer_start = 2 * n + 3
        c_names = [f"c{i}" for i in range(n, -1, -1)]
        if reverse_answer:
            c_names = c_names[::-1]
        self.target_names = (
            [f"a{i}" for i in range(n - 1, -1, -1)] + ["+"]
            + [f"b{i}" for i in range(n - 1, -1, -1)] + ["="] + c_names + ["e"]
        )

        first = log2(10) if leading_zeros else log2(9)
        operand = np.array([first] + [log2(10)] * (n - 1))
        zeros = np.zeros(1)
        answer = np.zeros(n + 2)
        self.floor_bits = np.concatenate([operand, zeros, operand, zeros, answer])
        carry = np.array([1.0] + [log2(10)] * n)  # c_n is a carry: 0 or 1
        if reverse_answer:
            carry = carry[::-1]
        self.uniform_bits = np.concatenate([operand, zeros, operand, zeros, carry, zeros])

        self.loss_mask = np.ones(self.seq_len - 1, dtype=bool)
        if loss_on == "answer":
            self.loss_mask[: self.answer_start - 1] = False

        self.heldout_pairs = self._draw_heldout(n_heldout)
        self._heldout_set = set(map(tuple, self.heldout_pairs.tolist()))

    # -- encoding -------------------------------------------------------------------------------------
    def _digits(self, v: np.ndarray, width: int) -> np.ndarray:
        """(B,) ints -> (B, width) digits, most significant first."""
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # (width,)
        return (v[:, None] // powers) % 10

    def encode(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(B,) operands -> (B, T) token rows."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        B, n = len(a), self.n
        c = self._digits(a + b, n + 1)  # (B, n+1)
        if self.reverse_answer:
            c = c[:, ::-1]
        col = lambda tok: np.full((B, 1), tok, dtype=np.int64)  # noqa: E731
        return np.concatenate(
            [col(S), self._digits(a, n), col(PLUS), self._digits(b, n), col(EQ), c, col(E)], axis=1
        )

    def operands(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) token rows -> the two operands (B,), (B,)."""
        n = self.n
        powers = 10 ** np.arange(n - 1, -1, -1, dtype=np.int64)
        return x[:, 1 : 1 + n] @ powers, x[:, 2 + n : 2 + 2 * n] @ powers

    def token_text(self, token: int) -> str:
        return {S: "", E: "\n"}.get(token, self.vocab[token])

    # -- sampling -------------------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.integers(self.lo, self.hi + 1, size=(size, 2), dtype=np.int64)  # (size, 2)

    def _draw_heldout(self, count: int) -> np.ndarray:
        rng = rng_for(self.seed, 0)
        pairs = np.zeros((0, 2), dtype=np.int64)
        while len(pairs) < count:
            pairs = np.unique(np.concatenate([pairs, self._draw(rng, count - len(pairs))]), axis=0)
        return rng.permutation(pairs)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, 1, step)
        pairs = self._draw(rng, batch_size)  # (B, 2)
        held = self._held_out_rows(pairs)
        while held.any():  # redraw collisions with the held-out set
            pairs[held] = self._draw(rng, int(held.sum()))
            held = self._held_out_rows(pairs)
        ids = step * batch_size + np.arange(batch_size, dtype=np.int64)
        return Batch(self.encode(pairs[:, 0], pairs[:, 1]), ids, np.ones(batch_size, dtype=bool))

    def _held_out_rows(self, pairs: np.ndarray) -> np.ndarray:
        return np.array([(a, b) in self._heldout_set for a, b in pairs.tolist()], dtype=bool)

    def eval_sets(self) -> dict[str, np.ndarray]:
        return {"val": self.encode(self.heldout_pairs[:, 0], self.heldout_pairs[:, 1])}
