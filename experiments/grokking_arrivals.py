"""Grokking in bits: what the arriving rows' code says, run by run and across a sweep.

    python experiments/grokking_arrivals.py runs RUN_DIR [RUN_DIR ...] [--fixed RUN_DIR ...]
    python experiments/grokking_arrivals.py evals RUN_DIR [--around 0.05 0.99]
    python experiments/grokking_arrivals.py sweep runs/sweeps/grokking-arrivals

Every figure here is read from the runs' metrics.jsonl and summary.json: none reads a checkpoint.

`runs`: per run, the steps (and seconds, the run's fit time times the share of its steps) to 90% and 99%
validation accuracy, the first evaluation whose arrivals' certificate is 0.9, and the code per arrived
row; `--fixed` runs (the fixed split, configs/grokking.yaml) are listed beside them.

`evals`: one run, evaluation by evaluation: the window's arrivals with their bits, greedy exact match and
certificate (95% intervals) against validation bits and accuracy, at the end of the window and averaged
over its two ends (the window's rows were coded by the models of the whole window).

`sweep`: Spearman's rho between each run's code per arrived row (bits/total / bits/examples: the train
split's code in arrival order, read from training alone; beside it the final dl/table, which reads the
held-out rows) and how well it generalised: the mean validation
accuracy over its evaluations (the area under its curve), the steps to 90% validation (a run that never
gets there counts as its last step + 1) and the final validation accuracy. Then the coverage: over every
evaluation window of every run (the first excepted: no evaluation at its start), the share whose
validation accuracy lies inside the arrivals' 95% interval, at the window's end and averaged over its
two ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.loggers import read_metrics  # noqa: E402
from lab.report import spearman  # noqa: E402


def load_run(run: Path) -> dict:
    """The run's evaluations joined with their arrival windows, and its final figures."""
    rows = read_metrics(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    evals: dict[int, dict] = {}
    for r in rows:
        if "val/exact_match" in r or "bits/arrivals" in r:
            evals.setdefault(r["step"], {}).update(r)
    evals = dict(sorted((s, e) for s, e in evals.items() if "val/exact_match" in e))
    return {"name": run.name, "evals": evals, "summary": summary}


def first(run: dict, key: str, level: float) -> int | None:
    return next((s for s, e in run["evals"].items() if e.get(key) is not None and e[key] >= level), None)


def seconds_at(run: dict, step: int | None) -> float | None:
    """Fit seconds to `step`: the run's wall time times the share of its steps (the steps cost alike)."""
    s = run["summary"]
    return None if step is None else s["wall_seconds_this_session"] * step / s["steps"]


def code_per_row(run: dict) -> float:
    s = run["summary"]
    return s["bits/total"] / s["bits/examples"]


def mean_val(run: dict) -> float:
    v = [e["val/exact_match"] for e in run["evals"].values()]
    return sum(v) / len(v)


def fmt(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def cmd_runs(args) -> None:
    print("| run | split | steps | to 90% val | to 99% val (s) | arrivals certified >= 0.9 at | final val "
          "| bits/total | code per arrived row |\n|---|---|---|---|---|---|---|---|---|")
    for kind, dirs in (("arrivals", args.run), ("fixed", args.fixed or [])):
        for d in dirs:
            run = load_run(Path(d))
            s = run["summary"]
            s99 = first(run, "val/exact_match", 0.99)
            print(f"| {run['name']} | {kind} | {s['steps']} | {fmt(first(run, 'val/exact_match', 0.9))} "
                  f"| {fmt(s99)} ({fmt(seconds_at(run, s99))}) | {fmt(first(run, 'bits/arrival_certified', 0.9))} "
                  f"| {s['val/exact_match']:.4f} | {s['bits/total']:.0f} | {code_per_row(run):.3f} |")


def windows(run: dict) -> list[tuple[int, dict, float, float]]:
    """(step, evaluation, validation accuracy at the window's end, averaged over its two ends) of every
    window with arrivals and an evaluation at its start."""
    out, prev = [], None
    for step, e in run["evals"].items():
        if prev is not None and e.get("bits/arrivals"):
            out.append((step, e, e["val/exact_match"], (prev["val/exact_match"] + e["val/exact_match"]) / 2))
        prev = e
    return out


def cmd_evals(args) -> None:
    run = load_run(Path(args.run))
    lo, hi = args.around
    print("| step | arrivals | bits per arrival (95%) | val bits | arrivals exact (95%) | val exact "
          "| val, window mean | arrivals certified (95%) |\n|---|---|---|---|---|---|---|---|")
    prev = None
    for step, e in run["evals"].items():
        v = e["val/exact_match"]
        shown = prev is not None and (lo <= v or lo <= prev["val/exact_match"]) and prev["val/exact_match"] < hi
        if e.get("bits/arrivals") and (shown or args.all):
            mid = "-" if prev is None else f"{(prev['val/exact_match'] + v) / 2:.3f}"
            print(f"| {step} | {e['bits/arrivals']:.0f} | {e['bits/arrival_example']:.2f} "
                  f"[{e['bits/arrival_example_lo']:.2f}, {e['bits/arrival_example_hi']:.2f}] "
                  f"| {e['val/bits_example']:.2f} | {e['bits/arrival_exact']:.3f} "
                  f"[{e['bits/arrival_exact_lo']:.3f}, {e['bits/arrival_exact_hi']:.3f}] | {v:.3f} | {mid} "
                  f"| {e['bits/arrival_certified']:.3f} [{e['bits/arrival_certified_lo']:.3f}, "
                  f"{e['bits/arrival_certified_hi']:.3f}] |")
        prev = e


def cmd_sweep(args) -> None:
    runs = [load_run(p.parent) for p in sorted(Path(args.sweep).glob("*/summary.json"))]
    if len(runs) < 3:
        sys.exit(f"sweep: {args.sweep} holds {len(runs)} finished runs; the statistics need 3 or more")
    print("| run | train rows | code per arrived row | mean val acc | steps to 90% val | final val acc |\n"
          "|---|---|---|---|---|---|")
    table = []
    for run in runs:
        last = run["summary"]["steps"]
        to90 = first(run, "val/exact_match", 0.9)
        row = (code_per_row(run), mean_val(run), to90 if to90 is not None else last + 1,
               run["summary"]["val/exact_match"])
        table.append(row)
        print(f"| {run['name']} | {run['summary']['bits/examples']:.0f} | {row[0]:.3f} | {row[1]:.3f} "
              f"| {fmt(to90)}{'' if to90 is not None else f' (never; {last + 1})'} | {row[3]:.4f} |")
    code = [r[0] for r in table]
    dl = [run["summary"]["dl/table"] for run in runs]
    print("\n| against | code per arrived row (training only) | final dl/table (reads the held-out rows) |\n"
          "|---|---|---|")
    for i, label in ((1, "mean validation accuracy (area under the curve)"), (2, "steps to 90% validation"),
                     (3, "final validation accuracy")):
        target = [r[i] for r in table]
        print(f"| {label} | {spearman(code, target):.3f} | {spearman(dl, target):.3f} |")
    ends = mids = n = 0
    for run in runs:
        for _, e, end, mid in windows(run):
            lo, hi = e["bits/arrival_exact_lo"], e["bits/arrival_exact_hi"]
            ends += lo <= end <= hi
            mids += lo <= mid <= hi
            n += 1
    if n == 0:
        print("\nno evaluation window after the first holds arrivals (a fixed split: the code ends with its first "
              "pass)")
        return
    print(f"\ncoverage over {n} windows of {len(runs)} runs: validation accuracy inside the arrivals' 95% "
          f"interval at the window's end {ends / n:.3f}, averaged over its two ends {mids / n:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("runs", help="steps and seconds to grokking, run by run")
    p.add_argument("run", nargs="+")
    p.add_argument("--fixed", nargs="*", help="fixed-split runs to list beside them")
    p = sub.add_parser("evals", help="one run's arrivals against validation, evaluation by evaluation")
    p.add_argument("run")
    p.add_argument("--around", nargs=2, type=float, default=[0.05, 0.99],
                   help="show the evaluations from validation accuracy LO until it passes HI")
    p.add_argument("--all", action="store_true", help="every evaluation")
    p = sub.add_parser("sweep", help="rank correlations and coverage across a sweep directory")
    p.add_argument("sweep")
    args = ap.parse_args()
    {"runs": cmd_runs, "evals": cmd_evals, "sweep": cmd_sweep}[args.cmd](args)


if __name__ == "__main__":
    main()
