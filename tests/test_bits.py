import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT, tiny_addition, tiny_modular

from lab.loggers import read_metrics
from lab.train import train


class Recompute(L.Callback):
    """Independently codes each batch with the model as it is before the step: sum -log2 softmax."""

    def __init__(self):
        self.first_pass = 0.0
        self.by_step = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch["x"]
        with torch.no_grad():
            logp = torch.log_softmax(pl_module.model(x[:, :-1]).double(), -1)  # (B, T-1, V)
        bits = -logp.gather(-1, x[:, 1:, None]).squeeze(-1) / math.log(2)  # (B, T-1)
        mask = torch.from_numpy(pl_module.task.loss_mask)
        coded = float(bits[batch["new"]][:, mask].sum())
        self.first_pass += coded
        self.by_step.append(coded)


def test_total_equals_independent_recomputation(tmp_path):
    rec = Recompute()
    result = train(tiny_addition(tmp_path, "train.lr=3e-3"), extra_callbacks=[rec])
    t = result.bits.totals()
    assert t["bits/total"] == pytest.approx(rec.first_pass, rel=1e-12)
    assert t["bits/floor"] == pytest.approx(30 * 32 * result.module.task.floor_bits_per_example, rel=1e-12)
    assert t["bits/epistemic"] == pytest.approx(t["bits/total"] - t["bits/floor"], rel=1e-12)
    per_pos = sum(v for k, v in t.items() if k.startswith("bits/pos/"))
    assert per_pos == pytest.approx(t["bits/total"], rel=1e-12)
    # the model learns, so coding after the step would have been cheaper: the order matters
    assert rec.by_step[-1] < rec.by_step[0]


def test_windowed_rates_and_ratios(tmp_path):
    result = train(tiny_addition(tmp_path))
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "bits/example" in r]
    r1, r2 = rows[-2], rows[-1]
    n = r2["bits/examples"] - r1["bits/examples"]
    window = r2["bits/total"] - r1["bits/total"]
    assert r2["bits/example"] == pytest.approx(window / n, rel=1e-9)
    assert r2["bits/token"] == pytest.approx(window / n / 13, rel=1e-9)  # 3 digits: 13 coded tokens
    assert r2["bits/ratio_raw"] == pytest.approx(window / (n * 13 * 8), rel=1e-9)
    assert r2["bits/ratio_uniform"] == pytest.approx(window / (n * 13 * math.log2(14)), rel=1e-9)
    assert r2["bits/ratio_floor"] == pytest.approx(window / (n * r2["bits/floor_example"]), rel=1e-9)
    assert r2["bits/epistemic_example"] == pytest.approx(r2["bits/example"] - r2["bits/floor_example"])


def test_revisited_examples_are_not_coded_again(tmp_path):
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


def test_dl_table_is_first_pass_plus_held_out(tmp_path):
    result = train(tiny_modular(tmp_path))
    task = result.module.task
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    last = [r for r in rows if "dl/table" in r][-1]
    expected = result.bits.totals()["bits/total"] + len(task.val_idx) * last["val/bits_example"]
    assert last["dl/table"] == pytest.approx(expected, rel=1e-9)
    assert last["dl/table_raw"] == pytest.approx(task.table_size() * math.log2(11))
    assert last["dl/table_floor"] == 0


def test_dl_table_before_the_first_pass_codes_the_unsent_rows(tmp_path):
    """At step 1 only 16 of 36 train rows were sent: the other 20 are coded by the current model."""
    result = train(tiny_modular(tmp_path, "train.max_steps=1", "train.eval_every=1", "log.every=1"))
    row = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "dl/table" in r][-1]
    sent = result.bits.totals()["bits/total"]
    n_val, n_train = len(result.module.task.val_idx), len(result.module.task.train_idx)
    coded_now = row["dl/table"] - sent - n_val * row["val/bits_example"]
    # the 20 unsent rows cost about as much per row as the training rows under the current model
    per_row = row["train/eval_loss"] / math.log(2)
    assert coded_now == pytest.approx(20 * per_row, rel=0.2)
    assert n_train == 36


def test_pure_noise_has_no_epistemic_gain(tmp_path):
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


def _run_cli(tmp_path, name, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}
    env.pop("LAB_RUN_NAME", None)
    cmd = [sys.executable, "-m", "lab", "train", f"{ROOT}/configs/addition.yaml",
           "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano", "train.batch_size=64",
           "train.max_steps=12", "train.eval_every=12", "log.every=4", f"log.dir={tmp_path}", f"log.name={name}",
           "log.wandb=false", "log.progress_bar=false", "train.threads=1", "train.accelerator=cpu", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return read_metrics(tmp_path / name / "metrics.jsonl")


@pytest.mark.parametrize("lr,rel", [(0.0, 1e-9), (3e-3, 0.01)])
def test_ddp_total_equals_single_process(tmp_path, lr, rel):
    """Two gloo processes split each global batch; the bits are summed over both and logged once."""
    one = _run_cli(tmp_path, "one", f"train.lr={lr}")
    two = _run_cli(tmp_path, "two", f"train.lr={lr}", "train.devices=2")
    a = [r["bits/total"] for r in one if "bits/total" in r]
    b = [r["bits/total"] for r in two if "bits/total" in r]
    assert len(a) == len(b) == 3  # logged once per log step, not once per rank
    assert [r["bits/examples"] for r in two if "bits/examples" in r] == [256.0, 512.0, 768.0]
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=rel)
