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
epoch; an example is `new` (enters the code length) only in epoch 0.
"""

from __future__ import annotations

import math

import numpy as np

from lab.tasks.base import Batch, Task, log2, rng_for


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


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def noise_floor(eps: float, k: int) -> float:
    """Entropy in bits of an answer that is right w.p. 1 - eps, else uniform over the k - 1 wrong ones."""
    if eps <= 0:
        return 0.0
    h = -eps * math.log2(eps) - (1 - eps) * math.log2(1 - eps) if eps < 1 else 0.0
    return h + eps * log2(k - 1)


class Finite(Task):
    """A table of examples with a seeded train / held-out split, shared by the finite tasks."""

    finite = True

    def _build(self, names: list[str], symbol: str, x: np.ndarray, y: np.ndarray, z: np.ndarray,
               train_fraction: float, loss_on: str, label_noise: float, seed: int) -> None:
        """The layout `x op y = z` over K = len(names) element tokens (token i is element i), then the
        op token and `=`; the table's rows are (x, y, z), z the clean answer (K possible values). Sets
        vocabulary, layout, table, split, label noise, floors and loss mask."""
        K = len(names)
        self.vocab = names + [symbol, "="]
        self.seq_len, self.answer_start = 5, 4
        self.target_names = ["o", "y", "=", "z"]
        col = lambda tok: np.full(len(x), tok, dtype=np.int64)  # noqa: E731
        table = np.stack([x, col(K), y, col(K + 1), z], axis=1).astype(np.int64)  # (N, 5)
        self.answer_tokens, self.answer_index = np.arange(K), z
        self._split(table, train_fraction, seed)
        self._add_label_noise(label_noise, K, seed)
        self.known = np.array([True, True, True, True, False])  # the question x op y = is the row's layout
        self.floor_bits = np.array([0.0, 0.0, 0.0, noise_floor(label_noise, K)])  # H(z | x, y)
        self.uniform_bits = np.array([0.0, 0.0, 0.0, log2(K)])
        self.loss_mask = np.array([loss_on == "all", loss_on == "all", loss_on == "all", True])

    def _split(self, table: np.ndarray, train_fraction: float, seed: int) -> None:
        self.table = table  # (N, T)
        perm = rng_for(seed, 3).permutation(len(table))
        n_train = round(train_fraction * len(table))
        self.train_idx, self.val_idx = perm[:n_train], perm[n_train:]

    def _add_label_noise(self, eps: float, k: int, seed: int) -> None:
        """Replace the answer (last token) by a uniformly drawn wrong one w.p. eps, fixed per example."""
        self.clean_answers = self.table[:, -1].copy()
        if eps > 0:
            rng = rng_for(seed, 2)
            flip = rng.random(len(self.table)) < eps
            shift = rng.integers(1, k, size=len(self.table))  # 1..k-1: never the right answer
            self.table[flip, -1] = self.answer_tokens[(self.answer_index[flip] + shift[flip]) % k]

    def table_size(self) -> int:
        return len(self.table)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.train_idx) / batch_size)

    def batch_size(self, requested: int) -> int:
        return requested or len(self.train_idx)  # 0: the whole train split

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """(n_train,) table indices of the train split in the seeded order of `epoch`."""
        return self.train_idx[rng_for(self.seed, 4, epoch).permutation(len(self.train_idx))].astype(np.int64)

    def schedule(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, j = divmod(step, self.steps_per_epoch(batch_size))
        ids = self._epoch_order(epoch)[j * batch_size : (j + 1) * batch_size]
        return ids, np.full(len(ids), epoch == 0)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        ids, new = self.schedule(step, batch_size)
        return Batch(self.table[ids], ids, new)

    def layout(self, ids: np.ndarray) -> np.ndarray:
        return np.where(self.known, self.table[ids], 0)  # (B, T) the question, answer unknown

    def sent_ids(self, steps: int, batch_size: int) -> np.ndarray:
        """Epoch 0 sends the train split in its seeded order; later epochs send nothing new."""
        return self._epoch_order(0)[: steps * batch_size]

    def eval_sets(self) -> dict[str, np.ndarray]:
        sets = {"val": self.table[self.val_idx], "train": self.table[self.train_idx]}
        if (self.table[:, -1] != self.clean_answers).any():  # label noise: also score the true rule
            clean = self.table[self.val_idx].copy()
            clean[:, -1] = self.clean_answers[self.val_idx]
            sets["val_clean"] = clean
        return sets

    def eval_ids(self) -> dict[str, np.ndarray]:
        return {"val": self.val_idx, "train": self.train_idx, "val_clean": self.val_idx}


class Modular(Finite):
    def __init__(
        self,
        op: str = "x+y",
        p: int = 97,
        train_fraction: float = 0.3,
        loss_on: str = "answer",
        label_noise: float = 0.0,
        seed: int = 0,
    ):
        symbol, nonzero_y, fn = OPS[op]
        self.op, self.p, self.seed, self.symbol = op, p, seed, symbol
        ys = np.arange(1 if nonzero_y else 0, p)
        x, y = (g.ravel() for g in np.meshgrid(np.arange(p), ys, indexing="ij"))  # (N,), (N,)
        z = fn(x, y, p, _inverses(p))  # residue r is token r
        self._build([str(i) for i in range(p)], symbol, x, y, z, train_fraction, loss_on, label_noise, seed)

    def to_text(self, row: np.ndarray) -> str:
        x, _, y, _, z = (int(t) for t in row)
        return f"{x}{self.symbol}{y}={z}\n"
