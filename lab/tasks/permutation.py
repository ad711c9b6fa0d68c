"""Operations on the symmetric group S5 (Power et al. 2022): x*y, x*y*x^-1, x*y*x over 120 permutations.

Token layout: one token per permutation (index in lexicographic order of the 120 permutations of
0..4), then the operation and `=`; composition (x*y)(i) = x(y(i)).

    vocabulary: 0..119 are the permutations (token 0 = 01234, token 1 = 01243, ...), 120 = op, 121 = "="
    01243 * 10234 = 10243   ->  [1, 120, 24, 121, 25]
    targets:                      o    y    =    z      (x is context)

The table holds all 120 x 120 pairs (14,400 examples); the answer's floor is 0, or
H(eps) + eps log2 119 with label noise eps. The train/held-out split, the epochs and the arrivals work as
for the modular tasks (`lab.tasks.base.Finite`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lab.config import check
from lab.tasks.base import Finite, TableConfig, register

PERMS = np.array(list(itertools.permutations(range(5))))  # (120, 5)
INDEX = {tuple(p): i for i, p in enumerate(PERMS.tolist())}


def compose(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 5), (N, 5) permutations -> (N, 5): (x*y)(i) = x(y(i))."""
    return np.take_along_axis(x, y, axis=1)


def inverse(x: np.ndarray) -> np.ndarray:
    return np.argsort(x, axis=1)


OPS = {
    "x*y": lambda x, y: compose(x, y),
    "x*y*x^-1": lambda x, y: compose(compose(x, y), inverse(x)),
    "x*y*x": lambda x, y: compose(compose(x, y), x),
}


OpName = Literal[tuple(OPS)]


@dataclass
class PermutationConfig(TableConfig):
    name: str = "permutation"
    """Which registered task (`python -m lab tasks` lists them)."""
    op: OpName = "x*y"
    """The operation on S5 (composition (x*y)(i) = x(y(i)))."""
    train_fraction: float = 0.3
    """Share of the 14,400-row table in the train split (the rest is held out)."""

    def validate(self) -> None:
        super().validate()
        check(0 < self.train_fraction < 1, "task.train_fraction", f"{self.train_fraction} is not in (0, 1)")


@register
class Permutation(Finite):
    name = "permutation"
    Config = PermutationConfig
    small = {"train_fraction": 0.02}

    def __init__(self, op: str = "x*y", train_fraction: float = 0.3, loss_on: str = "answer",
                 label_noise: float = 0.0, arrival: str = "none", arrival_steps: int = 2000,
                 arrival_start: float = 0.0, seed: int = 0):
        self.op, self.seed = op, seed
        n = len(PERMS)
        x, y = (g.ravel() for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))  # (N,), (N,)
        zp = OPS[op](PERMS[x], PERMS[y])  # (N, 5)
        z = np.array([INDEX[tuple(p)] for p in zp.tolist()])
        names = ["".join(map(str, p)) for p in PERMS.tolist()]
        self._build(names, "*", x, y, z, train_fraction, loss_on, label_noise, seed)
        self._set_arrival(arrival, arrival_steps, arrival_start)

    def to_text(self, row: np.ndarray) -> str:
        x, _, y, _, z = (self.vocab[int(t)] for t in row)
        return f"{x}{self.op[1]}{y}={z}\n"
