"""experiments/bench_addition.py: its raw loop is the lab's training without Lightning, and its table
rows are read off the run's own evaluations and bits; experiments/carry_chains.py counts carry chains
as column addition does."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_addition

from lab.loggers import read_metrics
from lab.tasks.addition import longest_chain
from lab.train import train

spec = importlib.util.spec_from_file_location("bench_addition", Path(ROOT) / "experiments" / "bench_addition.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("position", ["absolute", "coupled"])
def test_raw_loop_trains_exactly_like_the_lab(tmp_path, position):
    """Same weights after 12 steps (warmup, cosine, clipping): the --vs-raw ratio compares like with like."""
    over = ["train.max_steps=12", "train.eval_every=100", "train.lr=3e-3", "train.schedule=cosine",
            "train.decay_steps=12", "train.grad_clip=0.5", f"model.position={position}"]
    lab = train(tiny_addition(tmp_path, *over)).module.model
    raw, times = bench.raw_loop(tiny_addition(tmp_path, *over), 12)
    assert len(times) == 12 and times == sorted(times)
    moved = False
    for (name, p), q in zip(lab.state_dict().items(), raw.state_dict().values()):
        # atol 1e-5: Adam turns last-bit differences in near-zero gradients into steps of up to ~1e-6;
        # a different schedule, clipping or batch moves weights by ~lr = 3e-3 per step
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        moved |= not torch.equal(p, bench.raw_loop(tiny_addition(tmp_path, *over), 0)[0].state_dict()[name])
    assert moved  # the comparison is not between two untrained models


def test_learn_reads_levels_and_bits_from_the_run(tmp_path):
    cfg = tiny_addition(tmp_path, "train.max_steps=60", "train.lr=3e-3", "train.stop_at=null")
    row = bench.learn(cfg, budget=600, name="t")
    evals = [r for r in read_metrics(Path(row["run_dir"]) / "metrics.jsonl") if "val/exact_match" in r]
    assert [m["step"] for m in row["marks"]] == [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert row["examples"] == 60 * 32 and row["steps"] == 60
    for level in bench.LEVELS:  # the first evaluation at or above the level, or None
        hit = next((r for r in evals if r["val/exact_match"] >= level), None)
        assert (row[level] or {}).get("step") == (hit or {}).get("step")
    epistemic = [m["epistemic"] for m in row["marks"]]
    assert epistemic[-1] == pytest.approx(row["epistemic"])  # the last evaluation is at the last step
    assert row["final_exact"] == evals[-1]["val/exact_match"]
    assert row["ex/s"] > 0 and row["tok/s"] == pytest.approx(row["ex/s"] * 13)  # 13 positions fed per row
    line = bench.fmt_row("tiny", 0, row)
    assert line.count("|") == bench.HEADER.splitlines()[0].count("|")


def test_budget_stops_the_run(tmp_path):
    row = bench.learn(tiny_addition(tmp_path, "train.max_steps=1000"), budget=0, name="t")
    assert row["steps"] == 1


chains_spec = importlib.util.spec_from_file_location("carry_chains", Path(ROOT) / "experiments" / "carry_chains.py")
chains = importlib.util.module_from_spec(chains_spec)
chains_spec.loader.exec_module(chains)


def test_longest_carry_chain():
    a, b = np.array([123, 199, 1999, 9999, 55, 5050, 950]), np.array([456, 1, 1, 1, 45, 4950, 50])
    # 199 + 1: the carry from 9 + 1 passes through 9 + 0 (1); 5050 + 4950: through 5 + 4 and 0 + 9 (2);
    # 950 + 50: 0 + 0 makes no carry, 5 + 5 does, 9 + 0 passes it on (1)
    assert longest_chain(a, b, 4).tolist() == [0, 1, 2, 3, 1, 2, 1]
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10**6, 500), rng.integers(0, 10**6, 500)

    def by_hand(x: int, y: int) -> int:  # column addition on the decimal strings
        best = run = carry = 0
        for dx, dy in zip(f"{x:06d}"[::-1], f"{y:06d}"[::-1]):
            s = int(dx) + int(dy) + carry
            run = run + 1 if carry and s == 10 else 0
            best, carry = max(best, run), int(s >= 10)
        return best

    assert longest_chain(a, b, 6).tolist() == [by_hand(x, y) for x, y in zip(a, b)]


def test_carry_chains_report(tmp_path, monkeypatch, capsys):
    run = train(tiny_addition(tmp_path, "train.max_steps=10")).run_dir
    monkeypatch.setattr("sys.argv", ["carry_chains.py", str(run), "--n", "300"])
    chains.main()
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows and sum(int(r[2]) for r in rows) == 300  # every sampled sum is in one row
    assert all(0 <= float(r[4]) <= 1 for r in rows)
