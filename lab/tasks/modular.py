"""Binary operations mod a prime p (Power et al. 2022): a fixed table, split once, revisited for epochs.

Token layout (op "x+y", p = 97): one token per residue, then the operation and `=`:

    vocabulary: 0..96 are the residues, 97 = op token, 98 = "="   (p + 2 tokens)
    5 + 3 = 8    ->  [5, 97, 3, 98, 8]
    targets:         o   y   =   z       (x is context: it is never predicted)

What is sent (`lab.bits`): the schedule names the table row of each example, and the table's layout
(which (x, y) pairs exist) is part of the shared algorithm, so the question `x op y =` is known to the
receiver; only the answer z is sent (floor 0 without label noise). By default only z is trained on;
with `loss_on=all` the model also learns to predict o, y and =, which are still not sent.

`label_noise` eps replaces the answer, once per example (a fixed table), by a wrong residue drawn
uniformly; the answer's floor becomes H(eps) + eps log2(p - 1) bits.

The table is every valid (x, y); a seeded permutation puts `train_fraction` of it in the train split
and the rest in the held-out ("val") split. Training walks the train split in a fresh seeded order each
epoch; an example is `new` (enters the code length) only in epoch 0. With `arrival` the train rows arrive
over the run instead (`lab.tasks.table.TableTask`), so the code covers the whole of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lab.errors import check
from lab.tasks.base import register
from lab.tasks.table import TableConfig, TableTask


def _inverses(p: int) -> np.ndarray:
    inv = np.zeros(p, dtype=np.int64)
    inv[1:] = [pow(y, p - 2, p) for y in range(1, p)]
    return inv


# name -> (symbol, needs y != 0, z(x, y, p, inv))
OPS = {
    "x+y": ("+", False, lambda x, y, p, inv: (x + y) % p),
    "x-y": ("-", False, lambda x, y, p, inv: (x - y) % p),
    "x*y": ("*", False, lambda x, y, p, inv: (x * y) % p),
    "x/y": ("/", True, lambda x, y, p, inv: (x * inv[y]) % p),
    "x^2+y^2": ("o", False, lambda x, y, p, inv: (x * x + y * y) % p),
    "x^2+xy+y^2": ("o", False, lambda x, y, p, inv: (x * x + x * y + y * y) % p),
    "x^2+xy+y^2+x": ("o", False, lambda x, y, p, inv: (x * x + x * y + y * y + x) % p),
    "x^3+xy": ("o", False, lambda x, y, p, inv: (x * x * x + x * y) % p),
    "x^3+xy^2+y": ("o", False, lambda x, y, p, inv: (x * x * x + x * y * y + y) % p),
    "x/y if y odd else x-y": (
        "o", False, lambda x, y, p, inv: np.where(y % 2 == 1, (x * inv[y]) % p, (x - y) % p)
    ),
}
DIVIDES = {"x/y", "x/y if y odd else x-y"}
OpName = Literal[tuple(OPS)]


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


@dataclass
class ModularConfig(TableConfig):
    name: str = "modular"
    """Which registered task (`python -m lab tasks` lists them)."""
    op: OpName = "x+y"
    """The operation, one of Power et al.'s (x/y and the odd/even one need p prime)."""
    p: int = 97
    """The modulus: residues 0..p-1, one token each."""

    def validate(self) -> None:
        super().validate()
        check(self.p >= 2, "task.p", f"{self.p} is not a modulus >= 2")
        check(self.p <= 10_000, "task.p", f"{self.p} is more than 10,000 (the table has p^2 rows in memory)")
        if self.op in DIVIDES:
            check(is_prime(self.p), "task.p", f"{self.p} is not prime; {self.op} needs inverses mod p")
        n = self.p * (self.p - 1 if OPS[self.op][1] else self.p)
        check(1 <= round(self.train_fraction * n) < n, "task.train_fraction",
              f"{self.train_fraction} leaves an empty split of the {n} examples")


@register
class Modular(TableTask):
    name = "modular"
    Config = ModularConfig
    small = {"p": 5, "train_fraction": 0.6}

    def __init__(self, cfg: ModularConfig | None = None, seed: int = 0):
        super().__init__(cfg, seed)
        op, p = self.op, self.p = self.cfg.op, self.cfg.p
        symbol, nonzero_y, fn = OPS[op]
        self.symbol = symbol
        ys = np.arange(1 if nonzero_y else 0, p)
        x, y = (g.ravel() for g in np.meshgrid(np.arange(p), ys, indexing="ij"))  # (N,), (N,)
        z = fn(x, y, p, _inverses(p))  # residue r is token r
        self._build([str(i) for i in range(p)], symbol, x, y, z)

    def cyclic_phase(self) -> tuple[int, np.ndarray] | None:
        """x + y and x - y mod p: the answer is the phase itself (Nanda et al.'s Fourier circuit)."""
        if self.op not in ("x+y", "x-y"):
            return None
        x, y = self.table[:, 0], self.table[:, 2]
        return self.p, (x + y) % self.p if self.op == "x+y" else (x - y) % self.p

    def to_text(self, row: np.ndarray) -> str:
        x, _, y, _, z = (int(t) for t in row)
        return f"{x}{self.symbol}{y}={z}\n"
