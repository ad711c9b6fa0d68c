"""The file `lab compress` writes equals the bits/total a training run logs, in every configuration the
lab accepts: the option grid of each task, dropout, and every config in configs/ (small N). The rows
are those of `experiments/stream_check.py`, which prints them as a table."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from lab.build import build
from lab.run import train
from lab.tasks import TASKS

ROOT = str(Path(__file__).resolve().parents[1])

spec = importlib.util.spec_from_file_location("stream_check", Path(ROOT) / "experiments" / "stream_check.py")
stream_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stream_check)

ROWS = stream_check.rows()


SLOW_ROWS = {"addition-reference.yaml", "addition-uniform.yaml"}  # gpt-mini, a twin of addition-adamw.yaml: test-full


@pytest.mark.parametrize("label", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_ROWS else k for k in ROWS])
def test_file_matches_logged_bits(tmp_path, label):
    """Six batches trained, the same examples coded and decoded: the round trip is exact, the code's
    length is the logged bits/total to 0.05% + 64 bits, and the ideal code length is it to 1e-6."""
    r = stream_check.check(stream_check.make_config(ROWS[label], tmp_path), 6, tmp_path)
    assert r["exact"]
    assert math.isfinite(r["logged"]) and r["logged"] > 0
    assert r["ideal"] == pytest.approx(r["logged"], rel=1e-6)
    assert abs(r["file"] - r["logged"]) <= 0.0005 * r["logged"] + 64
    answer_only = "task.loss_on=answer" in ROWS[label] or "answer" in label.split()
    if label.startswith("addition"):  # the operands go by their law exactly when the loss is on the answer
        assert (r["model"] < r["logged"]) == answer_only


def test_every_config_and_every_task_is_in_the_table():
    configs = sorted(f"configs/{p.name}" for p in Path(ROOT, "configs").glob("*.yaml"))
    assert configs == sorted({spec[0] for spec in ROWS.values()} - {None})
    assert {label.split()[0] for label in ROWS} >= set(TASKS)


def test_dropout_bits_are_those_of_the_model_without_dropout(tmp_path, tiny_addition):
    """The logged bits of a step are the code under the weights before it without dropout, not the
    training forward's (with dropout), which no receiver could reproduce: the two differ."""
    cfg = tiny_addition(tmp_path, "model.dropout=0.3", "train.max_steps=1", "task.chain_prob=0",
                        "task.chain_prob_lead=0")
    logged = train(cfg).bits.totals()["bits/total"]
    b = build(cfg)  # the initial weights, as `lab train` builds them
    task, model = b.task, b.module.model
    x = torch.from_numpy(task.train_batch(0, cfg.train.batch_size).x)

    def bits(train_mode: bool) -> float:
        model.train(train_mode)
        with torch.no_grad():
            logp = torch.log_softmax(model(x[:, :-1]).double(), -1)  # (B, T-1, V)
        nats = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)[:, torch.from_numpy(task.plan.sent_mask)]
        return float(nats.sum()) / math.log(2)

    assert logged == pytest.approx(bits(False), rel=1e-12)
    assert abs(bits(True) - logged) > 1e-3 * logged
