"""What the bits callback costs: training steps/s with and without it, same model, same data.

    python experiments/bench_bits.py [--steps 200] [--repeats 2] [CONFIG] [key=value ...]

"without" also skips the float64 per-token loss that `training_step` computes for the callback, so the
difference is the whole cost of measuring bits. Runs alternate (with, without, with, ...) to spread
drift in machine speed over both; the table reports the median of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import lightning as L

os.environ.setdefault("WANDB_MODE", "disabled")

from lab.bits import Bits  # noqa: E402
from lab.config import load  # noqa: E402
from lab.data import LabData  # noqa: E402
from lab.module import LabModule  # noqa: E402
from lab.tasks import make_task  # noqa: E402


class Clock(L.Callback):
    """Wall time of the steps after the first `skip` (warm-up)."""

    def __init__(self, skip: int):
        self.skip, self.t0, self.t1, self.n = skip, None, None, 0

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.skip:
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.skip:
            self.t1, self.n = time.perf_counter(), self.n + 1


def steps_per_second(cfg, with_bits: bool, steps: int) -> float:
    L.seed_everything(cfg.seed, verbose=False)
    task = make_task(cfg)
    module = LabModule(cfg, task)
    module.per_token_loss = with_bits
    clock = Clock(skip=20)
    data = LabData(task, cfg.train.batch_size, cfg.train.eval_batch_size)
    callbacks = [clock] + ([Bits(task, cfg.log.every, batch_size=data.batch_size)] if with_bits else [])
    trainer = L.Trainer(
        max_steps=steps + 20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, limit_val_batches=0, accelerator=cfg.train.accelerator,
        precision="bf16-mixed" if cfg.train.precision == "bf16" else "32-true",
        log_every_n_steps=cfg.log.every,
    )
    trainer.fit(module, datamodule=data)
    return clock.n / (clock.t1 - clock.t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/addition.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = load(args.config, args.overrides)
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    runs = {True: [], False: []}
    for _ in range(args.repeats):
        for with_bits in (True, False):
            runs[with_bits].append(steps_per_second(cfg, with_bits, args.steps))
    w, wo = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"\n{args.config} {' '.join(args.overrides)} | batch {cfg.train.batch_size} | {args.steps} steps x "
          f"{args.repeats} repeats")
    print("| variant | steps/s (median) | all runs |")
    print("|---|---|---|")
    print(f"| without bits callback | {wo:.2f} | {', '.join(f'{v:.2f}' for v in runs[False])} |")
    print(f"| with bits callback | {w:.2f} | {', '.join(f'{v:.2f}' for v in runs[True])} |")
    print(f"\ncallback cost: {100 * (1 - w / wo):.1f}% of steps/s (target: at most 3%)")


if __name__ == "__main__":
    main()
