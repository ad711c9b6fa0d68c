"""Figures from a run's metrics.jsonl (matplotlib, no display needed).

    marks = grokking_figure("runs/grokking-...")   # writes grokking.png in the run directory
    stream_figure("runs/addition-...")             # writes addition.png: the stream's bits and the rule
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

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


def arrival_windows(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, value, low, high) of an arrival metric (bits/arrival_...) over its evaluation windows, x the
    middle of each window (its rows were coded by the models of the whole window)."""
    pts = [(r["step"], r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi")) for r in rows if r.get(key) is not None]
    steps = np.array([p[0] for p in pts], dtype=float)
    starts = np.concatenate([[0.0], steps[:-1]])
    lo = np.array([np.nan if p[2] is None else p[2] for p in pts], dtype=float)
    hi = np.array([np.nan if p[3] is None else p[3] for p in pts], dtype=float)
    return (starts + steps) / 2, np.array([p[1] for p in pts], dtype=float), lo, hi


def grokking_figure(run_dir: str | Path, out: str | Path | None = None,
                    rows: list[dict] | None = None) -> dict[str, float | None]:
    """Accuracy, dl/table and per-answer losses against steps (log axis; linear when rows arrive over the
    run), with the marks drawn; with arrivals, the arriving rows' exact match, certificate and bits with
    their 95% intervals on the axes of validation's."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if rows is None:
        rows = read_metrics(path) if path.exists() else []
    marks = grokking_marks(rows)
    if not rows:  # a run shorter than one log interval: nothing to draw
        return marks
    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    arriving = sum(1 for r in rows if "bits/arrivals" in r) > 1  # rows arrive over the run, not in one pass

    ax = axes[0]
    for key, label in (("train/exact_match", "train"), ("val/exact_match", "validation"),
                       ("val/clean_exact_match", "validation, true labels")):
        s, v = series(rows, key)
        if s:
            ax.plot(s, v, label=label)
    if arriving:
        for key, label, color in (("bits/arrival_exact", "arriving rows, greedy exact (95%)", "C3"),
                                  ("bits/arrival_certified", "arriving rows, certified < 1 bit (95%)", "C4")):
            x, v, lo, hi = arrival_windows(rows, key)
            ax.plot(x, v, color=color, marker=".", label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)

    ax = axes[1]
    drawn = []  # every value drawn on this axis (a log axis only if all are positive)
    s, v = series(rows, "dl/table")
    ax.plot(s, v, color="C3", label="dl/table (prequential)")
    drawn += v
    s2, two = series(rows, "dl/two_part")
    s3, data = series(rows, "dl/data_given_model")
    if s2 and len(s2) == len(s3):
        ax.plot(s2, two, color="C4", label="dl/two_part (weights + data)")
        ax.plot(s3, data, color="C4", linestyle=":", label="dl/data_given_model (data | weights)")
        ax.fill_between(s2, data, two, color="C4", alpha=0.12, label="dl/model (the weights, entropy-coded)")
        drawn += two + data
    for key, label, style in (("dl/table_raw", "raw (answers uniform)", ":"), ("dl/table_floor", "floor", "--")):
        val = next((r[key] for r in rows if key in r), None)
        if val is not None and (val > 0 or key == "dl/table_raw"):
            ax.axhline(val, color="gray", linestyle=style, label=label)
            drawn.append(val)
        elif val is not None:  # a floor of 0 (a rule without noise) has no place on a log axis: say it
            ax.plot([], [], color="gray", linestyle=style, label="floor 0 (no label noise)")
    ax.set_ylabel("description length (bits)")
    finite = [x for x in drawn if x is not None and math.isfinite(x)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")

    ax = axes[2]
    for key, label in (("val/bits_example", "held-out"), ("bits/revisit_example", "train rows, revisited"),
                       ("bits/example", "train rows, first pass")):
        s, v = series(rows, key)
        if s and not (arriving and key == "bits/example"):
            ax.plot(s, v, label=label, marker="." if key == "bits/example" else None)
    if arriving:
        x, v, lo, hi = arrival_windows(rows, "bits/arrival_example")
        ax.plot(x, v, color="C3", marker=".", label="arriving rows (95%): coded before any step trained on them")
        ax.fill_between(x, np.maximum(lo, 0), hi, color="C3", alpha=0.15)
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
    twin = None
    if s:
        twin = ax.twinx()
        twin.plot(s, v, color="black", alpha=0.4, label="weight norm (right axis)")
        twin.set_ylabel("weight norm")

    labels = {"val_acc_0.9": "validation accuracy 0.9", "dl_half": "dl/table half-way down"}
    for i, ax in enumerate(axes):
        ax.set_xscale("linear" if arriving else "log")
        for (name, step), color in zip(marks.items(), ("C2", "C3")):
            if step is not None:
                ax.axvline(step, color=color, alpha=0.5, linestyle="-.", label=labels[name] if i == 0 else None)
        handles, names = ax.get_legend_handles_labels()
        if twin is not None and ax is axes[2]:
            more = twin.get_legend_handles_labels()
            handles, names = handles + more[0], names + more[1]
        ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.08 if ax is axes[2] else 1.01, 1))
        ax.grid(alpha=0.3)
    title = run_dir.name + "".join(f" | {k} at step {v:.0f}" for k, v in marks.items() if v is not None)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out or run_dir / "grokking.png", dpi=110, bbox_inches="tight")  # (legends beside the panels)
    plt.close(fig)
    return marks


def last(rows: list[dict], key: str):
    """The value of `key` in the last row that logged it; nan if that value was not finite (null in
    metrics.jsonl): a stale earlier value is never shown as final. None if no row logged it."""
    v = next((r[key] for r in reversed(rows) if key in r), KeyError)
    return None if v is KeyError else math.nan if v is None else v


def stream_figure(run_dir: str | Path, out: str | Path | None = None, rows: list[dict] | None = None) -> Path:
    """The claim of a stream run in one figure (`addition.png` by default), against examples seen:
    1. bits per example (last log interval) with the floor and the epistemic area shaded; held-out exact
       match, the held-out certificate and the stream's certificate (share of new examples coded in
       under 1 bit) on a second axis;
    2. excess bits per example per sent position over time: the order in which the digits emerge;
    3. exact match by longest carry chain at the last evaluation, with the held-out figure beside it."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if rows is None else rows
    chains = sorted((int(k.rsplit("/", 1)[1]), k) for k in set().union(*rows) if k.startswith("val/chain_exact/")) \
        if rows else []
    fig, axes = plt.subplots(3 if chains else 2, 1, figsize=(12, 11 if chains else 8),
                             gridspec_kw={"height_ratios": [3, 2.5, 1.5] if chains else [3, 2.5]})
    ax, heat = axes[0], axes[1]
    xs = [r["examples_seen"] for r in rows if "bits/example" in r]
    rate = [math.nan if r["bits/example"] is None else r["bits/example"] for r in rows if "bits/example" in r]
    floor = last(rows, "bits/floor_example")
    if xs:
        ax.plot(xs, rate, color="C0", label="bits per example (last interval)")
        if floor is not None:
            ax.axhline(floor, color="gray", linestyle="--", label=f"floor {floor:.2f}")
            ax.fill_between(xs, floor, rate, where=np.array(rate) > floor, color="C0", alpha=0.2,
                            label="epistemic (learning cost)")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("bits per example")
    twin = ax.twinx()
    for key, label, style in (("val/exact_match", "held-out exact match", "-"),
                              ("val/certified_exact", "held-out, certified (< 1 bit)", ":"),
                              ("bits/certified_exact", "stream, certified (< 1 bit)", "--"),
                              ("val/chain_exact_min", "lowest over carry-chain lengths", "-.")):
        pts = [(r["examples_seen"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            twin.plot(*zip(*pts), color="C1" if key.startswith("val") else "C2", linestyle=style, label=label)
    twin.set_ylim(-0.02, 1.02)
    twin.set_ylabel("exact match")
    handles, names = (a + b for a, b in zip(ax.get_legend_handles_labels(), twin.get_legend_handles_labels()))
    if handles:  # beside the panel, off the curves
        ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.1, 1), fontsize=8)
    epistemic = last(rows, "bits/epistemic")
    ax.set_title(f"{run_dir.name}: {(epistemic or 0) / 1e6:.3f} Mbit above the floor", fontsize=10)

    bits_rows = [r for r in rows if "bits/total" in r]
    names = [k[len("bits/excess/"):] for k in bits_rows[-1] if k.startswith("bits/excess/")] if bits_rows else []
    cum = [(r["examples_seen"], [r[f"bits/excess/{n}"] for n in names], r["bits/examples"])
           for r in rows if names and f"bits/excess/{names[0]}" in r]
    ex = np.array([c[0] for c in cum])
    exc = np.array([c[1] for c in cum], dtype=float)  # (L, P) cumulative excess per position
    dn = np.diff([c[2] for c in cum])  # new examples in each window (0 once a table task revisits)
    keep = dn > 0
    if keep.sum() > 1:
        per = np.diff(exc, axis=0)[keep] / dn[keep, None]  # (L', P) excess bits per example in each window
        im = heat.imshow(np.clip(per.T, 1e-3, None), aspect="auto", origin="lower", cmap="magma",
                         norm=plt.matplotlib.colors.LogNorm(vmin=1e-3, vmax=max(1e-2, np.nanmax(per))),
                         extent=[ex[1:][keep][0], ex[1:][keep][-1], -0.5, len(names) - 0.5])
        heat.set_yticks(range(len(names)), names, fontsize=6)
        heat.set_xlabel("examples seen")
        heat.set_ylabel("position")
        heat.set_title("excess bits per example, per position (above the floor): the order of emergence",
                       fontsize=9)
        fig.colorbar(im, ax=heat)
    else:
        heat.axis("off")

    if chains:
        bar = axes[2]
        final = [last(rows, key) for _, key in chains]
        bar.bar([str(k) for k, _ in chains], final, color="C1")
        held = last(rows, "val/exact_match")
        if held is not None:
            bar.axhline(held, color="gray", linestyle="--", label=f"held-out (uniform operands) {held:.4f}")
            bar.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        bar.set_ylim(0, 1.02)
        bar.set_xlabel("longest carry chain in the sum (digits a carry passes through)")
        bar.set_ylabel("exact match")
        bar.set_title("the rule at the last evaluation: exact match by carry-chain length", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "addition.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def run_figure(run_dir: str | Path, cfg) -> tuple[Path | None, dict | None]:
    """A run's own figure, from its metrics: grokking.png for a table task (with its marks), <task>.png
    for a stream task (addition.png, ...). -> (its path, or None for a run with no metrics; the marks)."""
    from lab.tasks import TASKS

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        return None, grokking_marks([]) if TASKS[cfg.task.name].is_table else None
    if TASKS[cfg.task.name].is_table:
        return run_dir / "grokking.png", grokking_figure(run_dir)
    return stream_figure(run_dir, run_dir / f"{cfg.task.name}.png"), None
