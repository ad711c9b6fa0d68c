"""What makes a+b mod 97 (train fraction 0.3) grok fast on a CPU: one run per variant, one table.

    python experiments/grokking_speed.py [--only NAME ...] [--out experiments/results/grokking_speed.md]

Every variant starts from configs/grokking.yaml (the Power et al. recipe) and changes what its name
says; each runs until 99% validation accuracy or its step budget. The table gives the steps and the
wall time to 99% validation accuracy and the final dl/table. Results are appended to the --out file
with the machine's thread count, so that every configuration tried stays on record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "power": [],
    "lr3e-3": ["train.lr=3e-3"],
    "grokfast": ["train.grokfast_lambda=2.0"],
    "batch256": ["train.batch_size=256"],
    "batch128": ["train.batch_size=128"],
    "batch256-lr2e-3": ["train.batch_size=256", "train.lr=2e-3"],
    "wd2": ["train.weight_decay=2.0"],
    "batch256-wd2": ["train.batch_size=256", "train.weight_decay=2.0"],
    "1layer": ["model.preset=grok-1l"],
    "1layer-fullbatch": ["model.preset=grok-1l", "train.batch_size=0"],
    "1layer-wd2": ["model.preset=grok-1l", "train.weight_decay=2.0"],
    "1layer-batch256-wd2": ["model.preset=grok-1l", "train.batch_size=256", "train.weight_decay=2.0"],
    "wd3": ["train.weight_decay=3.0"],
    "batch256-wd3": ["train.batch_size=256", "train.weight_decay=3.0"],
    "1layer-wd3": ["model.preset=grok-1l", "train.weight_decay=3.0"],
    "1layer-wd2-seed1": ["model.preset=grok-1l", "train.weight_decay=2.0", "seed=1"],
    "1layer-wd2-seed2": ["model.preset=grok-1l", "train.weight_decay=2.0", "seed=2"],
    "1layer-wd3-seed1": ["model.preset=grok-1l", "train.weight_decay=3.0", "seed=1"],
    "1layer-wd3-seed2": ["model.preset=grok-1l", "train.weight_decay=3.0", "seed=2"],
}


def run(name: str, overrides: list[str], root: Path, max_steps: int) -> dict:
    cmd = [sys.executable, "-m", "lab", "train", "configs/grokking.yaml", *overrides, f"log.dir={root}",
           f"log.name={name}", "log.wandb=false", "log.progress_bar=false", f"train.max_steps={max_steps}"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.time() - t0
    if out.returncode != 0:
        return {"name": name, "error": out.stderr.strip().splitlines()[-1]}
    s = json.loads((root / name / "summary.json").read_text())
    reached = s.get("val/exact_match", 0) >= 0.99
    return {"name": name, "overrides": " ".join(overrides) or "(recipe)", "steps": s["steps"],
            "reached": reached, "fit_s": s["wall_seconds_this_session"], "wall_s": round(wall, 1),
            "val": s.get("val/exact_match"), "dl": s.get("dl/table"), "acc_0.9": s["marks"]["val_acc_0.9"],
            "dl_half": s["marks"]["dl_half"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--max-steps", type=int, default=6000)
    ap.add_argument("--out", default="experiments/results/grokking_speed.md")
    args = ap.parse_args()
    lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} | torch threads {torch.get_num_threads()} | "
             f"max_steps {args.max_steps}\n",
             "| variant | overrides | steps | to 99% val? | fit s | val acc | acc>=0.9 at | dl/table half at "
             "| final dl/table |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            r = run(name, VARIANTS[name], Path(tmp), args.max_steps)
            if "error" in r:
                line = f"| {name} | {' '.join(VARIANTS[name])} | failed: {r['error']} | | | | | | |"
            else:
                line = (f"| {name} | {r['overrides']} | {r['steps']} | {'yes' if r['reached'] else 'no'} | "
                        f"{r['fit_s']} | {r['val']:.4f} | {r['acc_0.9']} | {r['dl_half']} | {r['dl']:.0f} |")
            lines.append(line)
            print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
