"""Which additions does a trained model still get wrong? Held-out exact match by carry-chain length.

    python experiments/carry_chains.py runs/addition-s0-...            # its last checkpoint, 20k sums
    python experiments/carry_chains.py runs/addition-s0-... --n 50000 --checkpoint step-00002000.ckpt
    python experiments/carry_chains.py runs/addition-s0-... --placement --n 2000   # 2,000 sums per length

A carry chain is a run of digit positions whose pair sums to exactly 9 *and* which receive a carry, so
the carry passes through them: in 0199 + 0001 the carry made at position 0 (9 + 1) passes through
position 1 (9 + 0) into position 2, a chain of length 1; in 1999 + 0001 the chain has length 2.
A pair sums to 9 with chance 1/10, so each longer chain is about ten times rarer: a model that has only
learned chains of length <= 1 still gets ~98% of 8-digit sums right.
Prints, per longest chain in the sum, how many of the sampled sums have it and the greedy error rate.
With --placement: `--n` new sums per chain length built like the rule's sets (`Addition._chain_sets`, a
stream of their own), the error rate per length and per position that makes the carry (a chain of k
made at position p passes through positions p+1..p+k; p + k = n - 1 ends in the leading pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.build import load_trained  # noqa: E402
from lab.config import load  # noqa: E402
from lab.tasks.addition import longest_chain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory of the addition task")
    ap.add_argument("--checkpoint", default="last.ckpt", help="a file in the run's checkpoints/")
    ap.add_argument("--n", type=int, default=20000, help="sums to sample")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--placement", action="store_true", help="--n sums per chain length, by where the carry is made")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load(run / "config.yaml")
    if cfg.task.name != "addition":
        raise SystemExit(f"{run}: task.name is {cfg.task.name!r}; carry chains need the addition task")
    b, step = load_trained(run, args.checkpoint)
    task, model = b.task, b.module.model

    if args.placement:
        pairs = task._chain_sets(set(), args.n, 1000 + args.seed)  # (a stream no run's sets use)
        a, b = np.concatenate(list(pairs.values())).T
    else:
        rng = np.random.default_rng(args.seed)
        a, b = (rng.integers(task.lo, task.hi + 1, size=args.n, dtype=np.int64) for _ in range(2))
    x = torch.from_numpy(task.encode(a, b))  # (N, T)
    with torch.no_grad():
        answers = [model.score_and_generate(xb, task.answer_start)[1] for xb in x.split(1000)]
    ok = (torch.cat(answers) == x[:, task.answer_start:]).all(1).numpy()  # (N,)
    chain, start = longest_chain(a, b, task.n, made_at=True)
    print(f"{run} ({args.checkpoint}, step {step}): exact match {ok.mean():.4f} on {len(ok)} sums")
    if args.placement:
        print("| chain | made at | sums | error rate |\n|---|---|---|---|")
        for k, p in sorted(set(zip(chain.tolist(), start.tolist()))):
            sel = (chain == k) & (start == p)
            print(f"| {k} | {p if k else '-'} | {sel.sum()} | {1 - ok[sel].mean():.4f} |")
        return
    print("| longest carry chain | sums | share | error rate |\n|---|---|---|---|")
    for k in range(chain.max() + 1):
        sel = chain == k
        if sel.any():
            print(f"| {k} | {sel.sum()} | {sel.mean():.4f} | {1 - ok[sel].mean():.4f} |")


if __name__ == "__main__":
    main()
