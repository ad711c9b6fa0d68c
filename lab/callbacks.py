"""Run bookkeeping: checkpoints that survive Ctrl-C and crashes, and a one-line report per evaluation.

Checkpoints are written atomically (temporary file, then rename) at step boundaries only, so a
checkpoint always holds a consistent state: model, optimizer, schedule, loop counters, RNG, and every
callback's counters (bits included). A checkpoint at a step that also evaluates is written after the
evaluation (a resumed run does not evaluate that step again), and the loggers are synced to disk
before the rename: whatever a checkpoint covers, the metrics file holds.

Signals: the first SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes, `docker stop` and `timeout`
send before they kill) asks for a stop: the current step finishes, the run evaluates, `last.ckpt` is
written after the rows it covers, and `lab train` prints the resume command and exits with 128 + the
signal's number (130, 143: "stopped by a signal", which a scheduler reads as preempted). A second
SIGINT or SIGTERM stops at once. The last step of a run (`train.max_steps`) also evaluates, so every run
ends with an evaluation and a metrics row at its last step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class Checkpoints(L.Callback):
    """`guard(pl_module)` runs before every save and raises if the state is not fit to keep (non-finite);
    `eval_every` is the trainer's evaluation interval (Lightning also evaluates at a requested stop)."""

    def __init__(self, dirpath: Path, every: int, keep: int, eval_every: int, guard=None):
        self.dir, self.every, self.keep, self.eval_every, self.guard = Path(dirpath), every, keep, eval_every, guard
        self.stop_requested = False
        self.stop_signal: int | None = None  # the signal that asked for the stop (SIGINT, SIGTERM)
        self._saved_step = -1
        self._pending: tuple[int, bool] | None = None  # (step, periodic): waits for that step's evaluation
        self._old_handlers: dict[int, object] = {}

    # -- SIGINT and SIGTERM ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested:  # the second: at once
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.stop_requested, self.stop_signal = True, signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # (after Lightning's own handlers, which would end a SIGTERMed run without a checkpoint)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, trainer, name: str) -> Path:
        if self.guard is not None:
            self.guard(trainer.lightning_module)
        path = self.dir / name
        tmp = path.with_name(path.name + ".tmp")
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # collective under DDP: every rank calls it, rank 0 writes
            if trainer.is_global_zero:
                for logger in trainer.loggers:  # the rows this checkpoint covers are on disk first
                    if hasattr(logger, "sync"):
                        logger.sync()
                os.replace(tmp, path)
        except BaseException:  # a full disk: no half-written file left, the previous checkpoint stays
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
            raise
        return path

    def _save_last(self, trainer) -> None:
        if self._saved_step != trainer.global_step:
            self.save(trainer, "last.ckpt")
            self._saved_step = trainer.global_step

    def _save_now(self, trainer, periodic: bool) -> None:
        if periodic:
            self.save(trainer, f"step-{trainer.global_step:08d}.ckpt")
            self._prune(trainer)
        self._save_last(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= trainer.max_steps:  # the last step: evaluate, then save (below)
            trainer.should_stop = True
        stop = self.stop_requested
        if trainer.world_size > 1:  # all ranks must stop at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True
            self.stop_requested = True
        step = trainer.global_step
        if self._pending is not None:  # the evaluation it waited for did not come: save now
            self._pending = None
            self._save_now(trainer, periodic=True)
        periodic = step % self.every == 0
        if not (periodic or stop):
            return
        if step % self.eval_every == 0 or trainer.should_stop:  # Lightning evaluates after this hook
            self._pending = (step, periodic)
        else:
            self._save_now(trainer, periodic)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pending is not None and self._pending[0] == trainer.global_step and not trainer.sanity_checking:
            periodic = self._pending[1]
            self._pending = None
            self._save_now(trainer, periodic)

    def on_train_end(self, trainer, pl_module) -> None:
        self._pending = None
        self._save_last(trainer)

    def _prune(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        periodic = sorted(self.dir.glob("step-*.ckpt"))
        for old in periodic[: max(0, len(periodic) - self.keep)]:
            old.unlink()


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


class Report(L.Callback):
    """Prints one line per evaluation (readable in a log file as well as under the progress bar)."""

    def __init__(self):
        self.t0 = time.time()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.t0 = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        parts = [f"step {trainer.global_step:>6}", f"ex {fmt_count(pl_module.examples_seen):>7}"]
        if "train/loss" in m:
            parts.append(f"loss {m['train/loss']:.4f}")
        if "val/loss" in m:
            parts.append(f"val loss {m['val/loss']:.4f}")
        if "train/exact_match" in m:
            parts.append(f"train acc {m['train/exact_match']:.3f}")
        parts.append(f"val exact {m.get('val/exact_match', float('nan')):.3f}")
        parts += [f"{label} {m[k]:.3f}" for k, label in pl_module.task.headline.items() if k in m]
        if "bits/ex" in m:
            parts.append(f"bits/ex {m['bits/ex']:.2f} (floor {m['floor']:.2f}, epistemic {m['epi']:.2f})")
        if "dl/table" in m:
            parts.append(f"dl/table {fmt_count(m['dl/table'])}bit")
        parts.append(f"{time.time() - self.t0:.0f}s")
        line = " | ".join(parts)
        bar = trainer.progress_bar_callback
        bar.print(line) if bar is not None else print(line, flush=True)


class ProgressBar(TQDMProgressBar):
    """The training bar only (no bar per evaluation), values with 4 significant digits, no v_num.

    Progress that fits the run: the lab's data is one endless stream of steps, so Lightning's "Epoch 0,
    1500/8000" (an epoch that never ends, an ETA to max_steps the run stops long before) is replaced by
    the step with its budget, the examples seen (a stream task) or the epochs of the train split (a table
    task), and the stop rule with how far it is: no total, no ETA.

        step 1500/<=8000 | 384.0k examples | val/exact_match 0.973 (stop at 0.99) [11:37, 2.15step/s, ...]
    """

    def __init__(self, task, batch_size: int, max_steps: int, stop_metric: str, stop_at: float | None,
                 refresh_rate: int = 10):
        super().__init__(refresh_rate=refresh_rate)
        self.task, self.batch_size, self.max_steps = task, batch_size, max_steps
        self.stop_metric, self.stop_at = stop_metric, stop_at

    def describe(self, trainer, pl_module) -> str:
        step = trainer.global_step
        parts = [f"step {step}/<={self.max_steps}"]
        if self.task.is_table and self.task.arrival != "none":
            parts.append(f"{self.task.n_arrived(step, self.batch_size)}/{len(self.task.train_idx)} rows arrived")
        elif self.task.is_table:
            parts.append(f"epoch {step / self.task.steps_per_epoch(self.batch_size):.1f}")
        else:
            parts.append(f"{fmt_count(pl_module.examples_seen)} examples")
        if self.stop_at is not None:
            value = trainer.callback_metrics.get(self.stop_metric)
            shown = "-" if value is None else f"{float(value):.3f}"
            parts.append(f"{self.stop_metric} {shown} (stop at {self.stop_at:g})")
        return " | ".join(parts)

    def init_train_tqdm(self):
        return Tqdm(desc="", disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                    unit="step", bar_format="{desc} [{elapsed}, {rate_fmt}{postfix}]")

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=None)  # no total, so no ETA
        bar.n = bar.last_print_n = trainer.global_step  # a resumed run continues its count
        bar.set_description(self.describe(trainer, trainer.lightning_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.is_enabled and step % self.refresh_rate == 0:
            bar = self.train_progress_bar
            bar.n = step
            bar.set_description(self.describe(trainer, pl_module), refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def init_validation_tqdm(self):
        return Tqdm(disable=True)  # (created disabled: nothing printed for an evaluation but its line)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in items.items()}
