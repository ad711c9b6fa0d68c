"""Transmitted bits: the prequential code length of the training stream, split into floor and excess.

The NNCP construction: the sender arithmetic-codes each token of a batch with the current model, then
trains on the batch; the receiver decodes with the same model and replays the same training. The code
length of a token is -log2 q(x_t | x_<t) under the model *before* it learned from that batch, which is
exactly the per-token loss `training_step` returns (float64, taken before the optimizer step).

Cumulative metrics (first-pass examples only; revisits in later epochs are free for the receiver, who
replays them, and go to `bits/revisit`):

    bits/total       sum over coded tokens of -log2 q(x_t)
    bits/floor       the task's analytic floor for the same tokens (n_examples * floor per example)
    bits/epistemic   total - floor: what the model paid to learn the rule
    bits/pos/<name>, bits/excess/<name>: the same per predicted position

Windowed rates over the last log interval: bits/example, bits/token, bits/floor_example,
bits/epistemic_example, and ratios against raw text (8 bits per character), against a uniform code over
the vocabulary, and against the floor.

For finite tasks, at each evaluation, the description length of the whole table:

    dl/table = first-pass bits of the train split (the examples not yet sent: coded by the current model)
             + bits of the held-out examples under the current model

All counters live in one float64 vector on the model's device (no host synchronisation on ordinary
steps; one transfer per log step), are summed over DDP ranks every step, and are saved in checkpoints.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lab.loggers import log_metrics

LN2 = math.log(2.0)


class Bits(L.Callback):
    def __init__(self, task, log_every: int, run_dir: Path | None = None):
        self.task, self.every, self.run_dir = task, log_every, run_dir
        self.T1 = task.seq_len - 1
        self.names = task.target_names
        self.mask_np = task.loss_mask
        self.floor_np = task.floor_bits
        self.floor_example = task.floor_bits_per_example
        self.tokens_per_example = int(task.loss_mask.sum())
        # layout of the counter vector: [bits per position (T-1) | n_new | revisit bits | n_revisit | raw bits]
        self.acc = torch.zeros(self.T1 + 4, dtype=torch.float64)
        self.last = self.acc.clone()  # counters at the previous log step (for windowed rates)
        self.seen = torch.zeros(task.table_size() if task.finite else 0, dtype=torch.bool)
        self._val: dict[str, torch.Tensor] = {}
        self.last_dl: dict[str, float] = {}  # the latest evaluation's dl/... metrics

    @property
    def state_key(self) -> str:
        return "Bits"

    # -- set-up and state -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        device = pl_module.device
        self.mask = torch.from_numpy(self.mask_np).to(device)  # (T-1,) bool
        self.scale = self.mask.double() / LN2  # (T-1,) nats -> bits on coded positions, 0 elsewhere
        self.char_bits = torch.from_numpy(8.0 * self.task.char_len).double().to(device)  # (V,)
        self.acc, self.last, self.seen = (t.to(device) for t in (self.acc, self.last, self.seen))

    def state_dict(self) -> dict:
        return {"acc": self.acc.cpu(), "last": self.last.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.acc.device
        self.acc, self.last, self.seen = (state[k].to(device) for k in ("acc", "last", "seen"))

    # -- training: one accumulation per step ----------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bits = outputs["token_loss"] * self.scale  # (B, T-1) coded bits
        new = batch["new"].double()  # (B,)
        targets = batch["x"][:, 1:]  # (B, T-1)
        raw = (self.char_bits[targets] * self.mask).sum(1)  # (B,) raw text bits of the coded tokens
        delta = torch.cat([
            new @ bits,  # (T-1,) first-pass bits per position
            new.sum()[None],
            ((1 - new) @ bits).sum()[None],
            (1 - new).sum()[None],
            (new @ raw)[None],
        ])
        if trainer.world_size > 1:
            delta = trainer.strategy.reduce(delta, reduce_op="sum")
        self.acc += delta
        if self.task.finite:  # which table rows have been transmitted (ids are table indices)
            self.seen[batch["ids"]] |= batch["new"]  # DDP: merged over ranks before each evaluation
        if trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def totals(self) -> dict[str, float]:
        """The cumulative metrics, as Python floats (one host transfer)."""
        a = self.acc.cpu().numpy()
        pos, n = a[: self.T1], a[self.T1]
        total = float(pos[self.mask_np].sum())
        floor = n * self.floor_example
        out = {
            "bits/total": total, "bits/floor": floor, "bits/epistemic": total - floor,
            "bits/revisit": float(a[self.T1 + 1]), "bits/examples": float(n),
        }
        for t in np.flatnonzero(self.mask_np):
            out[f"bits/pos/{self.names[t]}"] = float(pos[t])
            out[f"bits/excess/{self.names[t]}"] = float(pos[t] - n * self.floor_np[t])
        return out

    def _log(self, trainer, pl_module) -> None:
        a, b = self.acc.cpu().numpy(), self.last.cpu().numpy()
        self.last = self.acc.clone()
        metrics = self.totals()
        w = a - b  # the window since the last log step
        n, n_rev = w[self.T1], w[self.T1 + 2]
        if n > 0:
            total = float(w[: self.T1][self.mask_np].sum())
            floor = n * self.floor_example
            metrics.update({
                "bits/example": total / n,
                "bits/token": total / (n * self.tokens_per_example),
                "bits/floor_example": self.floor_example,
                "bits/epistemic_example": (total - floor) / n,
                "bits/ratio_raw": total / w[self.T1 + 3],
                "bits/ratio_uniform": total / (n * self.tokens_per_example * math.log2(self.task.vocab_size)),
                "bits/ratio_floor": total / floor if floor > 0 else float("nan"),
            })
            if not self.task.finite:  # (a finite task shows dl/table instead)
                bar = {"bits/ex": total / n, "floor": self.floor_example, "epi": (total - floor) / n}
                for k, v in bar.items():
                    pl_module.log(k, v, prog_bar=True, logger=False)
        if n_rev > 0:
            metrics["bits/revisit_example"] = float(w[self.T1 + 1]) / n_rev
        metrics["examples_seen"] = float(pl_module.examples_seen)
        log_metrics(trainer, metrics)

    # -- evaluation: description length of the whole table (finite tasks) -----------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val = {}
        if self.task.finite and trainer.world_size > 1:  # every rank learns what the others sent
            self.seen = trainer.strategy.reduce(self.seen.double(), reduce_op="sum") > 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.task.finite:
            return
        name = pl_module.eval_names[dataloader_idx]
        if name not in ("val", "train"):
            return
        bits = outputs["example_bits"]  # (B,)
        if name == "train":  # only the rows not yet transmitted are coded by the current model
            start = batch_idx * trainer.val_dataloaders[dataloader_idx].batch_size
            ids = torch.from_numpy(self.task.eval_ids()["train"][start : start + len(bits)]).to(bits.device)
            bits = bits * ~self.seen[ids]
        self._val[name] = self._val.get(name, 0.0) + bits.sum()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.task.finite or trainer.sanity_checking:
            return
        n_table = self.task.table_size()
        first_pass = self.acc[: self.T1][self.mask].sum()
        dl = float(first_pass + sum(self._val.values()))
        floor = n_table * self.floor_example
        raw = n_table * float(self.task.uniform_bits[self.mask_np].sum())
        self.last_dl = {"dl/table": dl, "dl/table_epistemic": dl - floor, "dl/table_floor": floor,
                        "dl/table_raw": raw}
        pl_module.log("dl/table", dl, logger=False)
        log_metrics(trainer, {**self.last_dl, "examples_seen": float(pl_module.examples_seen)})

    # -- the end: a per-position table in the run directory -------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        a = self.acc.cpu().numpy()
        n = a[self.T1]
        with open(Path(self.run_dir) / "positions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["position", "coded", "floor_bits", "total_bits", "excess_bits", "bits_per_example"])
            for t, name in enumerate(self.names):
                total = float(a[t])
                w.writerow([name, bool(self.mask_np[t]), f"{self.floor_np[t]:.6f}", f"{total:.3f}",
                            f"{total - n * self.floor_np[t]:.3f}", f"{total / n if n else 0:.6f}"])
