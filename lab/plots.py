"""Figures from a run's metrics.jsonl (matplotlib, no display needed).

    marks = grokking_figure("runs/grokking-...")   # writes grokking.png in the run directory
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lab.loggers import read_metrics  # noqa: E402


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key`; a non-finite value (null in the file) is nan, so
    a curve shows the gap and its last value is never a stale earlier one."""
    pts = [(r["step"], math.nan if r[key] is None else r[key]) for r in rows if key in r]
    return [s for s, _ in pts], [v for _, v in pts]


def first_step(steps: list[float], values: list[float], pred) -> float | None:
    return next((s for s, v in zip(steps, values) if pred(v)), None)


def grokking_marks(rows: list[dict]) -> dict[str, float | None]:
    """The step where validation accuracy first reaches 0.9, and where dl/table first falls half-way
    from the raw table cost to its final value."""
    s_acc, acc = series(rows, "val/clean_exact_match" if any("val/clean_exact_match" in r for r in rows)
                        else "val/exact_match")
    s_dl, dl = series(rows, "dl/table")
    raw = next((r["dl/table_raw"] for r in rows if "dl/table_raw" in r), None)
    marks = {"val_acc_0.9": first_step(s_acc, acc, lambda v: v >= 0.9), "dl_half": None}
    if dl and raw is not None:
        half = (raw + dl[-1]) / 2
        marks["dl_half"] = first_step(s_dl, dl, lambda v: v <= half)
    return marks


def grokking_figure(run_dir: str | Path, out: str | Path | None = None) -> dict[str, float | None]:
    """Accuracy, dl/table and per-answer losses against steps (log axis), with the marks drawn."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    marks = grokking_marks(rows)
    if not rows:  # a run shorter than one log interval: nothing to draw
        return marks
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)

    ax = axes[0]
    for key, label in (("train/exact_match", "train"), ("val/exact_match", "validation"),
                       ("val/clean_exact_match", "validation, true labels")):
        s, v = series(rows, key)
        if s:
            ax.plot(s, v, label=label)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)

    ax = axes[1]
    s, v = series(rows, "dl/table")
    ax.plot(s, v, color="C3", label="dl/table")
    for key, label, style in (("dl/table_raw", "raw (answers uniform)", ":"), ("dl/table_floor", "floor", "--")):
        val = next((r[key] for r in rows if key in r), None)
        if val is not None:
            ax.axhline(val, color="gray", linestyle=style, label=label)
    ax.set_ylabel("description length of the table (bits)")

    ax = axes[2]
    for key, label in (("val/bits_example", "held-out"), ("bits/revisit_example", "train rows, revisited"),
                       ("bits/example", "train rows, first pass")):
        s, v = series(rows, key)
        if s:
            ax.plot(s, v, label=label, marker="." if key == "bits/example" else None)
    floor = next((r["bits/floor_example"] for r in rows if "bits/floor_example" in r), None)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label=f"floor ({floor:.2f} bits)")
        if floor > 0:
            ax.text(0.01, 0.02, "below the floor: memorised noise", transform=ax.transAxes, fontsize=8)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("bits per answer")
    ax.set_xlabel("step")
    s, v = series(rows, "grok/weight_norm")
    if s:
        twin = ax.twinx()
        twin.plot(s, v, color="black", alpha=0.4, label="weight norm")
        twin.set_ylabel("weight norm")
        twin.legend(loc="center right", fontsize=8)

    labels = {"val_acc_0.9": "validation accuracy 0.9", "dl_half": "dl/table half-way down"}
    for i, ax in enumerate(axes):
        ax.set_xscale("log")
        for (name, step), color in zip(marks.items(), ("C2", "C3")):
            if step is not None:
                ax.axvline(step, color=color, alpha=0.5, linestyle="-.", label=labels[name] if i == 0 else None)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    title = run_dir.name + "".join(f" | {k} at step {v:.0f}" for k, v in marks.items() if v is not None)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out or run_dir / "grokking.png", dpi=110)
    plt.close(fig)
    return marks
