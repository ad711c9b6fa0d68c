"""The file `lab compress` writes equals the bits/total a training run logs, in every configuration the
lab accepts: the option grid of each task, dropout, and every config in configs/ (small N)."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUIET, ROOT, tiny_addition, tiny_modular

from lab.coder import compress, decompress, dump
from lab.config import load
from lab.module import LabModule
from lab.tasks import make_task
from lab.train import train

STEPS = 6


def check_file_matches_logged(cfg, tmp_path):
    """Train STEPS batches, code the same examples, decode them: the round trip is exact and the code
    length is the logged bits/total (0.05% + 64 bits; the ideal code length to 1e-6)."""
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.stop_at = STEPS, STEPS, None
    totals = train(cfg).bits.totals()
    logged = totals["bits/total"]
    assert math.isfinite(logged) and logged > 0
    n = STEPS * cfg.train.batch_size if cfg.train.batch_size else STEPS * len(train_rows(cfg))
    stats = compress(cfg, n, tmp_path / "s.clab")
    decompress(tmp_path / "s.clab", tmp_path / "back.txt")
    dump(cfg, n, tmp_path / "stream.txt")
    assert (tmp_path / "back.txt").read_bytes() == (tmp_path / "stream.txt").read_bytes()
    assert stats.ideal_bits == pytest.approx(logged, rel=1e-6)
    assert abs(stats.code_bits - logged) <= 0.0005 * logged + 64
    return totals


def train_rows(cfg):
    return make_task(cfg).train_idx


ADDITION_GRID = [  # loss_on, reverse_answer, leading_zeros, label_noise, n_digits: every value of each
    ("all", False, False, 0.0, 3),
    ("answer", False, False, 0.0, 3),
    ("answer", True, True, 0.1, 2),
    ("all", True, False, 0.1, 1),
    ("all", False, True, 0.0, 4),
    ("answer", True, False, 0.0, 1),
]


@pytest.mark.parametrize("loss_on,reverse,zeros,noise,n", ADDITION_GRID)
def test_addition_file_matches_logged_bits(tmp_path, loss_on, reverse, zeros, noise, n):
    heldout = {1: 10, 2: 2000}.get(n, 200)  # n = 2: a quarter of the pairs held out, a law far from uniform
    totals = check_file_matches_logged(tiny_addition(
        tmp_path, f"task.loss_on={loss_on}", f"task.reverse_answer={reverse}", f"task.leading_zeros={zeros}",
        f"task.label_noise={noise}", f"task.n_digits={n}", f"task.n_heldout={heldout}"), tmp_path)
    assert (totals["bits/model"] < totals["bits/total"]) == (loss_on == "answer")


MODULAR_OPS = ["x+y", "x-y", "x*y", "x/y", "x^2+y^2", "x^2+xy+y^2", "x^2+xy+y^2+x", "x^3+xy", "x^3+xy^2+y",
               "x/y if y odd else x-y"]


@pytest.mark.parametrize("i,op", list(enumerate(MODULAR_OPS)))
def test_modular_file_matches_logged_bits(tmp_path, i, op):
    """Every operation; loss on all / on the answer alternately; label noise on every other pair."""
    loss_on = ["all", "answer"][i % 2]
    noise = 0.1 if i % 4 >= 2 else 0.0
    check_file_matches_logged(tiny_modular(tmp_path, f"task.op={op}", f"task.loss_on={loss_on}",
                                           f"task.label_noise={noise}"), tmp_path)


@pytest.mark.parametrize("op,loss_on,noise", [("x*y", "answer", 0.0), ("x*y*x^-1", "all", 0.1), ("x*y*x", "all", 0.0)])
def test_s5_file_matches_logged_bits(tmp_path, op, loss_on, noise):
    cfg = load(f"{ROOT}/configs/grokking-s5.yaml", [
        f"task.op={op}", f"task.loss_on={loss_on}", f"task.label_noise={noise}", "model.preset=gpt-nano",
        "model.n_layer=1", "train.batch_size=64", f"log.dir={tmp_path}", "log.name=t", "train.threads=1", *QUIET])
    check_file_matches_logged(cfg, tmp_path)


@pytest.mark.parametrize("overrides", [["model.dropout=0.1"], ["model.dropout=0.2", "task.loss_on=answer"],
                                       ["train.grokfast_lambda=2", "train.grad_clip=0.5"]])
def test_dropout_and_gradient_filters_are_replayed(tmp_path, overrides):
    """Dropout: the bits come from the model without dropout (what a receiver can run), and the masks of
    each step are a function of (seed, step), so the receiver's replayed training draws the same ones."""
    check_file_matches_logged(tiny_addition(tmp_path, "train.lr=3e-3", *overrides), tmp_path)


def test_dropout_bits_are_those_of_the_model_without_dropout(tmp_path):
    """The logged bits of a step are the code under the weights before it without dropout, not the
    training forward's (with dropout), which no receiver could reproduce: the two differ."""
    cfg = tiny_addition(tmp_path, "model.dropout=0.3", "train.max_steps=1")
    logged = train(cfg).bits.totals()["bits/total"]
    L.seed_everything(cfg.seed, verbose=False)
    task = make_task(cfg)
    model = LabModule(cfg, task).model  # the initial weights, as `lab train` builds them
    x = torch.from_numpy(task.train_batch(0, cfg.train.batch_size).x)

    def bits(train_mode: bool) -> float:
        model.train(train_mode)
        with torch.no_grad():
            logp = torch.log_softmax(model(x[:, :-1]).double(), -1)  # (B, T-1, V)
        nats = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)[:, torch.from_numpy(task.sent)]
        return float(nats.sum()) / math.log(2)

    assert logged == pytest.approx(bits(False), rel=1e-12)
    assert abs(bits(True) - logged) > 1e-3 * logged


CONFIGS = sorted(p.name for p in Path(ROOT, "configs").glob("*.yaml"))
SMALL = {  # a few small batches of each config's own model and task
    "addition.yaml": ["train.batch_size=16"],
    "addition-reference.yaml": ["train.batch_size=8"],
    "grokking.yaml": ["train.batch_size=64"],
    "grokking-power.yaml": ["train.batch_size=64"],
    "grokking-s5.yaml": ["train.batch_size=64"],
    "grokking-nanda.yaml": ["task.p=23", "train.batch_size=0"],
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_file_matches_logged_bits(tmp_path, name):
    assert name in SMALL, f"configs/{name}: add its small-N overrides to SMALL"
    cfg = load(f"{ROOT}/configs/{name}", [*SMALL[name], f"log.dir={tmp_path}", "log.name=t", "train.threads=1",
                                          *QUIET])
    check_file_matches_logged(cfg, tmp_path)
