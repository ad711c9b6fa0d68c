"""Transmitted bits: the code length of the training stream, split into floor and excess.

The transmitted stream, the one definition the whole lab uses (this callback, `lab compress`, the
floors, the compressor comparison and the reports):

- The sender and the receiver share the algorithm: the code, the config and seed, hence the model's
  initial weights, the training schedule (which example ids each batch holds, which are new) and the
  task's layout. What that determines is *known* (`Task.known`) and free: the layout tokens `s + = e`
  of addition, and for a table task the question `x op y =` of each scheduled row (the table's rows
  are public; their answers are the data).
- Every other token of a new example is *sent*, in order, position by position:
  - by the model being trained, if it is trained on that position (`task.loss_mask`): -log2 q(x_t |
    x_<t) under the model as it is *before* the batch's step, without dropout (the NNCP construction:
    code the batch, then train on it; the receiver decodes, then replays the same step);
  - otherwise by the task's exact sampling law (`Task.law_probs`; for addition with `loss_on=answer`,
    the operands), whose expected cost is exactly the position's floor.
- Revisits (later epochs of a table task) are free: the receiver has the rows and replays them.

    bits/total       the code length of the stream so far: sum over sent tokens of new examples
    bits/model       the part the model codes (equal to bits/total when the loss is on every token)
    bits/floor       the floor of the same tokens: n_examples * the entropy of one example's sent tokens
    bits/epistemic   total - floor: what the model paid to learn the rule
    bits/pos/<name>, bits/excess/<name>: the same per sent position
    bits/certified_exact  (windowed) the share of new examples whose answer cost under 1 bit: each of
                     its tokens had probability > 1/2, so greedy decoding from the prompt produces that
                     answer exactly. A lower bound on the model's exact match on fresh examples from the
                     stream, read off the code itself, with no held-out set (`val/certified_exact` is
                     the same on the held-out rows, always <= `val/exact_match`). With label noise it
                     certifies the answer as labelled, noise included.
    bits/exact       (windowed) the share of new examples whose every answer token was the argmax of the
                     model before the step: greedy decoding's exact match on them (certified implies it)

So with `task.loss_on=answer`, bits/total is the operands at their law (exactly their floor) plus the
answer under the model: bits/epistemic is the answer's excess alone. `lab compress` writes a file of
this length (to within the arithmetic coder's overhead: 0.05% + 64 bits).

Windowed rates over the last log interval: bits/example, bits/token (per sent token),
bits/floor_example, bits/epistemic_example, and ratios against the example's text (8 bits per
character), against a uniform code over the vocabulary for each sent token, and against the floor.

At each evaluation, over the window of new examples since the previous one (its "arrivals": for a table
task with `task.arrival`, the train rows that arrived; each had never been trained on, so at its arrival
it was a held-out row and these are held-out measures read off the training stream alone):

    bits/arrivals                 new examples in the window
    bits/arrival_example          mean bits per arrival, with _lo/_hi its 95% interval (normal, from
                                  the window's sum of squares)
    bits/arrival_exact            greedy exact match of the arrivals before their step, 95% Wilson
                                  interval in _lo/_hi
    bits/arrival_certified        the share certified (answer under 1 bit), with its Wilson interval

For finite tasks, at each evaluation, the description length of the whole table:

    dl/table = first-pass bits of the train split (the rows not yet sent: coded by the current model)
             + bits of the held-out rows under the current model

Counters live in one float64 vector on the model's device (no host synchronisation on ordinary steps;
one transfer per log step), are summed over DDP ranks every step, and are saved in checkpoints. Which
rows have been sent is a function of the schedule and the step, not a record. A non-finite loss or code
length stops the run (`NonFiniteError`) before it reaches a log row or a checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lab.loggers import log_metrics, write_atomic

LN2 = math.log(2.0)


class NonFiniteError(RuntimeError):
    """The loss, a code length or the weights became non-finite: the run stops, keeping its last good
    checkpoint."""


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial share k / n (95% for z = 1.96): (low, high) in [0, 1]."""
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return 0.0 if k <= 0 else max(0.0, centre - half), 1.0 if k >= n else min(1.0, centre + half)


class Bits(L.Callback):
    def __init__(self, task, log_every: int, run_dir: Path | None = None, batch_size: int = 0):
        self.task, self.every, self.run_dir = task, log_every, run_dir
        self.batch_size = task.batch_size(batch_size)  # the global batch (which rows a step sends)
        self.coded = np.flatnonzero(task.sent)  # (M,) the sent target positions
        self.M = len(self.coded)
        self.by_model = task.model_coded[self.coded]  # (M,) sent by the model (else by the task's law)
        self.names = [task.target_names[t] for t in self.coded]
        self.floor = task.floor_bits[self.coded]  # (M,)
        self.floor_example = task.floor_bits_per_example
        self.answer = task.answer_positions  # (A,) the targets greedy decoding produces
        # counters: row 0 first-pass examples, row 1 revisits; columns: bits per sent position (M), then
        M = self.M
        self.TEXT, self.N, self.CERT, self.EXACT, self.SQ = M, M + 1, M + 2, M + 3, M + 4
        # text bits, examples, examples whose answer costs < 1 bit (certified), examples whose answer is
        # the argmax (greedy exact), and the sum over examples of (bits of the example)^2
        self.acc = torch.zeros(2, M + 5, dtype=torch.float64)
        self.last = self.acc.clone()  # counters at the previous log step (for windowed rates)
        self.at_eval = self.acc.clone()  # counters at the previous evaluation (the arrivals' window)
        self.bad_step = torch.tensor(-1)  # the first step whose loss or bits were not finite
        self._logged_step = -1  # the step of the latest bits row
        self._val: dict[str, torch.Tensor] = {}
        self._unsent: torch.Tensor | None = None
        self.last_dl: dict[str, float] = {}  # the latest evaluation's dl/... metrics

    @property
    def state_key(self) -> str:
        return "Bits"

    # -- set-up and state -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        device = pl_module.device
        col = {t: k for k, t in enumerate(pl_module.bits_idx.tolist())}  # target position -> column of the step's nats
        self.model_m = torch.from_numpy(np.flatnonzero(self.by_model)).to(device)  # (M',) sent by the model
        self.model_col = torch.tensor([col[t] for t in self.coded[self.by_model]], device=device)  # (M',)
        self.answer_col = torch.tensor([col[t] for t in self.answer], device=device)  # (A,)
        self.char_bits = torch.from_numpy(8.0 * self.task.char_len).double().to(device)  # (V,)
        self.acc, self.last, self.at_eval, self.bad_step = (
            t.to(device) for t in (self.acc, self.last, self.at_eval, self.bad_step))

    def state_dict(self) -> dict:
        return {"acc": self.acc.cpu(), "last": self.last.cpu(), "at_eval": self.at_eval.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device, width = self.acc.device, self.acc.shape[1]

        def counters(t: torch.Tensor) -> torch.Tensor:  # a checkpoint from before the exact columns: zeros
            return torch.nn.functional.pad(t, (0, width - t.shape[1])).to(device)

        self.acc, self.last = counters(state["acc"]), counters(state["last"])
        self.at_eval = counters(state.get("at_eval", state["acc"]))

    # -- training: one accumulation per step ----------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch["x"]  # (B, T)
        nats = outputs["token_loss"]  # (B, K) the model before the step, at pl_module.bits_idx
        bits = nats.index_select(1, self.model_col) / LN2  # (B, M') the positions the model sends
        if not self.by_model.all():  # the others, the task's law sends
            law = torch.from_numpy(self.task.law_bits(x.cpu().numpy())[:, self.coded]).to(bits.device)  # (B, M)
            bits = law.index_copy(1, self.model_m, bits)  # (B, M)
        feats = torch.cat([
            bits,
            self.char_bits[x].sum(1, keepdim=True),  # the example's text, in bits
            torch.ones_like(bits[:, :1]),  # one example
            (nats.index_select(1, self.answer_col).sum(1, keepdim=True) < LN2).double(),  # answer < 1 bit
            outputs["answer_right"].double()[:, None],  # greedy decoding's answer is right
            bits.sum(1, keepdim=True) ** 2,  # (bits of the example)^2
        ], dim=1)  # (B, M+5)
        new = batch["new"].double()  # (B,)
        delta = torch.stack([new, 1 - new]) @ feats  # (2, M+5): first pass, revisits
        delta = delta + 0.0 * outputs["loss"]  # a non-finite loss makes the step's counters non-finite
        if trainer.world_size > 1:
            delta = trainer.strategy.reduce(delta, reduce_op="sum")
        self.acc += delta
        step = trainer.global_step
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(delta).all(), step, self.bad_step)
        if step % self.every == 0 or step >= trainer.max_steps:  # (and a row at the run's last step)
            self.check(pl_module)
            self._log(trainer, pl_module)

    def check(self, pl_module, weights: bool = False) -> None:
        """Raise `NonFiniteError` if a step's loss or bits (or, with `weights`, a parameter) is not finite."""
        bad = int(self.bad_step)
        if bad >= 0:
            raise NonFiniteError(f"step {bad}: bits/total is not finite (the loss or the code length of the "
                                 f"batch trained at that step); the run stops, its last good checkpoint is kept")
        if weights and not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            raise NonFiniteError(f"step {pl_module.trainer.global_step}: the weights are not finite; "
                                 f"the run stops, its last good checkpoint is kept")

    def before_save(self, pl_module) -> None:
        """Before a checkpoint: the state must be finite, and a stopping run's last row is written first
        (so the checkpoint covers it, and a resumed run's next window starts after it)."""
        self.check(pl_module, weights=True)
        trainer = pl_module.trainer
        if trainer.should_stop and self._logged_step != trainer.global_step and trainer.global_step > 0:
            self._log(trainer, pl_module, bar=False)

    def totals(self) -> dict[str, float]:
        """The cumulative metrics, as Python floats (one host transfer)."""
        first, revisit = self.acc.cpu().numpy()
        pos, n = first[: self.M], first[self.N]
        total, floor = float(pos.sum()), n * self.floor_example
        out = {
            "bits/total": total, "bits/model": float(pos[self.by_model].sum()), "bits/floor": floor,
            "bits/epistemic": total - floor, "bits/revisit": float(revisit[: self.M].sum()),
            "bits/examples": float(n),
        }
        for name, bits, fl in zip(self.names, pos, self.floor):
            out[f"bits/pos/{name}"] = float(bits)
            out[f"bits/excess/{name}"] = float(bits - n * fl)
        return out

    def _log(self, trainer, pl_module, bar: bool = True) -> None:
        """One bits row; `bar`: also the progress bar's values (only from a training hook)."""
        self._logged_step = trainer.global_step
        w = (self.acc - self.last).cpu().numpy()  # the window since the last log step: (2, M+5)
        self.last = self.acc.clone()
        metrics = self.totals()
        n, n_rev = w[0, self.N], w[1, self.N]
        if n > 0:
            total = float(w[0, : self.M].sum())
            floor = n * self.floor_example
            metrics.update({
                "bits/example": total / n,
                "bits/token": total / (n * self.M),
                "bits/floor_example": self.floor_example,
                "bits/epistemic_example": (total - floor) / n,
                "bits/ratio_raw": total / w[0, self.TEXT],
                "bits/ratio_uniform": total / (n * self.M * math.log2(self.task.vocab_size)),
                "bits/certified_exact": w[0, self.CERT] / n,
                "bits/exact": w[0, self.EXACT] / n,
            })
            if floor > 0:  # (undefined for a floor of 0: a rule without noise)
                metrics["bits/ratio_floor"] = total / floor
            if bar and not self.task.finite:  # (a finite task shows dl/table instead)
                bar = {"bits/ex": total / n, "floor": self.floor_example, "epi": (total - floor) / n}
                for k, v in bar.items():
                    pl_module.log(k, v, prog_bar=True, logger=False)
        if n_rev > 0:
            metrics["bits/revisit_example"] = float(w[1, : self.M].sum()) / n_rev
        metrics["examples_seen"] = float(pl_module.examples_seen)
        log_metrics(trainer, metrics)

    # -- evaluation: description length of the whole table (finite tasks) -----------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.check(pl_module)
        self._val = {}
        if self.task.finite:  # the train rows not sent yet, in the order of the "train" evaluation set
            sent = self.task.sent_ids(trainer.global_step, self.batch_size)
            unsent = ~np.isin(self.task.eval_ids()["train"], sent)
            self._unsent = torch.from_numpy(unsent).to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.task.finite:
            return
        name = pl_module.eval_names[dataloader_idx]
        if name not in ("val", "train"):
            return
        bits = outputs["example_bits"]  # (B,)
        if name == "train":  # only the rows not yet transmitted are coded by the current model
            start = batch_idx * trainer.val_dataloaders[dataloader_idx].batch_size
            bits = bits * self._unsent[start : start + len(bits)]
        self._val[name] = self._val.get(name, 0.0) + bits.sum()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._log_arrivals(trainer, pl_module)
        if not self.task.finite:
            return
        n_table = self.task.table_size()
        first_pass = self.acc[0, : self.M].sum()
        dl = float(first_pass + sum(self._val.values()))
        if not math.isfinite(dl):
            raise NonFiniteError(f"step {trainer.global_step}: dl/table is not finite; the run stops, "
                                 f"its last good checkpoint is kept")
        floor = n_table * self.floor_example
        raw = n_table * float(self.task.uniform_bits[self.coded].sum())
        self.last_dl = {"dl/table": dl, "dl/table_epistemic": dl - floor, "dl/table_floor": floor,
                        "dl/table_raw": raw}
        pl_module.log("dl/table", dl, logger=False)
        log_metrics(trainer, {**self.last_dl, "examples_seen": float(pl_module.examples_seen)})

    def arrival_window(self) -> dict[str, float]:
        """The new examples since the previous evaluation (the bits/arrival... metrics); {} if none."""
        w = (self.acc - self.at_eval)[0].cpu().numpy()  # (M+5,) the window's first-pass counters
        n = float(w[self.N])
        if n <= 0:
            return {}
        bits = float(w[: self.M].sum())
        mean = bits / n
        var = max(0.0, (float(w[self.SQ]) - n * mean * mean) / (n - 1)) if n > 1 else math.inf
        half = 1.96 * math.sqrt(var / n)
        out = {"bits/arrivals": n, "bits/arrival_example": mean,
               "bits/arrival_example_lo": mean - half, "bits/arrival_example_hi": mean + half}
        for key, col in (("exact", self.EXACT), ("certified", self.CERT)):
            k = float(w[col])
            lo, hi = wilson(k, n)
            out.update({f"bits/arrival_{key}": k / n, f"bits/arrival_{key}_lo": lo, f"bits/arrival_{key}_hi": hi})
        return out

    def _log_arrivals(self, trainer, pl_module) -> None:
        metrics = self.arrival_window()
        self.at_eval = self.acc.clone()
        if metrics:  # (the step's check at the evaluation's start has found the bits finite)
            log_metrics(trainer, {**metrics, "examples_seen": float(pl_module.examples_seen)})

    # -- the end: a per-position table in the run directory -------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        self.check(pl_module)
        if self._logged_step != trainer.global_step and trainer.global_step > 0:  # a stop between log steps
            self._log(trainer, pl_module, bar=False)
        if self.run_dir is None or not trainer.is_global_zero:
            return
        first, revisit = self.acc.cpu().numpy()
        n = first[self.N]
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(["position", "sent_by", "floor_bits", "total_bits", "excess_bits", "bits_per_example",
                    "revisit_bits"])
        for i, name in enumerate(self.names):
            w.writerow([name, "model" if self.by_model[i] else "law", f"{self.floor[i]:.6f}", f"{first[i]:.3f}",
                        f"{first[i] - n * self.floor[i]:.3f}", f"{first[i] / n if n else 0:.6f}", f"{revisit[i]:.3f}"])
        write_atomic(Path(self.run_dir) / "positions.csv", f.getvalue())
