import os

import pytest

os.environ["WANDB_MODE"] = "disabled"  # tests never start wandb unless one asks for it

from lab.config import load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["log.wandb=false", "log.progress_bar=false"]


def _tiny_addition(tmp_path, *overrides):
    """3-digit addition with a tiny model: trains a step in a few milliseconds."""
    return load(f"{ROOT}/configs/addition.yaml", [
        "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano", "model.n_layer=2",
        "train.batch_size=32", "train.max_steps=30", "train.eval_every=10", "train.warmup_steps=2",
        "train.checkpoint_every=10", "log.every=5", f"log.dir={tmp_path}", "log.name=t", "train.threads=1",
        *QUIET, *overrides,
    ])


def _tiny_modular(tmp_path, *overrides):
    """a+b mod 11 with a tiny model."""
    return load(f"{ROOT}/configs/grokking.yaml", [
        "task.p=11", "train.batch_size=16", "model.preset=gpt-nano", "model.n_layer=1",
        "train.max_steps=30", "train.eval_every=10", "train.checkpoint_every=10", "log.every=5",
        f"log.dir={tmp_path}", "log.name=t", "train.threads=1", *QUIET, *overrides,
    ])


@pytest.fixture(scope="session")
def root():
    """The project's root directory."""
    return ROOT


@pytest.fixture(scope="session")
def tiny_addition():
    """tiny_addition(tmp_path, *overrides) -> the Config of a tiny 3-digit addition run in tmp_path/t."""
    return _tiny_addition


@pytest.fixture(scope="session")
def tiny_modular():
    """tiny_modular(tmp_path, *overrides) -> the Config of a tiny a+b mod 11 run in tmp_path/t."""
    return _tiny_modular
