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
        self.coded = np.flatnonzero(task.loss_mask)  # (M,) the coded target positions
        self.M = len(self.coded)
        self.names = [task.target_names[t] for t in self.coded]
        self.floor = task.floor_bits[self.coded]  # (M,)
        self.floor_example = task.floor_bits_per_example
        # counters: row 0 first-pass examples, row 1 revisits; columns: bits per coded position (M),
        # raw text bits, examples
        self.acc = torch.zeros(2, self.M + 2, dtype=torch.float64)
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
        self.coded_idx = torch.from_numpy(self.coded).to(device)  # (M,)
        self.char_bits = torch.from_numpy(8.0 * self.task.char_len).double().to(device)  # (V,)
        self.acc, self.last, self.seen = (t.to(device) for t in (self.acc, self.last, self.seen))

    def state_dict(self) -> dict:
        return {"acc": self.acc.cpu(), "last": self.last.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.acc.device
        self.acc, self.last, self.seen = (state[k].to(device) for k in ("acc", "last", "seen"))

    # -- training: one accumulation per step ----------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        nats = outputs["token_loss"].index_select(1, self.coded_idx)  # (B, M) coded positions, before the step
        targets = batch["x"][:, 1:].index_select(1, self.coded_idx)  # (B, M)
        feats = torch.cat([
            nats / LN2,  # bits per coded position
            self.char_bits[targets].sum(1, keepdim=True),  # raw text bits of the coded tokens
            torch.ones_like(nats[:, :1]),  # one example
        ], dim=1)  # (B, M+2)
        new = batch["new"].double()  # (B,)
        delta = torch.stack([new, 1 - new]) @ feats  # (2, M+2): first pass, revisits
        if trainer.world_size > 1:
            delta = trainer.strategy.reduce(delta, reduce_op="sum")
        self.acc += delta
        if self.task.finite:  # which table rows have been transmitted (ids are table indices)
            self.seen[batch["ids"]] |= batch["new"]  # DDP: merged over ranks before each evaluation
        if trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def totals(self) -> dict[str, float]:
        """The cumulative metrics, as Python floats (one host transfer)."""
        first, revisit = self.acc.cpu().numpy()
        pos, n = first[: self.M], first[self.M + 1]
        total, floor = float(pos.sum()), n * self.floor_example
        out = {
            "bits/total": total, "bits/floor": floor, "bits/epistemic": total - floor,
            "bits/revisit": float(revisit[: self.M].sum()), "bits/examples": float(n),
        }
        for name, bits, fl in zip(self.names, pos, self.floor):
            out[f"bits/pos/{name}"] = float(bits)
            out[f"bits/excess/{name}"] = float(bits - n * fl)
        return out

    def _log(self, trainer, pl_module) -> None:
        w = (self.acc - self.last).cpu().numpy()  # the window since the last log step: (2, M+2)
        self.last = self.acc.clone()
        metrics = self.totals()
        n, n_rev = w[0, self.M + 1], w[1, self.M + 1]
        if n > 0:
            total = float(w[0, : self.M].sum())
            floor = n * self.floor_example
            metrics.update({
                "bits/example": total / n,
                "bits/token": total / (n * self.M),
                "bits/floor_example": self.floor_example,
                "bits/epistemic_example": (total - floor) / n,
                "bits/ratio_raw": total / w[0, self.M],
                "bits/ratio_uniform": total / (n * self.M * math.log2(self.task.vocab_size)),
                "bits/ratio_floor": total / floor if floor > 0 else float("nan"),
            })
            if not self.task.finite:  # (a finite task shows dl/table instead)
                bar = {"bits/ex": total / n, "floor": self.floor_example, "epi": (total - floor) / n}
                for k, v in bar.items():
                    pl_module.log(k, v, prog_bar=True, logger=False)
        if n_rev > 0:
            metrics["bits/revisit_example"] = float(w[1, : self.M].sum()) / n_rev
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
        first_pass = self.acc[0, : self.M].sum()
        dl = float(first_pass + sum(self._val.values()))
        floor = n_table * self.floor_example
        raw = n_table * float(self.task.uniform_bits[self.coded].sum())
        self.last_dl = {"dl/table": dl, "dl/table_epistemic": dl - floor, "dl/table_floor": floor,
                        "dl/table_raw": raw}
        pl_module.log("dl/table", dl, logger=False)
        log_metrics(trainer, {**self.last_dl, "examples_seen": float(pl_module.examples_seen)})

    # -- the end: a per-position table in the run directory -------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        first, revisit = self.acc.cpu().numpy()
        n = first[self.M + 1]
        with open(Path(self.run_dir) / "positions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["position", "floor_bits", "total_bits", "excess_bits", "bits_per_example", "revisit_bits"])
            for i, name in enumerate(self.names):
                w.writerow([name, f"{self.floor[i]:.6f}", f"{first[i]:.3f}", f"{first[i] - n * self.floor[i]:.3f}",
                            f"{first[i] / n if n else 0:.6f}", f"{revisit[i]:.3f}"])
