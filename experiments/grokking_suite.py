"""The grokking recipe across train fractions and label noise: does compression track generalization?

    python experiments/grokking_suite.py [CONFIG] [--fractions 0.2 0.3 0.5] [--noise 0 0.1]
                                         [--max-steps 8000] [key=value ...]

Runs CONFIG (default configs/grokking.yaml, which `make grokking` runs) for every train fraction x
label noise and prints one table: steps to 99% train accuracy, steps to 99% validation accuracy
(against the true labels when there is noise), the final dl/table and its floor, and the final held-out
loss minus the floor (bits per answer). Runs with noise stop on the true-label validation accuracy.
Run directories are kept under runs/grokking-suite/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from lab.loggers import read_metrics


def first(rows: list[dict], key: str, at: float = 0.99):
    return next((r["step"] for r in rows if r.get(key) is not None and r[key] >= at), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/grokking.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--max-steps", type=int, default=8000)
    ap.add_argument("--dir", default="runs/grokking-suite")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"{args.config} {' '.join(args.overrides)} | max_steps {args.max_steps}\n")
    print("| train fraction | label noise | steps to 99% train | steps to 99% val | final dl/table (bits) "
          "| dl floor (bits) | final val loss - floor (bits/answer) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for frac in args.fractions:
        for eps in args.noise:
            name = f"{stamp}-f{frac}-n{eps}"
            stop = "val/clean_exact_match" if eps > 0 else "val/exact_match"
            cmd = [sys.executable, "-m", "lab", "train", args.config, f"task.train_fraction={frac}",
                   f"task.label_noise={eps}", f"train.stop_metric={stop}", f"train.max_steps={args.max_steps}",
                   f"log.dir={args.dir}", f"log.name={name}", "log.progress_bar=false", *args.overrides]
            t0 = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True, env={"WANDB_MODE": "disabled", **os.environ})
            wall = time.time() - t0
            if out.returncode != 0:
                print(f"| {frac} | {eps} | failed: {out.stderr.strip().splitlines()[-1]} | | | | | |", flush=True)
                continue
            rows = read_metrics(Path(args.dir) / name / "metrics.jsonl")
            last_dl = [r for r in rows if "dl/table" in r][-1]
            last_val = [r for r in rows if "val/bits_example" in r][-1]
            floor = next(r["bits/floor_example"] for r in rows if "bits/floor_example" in r)
            print(f"| {frac} | {eps} | {first(rows, 'train/exact_match') or 'never'} | "
                  f"{first(rows, stop) or 'never'} | {last_dl['dl/table']:.0f} | {last_dl['dl/table_floor']:.0f} | "
                  f"{last_val['val/bits_example'] - floor:+.4f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
