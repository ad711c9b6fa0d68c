"""Operations on the symmetric group S5 (Power et al. 2022): x*y, x*y*x^-1, x*y*x over 120 permutations.

Token layout: one token per permutation (index in lexicographic order of the 120 permutations of
0..4), then the operation and `=`; composition (x*y)(i) = x(y(i)).

    vocabulary: 0..119 are the permutations (token 0 = 01234, token 1 = 01243, ...), 120 = op, 121 = "="
    01243 * 10234 = 10243   ->  [1, 120, 24, 121, 25]
    targets:                      o    y    =    z      (x is context)

The table holds all 120 x 120 pairs (14,400 examples); the answer's floor is 0, or
H(eps) + eps log2 119 with label noise eps. The train/held-out split and the epochs work as for the
modular tasks (`lab.tasks.modular.Finite`).
"""

from __future__ import annotations

import itertools

import numpy as np

from lab.tasks.modular import Finite

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


class Permutation(Finite):
    def __init__(self, op: str = "x*y", train_fraction: float = 0.3, loss_on: str = "answer",
                 label_noise: float = 0.0, seed: int = 0):
        self.op, self.seed = op, seed
        n = len(PERMS)
        x, y = (g.ravel() for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))  # (N,), (N,)
        zp = OPS[op](PERMS[x], PERMS[y])  # (N, 5)
        z = np.array([INDEX[tuple(p)] for p in zp.tolist()])
        names = ["".join(map(str, p)) for p in PERMS.tolist()]
        self._build(names, "*", x, y, z, train_fraction, loss_on, label_noise, seed)

    def to_text(self, row: np.ndarray) -> str:
        x, _, y, _, z = (self.vocab[int(t)] for t in row)
        return f"{x}{self.op[1]}{y}={z}\n"
