"""Which compression statistic tracks generalization across a sweep? Candidates scored by Spearman's rho.

    python experiments/sweep_statistics.py runs/sweeps/grokking-fraction-wd

For each run of a table-task sweep (its last checkpoint and metrics), the candidates are computed from
the training side only (no held-out row enters them) and ranked against the final validation accuracy:

    dl/table            prequential code of the whole table (first pass + held-out rows: reads held-out)
    dl/model            the two-part code's weights, quantization step relative to each tensor's std
                        (the lab's `lab.twopart`, as logged)
    dl/model (absolute) the same with one absolute step for every tensor (coarsest on a sqrt-2 ladder
                        within 0.05 bits per train row): smaller weights, fewer bits
    ... per train row   each divided by the number of train rows (the train fraction's confound)
    weight norm         the L2 norm of all weights

Prints one table (each run's values) and the rho of each candidate. Results: experiments/results/.

    python experiments/sweep_statistics.py runs/sweeps/grokking-fraction-wd --courses docs/grokking-sweep-dl.png

adds the time courses: for each run, `dl/model` as logged at every evaluation and the absolute-step
`dl/model` at each saved checkpoint, against validation accuracy (a table, and the figure): does the
model's description length rise and fall around grokking (DeMoss et al. 2024) across the sweep?
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

from lab.build import load_trained  # noqa: E402
from lab.loggers import read_metrics  # noqa: E402
from lab.report import spearman  # noqa: E402
from lab.twopart import data_bits, dequantize, encode_weights  # noqa: E402

LADDER = [2.0 ** (-i / 2) for i in range(31)]  # absolute steps 1 .. 2^-15, sqrt 2 apart


def absolute_dl_model(model, task, tol: float = 0.05) -> tuple[float, float]:
    """(step, bits): the coarsest absolute step on LADDER keeping the train split within tol bits per row,
    and the range-coded size of the weights at that step (`lab.twopart.encode_weights`)."""
    x = torch.from_numpy(task.eval_sets()["train"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = data_bits(model, task, x)
    try:
        for step in LADDER:
            ints = {k: np.rint(v.double().numpy() / step).astype(np.int64) for k, v in state.items()}
            if max(int(abs(q).max()) for q in ints.values()) >= 2**15:
                continue
            steps = {k: float(np.float32(step)) for k in state}
            model.load_state_dict(dequantize(ints, steps))
            if data_bits(model, task, x) <= base + tol * len(x):
                break
        return step, float(32 * len(encode_weights(ints, steps)))
    finally:
        model.load_state_dict(state)


def load_model(run: Path, ckpt: Path):
    """(the model of checkpoint `ckpt` of `run`, in eval mode; its task; the checkpoint's step)."""
    b, step = load_trained(run, ckpt)
    return b.module.model, b.task, step


def run_row(run: Path) -> dict:
    model, task, _ = load_model(run, run / "checkpoints" / "last.ckpt")
    last: dict = {}
    for r in read_metrics(run / "metrics.jsonl"):
        last.update({k: v for k, v in r.items() if v is not None})
    step, bits = absolute_dl_model(model, task)
    n = len(task.eval_sets()["train"])
    return {"run": run.name, "val acc": last["val/exact_match"], "train rows": n, "dl/table": last.get("dl/table"),
            "dl/model": last.get("dl/model"), "dl/model (absolute)": bits, "absolute step": step,
            "weight norm": math.sqrt(sum(float((v.double() ** 2).sum()) for v in model.state_dict().values()))}


def courses(runs: list[Path], figure: Path) -> None:
    """Per run: `dl/model` at every evaluation and the absolute-step `dl/model` at every checkpoint, beside
    validation accuracy -> a table (printed) and a figure of one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("\n| run | step where val acc >= 0.9 | dl/model kbit at each evaluation (val acc) | absolute dl/model kbit "
          "at each checkpoint (step) |\n|---|---|---|---|")
    cols = math.ceil(len(runs) / 2)
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 5.6), sharex=True, squeeze=False)
    for ax, run in zip(axes.T.flat, runs):
        evals = [r for r in read_metrics(run / "metrics.jsonl") if "dl/model" in r]
        steps = [r["step"] for r in evals]
        acc = [r["val/exact_match"] for r in evals]
        ckpts = sorted((run / "checkpoints").glob("step-*.ckpt")) + [run / "checkpoints" / "last.ckpt"]
        absolute = []
        for ckpt in ckpts:
            model, task, step = load_model(run, ckpt)
            if step not in [s for s, _ in absolute]:  # last.ckpt may repeat the last step-*.ckpt
                absolute.append((step, absolute_dl_model(model, task)[1]))
        grok = next((s for s, a in zip(steps, acc) if a >= 0.9), None)
        print(f"| {run.name} | {grok if grok is not None else 'never'} | "
              + ", ".join(f"{r['dl/model'] / 1e3:.0f} ({a:.2f})" for r, a in zip(evals, acc)) + " | "
              + ", ".join(f"{b / 1e3:.0f} ({s})" for s, b in absolute) + " |")
        ax.plot(steps, [r["dl/model"] / 1e3 for r in evals], "o-", ms=3, label="dl/model (relative step)")
        ax.plot([s for s, _ in absolute], [b / 1e3 for _, b in absolute], "s--", ms=4,
                label="dl/model (absolute step)")
        ax.set_title(run.name.split("-", 1)[-1].replace("train_fraction_", "frac ").replace("-weight_decay_", ", wd "),
                     fontsize=9)
        ax.set_ylim(0, None)
        twin = ax.twinx()
        twin.plot(steps, acc, color="k", lw=1, alpha=0.6, label="val acc")
        twin.set_ylim(0, 1.05)
        if grok is not None:
            ax.axvline(grok, color="k", ls=":", lw=0.8)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("kbit")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("the model's description length around grokking (dotted: val acc first >= 0.9; black: val acc)",
                 fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"\nwrote {figure}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="a sweep directory (runs/sweeps/<name>)")
    ap.add_argument("--courses", type=Path, metavar="FIGURE", help="also the time courses, and their figure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = sorted(p.parent.parent for p in Path(args.sweep).glob("*/checkpoints/last.ckpt"))
    rows = [run_row(run) for run in runs]
    for r in rows:
        for key in ("dl/table", "dl/model", "dl/model (absolute)"):
            if r[key] is not None:
                r[f"{key} per train row"] = r[key] / r["train rows"]
    keys = [k for k in rows[0] if k not in ("run", "val acc", "train rows", "absolute step")]
    print("| run | val acc | train rows | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['run']} | {r['val acc']:.4f} | {r['train rows']} | "
              + " | ".join("-" if r[k] is None else f"{r[k]:.4g}" for k in keys) + " |")
    acc = [r["val acc"] for r in rows]
    print("\n| statistic | Spearman rho against validation accuracy |\n|---|---|")
    for k in keys:
        if all(r[k] is not None for r in rows):
            print(f"| {k} | {spearman([r[k] for r in rows], acc):.3f} |")
    if args.courses:
        courses(runs, args.courses)


if __name__ == "__main__":
    main()
