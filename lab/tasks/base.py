"""What every task provides (the contract), the registry, and the machinery of table tasks.

A task is one module in `lab/tasks/` (or a package's entry point in the group `compression_lab.tasks`):
a `Task` subclass decorated with `@register`, with its options as a `TaskConfig` subclass (typed
fields, each with a docstring, and a `validate` that names the key of an impossible value). Nothing
else needs to change: `lab.tasks` imports every module of the package, the config's `task` section is
the chosen task's dataclass, `python -m lab tasks` lists it, and `tests/test_task_contract.py` checks it
(with the small instance the task names in `small`).

A task is a distribution over fixed-length token sequences whose law is known exactly. Sequences are
rows of `T` tokens; the model reads tokens 0..T-2 and predicts targets 1..T-1, so every per-position
array here has length `T - 1` and index `t` refers to the *target* token `x[t + 1]`.

The transmitted stream (`lab.bits` states it once for the whole lab): the receiver knows the shared
algorithm (this class, the config, the seed's schedule of example ids), so the tokens in `known` cost
nothing (the layout's `s + = e`, and for a table task the question x op y of the scheduled row). Every
other target is sent: by the model when it is trained on (`loss_mask`), else by the task's exact law
(`law_probs`), at exactly its floor.

Every training batch is a pure function of `(seed, step)`: a resumed run sees exactly the batches an
uninterrupted one would, and all ranks of a multi-process run build the same global batch and each
take a slice of it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch

from lab.config import TaskConfig, check


@dataclass
class Batch:
    """One global training batch.

    x:   (B, T) int64 token rows
    ids: (B,)   int64 example ids, unique within the task (stream position or table index)
    new: (B,)   bool, True where the example is seen for the first time (it enters the code length)
    """

    x: np.ndarray
    ids: np.ndarray
    new: np.ndarray

    def slice(self, rank: int, world: int) -> Batch:
        """This rank's contiguous share of the global batch (sizes differ by at most one row)."""
        bounds = np.linspace(0, len(self.ids), world + 1).round().astype(int)
        s = slice(bounds[rank], bounds[rank + 1])
        return Batch(self.x[s], self.ids[s], self.new[s])

    def to_torch(self) -> dict[str, torch.Tensor]:
        return {
            "x": torch.from_numpy(self.x),
            "ids": torch.from_numpy(self.ids),
            "new": torch.from_numpy(self.new),
        }


class Task:
    """Base class. Subclasses set the attributes below in `__init__` and implement `schedule`,
    `train_batch`, `layout`, `eval_sets` (and `law_probs` if some sent target is not trained on).

    Class attributes (set by the subclass, read before any instance exists):
    name:            the registered name (`task.name`)
    Config:          its options, a `TaskConfig` subclass; `from_config` passes each field (but name)
                     to `__init__` as a keyword, with `seed`
    default_loss_on: what `task.loss_on=auto` means for this task
    significance:    True if the task gives digit significance ids (`coupled_ids`), needed by the
                     coupled and rotary position embeddings
    small:           options of a small instance whose law can be enumerated (`exact_law`), for the tests

    Instance attributes (set in `__init__`):

    vocab:         list of token strings; token id = index
    seq_len:       T, tokens per example
    answer_start:  index of the first answer token; greedy generation starts here
    target_names:  (T-1,) a short name per predicted position, e.g. "a7", "+", "c8"
    loss_mask:     (T-1,) bool, positions that are trained on (and coded by the model, unless known)
    known:         (T,) bool, tokens the receiver knows from the layout and the schedule (`layout`);
                   the first token must be one of them (it is never predicted)
    floor_bits:    (T-1,) float64, exact entropy H(x_t | x_<t, what is known) in bits under the
                   stream's law (0 at known positions)
    uniform_bits:  (T-1,) float64, log2 of the number of values a sent position can take (0 if known)
    finite:        True if the task is a fixed table revisited for many epochs
    coupled_ids:   (T-1,) int64 or None, a position id per *input* position t (the model reads x[t]
                   and predicts x[t+1]) that is shared by positions handling digits of equal
                   significance (position coupling); 0 = no significance. None: the task has none.
    """

    vocab: list[str]
    seq_len: int
    answer_start: int
    target_names: list[str]
    loss_mask: np.ndarray
    known: np.ndarray
    floor_bits: np.ndarray
    uniform_bits: np.ndarray
    finite: bool = False
    coupled_ids: np.ndarray | None = None

    name: str = ""
    Config: type[TaskConfig] = TaskConfig
    default_loss_on: str = "all"
    significance: bool = False
    small: dict = {}

    @classmethod
    def from_config(cls, cfg: TaskConfig, seed: int) -> Task:
        """The task of a config's `task` section: each option as a keyword, `loss_on=auto` resolved."""
        kw = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "name"}
        if kw.get("loss_on") == "auto":
            kw["loss_on"] = cls.default_loss_on
        return cls(**kw, seed=seed)

    @classmethod
    def summary(cls) -> str:
        """The first line of the task module's docstring."""
        doc = inspect.getmodule(cls).__doc__ or cls.__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else cls.__name__

    # -- layout helpers -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def block_size(self) -> int:
        """How many tokens the model reads at once (all but the last)."""
        return self.seq_len - 1

    @property
    def answer_positions(self) -> np.ndarray:
        """Target indices of the answer tokens (what greedy generation produces)."""
        return np.arange(self.answer_start - 1, self.seq_len - 1)

    @property
    def sent(self) -> np.ndarray:
        """(T-1,) bool: targets the stream transmits (every target the receiver does not know)."""
        return ~self.known[1:]

    @property
    def model_coded(self) -> np.ndarray:
        """(T-1,) bool: sent targets coded by the model being trained (trained on, not known)."""
        return self.sent & self.loss_mask

    @property
    def law_coded(self) -> np.ndarray:
        """(T-1,) bool: sent targets the model is not trained on, coded by the task's exact law."""
        return self.sent & ~self.loss_mask

    @property
    def floor_bits_per_example(self) -> float:
        """The aleatoric floor of one example: the entropy of everything the stream sends for it."""
        return float(self.floor_bits[self.sent].sum())

    @property
    def char_len(self) -> np.ndarray:
        """(V,) characters each token takes in the text form (for the raw-text compression ratio)."""
        return np.array([len(self.token_text(i)) for i in range(self.vocab_size)], dtype=np.int64)

    def token_text(self, token: int) -> str:
        """How a token is written in the text form of the stream (`to_text`)."""
        return self.vocab[token]

    def to_text(self, row: np.ndarray) -> str:
        """One example as a line of text: the predicted tokens, as the classical compressors see them."""
        return "".join(self.token_text(int(t)) for t in row[1:])

    def decode(self, row: np.ndarray) -> str:
        """Token ids to a readable string (every token, the unpredicted first one included)."""
        return " ".join(self.vocab[int(t)] for t in row)

    # -- data -----------------------------------------------------------------------------------------
    def batch_size(self, requested: int) -> int:
        """The global batch size of `train.batch_size` (a table task reads 0 as its whole train split)."""
        return requested

    def schedule(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, new) of batch `step`: which examples it holds and which are seen for the first time.
        Part of the shared algorithm, not of the data: a decoder may know it without the examples."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Global batch `step`: a pure function of (seed, step), never holding a held-out example."""
        raise NotImplementedError

    def layout(self, ids: np.ndarray) -> np.ndarray:
        """(B,) example ids -> (B, T) int64 rows holding the known tokens (0 elsewhere): what a receiver
        knows of each example before decoding it."""
        raise NotImplementedError

    def law_probs(self, x: np.ndarray, t: int) -> np.ndarray:
        """(B, T) rows and a law-coded target t -> (B, V) float64: the exact law of x[:, t+1] given
        x[:, :t+1] under the stream's sampling law. Needed only where `law_coded` has positions."""
        raise NotImplementedError(f"{type(self).__name__} has no law for target {self.target_names[t]}")

    def law_bits(self, x: np.ndarray) -> np.ndarray:
        """(B, T) rows -> (B, T-1) float64: -log2 of each law-coded target under the law (0 elsewhere)."""
        out = np.zeros((len(x), self.seq_len - 1))
        for t in np.flatnonzero(self.law_coded):
            p = self.law_probs(x, t)  # (B, V)
            out[:, t] = -np.log2(p[np.arange(len(x)), x[:, t + 1]])
        return out

    def sent_ids(self, steps: int, batch_size: int) -> np.ndarray:
        """Ids of the examples transmitted (first seen) in batches 0..steps-1: a pure function of the
        schedule, so every process of a run (and a resumed run) knows it without bookkeeping."""
        parts = []
        for step in range(steps):
            ids, new = self.schedule(step, batch_size)
            parts.append(ids[new])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def eval_sets(self) -> dict[str, np.ndarray]:
        """Named evaluation sets, each (N, T) int64: always "val" (held-out), "train" for finite tasks."""
        raise NotImplementedError

    def exact_law(self) -> tuple[np.ndarray, np.ndarray]:
        """The stream's law of one sent example, enumerated: (N, T) int64 rows, (N,) float64
        probabilities summing to 1 (label noise included). Only for small instances (the tests compare
        the floors with its conditional entropies and the batches with its support)."""
        raise NotImplementedError(f"{type(self).__name__} cannot enumerate its law")


def noise_floor(eps: float, k: int) -> float:
    """Entropy in bits of an answer that is right w.p. 1 - eps, else uniform over the k - 1 wrong ones."""
    if eps <= 0:
        return 0.0
    h = -eps * math.log2(eps) - (1 - eps) * math.log2(1 - eps) if eps < 1 else 0.0
    return h + eps * log2(k - 1)


@dataclass
class TableConfig(TaskConfig):
    """Options of every table task (`Finite`): how the train split reaches the model."""

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
        check(self.arrival_steps >= 1, "task.arrival_steps", f"{self.arrival_steps} is not >= 1")
        check(0 <= self.arrival_start < 1, "task.arrival_start", f"{self.arrival_start} is not in [0, 1)")


class Finite(Task):
    """A table of examples with a seeded train / held-out split, revisited for many epochs.

    `_build` makes the layout `x op y = z` over K element tokens (one token per element, then the op
    token and `=`); the question `x op y =` is the scheduled row's layout (known), only z is sent.

    table:        (N, 5) int64, every example (answers with their label noise, fixed per example)
    train_idx:    (n_train,) table indices of the train split; val_idx the rest (held out)
    clean_answers (N,) the answers without label noise
    eval_ids():   {set name: table indices of its rows}, for the sets of `eval_sets`

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

    finite = True
    default_loss_on = "answer"
    arrival, arrival_steps, arrival_start = "none", 2000, 0.0  # (`_set_arrival`)

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
        self.label_noise = label_noise
        self._add_label_noise(label_noise, K, seed)
        self.known = np.array([True, True, True, True, False])  # the question x op y = is the row's layout
        self.floor_bits = np.array([0.0, 0.0, 0.0, noise_floor(label_noise, K)])  # H(z | x, y)
        self.uniform_bits = np.array([0.0, 0.0, 0.0, log2(K)])
        self.loss_mask = np.array([loss_on == "all", loss_on == "all", loss_on == "all", True])

    def _set_arrival(self, arrival: str = "none", arrival_steps: int = 2000, arrival_start: float = 0.0) -> None:
        """The arrival schedule of the train split (`TableConfig`); "none": the whole split from step 0."""
        self.arrival, self.arrival_steps, self.arrival_start = arrival, arrival_steps, arrival_start

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

    def layout(self, ids: np.ndarray) -> np.ndarray:
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

    def eval_ids(self) -> dict[str, np.ndarray]:
        return {"val": self.val_idx, "train": self.train_idx, "val_clean": self.val_idx}

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


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available as `task.name=<cls.name>`."""
    if not cls.name or cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.__name__}: name {cls.name!r} is empty or taken")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, TaskConfig)) or cls.Config().name != cls.name:
        raise ValueError(f"task {cls.name}: Config must subclass TaskConfig with name defaulting to {cls.name!r}")
    TASKS[cls.name] = cls
    return cls


def log2(n: float) -> float:
    return math.log2(n) if n > 0 else 0.0


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for each key: (seed, 0) held-out, (seed, 1, step) training, ..."""
    return np.random.default_rng([seed, *key])
