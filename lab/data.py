"""Lightning data: the training stream as an endless iterable of batches, the evaluation sets as tensors.

Batch `step` is `task.train_batch(step, batch_size)`, a pure function of (seed, step). The iterator
starts at the trainer's restored `global_step`, so a resumed run continues the stream exactly where
the checkpoint left it. With several processes every rank builds the same global batch and keeps its
own slice (`Batch.slice`), so DDP sees the same examples as one process with the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lab.tasks import Batch, Task


def to_torch(batch: Batch) -> dict[str, torch.Tensor]:
    """A batch's arrays as tensors (sharing their memory): x (B, T), ids (B,), new (B,)."""
    return {"x": torch.from_numpy(batch.x), "ids": torch.from_numpy(batch.ids), "new": torch.from_numpy(batch.new)}


class TrainStream(IterableDataset):
    def __init__(self, task: Task, batch_size: int, start_step: int, rank: int, world: int):
        self.task, self.batch_size, self.start_step = task, batch_size, start_step
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step = self.start_step
        while True:
            batch = self.task.train_batch(step, self.batch_size)
            out = to_torch(batch.slice(self.rank, self.world))
            out["n_global"] = len(batch.ids)  # examples in the whole (all-rank) batch; a plain int
            yield out
            step += 1


class LabData(L.LightningDataModule):
    def __init__(self, task: Task, batch_size: int, eval_batch_size: int):
        """batch_size: the global batch, resolved (`lab.build.Built.batch_size`)."""
        super().__init__()
        self.task = task
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # its own generator: creating the iterator must not draw from the global RNG (dropout's)
        stream = TrainStream(self.task, self.batch_size, step, rank, world)
        return DataLoader(stream, batch_size=None, generator=torch.Generator())

    def val_dataloader(self) -> list[DataLoader]:
        # every rank evaluates the whole set: exact metrics without gathering, and eval is cheap
        return [
            DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=self.eval_batch_size)
            for x in self.task.eval_sets().values()
        ]
