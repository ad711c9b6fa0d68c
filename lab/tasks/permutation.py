"""Operations on the symmetric group S5 (Power et al. 2022): x*y, x*y*x^-1, x*y*x over 120 permutations.

Token layout: one token per permutation (index in lexicographic order of the 120 permutations of
0..4), then the operation and `=`; composition (x*y)(i) = x(y(i)).

    vocabulary: 0..119 are the permutations (token 0 = 01234, token 1 = 01243, ...), 120 = op, 121 = "="
    01243 * 10234 = 10243   ->  [1, 120, 24, 121, 25]
    targets:                      o    y    =    z      (x is context)

The table holds all 120 x 120 pairs (14,400 examples); the answer's floor is 0, or
H(eps) + eps log2 119 with label noise eps. The train/held-out split, the epochs and the arrivals work as
for the modular tasks (`lab.tasks.table.TableTask`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lab.tasks.base import register
from lab.tasks.table import TableConfig, TableTask

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


@register
class Permutation(TableTask):
    name = "permutation"
    Config = PermutationConfig
    small = {"train_fraction": 0.02}

    def __init__(self, cfg: PermutationConfig | None = None, seed: int = 0):
        super().__init__(cfg, seed)
        self.op = self.cfg.op
        n = len(PERMS)
        x, y = (g.ravel() for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))  # (N,), (N,)
        zp = OPS[self.op](PERMS[x], PERMS[y])  # (N, 5)
        z = np.array([INDEX[tuple(p)] for p in zp.tolist()])
        names = ["".join(map(str, p)) for p in PERMS.tolist()]
        self._build(names, "*", x, y, z)

    def to_text(self, row: np.ndarray) -> str:
        x, _, y, _, z = (self.vocab[int(t)] for t in row)
        return f"{x}{self.op[1]}{y}={z}\n"
