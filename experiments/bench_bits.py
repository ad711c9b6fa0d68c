"""What the bits callback costs: training steps/s with and without it, in alternating windows of one run.

    python experiments/bench_bits.py [CONFIG] [key=value ...] [--window 25] [--pairs 12]
    python experiments/bench_bits.py configs/grokking.yaml
    python experiments/bench_bits.py configs/addition.yaml --window 10 --pairs 8

One training run (same model, same data) alternates windows of `--window` steps with the bits callback
on and off: "off" also skips the float64 per-token loss that the training step computes for it, so the
difference is the whole cost of measuring bits. Adjacent windows (on, off) form a pair; the machine's
drift (other processes, frequency scaling) moves both windows of a pair alike, so the ratio of their
step rates is far steadier than separate runs. The table reports the median cost over the pairs and the
spread (the pairs' interquartile range): a cost is above the noise when it exceeds that spread. The
first `--warm` steps are not timed. The bits counted in the "on" windows are discarded (the stream has
gaps): this measures time only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import lightning as L
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

from lab.bits import Bits  # noqa: E402
from lab.config import load  # noqa: E402
from lab.data import LabData  # noqa: E402
from lab.module import LabModule  # noqa: E402
from lab.tasks import make_task  # noqa: E402


class SwitchedBits(Bits):
    """The bits callback, doing its per-step work only while `on`."""

    on = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.on:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class Alternate(L.Callback):
    """After `warm` steps, windows of `window` steps alternately with the bits (on) and without (off);
    records (on, seconds of the window)."""

    def __init__(self, bits: SwitchedBits, warm: int, window: int):
        self.bits, self.warm, self.window = bits, warm, window
        self.windows: list[tuple[bool, float]] = []
        self.t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # steps done
        if step < self.warm or (step - self.warm) % self.window:
            return
        now = time.perf_counter()
        if self.t0 is not None:
            self.windows.append((self.bits.on, now - self.t0))
        on = (step - self.warm) // self.window % 2 == 0  # the next window: on, off, on, off, ...
        self.bits.on = pl_module.per_token_loss = on
        self.t0 = now


def measure(cfg, warm: int, window: int, pairs: int) -> list[float]:
    """-> the cost of each (on, off) pair: 1 - rate(on) / rate(off)."""
    L.seed_everything(cfg.seed, verbose=False)
    task = make_task(cfg)
    module = LabModule(cfg, task)
    data = LabData(task, cfg.train.batch_size, cfg.train.eval_batch_size)
    bits = SwitchedBits(task, cfg.log.every, batch_size=data.batch_size)
    alternate = Alternate(bits, warm, window)
    trainer = L.Trainer(
        max_steps=warm + 2 * pairs * window, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[bits, alternate], limit_val_batches=0,  # (bits reads a step first)
        accelerator=cfg.train.accelerator, precision="bf16-mixed" if cfg.train.precision == "bf16" else "32-true",
        log_every_n_steps=cfg.log.every,
    )
    trainer.fit(module, datamodule=data)
    w = alternate.windows
    return [1 - off / on for (_, on), (_, off) in zip(w[0::2], w[1::2])]  # times: rate ratio = t_off / t_on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/grokking.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--window", type=int, default=25, help="steps per window")
    ap.add_argument("--pairs", type=int, default=12, help="(on, off) window pairs")
    ap.add_argument("--warm", type=int, default=20, help="untimed steps first")
    args = ap.parse_args()
    cfg = load(args.config, [*args.overrides, "log.wandb=false"])
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    costs = measure(cfg, args.warm, args.window, args.pairs)
    q = statistics.quantiles(costs, n=4) if len(costs) > 1 else [costs[0]] * 3
    print(f"\n{args.config} {' '.join(args.overrides)} | batch {cfg.train.batch_size} | {torch.get_num_threads()} "
          f"threads | {len(costs)} pairs of {args.window}-step windows")
    print("| callback cost (median) | interquartile range | all pairs |\n|---|---|---|")
    print(f"| {100 * statistics.median(costs):.1f}% | {100 * q[0]:.1f}% .. {100 * q[2]:.1f}% | "
          f"{', '.join(f'{100 * c:.1f}' for c in costs)} |")
    print("\ncost = 1 - steps/s with the callback / steps/s without it, per adjacent pair (target: at most 3%)")


if __name__ == "__main__":
    main()
