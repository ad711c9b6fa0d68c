"""A crash loses nothing: a real `lab train` process is killed with SIGKILL at points around a checkpoint,
then resumed with `python -m lab train train.resume=DIR`; the run's rows, bits and weights must equal an
uninterrupted run's. And one writer per run directory."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab.__main__ import main
from lab.loggers import read_metrics

ROOT = str(Path(__file__).resolve().parents[1])

# checkpoints every 6 steps, evaluations every 4: step 6 checkpoints without evaluating, step 12 does both
ARGS = [f"{ROOT}/configs/addition.yaml", "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano",
        "model.n_layer=2", "model.dropout=0.1", "train.batch_size=32", "train.max_steps=20", "train.eval_every=4",
        "train.warmup_steps=2", "train.checkpoint_every=6", "train.stop_at=null", "log.every=1", "train.threads=1",
        "log.wandb=false", "log.progress_bar=false", "log.name=run"]

# a `lab train` process with one more callback: it kills its own process (SIGKILL) at a given hook and step,
# or holds the run (sleeps) at a step until a file appears
SCRIPT = """
import os, signal, sys, time
from pathlib import Path
import lightning as L
from lab.config import load
from lab.run import train

hook, step, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Kill(L.Callback):
    def _at(self, trainer, name):
        if hook == name and trainer.global_step == step:
            if hold != "-":
                Path(hold + ".ready").touch()
                while not Path(hold).exists():
                    time.sleep(0.05)
            else:
                os.kill(os.getpid(), signal.SIGKILL)
    def on_train_batch_end(self, trainer, *args):
        self._at(trainer, "train")
    def on_validation_batch_end(self, trainer, *args):
        self._at(trainer, "eval")
    def on_validation_end(self, trainer, *args):
        self._at(trainer, "after_eval")

cfg = load(sys.argv[4], sys.argv[5:])
train(cfg, "run", extra_callbacks=[Kill()])
"""

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}


def lab_train(log_dir, hook="none", step=-1, hold="-", wait=True):
    cmd = [sys.executable, "-c", SCRIPT, hook, str(step), hold, *ARGS, f"log.dir={log_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=log_dir)
    if wait:
        proc.wait(timeout=300)
    return proc


def resume(run_dir) -> None:
    out = subprocess.run([sys.executable, "-m", "lab", "train", f"train.resume={run_dir}"], capture_output=True,
                         text=True, env=ENV, timeout=300, cwd=run_dir.parent)
    assert out.returncode == 0, out.stderr[-3000:]


def weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("whole")
    assert lab_train(d).returncode == 0
    return d / "run"


@pytest.mark.parametrize("hook,step,resumes_from", [
    # (the first two in `make test-full` only: the fast suite keeps the kills between checkpoints)
    pytest.param("train", 6, 6, marks=pytest.mark.slow),  # right after a checkpoint (one without an evaluation)
    pytest.param("after_eval", 12, 12, marks=pytest.mark.slow),  # right after a checkpoint written after its
    # step's evaluation
    ("train", 9, 6),  # between checkpoints, rows after the checkpoint already on disk
    ("eval", 12, 6),  # during an evaluation, before that step's checkpoint
])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, hook, step, resumes_from):
    killed = lab_train(tmp_path, hook, step)
    assert killed.returncode == -9  # SIGKILL: no handler ran, nothing was flushed on the way out
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == resumes_from
    rows = read_metrics(run / "metrics.jsonl")
    assert max(r["step"] for r in rows) >= resumes_from  # the rows the checkpoint covers are on disk
    assert rows[: len([r for r in rows if r["step"] <= resumes_from])] == \
        [r for r in read_metrics(uninterrupted / "metrics.jsonl") if r["step"] <= resumes_from]
    resume(run)  # the killed process's lock file is still there: it must not block the resume
    assert read_metrics(run / "metrics.jsonl") == read_metrics(uninterrupted / "metrics.jsonl")
    assert (run / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()
    summary, whole = (json.loads((d / "summary.json").read_text()) for d in (run, uninterrupted))
    assert {k: v for k, v in summary.items() if k.startswith("bits/")} == \
        {k: v for k, v in whole.items() if k.startswith("bits/")}
    a, b = weights(run), weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_writer_is_refused_and_writes_nothing(tmp_path, capsys):
    hold = tmp_path / "release"
    live = lab_train(tmp_path, "train", 7, hold=str(hold), wait=False)  # holds the run at step 7
    try:
        deadline = time.time() + 120
        while not (tmp_path / "release.ready").exists():
            assert live.poll() is None and time.time() < deadline, live.stderr.read() if live.poll() else "slow"
            time.sleep(0.05)
        run = tmp_path / "run"
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        assert main(["train", f"train.resume={run}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("run error: train.resume: ")
        assert str(run) in err and f"pid {live.pid}" in err
        assert main(["train", *ARGS, f"log.dir={tmp_path}"]) == 2  # a new run under the same name
        assert f"log.name: {run} is being written by pid {live.pid}" in capsys.readouterr().err
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written
    finally:
        hold.touch()
        live.wait(timeout=300)
    assert live.returncode == 0
