"""Blier & Ollivier's block-wise prequential code of a fixed train split, beside the lab's other codes.

    python experiments/block_prequential.py configs/grokking.yaml [key=value ...] [--blocks 0.125 0.25 0.5]
        [--steps 2000] [--fixed RUN_DIR] [--arrivals RUN_DIR]

The train split, in the seeded order of its first pass (`TableTask._epoch_order(0)`), is cut at the given
shares into blocks. The first block is sent with the uniform code (log2 K bits an answer); each later
block with a model trained from scratch (the run's seed, model and optimizer: `lab.build.build`, the
lab's one training step) on every block before it, for `--steps` steps of the run's batch schedule, then
scored on the block in float64. The sum is the description length of the train split by the learning
algorithm (Blier & Ollivier 2018, section 2.4), with every block coded before anything trained on it.
A second total lets each block fall back to the uniform code where its model is worse (one flag bit a
block), as a sender may.

Printed beside it, per train row: the uniform code, `dl/table`'s first pass of a fixed-split run
(`--fixed`: the first batches coded by the models of the first steps; its summary's bits/total) and the
code of an arrival run of the same table (`--arrivals`: bits/total / bits/examples).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

from lab.build import build  # noqa: E402
from lab.config import load  # noqa: E402
from lab.module import LN2, token_nats  # noqa: E402


def block_bits(cfg, prefix: np.ndarray, block: np.ndarray, steps: int) -> float:
    """Bits of the rows `block` (table indices) under a fresh model trained `steps` steps on `prefix`."""
    b = build(cfg)
    task, module = b.task, b.module
    task.train_idx = prefix  # the blocks before: this model's whole train split
    opt, sched = b.optimizer()
    batch = task.batch_size(cfg.train.batch_size)  # (of the prefix: 0 is its whole split)
    module.per_token_loss = False
    for step in range(steps):
        module.step(torch.from_numpy(task.train_batch(step, batch).x), opt, sched, step)
    module.model.eval()
    x = torch.from_numpy(task.table[block])  # (n, T)
    sent = torch.from_numpy(task.plan.sent)
    with torch.no_grad():
        nats = token_nats(module.model(x[:, :-1]), x[:, 1:], sent)  # (n, S) float64
    return float(nats.sum() / LN2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--blocks", nargs="+", type=float, default=[0.125, 0.25, 0.5],
                    help="where the blocks end, as shares of the train split (the last block ends at 1)")
    ap.add_argument("--steps", type=int, default=2000, help="training steps of each block's model")
    ap.add_argument("--fixed", help="a fixed-split run of the same table (its first-pass code)")
    ap.add_argument("--arrivals", help="an arrival run of the same table (its code per arrived row)")
    args = ap.parse_args()
    cfg = load(args.config, [*args.overrides, "log.wandb=false", "log.progress_bar=false"])
    task = build(cfg).task
    if not task.is_table or task.arrival != "none":
        sys.exit("block_prequential: needs a table task with its fixed split (task.arrival=none)")
    order = task._epoch_order(0)
    n = len(order)
    cuts = [0] + [round(b * n) for b in sorted(args.blocks)] + [n]
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        sys.exit(f"block_prequential: --blocks {args.blocks} make an empty block of the {n} train rows")
    uniform_row = float(task.uniform_bits[task.plan.sent_mask].sum())
    print(f"{cfg.task.name} {getattr(cfg.task, 'op', '')} | {n} train rows | models trained {args.steps} steps "
          f"each | threads {torch.get_num_threads()}\n")
    print("| block (rows) | coded by | bits | bits per row | seconds |\n|---|---|---|---|---|")
    total = switched = 0.0
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        t0 = time.time()
        if i == 0:
            bits, by = (b - a) * uniform_row, "the uniform code"
        else:
            bits, by = block_bits(cfg, order[:a], order[a:b], args.steps), f"a model trained on rows 0-{a - 1}"
        total += bits
        switched += 1 + min(bits, (b - a) * uniform_row)  # a flag, then the cheaper of model and uniform
        print(f"| {a}-{b - 1} ({b - a}) | {by} | {bits:.0f} | {bits / (b - a):.3f} | {time.time() - t0:.0f} |",
              flush=True)
    print(f"\n| code of the {n} train rows | bits | bits per row |\n|---|---|---|")
    print(f"| uniform (log2 K an answer) | {n * uniform_row:.0f} | {uniform_row:.3f} |")
    print(f"| block-prequential (above) | {total:.0f} | {total / n:.3f} |")
    print(f"| block-prequential, each block by the cheaper of its model and the uniform code (+1 bit a block) "
          f"| {switched:.0f} | {switched / n:.3f} |")
    for label, run in (("fixed split's first pass (the run's bits/total)", args.fixed),
                       ("arrivals (the run's bits/total)", args.arrivals)):
        if run:
            s = json.loads((Path(run) / "summary.json").read_text())
            extra = f"; its final dl/table {s['dl/table']:.0f}" if "dl/table" in s else ""
            print(f"| {label}{extra} | {s['bits/total']:.0f} | {s['bits/total'] / s['bits/examples']:.3f} |")
    if not math.isfinite(total):
        sys.exit("block_prequential: a block's code is not finite")


if __name__ == "__main__":
    main()
