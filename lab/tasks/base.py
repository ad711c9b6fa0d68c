"""What every task provides: vocabulary, token layout, loss mask, floors, and a batch for each step.

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

import math
from dataclasses import dataclass

import numpy as np
import torch


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
    """Base class. Subclasses set the attributes below in `__init__` and implement `train_batch`.

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

    def table_size(self) -> int:
        """Examples in the whole table (finite tasks only)."""
        raise NotImplementedError


def log2(n: float) -> float:
    return math.log2(n) if n > 0 else 0.0


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for each key: (seed, 0) held-out, (seed, 1, step) training, ..."""
    return np.random.default_rng([seed, *key])
