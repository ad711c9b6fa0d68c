"""What every task provides: vocabulary, token layout, loss mask, floors, and a batch for each step.

A task is a distribution over fixed-length token sequences whose law is known exactly. Sequences are
rows of `T` tokens; the model reads tokens 0..T-2 and predicts targets 1..T-1, so every per-position
array here has length `T - 1` and index `t` refers to the *target* token `x[t + 1]`.

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
    loss_mask:     (T-1,) bool, positions that are trained on and coded
    floor_bits:    (T-1,) float64, exact entropy H(x_t | x_<t) in bits under the sampling law
    uniform_bits:  (T-1,) float64, log2 of the number of values the position can take
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
    def floor_bits_per_example(self) -> float:
        """The aleatoric floor of one example over the coded (masked) positions."""
        return float(self.floor_bits[self.loss_mask].sum())

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
    def schedule(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, new) of batch `step`: which examples it holds and which are seen for the first time.
        Part of the shared algorithm, not of the data: a decoder may know it without the examples."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        raise NotImplementedError

    @property
    def first_tokens(self) -> np.ndarray:
        """The values the first (never predicted) token can take: a coder sends it uniformly."""
        raise NotImplementedError

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
