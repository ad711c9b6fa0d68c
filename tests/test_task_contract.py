"""The contract every registered task keeps (lab/tasks/base.py), checked on each task's small instance.

A new task is one module in lab/tasks/ with `@register`: it is picked up here with no change to this file.
"""

import math
from collections import Counter, defaultdict
from dataclasses import fields

import numpy as np
import pytest

from lab.config import ConfigError, field_docs, load
from lab.tasks import TASKS, make_task

NAMES = sorted(TASKS)


def small(name: str, **kw):
    """The task's small instance (its `small` options), with `kw` on top."""
    cls = TASKS[name]
    return cls.of(**{**cls.small, **kw})


def conditional_entropies(rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N, T) rows with (N,) probabilities -> (T-1,) exact H(x_{t+1} | x_<=t) in bits."""
    out = np.zeros(rows.shape[1] - 1)
    for t in range(1, rows.shape[1]):
        nxt: dict[tuple, Counter] = defaultdict(Counter)
        for row, p in zip(map(tuple, rows.tolist()), probs.tolist()):
            nxt[row[:t]][row[t]] += p
        for counts in nxt.values():
            z = sum(counts.values())
            out[t - 1] -= sum(p * math.log2(p / z) for p in counts.values() if p > 0)
    return out


def stream_rows(task, steps: int = 12, batch: int = 16) -> np.ndarray:
    return np.concatenate([task.train_batch(s, batch).x for s in range(steps)])


def test_the_registry_holds_the_lab_tasks():
    assert {"addition", "modular", "permutation", "multiplication"} <= set(TASKS)


@pytest.mark.parametrize("name", NAMES)
def test_options_are_typed_documented_and_registered(name):
    cls = TASKS[name]
    cfg = cls.Config()
    docs = field_docs(cls.Config)
    assert cfg.name == name == cls.name
    assert all(docs.get(f.name) for f in fields(cfg)), f"undocumented options: {[f.name for f in fields(cfg)]}"
    cfg.validate()  # the defaults are valid
    assert cls.small and set(cls.small) <= {f.name for f in fields(cfg)}


@pytest.mark.parametrize("name", NAMES)
def test_another_tasks_option_is_an_error_naming_the_key(name):
    own = {f.name for f in fields(TASKS[name].Config)}
    foreign = next((f.name for other in NAMES if other != name for f in fields(TASKS[other].Config)
                    if f.name not in own), "no_such_option")
    with pytest.raises(ConfigError, match=f"^task.{foreign}"):
        load(None, [f"task.name={name}", f"task.{foreign}=1"])


@pytest.mark.parametrize("name", NAMES)
def test_per_position_arrays_and_floors(name):
    task = small(name)
    T = task.seq_len
    for attr in ("target_names", "loss_mask", "floor_bits", "uniform_bits"):
        assert len(getattr(task, attr)) == T - 1, attr
    if task.coupled_ids is not None:
        assert len(task.coupled_ids) == T - 1
    assert len(task.known) == T and task.known[0]
    assert task.plan.answer[-1] == T - 2
    assert (task.floor_bits >= 0).all() and (task.floor_bits <= task.uniform_bits + 1e-12).all()
    assert (task.floor_bits[~task.plan.sent_mask] == 0).all() and (task.uniform_bits[~task.plan.sent_mask] == 0).all()
    assert task.floor_bits_per_example <= task.uniform_bits[task.plan.sent_mask].sum()


@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "multiplication" else n
                                  for n in NAMES])  # (its enumeration takes half a minute: make test-full)
def test_floors_are_the_exact_conditional_entropies(name, noise):
    task = small(name, label_noise=noise)
    rows, probs = task.exact_law()
    assert probs.sum() == pytest.approx(1.0, abs=1e-12) and (probs > 0).all()
    H = conditional_entropies(rows, probs)
    np.testing.assert_allclose(task.floor_bits[task.plan.sent_mask], H[task.plan.sent_mask], atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_law_coded_targets_follow_the_exact_law(name):
    task = small(name, loss_on="answer")
    rows, probs = task.exact_law()
    for t in np.flatnonzero(task.plan.law_mask):
        want = defaultdict(Counter)
        for row, p in zip(map(tuple, rows.tolist()), probs.tolist()):
            want[row[: t + 1]][row[t + 1]] += p
        got = task.law_probs(rows, t)  # (N, V)
        for i, row in enumerate(map(tuple, rows[:50].tolist())):
            counts = want[row[: t + 1]]
            z = sum(counts.values())
            np.testing.assert_allclose(got[i], [counts[v] / z for v in range(task.vocab_size)], atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_batches_are_a_pure_function_of_seed_and_step(name):
    a, b, c = small(name, seed=3), small(name, seed=3), small(name, seed=4)
    for step in (0, 5):
        x, y = a.train_batch(step, 8), b.train_batch(step, 8)
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.new, y.new)
        np.testing.assert_array_equal(a.known_tokens(x.ids)[:, a.known], x.x[:, a.known])  # the receiver's layout
    assert not np.array_equal(a.train_batch(0, 8).x, a.train_batch(1, 8).x)
    assert not np.array_equal(stream_rows(a), stream_rows(c))


@pytest.mark.parametrize("name", NAMES)
def test_the_stream_stays_in_the_law_and_never_shows_a_heldout_example(name):
    task = small(name)
    rows, _ = task.exact_law()
    support = set(map(tuple, rows.tolist()))
    seen = set(map(tuple, stream_rows(task).tolist()))
    assert seen <= support
    held = {r for key, x in task.eval_sets().items() if key != "train" for r in map(tuple, x.tolist())}
    assert held and not seen & held and not support & held


@pytest.mark.parametrize("name", NAMES)
def test_a_run_config_builds_the_task(name):
    cfg = load(None, [f"task.name={name}", *(f"task.{k}={v}" for k, v in TASKS[name].small.items())])
    task = make_task(cfg)
    assert type(task) is TASKS[name] and task.seq_len == small(name).seq_len


@pytest.mark.parametrize("module,banned", [
    ("lab.tasks", ["torch", "lightning", "lab.config", "omegaconf"]),  # tasks: numpy and lab.errors only
    ("lab.config", ["torch", "lightning"]),  # the config assembles tasks and presets without torch
])
def test_imports_point_one_way(module, banned):
    """The layout's one import direction: tasks know nothing of the config (which imports their registry),
    and loading a config needs no torch."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import {module} imports {out}"


@pytest.mark.parametrize("name", NAMES)
def test_stop_metrics_are_the_tasks_own(name, root):
    """train.stop_metric is checked against the chosen task's metrics: each name it offers is logged by a
    run's evaluation (`Task.metric_names`), another task's is a one-line error naming the key."""
    cls = TASKS[name]
    assert "val/exact_match" in cls.metric_names(cls.Config())
    foreign = "val/rule" if name != "addition" else "train/exact_match"
    with pytest.raises(ConfigError, match=r"^train.stop_metric: .* choose from"):
        load(None, [f"task.name={name}", f"train.stop_metric={foreign}"])
