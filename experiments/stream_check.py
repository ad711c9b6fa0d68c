"""Logged bits against the lab's real code, configuration by configuration: one table.

    python experiments/stream_check.py [--steps 6] [--only addition grokking ...]

For each configuration (every file in configs/ with a small batch, then the option grid of each task):
train `--steps` batches with `lab.run` (bits callback included), arithmetic-code the same examples
with `lab compress`'s coder, decode them and compare with the stream as text. Prints, per row, the
logged bits/total, the coder's ideal code length (sum of -log2 q of what it coded), the code's size,
the ratio file / logged and whether the round trip is exact. The lab promises file = logged to within
0.05% + 64 bits, ideal = logged to 1e-6 (`tests/test_stream.py` checks the same rows with small N).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from lab.coder import compress, decompress, dump  # noqa: E402
from lab.config import Config, load  # noqa: E402
from lab.run import train  # noqa: E402
from lab.tasks import TASKS  # noqa: E402

QUIET = ["log.wandb=false", "log.progress_bar=false", "train.threads=1"]
# a few small batches of each config's own model and task: every file in configs/ (a new one needs no entry
# here unless its defaults are too slow for a test)
SMALLER = {
    "addition-reference.yaml": ["train.batch_size=8"],
    "grokking.yaml": ["train.batch_size=64"],
    "grokking-power.yaml": ["train.batch_size=64"],
    "grokking-s5.yaml": ["train.batch_size=64"],
    "grokking-nanda.yaml": ["task.p=23", "train.batch_size=0"],
    "grokking-arrivals.yaml": ["task.p=23", "train.batch_size=64", "task.arrival_steps=4"],
}
CONFIGS = {p.name: SMALLER.get(p.name, ["train.batch_size=16"]) for p in sorted((ROOT / "configs").glob("*.yaml"))}
TINY_ADDITION = ["configs/addition.yaml", "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano",
                 "model.n_layer=2", "train.batch_size=32", "train.warmup_steps=2"]
TINY_MODULAR = ["configs/grokking.yaml", "task.p=11", "train.batch_size=16", "model.preset=gpt-nano", "model.n_layer=1"]
# loss_on, reverse_answer, leading_zeros, label_noise, n_digits: every value of each option
ADDITION_GRID = [("all", False, False, 0.0, 3), ("answer", False, False, 0.0, 3), ("answer", True, True, 0.1, 2),
                 ("all", True, False, 0.1, 1), ("all", False, True, 0.0, 4), ("answer", True, False, 0.0, 1)]
MODULAR_OPS = ["x+y", "x-y", "x*y", "x/y", "x^2+y^2", "x^2+xy+y^2", "x^2+xy+y^2+x", "x^3+xy", "x^3+xy^2+y",
               "x/y if y odd else x-y"]
S5_GRID = [("x*y", "answer", 0.0), ("x*y*x^-1", "all", 0.1), ("x*y*x", "all", 0.0)]
# every arrival law of the table tasks: arrivals and revisits in the six steps (36 rows, batches of 16;
# grokking-arrivals.yaml above: a start share, uniform)
ARRIVALS = [("uniform", 4, 0.0), ("geometric", 4, 0.2)]
OTHER = [["model.dropout=0.1"], ["model.dropout=0.2", "task.loss_on=answer"],
         ["train.grokfast_lambda=2", "train.grad_clip=0.5"],
         ["task.chain_prob=0.5", "task.loss_on=answer", "task.n_digits=2", "task.n_heldout=1000"],
         ["task.chain_prob=0.5", "task.chain_prob_lead=0.6", "task.loss_on=answer", "task.n_digits=2",
          "task.n_heldout=1000"]]


def addition_grid(loss_on, reverse, zeros, noise, n) -> list[str]:
    heldout = {1: 10, 2: 2000}.get(n, 200)  # n = 2: a quarter of the pairs held out, a law far from uniform
    return [*TINY_ADDITION, f"task.loss_on={loss_on}", f"task.reverse_answer={reverse}", f"task.leading_zeros={zeros}",
            f"task.label_noise={noise}", f"task.n_digits={n}", f"task.n_heldout={heldout}"]


def modular_grid(i: int, op: str) -> list[str]:
    """Every operation; loss on all / on the answer alternately; label noise on every other pair."""
    return [*TINY_MODULAR, f"task.op={op}", f"task.loss_on={['all', 'answer'][i % 2]}",
            f"task.label_noise={0.1 if i % 4 >= 2 else 0.0}"]


def s5_grid(op, loss_on, noise) -> list[str]:
    return ["configs/grokking-s5.yaml", f"task.op={op}", f"task.loss_on={loss_on}", f"task.label_noise={noise}",
            "model.preset=gpt-nano", "model.n_layer=1", "train.batch_size=64"]


def rows() -> dict[str, list[str]]:
    """label -> [config file, overrides...] for every row of the table."""
    out = {name: [f"configs/{name}", *over] for name, over in CONFIGS.items()}
    out.update({"addition " + " ".join(map(str, g)): addition_grid(*g) for g in ADDITION_GRID})
    out.update({f"modular {op} " + " ".join(modular_grid(i, op)[-2:]): modular_grid(i, op)
                for i, op in enumerate(MODULAR_OPS)})
    out.update({"s5 " + " ".join(map(str, g)): s5_grid(*g) for g in S5_GRID})
    out.update({"addition " + " ".join(o): [*TINY_ADDITION, "train.lr=3e-3", *o] for o in OTHER})
    for law, steps, start in ARRIVALS:
        arrive = [f"task.arrival={law}", f"task.arrival_steps={steps}", f"task.arrival_start={start}"]
        out[f"modular arrival {law} {steps} {start}"] = [*TINY_MODULAR, "train.lr=3e-3", *arrive]
        out[f"s5 arrival {law} {steps} {start}"] = [*s5_grid("x*y", "answer", 0.0), "task.train_fraction=0.005",
                                                    "train.batch_size=32", *arrive]
    for name, task in sorted(TASKS.items()):  # every registered task's small instance, both ways of coding it
        small = [f"task.{k}={v}" for k, v in task.small.items()]
        for loss_on in ("all", "answer"):
            out[f"{name} small loss_on={loss_on}"] = [None, f"task.name={name}", *small, f"task.loss_on={loss_on}",
                                                      "model.preset=gpt-nano", "model.n_layer=1", "train.batch_size=16"]
    return out


def make_config(spec: list[str], run_dir: Path) -> Config:
    config, *overrides = spec
    return load(config and ROOT / config, [*overrides, *QUIET, f"log.dir={run_dir}", "log.name=t"])


def check(cfg: Config, steps: int, work: Path) -> dict:
    """Train `steps` batches, code the same examples, decode them -> logged and coded figures."""
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.stop_at = steps, steps, None
    result = train(cfg)
    totals, task, batch = result.bits.totals(), result.module.task, result.bits.batch_size
    n = sum(len(task.schedule(step, batch)[0]) for step in range(steps))  # (an epoch may end in a short batch)
    stats = compress(cfg, n, work / "s.clab")
    decompress(work / "s.clab", work / "back.txt")
    dump(cfg, n, work / "stream.txt")
    return {"examples": n, "logged": totals["bits/total"], "model": totals["bits/model"], "ideal": stats.ideal_bits,
            "file": stats.code_bits, "exact": (work / "back.txt").read_bytes() == (work / "stream.txt").read_bytes()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--only", nargs="*", default=None, help="rows whose label starts with one of these")
    args = ap.parse_args()
    print("| configuration | examples | logged bits/total | of which model | coder, ideal | file (code) "
          "| file / logged | round trip |\n|---|---|---|---|---|---|---|---|")
    for label, spec in rows().items():
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = check(make_config(spec, Path(tmp)), args.steps, Path(tmp))
        print(f"| {label} | {r['examples']} | {r['logged']:.1f} | {r['model']:.1f} | {r['ideal']:.1f} | {r['file']} "
              f"| {r['file'] / r['logged']:.5f} | {'exact' if r['exact'] else 'WRONG'} |", flush=True)


if __name__ == "__main__":
    main()
