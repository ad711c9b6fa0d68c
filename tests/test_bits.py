import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lab.loggers import read_metrics
from lab.run import train
from lab.sweep import last_wins

ROOT = str(Path(__file__).resolve().parents[1])


def sent_bits(model, x, task) -> torch.Tensor:
    """(B,) bits of each row's sent tokens under `model` as it is now: sum -log2 softmax, float64."""
    with torch.no_grad():
        logp = torch.log_softmax(model(x[:, :-1]).double(), -1)  # (B, T-1, V)
    bits = -logp.gather(-1, x[:, 1:, None]).squeeze(-1) / math.log(2)  # (B, T-1)
    return bits[:, torch.from_numpy(task.plan.sent_mask)].sum(1)


class Recompute(L.Callback):
    """Independently codes each batch's new rows with the model before the step and after it."""

    def __init__(self):
        self.before, self.after, self.by_step = 0.0, 0.0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        coded = float(sent_bits(pl_module.model, batch["x"], pl_module.task)[batch["new"]].sum())
        self.before += coded
        self.by_step.append(coded)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after += float(sent_bits(pl_module.model, batch["x"], pl_module.task)[batch["new"]].sum())


def test_bits_are_taken_before_the_step(tmp_path, tiny_addition):
    """bits/total is the code under the model before it learned from each batch (what a receiver can
    decode), not after: the two differ by far more than the tolerance."""
    rec = Recompute()
    result = train(tiny_addition(tmp_path, "train.lr=3e-3"), extra_callbacks=[rec])
    t = result.bits.totals()
    assert t["bits/total"] == pytest.approx(rec.before, rel=1e-12)
    assert abs(t["bits/total"] - rec.after) > 1e-3 * t["bits/total"]  # coding after the step is cheaper
    assert t["bits/floor"] == pytest.approx(30 * 32 * result.module.task.floor_bits_per_example, rel=1e-12)
    assert t["bits/epistemic"] == pytest.approx(t["bits/total"] - t["bits/floor"], rel=1e-12)
    per_pos = sum(v for k, v in t.items() if k.startswith("bits/pos/"))
    assert per_pos == pytest.approx(t["bits/total"], rel=1e-12)
    assert len([k for k in t if k.startswith("bits/pos/")]) == 10  # 3 + 3 + 4 digits: s + = e are known
    assert t["bits/model"] == t["bits/total"]  # loss on every token: the model sends everything


def test_loss_on_answer_sends_the_operands_at_their_law(tmp_path, tiny_addition):
    """With the loss on the answer, the operands are sent by the task's law: bits/total = the operands'
    exact law cost (log2 of the number of pairs the stream can yield, for every example) + the model's
    answer bits; their excess is zero but for the realised-vs-expected spread of single positions."""
    result = train(tiny_addition(tmp_path, "task.loss_on=answer", "task.chain_prob=0",  # the uniform law, but for
                                 "task.chain_prob_lead=0",  # the evaluation sets (few: the spread below stays small)
                                 "task.n_chain_confirm=0"))
    task, t = result.module.task, result.bits.totals()
    n = t["bits/examples"]
    excluded = 200 + sum(len(p) for p in [*task.chain_pairs.values(), *task.confirm_pairs.values()])  # held-out,
    # carry-chain and confirmation sets
    pairs = 900 * 900 - excluded  # 3-digit operands the stream can yield
    law = sum(v for k, v in t.items() if k.startswith("bits/pos/") and k[len("bits/pos/")] in "ab")
    assert law == pytest.approx(n * math.log2(pairs), rel=1e-12)
    assert t["bits/total"] == pytest.approx(law + t["bits/model"], rel=1e-12)
    assert t["bits/floor"] == pytest.approx(n * (math.log2(pairs) + task.floor_bits[task.plan.model_mask].sum()))
    for name in ("a2", "a0", "b1"):
        assert abs(t[f"bits/excess/{name}"]) < 1e-6 * t[f"bits/pos/{name}"] + 0.5  # realised vs expected


def test_windowed_rates_and_ratios(tmp_path, tiny_addition):
    result = train(tiny_addition(tmp_path))
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "bits/example" in r]
    r1, r2 = rows[-2], rows[-1]
    n = r2["bits/examples"] - r1["bits/examples"]
    window = r2["bits/total"] - r1["bits/total"]
    assert r2["bits/example"] == pytest.approx(window / n, rel=1e-9)
    assert r2["bits/token"] == pytest.approx(window / n / 10, rel=1e-9)  # 3 digits: 10 sent tokens
    assert r2["bits/ratio_raw"] == pytest.approx(window / (n * 13 * 8), rel=1e-9)  # 13 characters a line
    assert r2["bits/ratio_uniform"] == pytest.approx(window / (n * 10 * math.log2(14)), rel=1e-9)
    assert r2["bits/ratio_floor"] == pytest.approx(window / (n * r2["bits/floor_example"]), rel=1e-9)
    assert r2["bits/epistemic_example"] == pytest.approx(r2["bits/example"] - r2["bits/floor_example"])


def test_revisited_examples_are_not_coded_again(tmp_path, tiny_modular):
    rec = Recompute()
    result = train(tiny_modular(tmp_path, "train.max_steps=40"), extra_callbacks=[rec])
    task = result.module.task
    spe = task.steps_per_epoch(16)
    first_epoch = sum(rec.by_step[:spe])
    assert sum(rec.by_step[spe:]) == 0  # the recomputation codes only first-pass examples too
    t = result.bits.totals()
    assert t["bits/total"] == pytest.approx(first_epoch, rel=1e-12)
    assert t["bits/examples"] == len(task.train_idx)
    assert t["bits/revisit"] > 0
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    totals = [r["bits/total"] for r in rows if "bits/total" in r]
    assert len(set(totals)) == 1  # every log step is after the first pass: the total never moves


def test_dl_table_is_first_pass_plus_held_out(tmp_path, tiny_modular):
    result = train(tiny_modular(tmp_path))
    task = result.module.task
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    last = [r for r in rows if "dl/table" in r][-1]
    expected = result.bits.totals()["bits/total"] + len(task.val_idx) * last["val/bits_example"]
    assert last["dl/table"] == pytest.approx(expected, rel=1e-9)
    assert last["dl/table_raw"] == pytest.approx(task.table_size() * math.log2(11))
    assert last["dl/table_floor"] == 0


def test_dl_table_before_the_first_pass_codes_the_unsent_rows(tmp_path, tiny_modular):
    """At step 1 only 16 of 36 train rows were sent: dl/table codes exactly the other 20 with the
    current model (to the last bits), and not any other 20 rows."""
    result = train(tiny_modular(tmp_path, "train.max_steps=1", "train.eval_every=1", "log.every=1"))
    task, model = result.module.task, result.module.model.eval()
    row = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "dl/table" in r][-1]
    coded_now = row["dl/table"] - result.bits.totals()["bits/total"] - len(task.val_idx) * row["val/bits_example"]
    sent = task.train_batch(0, 16).ids
    unsent = np.setdiff1d(task.train_idx, sent)
    assert len(task.train_idx) == 36 and len(unsent) == 20
    bits = sent_bits(model, torch.from_numpy(task.table[unsent]), task).sum()
    assert coded_now == pytest.approx(float(bits), rel=1e-9, abs=1e-6)
    others = np.setdiff1d(np.r_[task.train_idx, task.val_idx], unsent)[:20]  # any other 20 rows
    assert abs(float(sent_bits(model, torch.from_numpy(task.table[others]), task).sum()) - coded_now) > 1e-3


def test_pure_noise_has_no_epistemic_gain(tmp_path, tiny_modular):
    """Answers drawn uniformly whatever x and y (label_noise = 1 - 1/p): no rule, nothing to learn.
    First-pass bits stay at or above the floor, and so does the held-out loss, while training on the
    revisited rows memorises them below it."""
    p = 23
    result = train(tiny_modular(
        tmp_path, f"task.p={p}", f"task.label_noise={1 - 1 / p}", "task.train_fraction=0.5",
        "model.n_layer=2", "model.n_embd=96", "train.lr=3e-3", "train.weight_decay=0", "train.batch_size=64",
        "train.max_steps=300", "train.eval_every=25", "train.stop_at=null",
    ))
    floor = math.log2(p)
    t = result.bits.totals()
    n = t["bits/examples"]
    assert t["bits/floor"] == pytest.approx(n * floor)
    # sampling noise of the first-pass code: sd of -log2 q over n rows, q close to uniform, about 1%
    assert t["bits/epistemic"] > -0.02 * t["bits/floor"]
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    val = [r["val/bits_example"] for r in rows if "val/bits_example" in r]
    assert min(val) > floor - 0.1  # held-out never below the floor (265 rows: sd ~0.05 bit)
    revisit = [r["bits/revisit_example"] for r in rows if "bits/revisit_example" in r]
    assert revisit[-1] < floor - 0.5  # memorised noise: the training rows fall below the floor


ADDITION = ["configs/addition.yaml", "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano",
            "train.batch_size=64", "train.max_steps=12", "train.eval_every=12", "log.every=4"]
# 36 train rows; batch 35 leaves the second process no row in the last batch of each epoch
MODULAR = ["configs/grokking.yaml", "task.p=11", "model.preset=gpt-nano", "model.n_layer=1", "train.batch_size=35",
           "train.max_steps=4", "train.eval_every=2", "train.warmup_steps=1", "log.every=1"]


def _run_cli(tmp_path, name, base, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}
    env.pop("LAB_RUN_NAME", None)
    config, *rest = base
    cmd = [sys.executable, "-m", "lab", "train", f"{ROOT}/{config}", *rest, f"log.dir={tmp_path}",
           f"log.name={name}", "log.wandb=false", "log.progress_bar=false", "train.threads=1",
           "train.accelerator=cpu", *overrides]
    cmd = last_wins(cmd)  # (the command line names each key once: the overrides replace the base)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return read_metrics(tmp_path / name / "metrics.jsonl")


@pytest.mark.parametrize("lr,rel", [pytest.param(0.0, 1e-9), pytest.param(3e-3, 0.01)])
@pytest.mark.slow  # (make test-full; the fast suite: tests/test_multinode.py, DDP over two nodes, and test_arrivals)
def test_ddp_total_equals_single_process(tmp_path, lr, rel):
    """Two gloo processes split each global batch; the bits are summed over both and logged once."""
    one = _run_cli(tmp_path, "one", ADDITION, f"train.lr={lr}")
    two = _run_cli(tmp_path, "two", ADDITION, f"train.lr={lr}", "train.devices=2")
    a = [r["bits/total"] for r in one if "bits/total" in r]
    b = [r["bits/total"] for r in two if "bits/total" in r]
    assert len(a) == len(b) == 3  # logged once per log step, not once per rank
    assert [r["bits/examples"] for r in two if "bits/examples" in r] == [256.0, 512.0, 768.0]
    assert [r["examples_seen"] for r in two] == [256.0, 512.0, 768.0]
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=rel)


@pytest.mark.slow  # (make test-full; tests/test_arrivals.py runs a table task under DDP and resumed)
def test_ddp_table_task_with_an_empty_process_equals_single_process(tmp_path):
    """A table task under DDP: the last batch of each epoch (1 row) leaves one process empty. Its loss
    is zero, not NaN, so training, bits/total and dl/table equal one process's, and examples_seen is
    exact in every row."""
    one = _run_cli(tmp_path, "one", MODULAR)
    two = _run_cli(tmp_path, "two", MODULAR, "train.devices=2")
    assert [r["examples_seen"] for r in two] == [35.0, 36.0, 71.0, 72.0]
    assert all(v is not None for r in two for v in r.values())  # nothing non-finite
    for key in ("bits/total", "dl/table", "train/loss"):
        a, b = [r[key] for r in one if key in r], [r[key] for r in two if key in r]
        assert len(a) == len(b) > 1
        for x, y in zip(a, b):
            assert y == pytest.approx(x, rel=1e-5), key


@pytest.mark.slow  # (make test-full; tests/test_arrivals.py runs a table task under DDP and resumed)
def test_ddp_table_task_resumed_in_its_first_epoch_ends_with_the_same_dl_table(tmp_path):
    """Interrupted after step 1 of 3 in the first epoch (each process sent its own half of the batch),
    then resumed: the rows already sent are the same for both processes, so dl/table ends exactly as an
    uninterrupted run's."""
    base = [*MODULAR, "train.batch_size=16", "train.devices=2"]
    whole = _run_cli(tmp_path, "whole", base, "train.max_steps=6")
    _run_cli(tmp_path, "cut", base, "train.max_steps=1")  # no evaluation before its checkpoint
    resumed = _run_cli(tmp_path, "cut", base, "train.max_steps=6", f"train.resume={tmp_path / 'cut'}")
    dl = lambda rs: [r["dl/table"] for r in rs if "dl/table" in r and r["step"] > 1]  # noqa: E731
    assert dl(resumed) == dl(whole) and len(dl(whole)) == 3
    assert [r["examples_seen"] for r in resumed] == [r["examples_seen"] for r in whole]


class BigStart(L.Callback):
    """Starts examples_seen past 2^24, where float32 can no longer hold every integer."""

    def on_train_start(self, trainer, pl_module):
        pl_module.examples_seen = 2**24 + 1


def test_examples_seen_is_exact_in_every_row(tmp_path, tiny_addition):
    result = train(tiny_addition(tmp_path, "train.batch_size=30", "train.max_steps=10"), extra_callbacks=[BigStart()])
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert rows and all(r["examples_seen"] == 2**24 + 1 + 30 * r["step"] for r in rows)


@pytest.mark.parametrize("kind,overrides", [
    ("modular", ["train.max_steps=150", "train.lr=3e-3", "train.weight_decay=0.1", "train.eval_every=25"]),
    ("addition", ["train.max_steps=60", "train.lr=3e-3", "train.eval_every=20"]),
    ("addition", ["train.max_steps=2", "train.eval_every=1", "log.every=1"]),  # untrained
])
def test_certified_exact_is_a_lower_bound_on_exact_match(tmp_path, kind, overrides, tiny_addition, tiny_modular):
    """An answer that costs under 1 bit has every token at probability > 1/2, so greedy decoding
    produces it: no certified example is wrong, and the certified share never exceeds exact match."""
    make_cfg = {"addition": tiny_addition, "modular": tiny_modular}[kind]
    result = train(make_cfg(tmp_path, "train.stop_at=null", *overrides))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    evals = [r for r in rows if "val/certified_exact" in r]
    assert evals and all(r["val/certified_exact"] <= r["val/exact_match"] for r in evals)
    assert all(r.get("train/certified_exact", 0) <= r.get("train/exact_match", 1) for r in evals)
    stream = [r["bits/certified_exact"] for r in rows if "bits/certified_exact" in r]
    assert stream and all(0 <= v <= 1 for v in stream)
    task, model = result.module.task, result.module.model.eval()
    x = torch.from_numpy(task.eval_sets()["train" if task.is_table else "val"])
    logits, answer = model.score_and_generate(x, task.answer_start)
    nats = -torch.log_softmax(logits.double(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)  # (N, T-1)
    certified = nats[:, task.answer_start - 1 :].sum(1) < math.log(2)
    correct = (answer == x[:, task.answer_start :]).all(1)
    assert bool(correct[certified].all())  # per example, not only in the mean
    if make_cfg is tiny_modular:  # trained far enough that the bound is not vacuous
        assert certified.float().mean() > 0.3 and evals[-1]["train/certified_exact"] > 0.3


@pytest.mark.parametrize("kind,overrides,covered", [
    ("modular", [], "answer"),  # the question is known: only the answer is coded
    ("addition", ["task.loss_on=answer"], "answer"),  # the operands go at the task's law
    ("addition", [], "sent"),  # every sent position (and the answer's end token, which is known)
])
def test_step_computes_float64_nats_only_where_the_bits_read(tmp_path, kind, overrides, covered, tiny_addition,
                                                              tiny_modular):
    """The training step's float64 per-token loss (its cost is the bits callback's) covers exactly the
    positions the callback reads, the model-sent ones and the answer, and equals the full computation there;
    the plan's columns find each of them."""
    from lab.build import build
    from lab.module import token_nats

    cfg = {"addition": tiny_addition, "modular": tiny_modular}[kind](tmp_path, *overrides)
    b = build(cfg)
    task, module, plan = b.task, b.module, b.task.plan
    answer = np.arange(task.answer_start - 1, task.seq_len - 1)  # the targets greedy decoding produces
    want = answer
    if covered == "sent":
        want = np.union1d(np.flatnonzero(~task.known[1:]), want)
    assert plan.step_cols.tolist() == want.tolist()
    model_sent = np.flatnonzero(~task.known[1:] & task.loss_mask)
    assert plan.step_cols[plan.model_cols].tolist() == model_sent.tolist()
    assert plan.step_cols[plan.answer_cols].tolist() == answer.tolist()
    x = torch.from_numpy(task.train_batch(0, 8).x)
    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    _, nats, logits = module.step(x, opt, sched, 0)  # (8, K), (8, T-1, V)
    assert nats.shape == (8, len(want)) and nats.dtype == torch.float64
    assert torch.equal(nats, token_nats(logits, x[:, 1:])[:, torch.from_numpy(plan.step_cols)])
