"""Multiplication, the task added as one file (lab/tasks/multiplication.py); the contract test covers
its floors, law, determinism and held-out set."""

import math
import os

import numpy as np
import pytest

from lab.__main__ import main
from lab.loggers import read_metrics
from lab.tasks.multiplication import Multiplication


@pytest.mark.parametrize("reverse", [False, True])
def test_layout_writes_the_product_in_either_order(reverse):
    task = Multiplication.of(n_digits=3, m_digits=2, reverse_answer=reverse, n_heldout=10)
    x = task.encode([123, 999, 100], [45, 99, 10])
    assert task.show(x[0]) == ("s 1 2 3 * 4 5 = 5 3 5 5 0 e" if reverse else "s 1 2 3 * 4 5 = 0 5 5 3 5 e")
    digits = x[:, task.answer_start : -1]
    digits = digits[:, ::-1] if reverse else digits  # most significant first
    products = digits @ 10 ** np.arange(4, -1, -1)
    np.testing.assert_array_equal(products, [123 * 45, 999 * 99, 100 * 10])
    a, b = task.operands(task.train_batch(0, 64).x)
    np.testing.assert_array_equal(task.encode(a, b), task.train_batch(0, 64).x)
    assert a.min() >= 100 and a.max() <= 999 and b.min() >= 10 and b.max() <= 99


def test_floors_of_the_default():
    """3 x 2 digits: 2 log2 9 + 3 log2 10 = 16.31 bits without a held-out set; the product costs 0."""
    task = Multiplication.of(n_digits=3, m_digits=2, n_heldout=0)
    assert task.floor_bits_per_example == pytest.approx(2 * math.log2(9) + 3 * math.log2(10), abs=1e-12)
    assert (task.floor_bits[task.plan.answer] == 0).all()
    held_out = Multiplication.of(n_digits=3, m_digits=2, n_heldout=1000)  # the stream leaves 1,000 of 81,000 pairs out
    assert held_out.floor_bits_per_example == pytest.approx(math.log2(81_000 - 1000), abs=1e-9)


def test_multiplication_trains_from_the_command_line(root, tmp_path, capsys):
    code = main(["train", f"{root}/configs/multiplication.yaml", "task.n_digits=2", "task.m_digits=1",
                 "task.n_heldout=50", "model.preset=gpt-nano", "train.batch_size=32", "train.max_steps=20",
                 "train.eval_every=10", "train.warmup_steps=2", "train.threads=1", "log.every=5",
                 f"log.dir={tmp_path}", "log.name=m", "log.wandb=false", "log.progress_bar=false"])
    assert code == 0
    rows = read_metrics(tmp_path / "m" / "metrics.jsonl")
    assert rows[-1]["step"] == 20 and "val/exact_match" in rows[-1] and rows[-1]["bits/total"] > 0
    assert os.path.exists(tmp_path / "m" / "multiplication.png")  # the stream figure, named after the task
    assert "multiplication" in capsys.readouterr().out
