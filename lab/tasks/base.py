"""What every task provides (the contract), the plan of what the stream sends, and the registry.

A task is one module in `lab/tasks/` (or a package's entry point in the group `compression_lab.tasks`):
a `Task` subclass decorated with `@register`, with its options as a `TaskConfig` subclass (typed
fields, each with a docstring, and a `validate` that names the key of an impossible value). The task
is built from that dataclass (`Addition(AdditionConfig(n_digits=4), seed)`): its options are declared
once. Nothing else needs to change: `lab.tasks` imports every module of the package, the config's
`task` section is the chosen task's dataclass, `python -m lab tasks` lists it, and
`tests/test_task_contract.py` checks it (with the small instance the task names in `small`).

This package depends on numpy and `lab.errors` only (no torch, no `lab.config`): `lab.config` imports
the registry, never the other way round.

A task is a distribution over fixed-length token sequences whose law is known exactly. Sequences are
rows of `T` tokens; the model reads tokens 0..T-2 and predicts targets 1..T-1, so every per-position
array here has length `T - 1` and index `t` refers to the *target* token `x[t + 1]`.

The transmitted stream (`lab.bits` states it once for the whole lab): the receiver knows the shared
algorithm (this class, the config, the seed's schedule of example ids), so the tokens in `known` cost
nothing (the layout's `s + = e`, and for a table task the question x op y of the scheduled row). Every
other target is sent: by the model when it is trained on (`loss_mask`), else by the task's exact law
(`law_probs`), at exactly its floor. `Task.plan` says which, once, for every reader.

Every training batch is a pure function of `(seed, step)`: a resumed run sees exactly the batches an
uninterrupted one would, and all ranks of a multi-process run build the same global batch and each
take a slice of it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from lab.errors import check


@dataclass
class TaskConfig:
    """What every task's options share; each task subclasses it with its own (`Task.Config`)."""

    name: str = "addition"
    """Which registered task (`python -m lab tasks` lists them)."""
    loss_on: Literal["auto", "all", "answer"] = "auto"
    """Targets trained on: all, answer, or auto (the task's default: addition all, tables answer)."""
    label_noise: float = 0.0
    """The answer replaced by a uniformly drawn wrong one with this probability, fixed per example."""

    def validate(self) -> None:
        """Raise `ConfigError` naming the key of an impossible value (a task extends this)."""
        check(0 <= self.label_noise < 1, "task.label_noise", f"{self.label_noise} is not in [0, 1)")


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


class Plan:
    """What the stream sends of one example and where each reader finds it: computed once from the task
    (`Task.plan`) and read by the module, the bits callback, the coder, the evaluation and the two-part
    code. Positions are target indices 0..T-2 (target t is token x[t + 1]).

        8-digit addition, loss_on=answer (28 targets a7..a0 + b7..b0 = c8..c0 e, answer from target 18):
        sent        the 16 operand digits and the 9 sum digits (25; `+ = e` are known)
        by_model    the 9 sum digits (the operands are sent by their law)
        trained     c8..c0 e (targets 18..27)
        answer      c8..c0 e (targets 18..27; greedy generation produces them)
        step_cols   what the training step's per-token loss covers: the model-sent positions and the
                    answer (targets 18..27); model_cols, answer_cols: where each is among them

    sent_mask, model_mask, law_mask: (T-1,) bool, a target sent at all, by the model, by the law.
    sent (S,), by_model (S,) bool, trained (R,), answer (A,), step_cols (K,), model_cols (S_model,),
    answer_cols (A,): int64 positions or columns.
    """

    def __init__(self, known: np.ndarray, loss_mask: np.ndarray, answer_start: int):
        self.sent_mask = ~known[1:]  # (T-1,)
        self.model_mask = self.sent_mask & loss_mask  # (T-1,) sent by the model being trained
        self.law_mask = self.sent_mask & ~loss_mask  # (T-1,) sent by the task's exact law
        self.sent = np.flatnonzero(self.sent_mask)  # (S,)
        self.by_model = self.model_mask[self.sent]  # (S,)
        self.trained = np.flatnonzero(loss_mask)  # (R,)
        self.answer = np.arange(answer_start - 1, len(loss_mask))  # (A,)
        self.step_cols = np.union1d(np.flatnonzero(self.model_mask), self.answer)  # (K,)
        col = {int(t): k for k, t in enumerate(self.step_cols)}
        self.model_cols = np.array([col[int(t)] for t in self.sent[self.by_model]], dtype=np.int64)
        self.answer_cols = np.array([col[int(t)] for t in self.answer], dtype=np.int64)


@dataclass
class Score:
    """One evaluation set's results under the current model (`lab.module` computes them).

    n:         rows in the set
    nats:      (T-1,) mean teacher-forced loss per target position, nats, float64 ("val", "train"); (A,)
               for the answer's positions alone in the task's own sets (`lab.module` scores them so)
    exact:     share of rows whose greedy-generated answer is the row's answer
    certified: share of rows whose answer cost under 1 bit (greedy must produce it)
    acc:       (A,) share right per answer position: of the generated answer ("val", "train"); after the
               true prefix (teacher-forced argmax) in the task's own sets, whose exact match is the same
    """

    n: float
    nats: np.ndarray
    exact: float
    certified: float
    acc: np.ndarray


class Task:
    """Base class. Subclasses set the attributes below in `__init__` (after `super().__init__`) and
    implement `schedule`, `train_batch`, `known_tokens`, `eval_sets` (and `law_probs` if some sent
    target is not trained on; `eval_metrics` and `metric_names` for evaluation sets of their own).

    Class attributes (set by the subclass, read before any instance exists):
    name:            the registered name (`task.name`)
    Config:          its options, a `TaskConfig` subclass; `Task(cfg, seed)` builds the task of them
    default_loss_on: what `task.loss_on=auto` means for this task
    significance:    True if the task gives digit significance ids (`coupled_ids`), needed by the
                     coupled and rotary position embeddings
    small:           options of a small instance whose law can be enumerated (`exact_law`), for the tests
    is_table:        True if the task is a fixed table revisited for many epochs (`lab.tasks.table`)
    headline:        {metric: label} of the task's own metrics the evaluation line and the done line show

    Instance attributes (set in `__init__`):

    cfg, seed:     the options and the seed it was built from; loss_on: "auto" resolved
    vocab:         list of token strings; token id = index
    seq_len:       T, tokens per example
    answer_start:  index of the first answer token; greedy generation starts here
    target_names:  (T-1,) a short name per predicted position, e.g. "a7", "+", "c8"
    loss_mask:     (T-1,) bool, positions that are trained on (and coded by the model, unless known)
    known:         (T,) bool, tokens the receiver knows from the layout and the schedule (`known_tokens`);
                   the first token must be one of them (it is never predicted)
    floor_bits:    (T-1,) float64, exact entropy H(x_t | x_<t, what is known) in bits under the
                   stream's law (0 at known positions)
    uniform_bits:  (T-1,) float64, log2 of the number of values a sent position can take (0 if known)
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
    coupled_ids: np.ndarray | None = None

    name: str = ""
    Config: type[TaskConfig] = TaskConfig
    default_loss_on: str = "all"
    significance: bool = False
    small: dict = {}
    is_table: bool = False
    headline: dict[str, str] = {}

    def __init__(self, cfg: TaskConfig | None = None, seed: int = 0):
        self.cfg = cfg if cfg is not None else self.Config()
        self.seed = seed
        self.loss_on = self.default_loss_on if self.cfg.loss_on == "auto" else self.cfg.loss_on
        self.label_noise = self.cfg.label_noise

    @classmethod
    def of(cls, seed: int = 0, **options) -> Task:
        """The task with these options (the rest at their defaults): `Addition.of(n_digits=2)`."""
        return cls(cls.Config(**options), seed)

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

    @cached_property
    def plan(self) -> Plan:
        """What the stream sends and by what (`Plan`), computed once."""
        return Plan(self.known, self.loss_mask, self.answer_start)

    @property
    def floor_bits_per_example(self) -> float:
        """The aleatoric floor of one example: the entropy of everything the stream sends for it."""
        return float(self.floor_bits[self.plan.sent].sum())

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

    def show(self, row: np.ndarray) -> str:
        """Token ids as readable tokens, space-separated (every token, the unpredicted first one included)."""
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

    def known_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(B,) example ids -> (B, T) int64 rows holding the known tokens (0 elsewhere): what a receiver
        knows of each example before decoding it."""
        raise NotImplementedError

    def law_probs(self, x: np.ndarray, t: int) -> np.ndarray:
        """(B, T) rows and a law-sent target t -> (B, V) float64: the exact law of x[:, t+1] given
        x[:, :t+1] under the stream's sampling law. Needed only where `plan.law_mask` has positions."""
        raise NotImplementedError(f"{type(self).__name__} has no law for target {self.target_names[t]}")

    def law_bits(self, x: np.ndarray) -> np.ndarray:
        """(B, T) rows -> (B, T-1) float64: -log2 of each law-sent target under the law (0 elsewhere)."""
        out = np.zeros((len(x), self.seq_len - 1))
        for t in np.flatnonzero(self.plan.law_mask):
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

    # -- evaluation -----------------------------------------------------------------------------------
    def eval_sets(self) -> dict[str, np.ndarray]:
        """Named evaluation sets, each (N, T) int64: always "val" (held-out), "train" for table tasks,
        "val_clean" (the held-out rows with their true answers) under label noise, and the task's own."""
        raise NotImplementedError

    def eval_metrics(self, scores: dict[str, Score]) -> dict[str, float]:
        """The metrics of the evaluation sets beyond "val" and "train" (which the module scores the same
        way for every task): here `val/clean_exact_match`; a task with sets of its own extends this."""
        return {"val/clean_exact_match": scores["val_clean"].exact} if "val_clean" in scores else {}

    confirmed: tuple[str, ...] = ()  # stop metrics that `confirm_sets` checks: minima over the sets confirmed
    confirm_margin: float = 0.0

    def confirm_sets(self, stop_metric: str) -> dict[str, np.ndarray]:
        """More rows of evaluation sets, by the sets' names, each (N, T) int64: scored only at an evaluation
        where `confirm_due`, and pooled with those sets before the run may stop. A stop rule precise where
        it decides, cheap everywhere else (`make addition`: 100 sums per carry-chain length every evaluation,
        1,500 when the rule is near)."""
        return {}

    def confirm_due(self, metrics: dict[str, float], stop_metric: str, stop_at: float) -> bool:
        """Whether this evaluation's metrics on the regular sets are near enough the stop to score the
        confirmation rows: `stop_metric` within `confirm_margin` of `stop_at`."""
        return metrics.get(stop_metric, -1.0) >= stop_at - self.confirm_margin

    @classmethod
    def metric_names(cls, cfg: TaskConfig) -> list[str]:
        """The evaluation shares (in [0, 1]) a run of this task with options `cfg` logs, which
        `train.stop_metric` may watch."""
        return ["val/exact_match", "val/certified_exact"] + (["val/clean_exact_match"] if cfg.label_noise > 0 else [])

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
