"""Nothing lost, and bad input is one line: a table of bad inputs and faults (each: the command, its exit
code, a one-line message naming the key or path, nothing written), signals on a real process, damaged
checkpoints, malformed metrics rows, finished runs resumed, full and read-only disks, short runs, one
writer per sweep directory."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab.__main__ import main
from lab.loggers import read_metrics

ROOT = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}
GROK = f"{ROOT}/configs/grokking.yaml"
ADD = f"{ROOT}/configs/addition.yaml"
TINY = ["task.p=11", "model.preset=gpt-nano", "model.n_layer=1", "train.batch_size=16", "train.max_steps=12",
        "train.eval_every=4", "train.checkpoint_every=4", "train.warmup_steps=1", "train.stop_at=null", "log.every=2",
        "train.threads=1", "log.wandb=false", "log.progress_bar=false"]


def files(d: Path) -> set:
    return {p.relative_to(d) for p in d.rglob("*")} if d.exists() else set()


def _inputs(d: Path) -> dict:
    """Files the bad inputs name."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "dup.yaml").write_text("train:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    (d / "syntax.yaml").write_text("train: [lr: 1\n")
    (d / "empty.yaml").write_text("# nothing but a comment\n")
    (d / "a_file").write_text("not a directory\n")
    (d / "stream.clab").write_bytes(b"CLAB not really")
    (d / "norun").mkdir(exist_ok=True)
    return {k: str(d / k) for k in ("dup.yaml", "syntax.yaml", "empty.yaml", "a_file", "stream.clab", "norun")}


# (label, command with {log}, {in:NAME} placeholders, exit code, what the one line names)
FAULTS = [
    ("unknown key", ["train", GROK, "model.nlayer=2"], 2, "model.nlayer"),
    ("wrong type", ["train", GROK, "train.lr=fast"], 2, "train.lr"),
    ("zero layers", ["train", GROK, "model.n_layer=0"], 2, "model.n_layer"),
    ("dropout above 1", ["train", GROK, "model.dropout=1.5"], 2, "model.dropout"),
    ("negative batch", ["train", GROK, "train.batch_size=-1"], 2, "train.batch_size"),
    ("negative lr", ["train", GROK, "train.lr=-1"], 2, "train.lr"),
    ("infinite lr", ["train", GROK, "train.lr=inf"], 2, "train.lr"),
    ("nan lr", ["train", GROK, "train.lr=nan"], 2, "train.lr"),
    ("one beta", ["train", GROK, "train.betas=[0.9]"], 2, "train.betas"),
    ("nan beta", ["train", GROK, "train.betas=[0.9,nan]"], 2, "train.betas"),
    ("negative weight decay", ["train", GROK, "train.weight_decay=-1"], 2, "train.weight_decay"),
    ("min lr ratio above 1", ["train", GROK, "train.min_lr_ratio=2"], 2, "train.min_lr_ratio"),
    ("negative warm-up", ["train", GROK, "train.warmup_steps=-1"], 2, "train.warmup_steps"),
    ("no steps", ["train", GROK, "train.max_steps=0"], 2, "train.max_steps"),
    ("eval every 0", ["train", GROK, "train.eval_every=0"], 2, "train.eval_every"),
    ("no devices", ["train", GROK, "train.devices=0"], 2, "train.devices"),
    ("stop_at above 1", ["train", GROK, "train.stop_at=1.5"], 2, "train.stop_at"),
    ("stop on no metric", ["train", GROK, "train.stop_metric=val/nope"], 2, "train.stop_metric"),
    ("precision 16", ["train", GROK, "train.precision=16"], 2, "train.precision"),
    ("unknown schedule", ["train", GROK, "train.schedule=linear"], 2, "train.schedule"),
    ("unknown accelerator", ["train", GROK, "train.accelerator=tpu"], 2, "train.accelerator"),
    ("negative threads", ["train", GROK, "train.threads=-1"], 2, "train.threads"),
    ("negative seed", ["train", GROK, "seed=-1"], 2, "seed"),
    ("unknown task", ["train", GROK, "task.name=bogus"], 2, "task.name"),
    ("no digits", ["train", ADD, "task.n_digits=0"], 2, "task.n_digits"),
    ("label noise 1", ["train", GROK, "task.label_noise=1"], 2, "task.label_noise"),
    ("modulus 1", ["train", GROK, "task.p=1"], 2, "task.p"),
    ("unknown operation", ["train", GROK, "task.op=x^5"], 2, "task.op"),
    ("empty train split", ["train", GROK, "task.train_fraction=0"], 2, "task.train_fraction"),
    ("arrivals over 0 steps", ["train", GROK, "task.arrival_steps=0"], 2, "task.arrival_steps"),
    ("unknown preset", ["train", GROK, "model.preset=huge"], 2, "model.preset"),
    ("heads not dividing the width", ["train", GROK, "model.n_head=5"], 2, "model.n_embd"),
    ("coupled positions on a table", ["train", GROK, "model.position=coupled"], 2, "model.position"),
    ("log every 0", ["train", GROK, "log.every=0"], 2, "log.every"),
    ("resume from nowhere", ["train", "train.resume=/nonexistent/run"], 2, "train.resume"),
    ("resume a directory without a checkpoint", ["train", "train.resume={in:norun}"], 2, "train.resume"),
    ("no config", ["train", "model.n_layer=2"], 2, "config"),
    ("missing config file", ["train", "/nonexistent.yaml"], 2, "config file"),
    ("YAML syntax error", ["train", "{in:syntax.yaml}"], 2, "config file"),
    ("duplicate key in a file", ["train", "{in:dup.yaml}"], 2, "config file"),
    ("empty config file", ["train", "{in:empty.yaml}"], 2, "config file"),
    ("override without =", ["train", GROK, "train.lr"], 2, "train.lr"),
    ("a key twice on the command line", ["train", GROK, "train.lr=1e-3", "train.lr=2e-3"], 2, "train.lr"),
    ("log.dir is a file", ["train", GROK, "log.dir={in:a_file}"], 2, "log.dir"),
    ("log.dir under a file", ["train", GROK, "log.dir={in:a_file}/runs"], 2, "log.dir"),
    ("gpu without one", ["train", GROK, "train.accelerator=gpu"], 2, "train.accelerator"),
    ("compress: no examples", ["compress", GROK, "--examples", "0", "-o", "{log}/s.clab"], 2, "--examples"),
    ("compress into a missing directory", ["compress", GROK, "--examples", "10", "-o", "{log}/no/s.clab"], 2, "-o"),
    ("compress over its config", ["compress", "{in:empty.yaml}", "--examples", "10", "-o", "{in:empty.yaml}"], 2,
     "config file"),
    ("dump into a directory", ["dump", GROK, "--examples", "10", "-o", "{in:norun}"], 2, "-o"),
    ("decompress onto its input", ["decompress", "{in:stream.clab}", "-o", "{in:stream.clab}"], 2, "-o"),
    ("decompress a missing file", ["decompress", "/nonexistent.clab", "-o", "{log}/out.txt"], 2, "file"),
    ("decompress into a missing directory", ["decompress", "{in:stream.clab}", "-o", "{log}/no/out.txt"], 2, "-o"),
    ("report of nothing", ["report", "{in:norun}"], 2, "report"),
    ("sweep file missing", ["sweep", "/nonexistent-sweep.yaml"], 2, "sweep"),
    ("sweep file with a YAML syntax error", ["sweep", "{in:syntax.yaml}"], 2, "sweep"),
    ("sweep into a file", ["sweep", f"{ROOT}/configs/sweeps/grokking.yaml", "--dir", "{in:a_file}"], 2, "--dir"),
]


@pytest.mark.parametrize("label,command,code,key", FAULTS, ids=[f[0] for f in FAULTS])
def test_bad_input_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys, monkeypatch, label, command, code, key):
    inputs = _inputs(tmp_path / "inputs")
    log = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{log}", str(log)) for a in command]
    for name, path in inputs.items():
        args = [a.replace(f"{{in:{name}}}", path) for a in args]
    if args[0] == "train" and not any(a.startswith("log.dir=") for a in args):
        args.append(f"log.dir={log}")
    before = files(tmp_path / "inputs")
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert err.split(": ", 1)[1].startswith(key), err  # naming what is wrong
    assert files(log) == set()  # nothing written
    assert files(tmp_path / "inputs") == before
    assert (tmp_path / "inputs" / "stream.clab").read_bytes() == b"CLAB not really"
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_fault_table_is_large():
    assert len(FAULTS) >= 40 and len({f[0] for f in FAULTS}) == len(FAULTS)


def test_a_batch_too_large_to_allocate_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Addition's rows are drawn per batch: 10^11 of them cannot be allocated."""
    args = ["train", ADD, "task.n_digits=3", "task.n_heldout=200", "model.preset=gpt-nano", f"log.dir={tmp_path}",
            "train.batch_size=100000000000", "log.wandb=false", "log.progress_bar=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("config error: train.batch_size: "), err
    assert files(tmp_path) == set()


def _cli(*args, cwd, wait=True):
    proc = subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=cwd)
    if wait:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    return proc


# -- signals, on a real process ------------------------------------------------------------------------
def tiny(*overrides) -> list[str]:
    """TINY with some keys set otherwise (the command line takes each key once)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(overrides)


SLOW = tiny("train.max_steps=100000", "train.checkpoint_every=100000", "log.every=10", "train.eval_every=50")


def _started(proc, run: Path) -> None:
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not read_metrics(run / "metrics.jsonl"):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143)])  # SIGINT: tests/test_train.py, in process
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resume_command(tmp_path, sig, code):
    proc = _cli("train", GROK, *SLOW, f"log.dir={tmp_path}", "log.name=run", cwd=tmp_path, wait=False)
    run = tmp_path / "run"
    _started(proc, run)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]  # 128 + the signal: a scheduler reads "preempted"
    assert f"continue with: python -m lab train train.resume={run}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["stopped_by"] == signal.Signals(sig).name
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    rows = read_metrics(run / "metrics.jsonl")
    assert step == summary["steps"] == rows[-1]["step"] and "val/exact_match" in rows[-1]  # evaluated, then saved
    assert "bits/total" in rows[-1] and not list(run.rglob("*.tmp"))
    code, out, err = _cli("train", f"train.resume={run}", "train.max_steps=" + str(step + 4), cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == step + 4


def test_a_second_signal_stops_at_once(tmp_path):
    """The first SIGTERM's stop evaluates the whole a+b mod 97 table in batches of 2 (seconds); a second
    SIGTERM during it ends the process at once, before any checkpoint."""
    args = tiny("task.p=97", "train.max_steps=100000", "train.checkpoint_every=100000", "log.every=10",
                "train.eval_every=100000", "train.eval_batch_size=2")
    proc = _cli("train", GROK, *args, f"log.dir={tmp_path}", "log.name=run", cwd=tmp_path, wait=False)
    _started(proc, tmp_path / "run")
    proc.send_signal(signal.SIGTERM)
    while "SIGTERM: stopping after this step" not in proc.stdout.readline():
        assert proc.poll() is None
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM and time.time() - t0 < 5
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# -- checkpoints that cannot be trusted ------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    code, _, err = _cli("train", GROK, *TINY, f"log.dir={d}", "log.name=run", cwd=d)
    assert code == 0, err[-2000:]
    return d / "run"


@pytest.fixture
def finished_run(one_run, tmp_path):
    """A copy of a finished 12-step run (checkpoints at steps 4, 8, 12), for one test to damage."""
    shutil.copytree(one_run, tmp_path / "run")
    return tmp_path / "run"


def _resume_refused(run, capsys, *extra) -> str:
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", f"train.resume={run}", "train.max_steps=20", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("run error: train.resume: "), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing changed
    return err


def test_a_truncated_checkpoint_is_refused_naming_the_newest_intact_one(finished_run, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    err = _resume_refused(finished_run, capsys)
    assert f"{last} is damaged" in err and "step-00000012.ckpt" in err


def test_altered_bytes_in_a_checkpoint_are_refused(finished_run, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x55  # inside the weights or the optimizer state: torch would load it silently
    last.write_bytes(bytes(data))
    err = _resume_refused(finished_run, capsys)
    assert "checksum mismatch" in err and "train.resume=" in err


def test_a_checkpoint_of_another_config_is_refused(finished_run, capsys):
    for p in (finished_run / "checkpoints").glob("*.ckpt"):  # whole files, written by seed 1's run
        ck = torch.load(p, map_location="cpu", weights_only=False)
        ck["lab"]["config"]["seed"] = 1
        torch.save(ck, p)
    err = _resume_refused(finished_run, capsys)
    assert "seed differs" in err and "no intact checkpoint" in err


def test_resuming_a_finished_run_changes_nothing_unless_the_budget_is_raised(finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert main(["train", f"train.resume={finished_run}"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before
    summary = json.loads((finished_run / "summary.json").read_text())
    assert main(["train", f"train.resume={finished_run}", "train.max_steps=16"]) == 0
    after = json.loads((finished_run / "summary.json").read_text())
    assert after["steps"] == 16 and set(summary) <= set(after)  # every figure kept
    assert all(after[k] is not None for k in summary if k.startswith(("val/", "dl/", "bits/")))


# -- the run record ---------------------------------------------------------------------------------------
def test_a_malformed_metrics_line_loses_no_row(finished_run, capsys):
    path = finished_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    rows = read_metrics(path)
    lines.insert(3, '{"step": 4, "train/loss": 0.1')  # a partial write in the middle
    lines.insert(5, '{"no step": 1}')
    path.write_text("\n".join(lines) + "\n")
    skipped = []
    assert read_metrics(path, skipped) == rows and skipped == [4, 6]
    assert main(["report", str(finished_run)]) == 0
    assert f"skipped 2 malformed line(s) of {path}: 4, 6" in capsys.readouterr().out
    assert main(["train", f"train.resume={finished_run}", "train.max_steps=16"]) == 0  # compacts the file
    assert [r["step"] for r in read_metrics(path)][: len(rows)] == [r["step"] for r in rows]
    assert '"no step"' in (finished_run / "metrics.jsonl.bad").read_text()  # kept aside, not dropped


def test_a_new_run_never_reuses_a_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n')
    assert main(["train", GROK, *TINY, f"log.dir={tmp_path}", "log.name=run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"run error: log.name: {run} already exists")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "train/loss": 1.0}\n' and files(run) == {
        Path("metrics.jsonl")}


@pytest.mark.parametrize("steps", [3, 1])
def test_short_runs_end_with_an_evaluation_and_a_row_at_their_last_step(tmp_path, capsys, steps):
    """Shorter than train.eval_every and than log.every: still a final evaluation and metrics row."""
    assert main(["train", GROK, *tiny(f"train.max_steps={steps}", "train.eval_every=50", "log.every=25"),
                 f"log.dir={tmp_path}", "log.name=run"]) == 0
    assert "val exact nan" not in capsys.readouterr().out
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["step"] == steps and {"train/loss", "bits/total", "val/exact_match"} <= set(last)
    assert main(["report", str(tmp_path / "run")]) == 0


# -- disks -----------------------------------------------------------------------------------------------
def _mount(path: Path, options: str) -> None:
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.decode().strip()}")


def test_a_read_only_log_dir_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    _mount(ro, "ro,size=1m")
    try:
        assert main(["train", GROK, *TINY, f"log.dir={ro}/runs"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"run error: log.dir: {ro} is not writable"), err
    finally:
        subprocess.run(["umount", str(ro)])


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    _mount(disk, "size=2m")
    try:
        code, _, err = _cli("train", GROK, *tiny("train.max_steps=4"), f"log.dir={disk}", "log.name=run", cwd=tmp_path)
        assert code == 0, err[-2000:]
        run = disk / "run"
        good = (run / "checkpoints" / "last.ckpt").read_bytes()
        (disk / "filler").write_bytes(b"x" * (2**21 - sum(p.stat().st_size for p in disk.rglob("*") if p.is_file())
                                              - 60_000))  # leave less room than a checkpoint needs
        code, out, err = _cli("train", f"train.resume={run}", "train.max_steps=12", cwd=tmp_path)
        assert code == 1, err[-2000:]
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "GPU", "TPU"))]
        assert lines[-1].startswith("I/O error: No space left on device"), err[-2000:]
        assert len([line for line in lines if "Traceback" in line]) == 0, err[-3000:]
        assert (run / "checkpoints" / "last.ckpt").read_bytes() == good and not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)])


# -- sweeps ----------------------------------------------------------------------------------------------
def test_one_writer_per_sweep_directory(tmp_path, capsys):
    from lab.run import RunLock

    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nmethod: grid\nparameters:\n  seed:\n    values: [0]\ncommand:\n"
                     + "".join(f"  - {a}\n" for a in ["python", "-m", "lab", "train", GROK, "${args_no_hyphens}"]))
    held = RunLock(tmp_path / "sweeps" / "s")
    held.acquire("sweep")
    try:
        assert main(["sweep", str(sweep), "--dir", str(tmp_path / "sweeps"), *TINY]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "sweep: " in err and "is being written by" in err
        assert files(tmp_path / "sweeps" / "s") == {Path("lock")}
    finally:
        held.release()
