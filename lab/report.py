"""Reports from local metrics: `python -m lab report RUN_OR_SWEEP_DIR`.

For a run directory (it holds metrics.jsonl): report.csv / report.md with the final figures, and
report.png: the run's figure (`lab.plots`): for a stream task the bits-per-example curve with the floor
and the epistemic area shaded, held-out exact match on a second axis, and a heatmap of the excess bits
per position over examples seen; for a table task accuracy, description lengths and losses by step.

For a sweep directory (its subdirectories are runs): one row per run (the parameters that vary, the
final figures) in report.csv / report.md, and report.png: final compression (dl/table for table tasks,
else the last bits/example) against final validation accuracy, one point per run, with the Spearman
rank correlation printed. Compression tracking generalization shows as a strongly negative rho.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import yaml

from lab.config import flatten
from lab.errors import RunError
from lab.loggers import read_metrics
from lab.plots import grokking_figure, last, plt, stream_figure


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when undefined."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ranks of ties
            r[v == val] = r[v == val].mean()
        return r

    if len(x) < 3:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


FINAL = ["step", "examples_seen", "val/exact_match", "val/certified_exact", "val/chain_exact_min",
         "val/rule", "val/clean_exact_match", "train/exact_match", "val/loss",
         "bits/total", "bits/floor", "bits/epistemic", "bits/example", "dl/table", "dl/table_epistemic",
         "dl/table_raw", "dl/model", "dl/two_part"]
# compression measures a sweep is scored by, when every run has them: the prequential description length
# of the table, the two-part code and its weights part (which never reads the held-out rows), the rate
MEASURES = ("dl/table", "dl/two_part", "dl/model", "bits/example")


def final_figures(rows: list[dict]) -> dict:
    return {k: last(rows, k) for k in FINAL if last(rows, k) is not None}


def write_table(rows: list[dict], out: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def run_rows(run_dir: Path, skipped: dict[str, list[int]]) -> list[dict]:
    """A run's metrics rows (malformed lines skipped, their numbers in `skipped[run]`); a run that wrote
    a summary but no metrics file reads as one row of its summary."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        s = json.loads((run_dir / "summary.json").read_text())
        return [{k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}]
    bad: list[int] = []
    rows = read_metrics(path, bad)
    if bad:
        skipped[str(path)] = bad
    return rows


def run_report(run_dir: Path) -> dict:
    skipped: dict[str, list[int]] = {}
    rows = run_rows(run_dir, skipped)
    final = final_figures(rows)
    write_table([final], run_dir / "report")
    if any("dl/table" in r for r in rows):  # a table task: accuracy, description lengths, losses by step
        grokking_figure(run_dir, run_dir / "report.png", rows)
    else:
        stream_figure(run_dir, run_dir / "report.png", rows)
    return {"kind": "run", "final": final, "figure": str(run_dir / "report.png"), "skipped": skipped}


def sweep_report(sweep_dir: Path, runs: list[Path]) -> dict:
    configs = {r: yaml.safe_load((r / "config.yaml").read_text()) for r in runs}
    flat = {r: flatten(c) for r, c in configs.items()}
    varying = sorted(k for k in set().union(*flat.values())
                     if len({str(f.get(k)) for f in flat.values()}) > 1 and not k.startswith("log."))
    table, skipped = [], {}
    for r in sorted(runs):
        rows = run_rows(r, skipped)
        table.append({"run": r.name, **{k: flat[r].get(k) for k in varying}, **final_figures(rows)})
    measures = [m for m in MEASURES if all(t.get(m) is not None for t in table)][:3]
    label = lambda t: ", ".join(str(t[k]) for k in varying) or t["run"]  # noqa: E731
    write_table(table, sweep_dir / "report")
    rhos = {}
    fig, axes = plt.subplots(1, max(1, len(measures)), figsize=(6 * max(1, len(measures)), 5), squeeze=False)
    for ax, metric in zip(axes[0], measures):
        pts = [(t[metric], t["val/exact_match"], label(t)) for t in table
               if all(t.get(k) is not None and math.isfinite(t[k]) for k in (metric, "val/exact_match"))]
        rhos[metric] = spearman([p[0] for p in pts], [p[1] for p in pts])
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=7, alpha=0.8, xytext=(4, -3), textcoords="offset points")
        ax.set_xlabel(f"final {metric} (bits)")
        ax.set_ylabel("final validation accuracy (exact match)")
        ax.set_title(f"{len(pts)} runs, Spearman rho = {rhos[metric]:.3f}", fontsize=10)
    keys = ", ".join(k.split(".")[-1] for k in varying)
    fig.suptitle(sweep_dir.name + (f"; points: ({keys})" if keys else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(sweep_dir / "report.png", dpi=110)
    plt.close(fig)
    metric = measures[0] if measures else None
    return {"kind": "sweep", "runs": len(table), "metric": metric, "spearman": rhos.get(metric, math.nan),
            "spearman_by_measure": rhos, "varying": varying, "figure": str(sweep_dir / "report.png"),
            "skipped": skipped}


def ran(d: Path) -> bool:
    """A directory holds a run that ran (its metrics, or at least its summary)."""
    return (d / "metrics.jsonl").exists() or (d / "summary.json").exists()


def sweep_runs(path: Path) -> list[Path]:
    """The runs of a sweep directory, in name order (failed attempts, kept as <run>.failed-<time>, left out)."""
    return [d for d in sorted(path.iterdir()) if d.is_dir() and ran(d) and ".failed-" not in d.name] \
        if path.is_dir() else []


def report(path: str | Path) -> dict:
    path = Path(path)
    if ran(path):
        return run_report(path)
    runs = sweep_runs(path)
    if not runs:
        raise RunError(f"report: {path} is neither a run directory nor a sweep of runs (no metrics.jsonl "
                       f"or summary.json)")
    return sweep_report(path, runs)
