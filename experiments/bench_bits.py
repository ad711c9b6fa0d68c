"""What the bits callback costs: training steps/s with and without it, in alternating windows of one run.

    python experiments/bench_bits.py [CONFIG] [key=value ...] [--window 20] [--pairs 12] [--null]
    python experiments/bench_bits.py configs/grokking.yaml train.threads=1 --pairs 40
    python experiments/bench_bits.py configs/addition.yaml train.threads=1 --window 25 --pairs 12

One training run (same model, same data) alternates windows of `--window` steps with the bits callback
on and off: "off" also skips the float64 per-token loss that the training step computes for it, so the
difference is the whole cost of measuring bits. Adjacent windows (on, off) form a pair; the machine's
drift (other processes, frequency scaling) moves both windows of a pair alike, so the ratio of their
step rates is far steadier than separate runs. The table reports the median cost over the pairs and the
spread (the pairs' interquartile range): a cost is above the noise when it exceeds that spread. The
first `--warm` steps are not timed. Windows and warm-up are whole multiples of `log.every`, so both
windows of a pair hold as many logging steps (Lightning's and the callback's; with 25-step windows and
logging every 10 steps, windows alternately held 3 and 2, a bias of about 2% on the grokking recipe).
`--null` keeps the bits on in both windows of every pair: the method's own bias and spread, to set
beside the cost. The bits counted in the "on" windows are discarded (the stream has
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

from lab.bits import PrequentialCode  # noqa: E402
from lab.build import build  # noqa: E402
from lab.config import load  # noqa: E402
from lab.data import LabData  # noqa: E402


class SwitchedBits(PrequentialCode):
    """The bits callback, doing its per-step work only while `on`."""

    on = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.on:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class Alternate(L.Callback):
    """After `warm` steps, windows of `window` steps alternately with the bits (on) and without (off);
    records (on, wall seconds, CPU seconds of this process) per window."""

    def __init__(self, bits: SwitchedBits, warm: int, window: int, null: bool = False):
        self.bits, self.warm, self.window, self.null = bits, warm, window, null
        self.windows: list[tuple[bool, float, float]] = []
        self.t0 = None  # (wall, cpu) at the window's start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # steps done
        if step < self.warm or (step - self.warm) % self.window:
            return
        now = time.perf_counter(), time.process_time()
        if self.t0 is not None:
            self.windows.append((self.bits.on, now[0] - self.t0[0], now[1] - self.t0[1]))
        on = (step - self.warm) // self.window % 2 == 0 or self.null  # the next window: on, off, on, off, ...
        self.bits.on = pl_module.per_token_loss = on
        self.t0 = now


def whole_intervals(steps: int, every: int) -> int:
    """`steps` rounded up to a whole number of logging intervals."""
    return max(1, -(-steps // every)) * every


def measure(cfg, warm: int, window: int, pairs: int, null: bool = False) -> dict[str, list[float]]:
    """-> the cost of each (on, off) pair, 1 - rate(on) / rate(off), by the wall clock and by this process's
    CPU time (with `null`, both windows on): {"wall": [...], "cpu": [...]}. Windows and warm-up are
    rounded up to whole multiples of `log.every`."""
    warm, window = whole_intervals(warm, cfg.log.every), whole_intervals(window, cfg.log.every)
    b = build(cfg)
    task, module = b.task, b.module
    data = LabData(task, b.batch_size, cfg.train.eval_batch_size)
    bits = SwitchedBits(task, cfg.log.every, b.batch_size)
    alternate = Alternate(bits, warm, window, null)
    trainer = L.Trainer(
        max_steps=warm + 2 * pairs * window, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[bits, alternate], limit_val_batches=0,  # (bits reads a step first)
        accelerator=cfg.train.accelerator, precision="bf16-mixed" if cfg.train.precision == "bf16" else "32-true",
        log_every_n_steps=cfg.log.every,
    )
    trainer.fit(module, datamodule=data)
    w = alternate.windows  # times: rate ratio = t_off / t_on
    return {clock: [1 - off[i] / on[i] for on, off in zip(w[0::2], w[1::2])] for i, clock in ((1, "wall"), (2, "cpu"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/grokking.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--window", type=int, default=20, help="steps per window (rounded up to whole log.every)")
    ap.add_argument("--pairs", type=int, default=12, help="(on, off) window pairs")
    ap.add_argument("--warm", type=int, default=20, help="untimed steps first")
    ap.add_argument("--null", action="store_true", help="the bits on in both windows: the method's own bias")
    args = ap.parse_args()
    cfg = load(args.config, [*args.overrides, "log.wandb=false"])
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    costs = measure(cfg, args.warm, args.window, args.pairs, args.null)
    window = whole_intervals(args.window, cfg.log.every)
    print(f"\n{args.config} {' '.join(args.overrides)} | batch {cfg.train.batch_size} | {torch.get_num_threads()} "
          f"threads | {args.pairs} pairs of {window}-step windows (logging every {cfg.log.every})"
          f"{' | NULL: the bits on in both windows' if args.null else ''}")
    print("| clock | callback cost (median) | interquartile range | all pairs |\n|---|---|---|---|")
    for clock, c in costs.items():
        q = statistics.quantiles(c, n=4) if len(c) > 1 else [c[0]] * 3
        print(f"| {clock} | {100 * statistics.median(c):.1f}% | {100 * q[0]:.1f}% .. {100 * q[2]:.1f}% | "
              f"{', '.join(f'{100 * x:.1f}' for x in c)} |")
    print("\ncost = 1 - steps/s with the callback / steps/s without it, per adjacent pair (target: at most 3%); "
          "cpu: this process's CPU time, which other processes on the machine disturb less than the wall clock")


if __name__ == "__main__":
    main()
