"""Behaviour kept: short runs of addition, a modular table and S5 give the logged values recorded before the
layout changed (tests/data/behaviour/), to the last bit on the machine that recorded them.

    python tests/test_behaviour.py --record     # rewrite the recordings (only when a change means to move them)

Each run covers what a refactor could move: addition with the operands coded by their law
(`loss_on=answer`), label noise (`val_clean`) and the carry-chain sets; a modular table whose rows arrive
(the arrival windows, the two-part code, the Fourier probes); S5 trained on every token. Where the CPU
differs from the recording's (other kernels round differently), the values are compared to a relative
1e-3 and the counts exactly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "behaviour"
COMMON = ["train.threads=1", "log.wandb=false", "log.progress_bar=false", "model.preset=gpt-nano",
          "train.checkpoint_every=1000"]
RUNS = {
    "addition": ("configs/addition-adamw.yaml", [  # the default when recorded (AdamW, no QK-norm)
        "task.n_digits=4", "task.n_heldout=200", "task.n_chain=20", "task.loss_on=answer", "task.label_noise=0.02",
        "model.n_layer=2", "train.batch_size=32", "train.max_steps=40", "train.eval_every=20", "log.every=5",
        "task.n_chain_confirm=0"]),  # recorded before the config had confirmation sums (they leave the stream)
    "modular": ("configs/grokking-arrivals.yaml", [
        "task.p=23", "task.arrival_steps=20", "task.label_noise=0.05", "model.n_layer=1", "train.batch_size=32",
        "train.max_steps=40", "train.eval_every=10", "log.every=5"]),
    "s5": ("configs/grokking-s5.yaml", [
        "task.train_fraction=0.05", "task.loss_on=all", "model.n_layer=1", "train.batch_size=64",
        "train.max_steps=30", "train.eval_every=10", "log.every=5"]),
}
VARIABLE = ("wall_seconds_this_session", "run_dir")  # the summary's keys that differ from run to run


def machine() -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{platform.machine()} {model} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"


def run(name: str, out: Path) -> dict:
    """Train run `name` in out/<name>; -> {"metrics": rows, "positions": rows, "summary": dict}."""
    from lab.config import load
    from lab.run import train

    config, overrides = RUNS[name]
    cfg = load(ROOT / config, [*COMMON, *overrides, f"log.dir={out}", f"log.name={name}"])
    run_dir = train(cfg, name).run_dir
    from lab.loggers import read_metrics

    with open(run_dir / "positions.csv") as f:
        positions = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"metrics": read_metrics(run_dir / "metrics.jsonl"), "positions": positions,
            "summary": {k: v for k, v in summary.items() if k not in VARIABLE}}


def same(a, b, exact: bool, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            same(a[k], b[k], exact, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {len(a)} entries, recorded {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, exact, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not exact and not a.is_integer():
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-9), f"{where}: {a} vs recorded {b}"
    else:
        assert a == b, f"{where}: {a!r} vs recorded {b!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> the run's result, as the recording's JSON holds it (each run once for this module)."""
    out = tmp_path_factory.mktemp("behaviour")
    return {name: json.loads(json.dumps(run(name, out))) for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_run_logs_what_was_recorded_before_the_change(name, runs):
    recorded = json.loads((DATA / f"{name}.json").read_text())
    same(runs[name], recorded["run"], recorded["machine"] == machine(), name)


@pytest.mark.parametrize("name", list(RUNS))
def test_every_stop_metric_a_task_offers_is_logged(name, runs):
    """`Task.metric_names` (what train.stop_metric may watch) names only metrics the evaluation logs."""
    from lab.config import load
    from lab.tasks import TASKS

    config, overrides = RUNS[name]
    cfg = load(ROOT / config, [*COMMON, *overrides])
    logged = set().union(*runs[name]["metrics"])
    offered = TASKS[cfg.task.name].metric_names(cfg.task)
    assert set(offered) <= logged, sorted(set(offered) - logged)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    os.environ["WANDB_MODE"] = "disabled"
    DATA.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(name, Path(tmp))
        (DATA / f"{name}.json").write_text(json.dumps({"machine": machine(), "run": result}) + "\n")
        print(f"recorded {name}: {len(result['metrics'])} rows")
