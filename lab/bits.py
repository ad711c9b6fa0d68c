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

For table tasks, at each evaluation, the description length of the whole table:

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


class Counters:
    """The columns of the code's counters: one float64 row each for first-pass examples and revisits,
    the sent positions' bits first, then one column per named count.

        pos        (S,) bits per sent position (`Plan.sent`, in order)
        text       bits of the examples' text (8 per character)
        examples   examples
        certified  examples whose answer cost under 1 bit
        exact      examples whose every answer token was the argmax (greedy decoding's answer)
        squares    the sum over examples of (bits of the example)^2 (the windows' intervals)
    """

    NAMES = ("text", "examples", "certified", "exact", "squares")

    def __init__(self, n_sent: int):
        self.pos = slice(0, n_sent)
        self.text, self.examples, self.certified, self.exact, self.squares = range(n_sent, n_sent + len(self.NAMES))
        self.width = n_sent + len(self.NAMES)


class PrequentialCode(L.Callback):
    """The code length of the training stream, accumulated from each step's per-token loss (see above)."""

    def __init__(self, task, log_every: int, batch_size: int, run_dir: Path | None = None):
        self.task, self.every, self.run_dir = task, log_every, run_dir
        self.batch_size = batch_size  # the global batch (`task.batch_size` resolved: which rows a step sends)
        plan = self.plan = task.plan
        self.by_model = plan.by_model  # (S,) sent by the model (else by the task's law)
        self.names = [task.target_names[t] for t in plan.sent]
        self.floor = task.floor_bits[plan.sent]  # (S,)
        self.floor_example = task.floor_bits_per_example
        self.col = Counters(len(plan.sent))
        self.counts = torch.zeros(2, self.col.width, dtype=torch.float64)  # rows: first pass, revisits
        self.last = self.counts.clone()  # counters at the previous log step (for windowed rates)
        self.at_eval = self.counts.clone()  # counters at the previous evaluation (the arrivals' window)
        self.bad_step = torch.tensor(-1)  # the first step whose loss or bits were not finite
        self._logged_step = -1  # the step of the latest bits row
        self._val: dict[str, torch.Tensor] = {}
        self._unsent: torch.Tensor | None = None
        self.last_dl: dict[str, float] = {}  # the latest evaluation's dl/... metrics

    @property
    def state_key(self) -> str:
        return "Bits"  # (the key checkpoints have always held the counters under)

    # -- set-up and state -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        device, plan = pl_module.device, self.plan
        self.model_s = torch.from_numpy(np.flatnonzero(self.by_model)).to(device)  # (S_model,) of the S sent
        self.model_cols = torch.from_numpy(plan.model_cols).to(device)  # (S_model,) in the step's nats
        self.answer_cols = torch.from_numpy(plan.answer_cols).to(device)  # (A,)
        self.char_bits = torch.from_numpy(8.0 * self.task.char_len).double().to(device)  # (V,)
        self.counts, self.last, self.at_eval, self.bad_step = (
            t.to(device) for t in (self.counts, self.last, self.at_eval, self.bad_step))

    def state_dict(self) -> dict:
        return {"acc": self.counts.cpu(), "last": self.last.cpu(), "at_eval": self.at_eval.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device, width = self.counts.device, self.col.width

        def counters(t: torch.Tensor) -> torch.Tensor:  # a checkpoint from before the exact columns: zeros
            return torch.nn.functional.pad(t, (0, width - t.shape[1])).to(device)

        self.counts, self.last = counters(state["acc"]), counters(state["last"])
        self.at_eval = counters(state.get("at_eval", state["acc"]))

    # -- training: one accumulation per step ----------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch["x"]  # (B, T)
        nats = outputs["token_loss"]  # (B, K) the model before the step, at plan.step_cols
        bits = nats.index_select(1, self.model_cols) / LN2  # (B, S_model) the positions the model sends
        if not self.by_model.all():  # the others, the task's law sends
            law = torch.from_numpy(self.task.law_bits(x.cpu().numpy())[:, self.plan.sent]).to(bits.device)  # (B, S)
            bits = law.index_copy(1, self.model_s, bits)  # (B, S)
        feats = torch.cat([  # (B, width): the columns of `Counters`, in order
            bits,
            self.char_bits[x].sum(1, keepdim=True),  # the example's text, in bits
            torch.ones_like(bits[:, :1]),  # one example
            (nats.index_select(1, self.answer_cols).sum(1, keepdim=True) < LN2).double(),  # answer < 1 bit
            outputs["answer_right"].double()[:, None],  # greedy decoding's answer is right
            bits.sum(1, keepdim=True) ** 2,  # (bits of the example)^2
        ], dim=1)
        new = batch["new"].double()  # (B,)
        delta = torch.stack([new, 1 - new]) @ feats  # (2, width): first pass, revisits
        delta = delta + 0.0 * outputs["loss"]  # a non-finite loss makes the step's counters non-finite
        if trainer.world_size > 1:
            delta = trainer.strategy.reduce(delta, reduce_op="sum")
        self.counts += delta
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
        first, revisit = self.counts.cpu().numpy()
        pos, n = first[self.col.pos], first[self.col.examples]
        total, floor = float(pos.sum()), n * self.floor_example
        out = {
            "bits/total": total, "bits/model": float(pos[self.by_model].sum()), "bits/floor": floor,
            "bits/epistemic": total - floor, "bits/revisit": float(revisit[self.col.pos].sum()),
            "bits/examples": float(n),
        }
        for name, bits, fl in zip(self.names, pos, self.floor):
            out[f"bits/pos/{name}"] = float(bits)
            out[f"bits/excess/{name}"] = float(bits - n * fl)
        return out

    def _log(self, trainer, pl_module, bar: bool = True) -> None:
        """One bits row; `bar`: also the progress bar's values (only from a training hook)."""
        self._logged_step = trainer.global_step
        c = self.col
        w = (self.counts - self.last).cpu().numpy()  # the window since the last log step: (2, width)
        self.last = self.counts.clone()
        metrics = self.totals()
        n, n_rev = w[0, c.examples], w[1, c.examples]
        S = len(self.names)
        if n > 0:
            total = float(w[0, c.pos].sum())
            floor = n * self.floor_example
            metrics.update({
                "bits/example": total / n,
                "bits/token": total / (n * S),
                "bits/floor_example": self.floor_example,
                "bits/epistemic_example": (total - floor) / n,
                "bits/ratio_raw": total / w[0, c.text],
                "bits/ratio_uniform": total / (n * S * math.log2(self.task.vocab_size)),
                "bits/certified_exact": w[0, c.certified] / n,
                "bits/exact": w[0, c.exact] / n,
            })
            if floor > 0:  # (undefined for a floor of 0: a rule without noise)
                metrics["bits/ratio_floor"] = total / floor
            if bar and not self.task.is_table:  # (a table task shows dl/table instead)
                bar = {"bits/ex": total / n, "floor": self.floor_example, "epi": (total - floor) / n}
                for k, v in bar.items():
                    pl_module.log(k, v, prog_bar=True, logger=False)
        if n_rev > 0:
            metrics["bits/revisit_example"] = float(w[1, c.pos].sum()) / n_rev
        metrics["examples_seen"] = float(pl_module.examples_seen)
        log_metrics(trainer, metrics)

    # -- evaluation: description length of the whole table (table tasks) ------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.check(pl_module)
        self._val = {}
        if self.task.is_table:  # the train rows not sent yet, in the order of the "train" evaluation set
            sent = self.task.sent_ids(trainer.global_step, self.batch_size)
            unsent = ~np.isin(self.task.train_idx, sent)
            self._unsent = torch.from_numpy(unsent).to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.task.is_table:
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
        if not self.task.is_table:
            return
        n_table = self.task.table_size()
        first_pass = self.counts[0, self.col.pos].sum()
        dl = float(first_pass + sum(self._val.values()))
        if not math.isfinite(dl):
            raise NonFiniteError(f"step {trainer.global_step}: dl/table is not finite; the run stops, "
                                 f"its last good checkpoint is kept")
        floor = n_table * self.floor_example
        raw = n_table * float(self.task.uniform_bits[self.plan.sent].sum())
        self.last_dl = {"dl/table": dl, "dl/table_epistemic": dl - floor, "dl/table_floor": floor,
                        "dl/table_raw": raw}
        pl_module.log("dl/table", dl, logger=False)
        log_metrics(trainer, {**self.last_dl, "examples_seen": float(pl_module.examples_seen)})

    def arrival_window(self) -> dict[str, float]:
        """The new examples since the previous evaluation (the bits/arrival... metrics); {} if none."""
        c = self.col
        w = (self.counts - self.at_eval)[0].cpu().numpy()  # (width,) the window's first-pass counters
        n = float(w[c.examples])
        if n <= 0:
            return {}
        bits = float(w[c.pos].sum())
        mean = bits / n
        var = max(0.0, (float(w[c.squares]) - n * mean * mean) / (n - 1)) if n > 1 else math.inf
        half = 1.96 * math.sqrt(var / n)
        out = {"bits/arrivals": n, "bits/arrival_example": mean,
               "bits/arrival_example_lo": mean - half, "bits/arrival_example_hi": mean + half}
        for key, col in (("exact", c.exact), ("certified", c.certified)):
            k = float(w[col])
            lo, hi = wilson(k, n)
            out.update({f"bits/arrival_{key}": k / n, f"bits/arrival_{key}_lo": lo, f"bits/arrival_{key}_hi": hi})
        return out

    def _log_arrivals(self, trainer, pl_module) -> None:
        metrics = self.arrival_window()
        self.at_eval = self.counts.clone()
        if metrics:  # (the step's check at the evaluation's start has found the bits finite)
            log_metrics(trainer, {**metrics, "examples_seen": float(pl_module.examples_seen)})

    # -- the end: a per-position table in the run directory -------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        self.check(pl_module)
        if self._logged_step != trainer.global_step and trainer.global_step > 0:  # a stop between log steps
            self._log(trainer, pl_module, bar=False)
        if self.run_dir is None or not trainer.is_global_zero:
            return
        first, revisit = self.counts.cpu().numpy()
        n = first[self.col.examples]
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(["position", "sent_by", "floor_bits", "total_bits", "excess_bits", "bits_per_example",
                    "revisit_bits"])
        for i, name in enumerate(self.names):
            w.writerow([name, "model" if self.by_model[i] else "law", f"{self.floor[i]:.6f}", f"{first[i]:.3f}",
                        f"{first[i] - n * self.floor[i]:.3f}", f"{first[i] / n if n else 0:.6f}", f"{revisit[i]:.3f}"])
        write_atomic(Path(self.run_dir) / "positions.csv", f.getvalue())
