"""n-digit by m-digit multiplication as an endless stream: every training example is fresh.

Token layout (n_digits = 3, m_digits = 2, product most significant digit first, n + m digits with
leading zeros kept):

    s 1 2 3 * 4 5 = 0 5 5 3 5 e
    ^ start    ^ times ^ equals  ^ end

    vocabulary: 0-9 are digits 0-9, then s=10, e=11, *=12, ==13 (14 tokens)
    2 (n + m) + 4 tokens = 14, 13 predicted: a2 a1 a0 * b1 b0 = c4 c3 c2 c1 c0 e

With `reverse_answer` the product is written least significant digit first (c0..c4): each digit then
comes after the lower partial products it depends on.

What is sent (`lab.bits`): `s * = e` are known; the operand digits are sent by the model (`loss_on=all`)
or by their exact law (`loss_on=answer`), the product's digits by the model.

Aleatoric floor: the leading digit of each operand costs log2 9 (log2 10 with `leading_zeros`), the
others log2 10, and the product is determined (floor 0): for 3 x 2 digits 2 log2 9 + 3 log2 10 = 16.31
bits per example. The held-out pairs never appear in the stream, so the operands follow the uniform law
restricted to the other pairs and the floors are that law's exact conditional entropies
(`lab.tasks.operands.OperandLaw`). `label_noise` works as for addition (`noisy_answer_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.errors import check
from lab.tasks.base import TaskConfig, register
from lab.tasks.operands import OperandTask


@dataclass
class MultiplicationConfig(TaskConfig):
    name: str = "multiplication"
    """Which registered task (`python -m lab tasks` lists them)."""
    n_digits: int = 3
    """Digits of the first operand."""
    m_digits: int = 2
    """Digits of the second operand; the product has n_digits + m_digits (n + m <= 18)."""
    leading_zeros: bool = False
    """Operands from 0 instead of from 10^(digits - 1)."""
    reverse_answer: bool = False
    """Write the product least significant digit first."""
    n_heldout: int = 1000
    """Held-out products (uniform operands, never in the stream): val/exact_match."""

    def validate(self) -> None:
        super().validate()
        n, m = self.n_digits, self.m_digits
        check(n >= 1, "task.n_digits", f"{n} is not >= 1")
        check(m >= 1 and n + m <= 18, "task.m_digits", f"{m} is not >= 1 or n_digits + m_digits is over 18")
        lo = (lambda w: 0 if self.leading_zeros else 10 ** (w - 1))  # noqa: E731
        pairs = (10**n - lo(n)) * (10**m - lo(m))
        check(0 <= self.n_heldout <= min(pairs // 2, Multiplication.max_eval_rows), "task.n_heldout",
              f"{self.n_heldout} is negative, more than half of the {pairs} operand pairs or more than "
              f"{Multiplication.max_eval_rows:,} (the held-out set is built in memory)")


@register
class Multiplication(OperandTask):
    name = "multiplication"
    Config = MultiplicationConfig
    symbol = "*"
    small = {"n_digits": 2, "m_digits": 1, "n_heldout": 8}

    def __init__(self, cfg: MultiplicationConfig | None = None, seed: int = 0):
        super().__init__(cfg, seed)
        self._setup((self.cfg.n_digits, self.cfg.m_digits))

    @staticmethod
    def answer_digits(n: int, m: int) -> int:
        return n + m

    def answer(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b
