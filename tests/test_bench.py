"""experiments/bench_addition.py: its raw loop is the lab's training without Lightning, and its table
rows are read off the run's own evaluations and bits; experiments/carry_chains.py counts carry chains
as column addition does; experiments/block_prequential.py and grokking_arrivals.py code and read what
they say."""

import argparse
import importlib.util
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lab.loggers import read_metrics
from lab.module import LabModule
from lab.run import train
from lab.tasks import make_task
from lab.tasks.addition import longest_chain

ROOT = str(Path(__file__).resolve().parents[1])


def experiment(name: str):
    """The script experiments/<name>.py, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, Path(ROOT) / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = experiment("bench_addition")


@pytest.mark.parametrize("position", ["absolute", "coupled"])
def test_raw_loop_trains_exactly_like_the_lab(tmp_path, position, tiny_addition):
    """Same weights after 12 steps (warmup, cosine, clipping): the --vs-raw ratio compares like with like."""
    over = ["train.max_steps=12", "train.eval_every=100", "train.lr=3e-3", "train.schedule=cosine",
            "train.decay_steps=12", "train.grad_clip=0.5", f"model.position={position}"]
    lab = train(tiny_addition(tmp_path, *over)).module.model
    raw, times = bench.raw_loop(tiny_addition(tmp_path, *over), 12)
    assert len(times) == 12  # a step each
    moved = False
    for (name, p), q in zip(lab.state_dict().items(), raw.state_dict().values()):
        # atol 1e-5: Adam turns last-bit differences in near-zero gradients into steps of up to ~1e-6;
        # a different schedule, clipping or batch moves weights by ~lr = 3e-3 per step
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        moved |= not torch.equal(p, bench.raw_loop(tiny_addition(tmp_path, *over), 0)[0].state_dict()[name])
    assert moved  # the comparison is not between two untrained models


def test_learn_reads_levels_and_bits_from_the_run(tmp_path, tiny_addition):
    cfg = tiny_addition(tmp_path, "train.max_steps=60", "train.lr=3e-3", "train.stop_at=null")
    row = bench.learn(cfg, budget=600, name="t")
    evals = [r for r in read_metrics(Path(row["run_dir"]) / "metrics.jsonl") if "val/exact_match" in r]
    assert [m["step"] for m in row["marks"]] == [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert row["examples"] == 60 * 32 and row["steps"] == 60
    for level in bench.LEVELS:  # the first evaluation at or above the level, or None
        hit = next((r for r in evals if r["val/exact_match"] >= level), None)
        assert (row[level] or {}).get("step") == (hit or {}).get("step")
    assert [m["rule"] for m in row["marks"]] == [r["val/rule"] for r in evals]  # the rule's marks
    hit = next((r for r in evals if r["val/rule"] >= bench.RULE), None)
    assert (row["rule"] or {}).get("step") == (hit or {}).get("step")
    epistemic = [m["epistemic"] for m in row["marks"]]
    assert epistemic[-1] == pytest.approx(row["epistemic"])  # the last evaluation is at the last step
    assert row["final_exact"] == evals[-1]["val/exact_match"]
    assert row["ex/s"] > 0 and row["tok/s"] == pytest.approx(row["ex/s"] * 13)  # 13 positions fed per row
    # the wall time holds the last evaluation, which comes after the last step; the share is of it
    assert row["seconds"] == row["marks"][-1]["seconds"] > row["eval_seconds"] > 0
    assert row["eval_seconds"] == pytest.approx(sum(m["eval_seconds"] for m in row["marks"]))
    line = bench.fmt_row("tiny", 0, row)
    assert line.count("|") == bench.HEADER.splitlines()[0].count("|")


def test_budget_stops_the_run(tmp_path, tiny_addition):
    row = bench.learn(tiny_addition(tmp_path, "train.max_steps=1000"), budget=0, name="t")
    assert row["steps"] == 1


chains = experiment("carry_chains")


def test_longest_carry_chain():
    a, b = np.array([123, 199, 1999, 9999, 55, 5050, 950]), np.array([456, 1, 1, 1, 45, 4950, 50])
    # 199 + 1: the carry from 9 + 1 passes through 9 + 0 (1); 5050 + 4950: through 5 + 4 and 0 + 9 (2);
    # 950 + 50: 0 + 0 makes no carry, 5 + 5 does, 9 + 0 passes it on (1)
    assert longest_chain(a, b, 4).tolist() == [0, 1, 2, 3, 1, 2, 1]
    assert longest_chain(a, b, 4, made_at=True)[1].tolist() == [-1, 0, 0, 0, 0, 1, 1]  # where each carry is made
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


def test_carry_chains_report(tmp_path, monkeypatch, capsys, tiny_addition):
    run = train(tiny_addition(tmp_path, "train.max_steps=10")).run_dir
    monkeypatch.setattr("sys.argv", ["carry_chains.py", str(run), "--n", "300"])
    chains.main()
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows and sum(int(r[2]) for r in rows) == 300  # every sampled sum is in one row
    assert all(0 <= float(r[4]) <= 1 for r in rows)


@pytest.mark.parametrize("config", ["configs/addition.yaml", "configs/grokking.yaml"])
def test_flop_count_is_torchs(config):
    """The benchmark's FLOPs per training step equal what torch's FlopCounterMode counts for the model's
    forward and backward, and the machine's throughput on those multiplies is measured."""
    from torch.utils.flop_counter import FlopCounterMode

    from lab.config import load
    from lab.module import LabModule
    from lab.tasks import make_task

    cfg = load(f"{ROOT}/{config}", ["train.batch_size=8"])
    task = make_task(cfg)
    model = LabModule(cfg, task).model
    x = torch.from_numpy(task.train_batch(0, 8).x)
    with FlopCounterMode(display=False) as counter:
        model(x[:, :-1]).sum().backward()
    assert bench.train_flops(model, 8, task.block_size) == counter.get_total_flops()
    peak, square = bench.machine_flops(model, 8, task.block_size, repeats=1)
    assert peak > 1e8 and square > 1e8


def test_machine_flops_is_the_best_of_its_timings_not_their_mean(monkeypatch):
    """Each multiply's throughput is its fastest of `repeats` timings: a shared host's other load can only
    slow a timing down, so the mean (which read 89-155 GFLOP/s beside runs training at 81-89) is noise.
    The clock is faked: every timing lasts 2, 1, then 3 s, so the best is 1 s and the mean 2."""
    from lab.config import load

    cfg = load(f"{ROOT}/configs/addition.yaml", ["train.batch_size=2"])
    task = make_task(cfg)
    model, T = LabModule(cfg, task).model, task.block_size
    durations, now, calls = [2.0, 1.0, 3.0], [0.0], [0]

    def clock() -> float:  # (start, end) pairs; each end comes the next duration after its start
        calls[0] += 1
        if calls[0] % 2 == 0:
            now[0] += durations[(calls[0] // 2 - 1) % 3]
        return now[0]

    monkeypatch.setattr(bench.time, "perf_counter", clock)
    peak, square = bench.machine_flops(model, 2, T, repeats=3)
    assert peak == bench.train_flops(model, 2, T) / (len(bench.matmuls(model, 2, T)) * 1.0)
    assert square == 3 * 2 * 2048**3 / 1.0


def test_bits_cost_is_measured_in_alternating_windows_of_one_run(tiny_modular, tmp_path, monkeypatch):
    """experiments/bench_bits.py: windows alternate on, off, on, off after the warm-up, each a whole number
    of logging intervals (3 steps asked, logging every 5: 5-step windows); while off, the bits callback
    counts nothing and the step skips the float64 per-token loss. With `null`, every window is on."""
    bench_bits = experiment("bench_bits")
    seen = []
    step = bench_bits.SwitchedBits.on_train_batch_end

    def spy(self, trainer, pl_module, outputs, *args):
        seen.append((trainer.global_step, self.on, pl_module.per_token_loss, outputs is not None))
        step(self, trainer, pl_module, outputs, *args)

    monkeypatch.setattr(bench_bits.SwitchedBits, "on_train_batch_end", spy)
    cfg = tiny_modular(tmp_path, "log.every=5", "train.max_steps=100")
    costs = bench_bits.measure(cfg, warm=4, window=3, pairs=2)
    assert set(costs) == {"wall", "cpu"}  # (5-step windows: noise, not a figure)
    assert all(len(c) == 2 and all(math.isfinite(x) for x in c) for c in costs.values())
    timed = [(s, on) for s, on, _, _ in seen if s > 5]
    assert [on for _, on in timed] == [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5
    assert all(on == per_token for _, on, per_token, _ in seen if _ > 5)
    seen.clear()
    bench_bits.measure(cfg, warm=4, window=3, pairs=2, null=True)
    assert [on for s, on, _, _ in seen if s > 5] == [True] * 20


def test_compressors_runs_lab_commands_in_the_background_without_blocking_and_names_a_failure():
    """--parallel runs a training run beside the encoder: a command that writes more than a pipe holds
    (64 KiB) must finish while nobody reads its output, and a failing one reports its last error line."""
    import time

    comp = experiment("compressors")
    proc = comp.start("dump", f"{ROOT}/configs/addition.yaml", "--examples", "5000", "-o", "/dev/stdout")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # nobody reads it meanwhile
        time.sleep(0.2)
    assert proc.poll() == 0, "a background lab command blocked on its own output"
    out = comp.finish(proc)
    assert len(out) > 2**16 and len(out.splitlines()) == 5000
    with pytest.raises(RuntimeError, match="task.nope"):
        comp.finish(comp.start("dump", f"{ROOT}/configs/addition.yaml", "task.nope=1", "--examples", "1",
                               "-o", "/dev/null"))



def test_block_prequential_codes_each_block_with_a_model_trained_on_the_blocks_before(tiny_modular, tmp_path):
    """A block's code is the block's bits under a fresh model trained on the prefix alone: untrained (0
    steps), the initial model's bits; trained, lower bits on the rows it trained on than on new ones."""
    blocks = experiment("block_prequential")
    cfg = tiny_modular(tmp_path, "train.lr=1e-2")
    task = make_task(cfg)
    order = task._epoch_order(0)
    prefix, block = order[:18], order[18:]
    L.seed_everything(cfg.seed, verbose=False)  # the initial weights of every block's model
    model = LabModule(cfg, task).model.eval()
    x = torch.from_numpy(task.table[block])
    with torch.no_grad():
        logp = torch.log_softmax(model(x[:, :-1]).double(), -1)  # (n, T-1, V)
    untrained = float(-logp[:, -1].gather(-1, x[:, -1:]).sum() / math.log(2))  # the answer is the one sent token
    assert blocks.block_bits(cfg, prefix, block, 0) == pytest.approx(untrained, rel=1e-9)
    seen, unseen = blocks.block_bits(cfg, prefix, prefix, 100), blocks.block_bits(cfg, prefix, block, 100)
    assert seen / len(prefix) < 0.5 * unseen / len(block)  # the model learned its prefix, not the next block


def test_arrival_statistics_read_the_runs(tiny_modular, tmp_path, capsys):
    """experiments/grokking_arrivals.py: the code per arrived row is the run's bits/total over its train
    rows (all arrived); every window after the first (no evaluation at its start) is compared."""
    arrivals = experiment("grokking_arrivals")
    n_train = {}
    for i, fraction in enumerate((0.3, 0.5, 0.7)):
        cfg = tiny_modular(tmp_path, f"task.train_fraction={fraction}", "task.arrival=uniform", "task.arrival_steps=20",
                           "train.max_steps=24", "train.eval_every=6", "train.stop_at=null", f"log.name=r{i}")
        n_train[f"r{i}"] = len(train(cfg).module.task.train_idx)
    for name, n in n_train.items():
        run = arrivals.load_run(tmp_path / name)
        assert arrivals.code_per_row(run) == pytest.approx(run["summary"]["bits/total"] / n, rel=1e-12)
        assert [step for step, *_ in arrivals.windows(run)] == [12, 18, 24]
    arrivals.cmd_sweep(argparse.Namespace(sweep=str(tmp_path)))
    out = capsys.readouterr().out
    assert "coverage over 9 windows of 3 runs" in out and "steps to 90% validation" in out
