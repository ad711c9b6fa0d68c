"""Table tasks: a fixed table of examples, split once into train and held-out rows, revisited for epochs.

The machinery the modular tasks and S5 share (`TableTask`): the layout `x op y = z`, the seeded split,
label noise fixed per example, the epochs of the train split, and the arrival schedules that make the
code cover the whole of training (`TableConfig.arrival`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lab.errors import check
from lab.tasks.base import Batch, Task, TaskConfig, log2, noise_floor, rng_for


@dataclass
class TableConfig(TaskConfig):
    """Options of every table task (`TableTask`): the split, and how the train split reaches the model."""

    train_fraction: float = 0.3
    """Share of the table in the train split (the rest is held out)."""
    arrival: Literal["none", "uniform", "geometric"] = "none"
    """none: the whole train split from step 0, revisited in seeded epochs (its code ends with the first
    pass); uniform or geometric: its rows arrive over arrival_steps (uniform: at a constant rate;
    geometric: the arrived set grows by a constant factor a step), each coded once at its arrival, while
    it is still a held-out row."""
    arrival_steps: int = 2000
    """arrival: the step by which the last row has arrived (later if a batch cannot carry them)."""
    arrival_start: float = 0.0
    """arrival: share of the train split that arrives first (at most a batch a step, from step 0);
    geometric grows from max(1, this share) rows."""

    def validate(self) -> None:
        super().validate()
        check(0 < self.train_fraction < 1, "task.train_fraction", f"{self.train_fraction} is not in (0, 1)")
        check(self.arrival_steps >= 1, "task.arrival_steps", f"{self.arrival_steps} is not >= 1")
        check(0 <= self.arrival_start < 1, "task.arrival_start", f"{self.arrival_start} is not in [0, 1)")


class TableTask(Task):
    """A table of examples with a seeded train / held-out split, revisited for many epochs.

    `_build` makes the layout `x op y = z` over K element tokens (one token per element, then the op
    token and `=`); the question `x op y =` is the scheduled row's layout (known), only z is sent.

    table:        (N, 5) int64, every example (answers with their label noise, fixed per example)
    train_idx:    (n_train,) table indices of the train split; val_idx the rest (held out)
    clean_answers (N,) the answers without label noise

    Training walks the train split in a fresh seeded order each epoch; an example is `new` (enters the
    code length) only in epoch 0. With an arrival schedule (`TableConfig.arrival`) the train split's rows
    arrive instead, in the seeded order of epoch 0, over `arrival_steps` steps: each batch holds the
    step's arrivals (new: coded once, before the step) and fills the rest of the batch with revisits drawn
    without replacement from the rows arrived before it (free: the receiver has them). Once every row has
    arrived, each batch is a seeded draw from the whole split. Every arrival is a uniformly drawn table
    row the model has never trained on: at its arrival it is a held-out row.

        n_train 10, batch 4, arrival=uniform, arrival_steps=4, arrival_start=0.25:
        rows arrived by the end of steps 0..3 (`arrived`): [4, 6, 8, 10] (2 at the start share, + 8 (k+1) / 4)
        step 0: the first 4 rows of the order, all new
        steps 1-3: the next 2 rows (new) + 2 revisits of the rows arrived before the step
        step 4 on: 4 of the 10 rows, drawn without replacement, none new
    """

    is_table = True
    default_loss_on = "answer"

    def _build(self, names: list[str], symbol: str, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        """The layout `x op y = z` over K = len(names) element tokens (token i is element i), then the
        op token and `=`; the table's rows are (x, y, z), z the clean answer (K possible values). Sets
        vocabulary, layout, table, split, label noise, floors, loss mask and the arrival schedule."""
        cfg, seed, label_noise = self.cfg, self.seed, self.label_noise
        self.arrival, self.arrival_steps, self.arrival_start = cfg.arrival, cfg.arrival_steps, cfg.arrival_start
        K = len(names)
        self.vocab = names + [symbol, "="]
        self.seq_len, self.answer_start = 5, 4
        self.target_names = ["o", "y", "=", "z"]
        col = lambda tok: np.full(len(x), tok, dtype=np.int64)  # noqa: E731
        table = np.stack([x, col(K), y, col(K + 1), z], axis=1).astype(np.int64)  # (N, 5)
        self.answer_tokens, self.answer_index = np.arange(K), z
        self._split(table, cfg.train_fraction, seed)
        self._add_label_noise(label_noise, K, seed)
        self.known = np.array([True, True, True, True, False])  # the question x op y = is the row's layout
        self.floor_bits = np.array([0.0, 0.0, 0.0, noise_floor(label_noise, K)])  # H(z | x, y)
        self.uniform_bits = np.array([0.0, 0.0, 0.0, log2(K)])
        every = self.loss_on == "all"
        self.loss_mask = np.array([every, every, every, True])

    def arrived(self, batch_size: int) -> np.ndarray:
        """(K,) int64: train rows arrived by the end of each step 0..K-1, through the step K-1 where the
        last arrives: the law's curve n * f((k + 1) / arrival_steps), at most `batch_size` arrivals a step
        (a backlog arrives in the next steps). Uniform: f(u) = s + (1 - s) u; geometric: the arrived set
        grows by a constant factor a step, from n0 = max(1, s n) rows to n (it doubles at equal intervals,
        as Blier & Ollivier's blocks); s = arrival_start. Without arrivals: today's first pass."""
        cache = self.__dict__.setdefault("_arrived", {})  # batch size -> the curve (computed once)
        if batch_size in cache:
            return cache[batch_size]
        n, S, s = len(self.train_idx), self.arrival_steps, self.arrival_start
        if self.arrival == "none":
            curve = np.full(1, n)
        elif self.arrival == "uniform":  # exact integers: ceil(n0 + (n - n0) (k + 1) / S)
            n0 = math.floor(s * n)
            k = np.arange(1, S + 1, dtype=np.int64)
            curve = n0 + ((n - n0) * k + S - 1) // S
        else:  # geometric
            n0 = max(1, round(s * n))
            u = np.arange(1, S + 1) / S
            curve = np.ceil(n * (n0 / n) ** (1 - u) - 1e-9).astype(np.int64)
        curve = np.minimum(np.maximum(curve, 1), n)
        curve[-1] = n
        out, a = [], 0
        while a < n:
            a = min(int(curve[min(len(out), len(curve) - 1)]), a + batch_size)
            out.append(a)
        cache[batch_size] = np.array(out, dtype=np.int64)
        return cache[batch_size]

    def n_arrived(self, steps: int, batch_size: int) -> int:
        """Train rows arrived in steps 0..steps-1."""
        a = self.arrived(batch_size)
        return 0 if steps <= 0 else int(a[min(steps, len(a)) - 1])

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
        if self.arrival == "none":
            epoch, j = divmod(step, self.steps_per_epoch(batch_size))
            ids = self._epoch_order(epoch)[j * batch_size : (j + 1) * batch_size]
            return ids, np.full(len(ids), epoch == 0)
        before, after = self.n_arrived(step, batch_size), self.n_arrived(step + 1, batch_size)
        order = self._epoch_order(0)  # the arrival order
        k = min(batch_size - (after - before), before)  # revisits: the rest of the batch, of rows arrived before
        revisit = rng_for(self.seed, 5, step).choice(before, size=k, replace=False) if k else np.zeros(0, np.int64)
        ids = np.concatenate([order[before:after], order[revisit]])  # (B,) arrivals first
        return ids, np.arange(len(ids)) < after - before

    def train_batch(self, step: int, batch_size: int) -> Batch:
        ids, new = self.schedule(step, batch_size)
        return Batch(self.table[ids], ids, new)

    def known_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.where(self.known, self.table[ids], 0)  # (B, T) the question, answer unknown

    def sent_ids(self, steps: int, batch_size: int) -> np.ndarray:
        """The train split in the seeded order of epoch 0, as far as it has been sent (first pass, or
        arrivals); revisits send nothing new."""
        return self._epoch_order(0)[: self.n_arrived(steps, batch_size)]

    def eval_sets(self) -> dict[str, np.ndarray]:
        sets = {"val": self.table[self.val_idx], "train": self.table[self.train_idx]}
        if (self.table[:, -1] != self.clean_answers).any():  # label noise: also score the true rule
            clean = self.table[self.val_idx].copy()
            clean[:, -1] = self.clean_answers[self.val_idx]
            sets["val_clean"] = clean
        return sets

    @classmethod
    def metric_names(cls, cfg: TableConfig) -> list[str]:
        return super().metric_names(cfg) + ["train/exact_match", "train/certified_exact"]  # the "train" set's

    def cyclic_phase(self) -> tuple[int, np.ndarray] | None:
        """(p, (N,) phase of each table row) where the answer is a function of a phase in Z_p that the
        Fourier probes read (`lab.probes`: x + y or x - y mod p); None for other tables."""
        return None

    def exact_law(self) -> tuple[np.ndarray, np.ndarray]:
        """A train row, uniformly; its answer right w.p. 1 - eps, else one of the K - 1 others."""
        K = len(self.answer_tokens)
        rows = self.table[self.train_idx].copy()  # (n, 5)
        rows[:, -1] = self.clean_answers[self.train_idx]
        eps = self.label_noise
        if eps == 0:
            return rows, np.full(len(rows), 1.0 / len(rows))
        out = np.repeat(rows, K, axis=0)  # (n K, 5) every answer after every question
        out[:, -1] = np.tile(self.answer_tokens, len(rows))
        right = out[:, -1] == np.repeat(rows[:, -1], K)
        return out, np.where(right, 1 - eps, eps / (K - 1)) / len(rows)
