import json
import os
import signal
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from lab.__main__ import main
from lab.bits import NonFiniteError
from lab.errors import ConfigError, RunError
from lab.loggers import read_metrics
from lab.module import token_nats
from lab.run import train


def test_tiny_fit_end_to_end(tmp_path, tiny_modular):
    result = train(tiny_modular(tmp_path, "train.max_steps=60", "train.lr=3e-3", "train.weight_decay=0.1"))
    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "positions.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert len(list((run / "checkpoints").glob("step-*.ckpt"))) == 3  # keep_checkpoints
    rows = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # one row per log step
    loss = [r["train/loss"] for r in rows if "train/loss" in r]
    assert loss[-1] < loss[0] - 0.5
    assert all("examples_seen" in r for r in rows)
    last = [r for r in rows if "val/exact_match" in r][-1]
    task = result.module.task
    epochs = 60 // task.steps_per_epoch(16)  # 36 train examples: batches of 16, 16, 4
    assert last["step"] == 60 and last["examples_seen"] == epochs * len(task.train_idx)
    assert {"train/exact_match", "dl/table", "bits/total"} <= set().union(*rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["bits/total"] > 0


def test_early_stop_at_target(tmp_path, tiny_modular):
    free = train(tiny_modular(tmp_path / "a", "train.stop_at=null"))
    evals = [(r["step"], r["val/exact_match"]) for r in read_metrics(free.run_dir / "metrics.jsonl")
             if "val/exact_match" in r]
    best = max(acc for _, acc in evals)
    assert best > 0
    first = min(step for step, acc in evals if acc == best)
    stopped = train(tiny_modular(tmp_path / "b", f"train.stop_at={best}"))  # deterministic: same run
    assert stopped.trainer.global_step == first
    assert stopped.summary["val/exact_match"] == best


def _state(result):
    return {k: v.clone() for k, v in result.module.model.state_dict().items()}


class Interrupt(L.Callback):
    """Sends this process a SIGINT (Ctrl-C) in the middle of a step: after `step` steps are done."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("kind,more", [("addition", []), ("modular", []),  # Muon's state (the default) and AdamW's:
                                       ("addition", ["train.optimizer=adamw", "model.qk_norm=false"])])
def test_ctrl_c_then_resume_loses_nothing(tmp_path, kind, more, tiny_addition, tiny_modular):
    cfg = {"addition": tiny_addition, "modular": tiny_modular}[kind]

    def make_cfg(path, *overrides):
        return cfg(path, *more, *overrides)

    # dropout > 0 checks that the RNG state travels with the checkpoint
    full = train(make_cfg(tmp_path / "a", "model.dropout=0.1"))
    stopped = train(make_cfg(tmp_path / "b", "model.dropout=0.1"), extra_callbacks=[Interrupt(13)])
    assert stopped.trainer.global_step == 14 and stopped.summary["interrupted"]  # the step in flight ends
    assert stopped.summary["stopped_by"] == "SIGINT"  # (`lab train` exits with 128 + 2)
    resumed = train(make_cfg(tmp_path / "c", "model.dropout=0.1", f"train.resume={tmp_path}/b/t"))
    assert resumed.trainer.global_step == 30
    assert torch.equal(resumed.bits.counts, full.bits.counts)  # every counter, to the last bit
    assert resumed.bits.totals() == full.bits.totals()
    a, b = _state(full), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_full = read_metrics(tmp_path / "a/t/metrics.jsonl")
    rows_resumed = read_metrics(tmp_path / "b/t/metrics.jsonl")
    # the same rows, plus the one Lightning writes at the step of the stop
    assert [r["step"] for r in rows_resumed if r["step"] != 14] == [r["step"] for r in rows_full]
    assert rows_resumed[-1]["bits/total"] == rows_full[-1]["bits/total"]


def test_resume_from_periodic_checkpoint_after_crash(tmp_path, tiny_addition):
    full = train(tiny_addition(tmp_path / "a"))
    crashed = train(tiny_addition(tmp_path / "b", "train.max_steps=27"))  # as if killed after step 27
    assert crashed.trainer.global_step == 27
    ckpt = tmp_path / "b/t/checkpoints/step-00000020.ckpt"
    resumed = train(tiny_addition(tmp_path / "b", f"train.resume={ckpt}"))
    assert torch.equal(resumed.bits.counts, full.bits.counts)
    steps = [r["step"] for r in read_metrics(tmp_path / "b/t/metrics.jsonl")]
    assert steps == sorted(set(steps))  # rows after step 20 were replaced, not duplicated


def test_resume_refuses_a_different_task(tmp_path, tiny_addition):
    train(tiny_addition(tmp_path, "train.max_steps=10"))
    with pytest.raises(ConfigError, match="^task.n_digits"):
        train(tiny_addition(tmp_path, "task.n_digits=4", f"train.resume={tmp_path}/t"))
    with pytest.raises(RunError, match="^log.name"):
        train(tiny_addition(tmp_path))  # would overwrite the finished run


def test_cli_resume_with_the_saved_config(tmp_path, capsys, tiny_addition):
    train(tiny_addition(tmp_path, "train.max_steps=10"))
    assert main(["train", f"train.resume={tmp_path}/t", "train.max_steps=20"]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 10" in out and "done: 20 steps" in out


def test_unnamed_runs_get_their_own_directories(tmp_path, tiny_modular):
    cfg = tiny_modular(tmp_path, "log.name=null", "train.max_steps=2", "train.eval_every=2")
    first, second = train(cfg, "tiny"), train(cfg, "tiny")
    assert first.run_dir != second.run_dir
    assert first.run_dir.name.startswith("tiny-") and second.run_dir.parent == tmp_path


class Poison(L.Callback):
    """Turns the weights to NaN after step `step`: the next step's loss and bits are not finite."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_non_finite_bits_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, tiny_addition):
    cfg = tiny_addition(tmp_path, "train.checkpoint_every=5")
    with pytest.raises(NonFiniteError, match="^step 8: bits/total"):
        train(cfg, extra_callbacks=[Poison(7)])
    ckpts = tmp_path / "t" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step-00000005.ckpt"]
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 5 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    rows = read_metrics(tmp_path / "t" / "metrics.jsonl")
    assert all(r["bits/total"] is not None for r in rows if "bits/total" in r)  # no stale or null total
    assert max(r["step"] for r in rows if "bits/total" in r) == 5
    # the run resumes from its last good checkpoint and ends as one that never failed
    resumed = train(tiny_addition(tmp_path, "train.checkpoint_every=5", f"train.resume={tmp_path}/t"))
    assert torch.equal(resumed.bits.counts, train(tiny_addition(tmp_path / "clean")).bits.counts)


def test_cli_stops_on_a_non_finite_loss_with_an_error(tmp_path, capsys, root):
    code = main(["train", f"{root}/configs/addition.yaml", "task.n_digits=2", "model.preset=gpt-nano",
                 "train.batch_size=16", "train.max_steps=20", "train.lr=1e30", "train.warmup_steps=0",
                 f"log.dir={tmp_path}", "log.name=nan", "log.wandb=false", "log.progress_bar=false"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("training error: step ") and "bits/total is not finite" in err
    assert not (tmp_path / "nan" / "summary.json").exists()  # no report of a run that failed


def test_addition_runs_score_the_rule_by_carry_chain_length(tmp_path, tiny_addition):
    result = train(tiny_addition(tmp_path, "train.stop_metric=val/chain_exact_min", "train.stop_at=0.5"))
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "val/chain_exact_min" in r]
    assert rows and all(r["val/chain_exact_min"] == min(r[f"val/chain_exact/{k}"] for k in range(3)) for r in rows)
    assert all(r["val/rule"] == min(r["val/chain_exact_min"], r["val/exact_match"]) for r in rows)  # and held-out
    assert not any("val/chain_exact/3" in r for r in rows)  # 3 digits: chains of 0, 1 or 2 digits


def test_near_the_stop_the_rule_is_decided_on_regular_and_confirmation_sums_worst_first(tmp_path, tiny_addition):
    from lab.build import load_trained

    cfg = tiny_addition(tmp_path, "task.n_chain=20", "task.n_chain_confirm=60", "train.stop_metric=val/chain_exact_min",
                        "train.stop_at=0.01", "train.max_steps=10")  # a lowest chain of 0 is within 3 / 20 of 0.01
    result = train(cfg)
    last = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "val/rule" in r][-1]
    b, step = load_trained(result.run_dir)
    assert step == last["step"] == 10  # the weights the last evaluation scored
    sets, confirm = b.task.eval_sets(), b.task.confirm_sets("val/chain_exact_min")

    def exact(x: np.ndarray) -> float:
        _, answer = b.module.model.score_and_generate(torch.from_numpy(x), b.task.answer_start)
        return (answer == torch.from_numpy(x[:, b.task.answer_start:])).all(1).double().mean().item()

    def answer_nats(x: np.ndarray) -> float:
        logits, _ = b.module.model.score_and_generate(torch.from_numpy(x), b.task.answer_start)
        a = b.task.answer_start
        return token_nats(logits[:, a - 1:], torch.from_numpy(x[:, a:])).sum(1).mean().item()

    regular = {k: exact(sets[f"chain_{k}"]) for k in range(3)}  # 20 sums each
    loss = {k: answer_nats(sets[f"chain_{k}"]) for k in range(3)}
    assert len(set(regular.values())) < 3  # untrained: ties, which the answer loss breaks
    pooled = {k: exact(np.concatenate([sets[f"chain_{k}"], confirm[f"chain_{k}"]])) for k in range(3)}  # 80
    expect, n = dict(regular), 0  # the worst set first (ties: the highest loss), until the lowest is below stop_at
    for k in sorted(range(3), key=lambda k: (regular[k], -loss[k])):
        expect[k], n = pooled[k], n + 1
        if min(expect.values()) < 0.01:
            break
    assert last["val/confirmed"] == pytest.approx(n / 3) and 0 < n < 3  # untrained: the worst set fails first
    for k in range(3):
        assert last[f"val/chain_exact/{k}"] == pytest.approx(expect[k], abs=1e-12)
    far = train(tiny_addition(tmp_path / "far", "task.n_chain_confirm=60", "train.stop_metric=val/rule",
                              "train.stop_at=0.99", "train.max_steps=10"))  # an untrained model is far from 0.99
    assert [r["val/confirmed"] for r in read_metrics(far.run_dir / "metrics.jsonl") if "val/rule" in r] == [0.0]
    task = b.task  # for the rule, the held-out sums must be at the stop too (below it the rule cannot pass)
    assert task.confirm_margin == pytest.approx(3 / 20)  # the screen: 3 errors more than the stop allows of 20
    low = 0.99 - task.confirm_margin + 1e-3
    near = {"val/exact_match": 0.99, "val/chain_exact_min": low, "val/rule": low}
    assert task.confirm_due(near, "val/rule", 0.99) and not task.confirm_due(near, "val/rule", 0.992)
    assert task.confirm_due({**near, "val/exact_match": 0.5}, "val/chain_exact_min", 0.99)

    module, scored = b.module, []  # a set stops being scored once its errors exceed what stop_at allows of it
    module.cfg.train.stop_at, module.cfg.train.eval_batch_size, module._eval = 0.99, 16, {}
    for name, x in sets.items():
        module._score(torch.from_numpy(x), name)
    score = module._score
    module._score = lambda x, name: scored.append((name, len(x))) or score(x, name)
    pooled, metrics = module._confirm(confirm)
    first = sorted(range(3), key=lambda k: (regular[k], -loss[k]))[0]
    # one batch of 16 of its 60: errors over the 0.8 of its 80 rows that 0.99 allows
    assert pooled == 1 and scored == [(f"chain_{first}", 16)]
    part = np.concatenate([sets[f"chain_{first}"], confirm[f"chain_{first}"][:16]])  # what it scored of that set
    assert metrics[f"val/chain_exact/{first}"] == pytest.approx(exact(part))
    assert not task.confirm_due({**near, "val/exact_match": 0.985, "val/rule": low}, "val/rule", 0.99)
    assert not task.confirm_due({**near, "val/chain_exact_min": low - 2e-3, "val/rule": low - 2e-3}, "val/rule", 0.99)


@pytest.mark.parametrize("kind", ["addition", "modular"])
def test_progress_shows_examples_or_epochs_and_the_stop_rule_without_an_eta(tmp_path, capsys, kind, tiny_addition,
                                                                           tiny_modular, monkeypatch):
    make_cfg = {"addition": tiny_addition, "modular": tiny_modular}[kind]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # (the bar is for a terminal)
    train(make_cfg(tmp_path, "log.progress_bar=true", "train.max_steps=20"))
    bar = capsys.readouterr().out.replace("\r", "\n")  # (Lightning's bars write to stdout)
    lines = [line for line in bar.splitlines() if line.startswith("step 20/<=20")]
    assert lines, bar[-500:]
    assert ("640 examples" in lines[-1]) if kind == "addition" else ("epoch 6.7" in lines[-1])  # 32 rows, 3 steps/epoch
    assert "val/exact_match" in lines[-1] and "(stop at 0.99)" in lines[-1]
    assert "Epoch 0" not in bar and "<00:" not in bar and "20/20" not in bar  # no fake epoch, no ETA, no total


def test_a_run_in_a_log_file_prints_its_header_a_line_per_evaluation_and_a_done_line(tmp_path, root):
    """No library chatter (accelerators, why fit stopped, wandb's settings), no bar, no "None"."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "lab", "train", f"{root}/configs/grokking.yaml", "task.p=11", "model.preset=gpt-nano",
           "train.batch_size=16", "train.max_steps=20", "train.eval_every=10", f"log.dir={tmp_path}", "log.name=q",
           "train.threads=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert lines[0].startswith("run ") and [line.split("|")[0].strip() for line in lines[1:3]] == ["step     10",
                                                                                                   "step     20"]
    assert lines[3].startswith("done: 20 steps") and lines[4].startswith("validation accuracy 0.9: not yet")
    assert len(lines) == 5 and "None" not in out.stdout, lines
