"""One training run: run directory, trainer, loggers and callbacks, then `fit`.

    runs/<name>/
        config.yaml          the resolved configuration (rewritten on resume)
        metrics.jsonl        one row per log step: train/..., bits/..., val/..., dl/..., examples_seen
        positions.csv        per predicted position: floor, total and excess bits (at the end)
        summary.json         final figures of the run
        grokking.png         table tasks: accuracy, dl/table and losses against steps
        <task>.png           stream tasks (addition.png, ...): bits against examples, certificates,
                             emergence, the rule
        checkpoints/         last.ckpt and the latest periodic step-*.ckpt
        wandb/               the wandb run (offline unless wandb is set up)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import lightning as L
import torch

from lab.bits import PrequentialCode
from lab.build import Built, build
from lab.callbacks import Checkpoints, ProgressBar, Report
from lab.config import Config, diff, from_dict, load_saved, to_dict, to_yaml
from lab.data import LabData
from lab.errors import ConfigError, RunError
from lab.loggers import JsonlLogger, check_writable_dir, make_wandb_logger, write_atomic
from lab.module import LabModule
from lab.plots import run_figure
from lab.probes import GrokkingProbes
from lab.twopart import TwoPart


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


LIGHTNING_LOG = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available", "fit stopped"
LIGHTNING_LOG.addFilter(_NoAdverts())
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # inside Lightning, not ours


def quiet(verbose: bool) -> None:
    """Lightning's own messages (accelerators found, why fit stopped) only with `log.verbose`: a run prints
    its header, one line per evaluation and a done line."""
    LIGHTNING_LOG.setLevel(logging.INFO if verbose else logging.WARNING)


@dataclass
class RunResult:
    run_dir: Path
    module: LabModule
    trainer: L.Trainer
    bits: PrequentialCode
    summary: dict


class NothingToDo(Exception):
    """Resuming a run that has finished, with nothing asked of it beyond what it did."""


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint file, without loading it: None if every entry of the zip archive
    torch writes is whole and matches its CRC-32 (a truncated or altered file does not)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"unreadable ({e})"
    return None if bad is None else f"checksum mismatch in {bad}"


def _newest_intact(run_dir: Path, but: Path, saved: Config) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step-*.ckpt"), reverse=True)
    for p in [run_dir / "checkpoints" / "last.ckpt", *ckpts]:
        if p.is_file() and p.resolve() != but.resolve() and checkpoint_problem(p) is None:
            ck = torch.load(p, map_location="cpu", weights_only=False)
            if not diff(saved, from_dict(ck["lab"]["config"])):
                return p
    return None


def load_checkpoint(ckpt: Path, run_dir: Path, saved: Config) -> dict:
    """The checkpoint, after checking it is whole and was written by the run's config: else RunError
    naming the newest intact checkpoint to resume from instead."""
    problem = checkpoint_problem(ckpt)
    ck = None
    if problem is None:
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        lab = ck.get("lab", {}) if isinstance(ck, dict) else {}
        try:
            changed = diff(saved, from_dict(lab["config"]))
        except (KeyError, ConfigError) as e:
            changed = [f"its config ({e})"]
        if changed:
            problem = f"written by another configuration: {changed[0]} differs from {run_dir / 'config.yaml'}"
    if problem is None:
        return ck
    other = _newest_intact(run_dir, ckpt, saved)
    hint = (f"resume from the newest intact checkpoint instead: train.resume={other}" if other
            else f"no intact checkpoint of this run is left in {run_dir / 'checkpoints'}")
    raise RunError(f"train.resume: {ckpt} is damaged: {problem}; {hint}")


def finished(run_dir: Path, step: int, cfg: Config, saved: Config) -> str | None:
    """Why resuming this run (its saved config `saved`) would do nothing (it finished and nothing asks
    for more), or None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if s.get("interrupted", True) or s.get("steps") != step:
        return None
    saved, tr = saved.train, cfg.train
    if tr.max_steps <= step:
        return f"it finished at step {step} of train.max_steps={saved.max_steps}; raise train.max_steps to continue"
    if step < saved.max_steps and (tr.stop_at, tr.stop_metric) == (saved.stop_at, saved.stop_metric):
        return (f"it stopped at step {step} when {saved.stop_metric} reached {saved.stop_at}; change train.stop_at "
                f"(or null) to continue")
    return None


def resume_paths(resume: str) -> tuple[Path, Path]:
    """train.resume (a run directory or a checkpoint) -> (run directory, checkpoint file)."""
    p = Path(resume)
    ckpt = p / "checkpoints" / "last.ckpt" if p.is_dir() else p
    if not ckpt.is_file():
        raise RunError(f"train.resume: no checkpoint at {ckpt}")
    return ckpt.parent.parent, ckpt


def resume_config(resume: str, overrides: list[str]) -> Config:
    """The saved configuration of the run being resumed, with overrides applied."""
    run_dir, _ = resume_paths(resume)
    return load_saved(run_dir / "config.yaml", overrides)


class RunLock:
    """One writer per run directory: an exclusive lock on `<run>/lock`, held while the run is live.
    The operating system drops it when the holder exits or is killed, so a stale file never blocks a
    resume; the file names the holder (pid, host, start time) for the error message."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "lock"
        self.file = None

    def _try(self, f, key: str, mode: int) -> None:
        """flock `f` without waiting, or raise RunError naming `key`, the directory and the holder."""
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunError(f"{key}: {self.path.parent} is being written by {holder}; "
                           f"one writer per run or sweep directory (stop that one first)") from None

    def check(self, key: str) -> None:
        """Raise as `acquire` would if a live process holds the lock; take nothing, write nothing."""
        if self.path.exists():
            with open(self.path) as f:
                self._try(f, key, fcntl.LOCK_SH)

    def acquire(self, key: str) -> None:
        """Take the lock (creating the directory and the file if needed), or raise RunError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # (an existing file is not changed before the lock is ours)
        self._try(f, key, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the lock
            self.file = None


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_first_process() -> bool:
    """This process is the run's global rank 0 under every launcher Lightning reads: its own DDP processes
    (LOCAL_RANK, NODE_RANK), torchrun (RANK, GROUP_RANK) and SLURM's srun (SLURM_PROCID). Only it
    creates, locks and writes the run directory; the others reuse it."""
    return all(os.environ.get(k, "0") == "0" for k in RANK_VARIABLES)


def prepare_run(cfg: Config, config_name: str) -> tuple[Path, Path | None, int | None]:
    """(run directory, checkpoint to resume from, its step). Rank 0 creates; other ranks reuse."""
    if cfg.train.resume:
        run_dir, ckpt = resume_paths(cfg.train.resume)
        saved = load_saved(run_dir / "config.yaml")
        changed = diff(saved, cfg)
        if changed:
            raise ConfigError(f"{changed[0]}: differs from the run being resumed ({run_dir}/config.yaml)")
        step = load_checkpoint(ckpt, run_dir, saved)["global_step"]
        worker = not is_first_process()  # (rank 0 decided, then rewrote config.yaml)
        why = None if worker else finished(run_dir, step, cfg, saved)
        if why:
            raise NothingToDo(f"{run_dir}: nothing to do, nothing changed: {why}")
        return run_dir, ckpt, step
    if not is_first_process():  # a DDP process that rank 0 launched, or another node's (log.name is set)
        name = cfg.log.name or os.environ["LAB_RUN_NAME"]
    elif cfg.log.name:
        name = cfg.log.name
        RunLock(Path(cfg.log.dir) / name).check("log.name")  # a live run first: that is the news
        run_dir = Path(cfg.log.dir) / name
        if (run_dir / "checkpoints" / "last.ckpt").exists():
            raise RunError(f"log.name: {run_dir} already holds a run; resume it with train.resume={run_dir}")
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise RunError(f"log.name: {run_dir} already exists (a run without a checkpoint, or other files); "
                           f"a new run never reuses a directory: choose another log.name or move it away")
    else:  # <config>-<date>-<time>, with a suffix if that directory is taken
        stem = name = f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
        i = 1
        while (Path(cfg.log.dir) / name).exists():
            i += 1
            name = f"{stem}-{i}"
    os.environ["LAB_RUN_NAME"] = name  # DDP workers are re-launched with this environment
    return Path(cfg.log.dir) / name, None, None


def train(cfg: Config, config_name: str = "run", extra_callbacks: list | None = None) -> RunResult:
    if not cfg.train.resume:
        check_writable_dir(cfg.log.dir, "log.dir")
    run_dir, ckpt, ckpt_step = prepare_run(cfg, config_name)
    built = build(cfg)  # (a failure here leaves nothing written)
    module = built.module
    rank0 = is_first_process()
    lock = RunLock(run_dir)
    fresh = ckpt is None and not run_dir.exists()
    if rank0:  # (the other processes write nothing of their own)
        lock.acquire("train.resume" if ckpt else "log.name")
    try:
        return _train(built, run_dir, ckpt, ckpt_step, rank0, extra_callbacks)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "allocate" not in msg:
            raise
        if fresh and rank0 and module.examples_seen == 0:  # (not one step done)
            lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)  # a start that could not run: nothing written
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} rows (eval {cfg.train.eval_batch_size}) "
                          f"do not fit in memory with this model: {msg[:200]}") from None
    finally:
        lock.release()


def _train(built: Built, run_dir: Path, ckpt: Path | None, ckpt_step: int | None, rank0: bool,
           extra_callbacks: list | None) -> RunResult:
    cfg, task, module = built.cfg, built.task, built.module
    quiet(cfg.log.verbose)
    if rank0:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(cfg))
    data = LabData(task, built.batch_size, cfg.train.eval_batch_size)

    bits = PrequentialCode(task, cfg.log.every, built.batch_size, run_dir)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.train.checkpoint_every, cfg.train.keep_checkpoints,
                              cfg.train.eval_every, guard=bits.before_save)
    probes = GrokkingProbes(task)
    twopart = TwoPart(task)
    callbacks = [bits, probes, twopart, Report(), checkpoints]
    bar = cfg.log.progress_bar and sys.stdout.isatty()  # (in a log file, the evaluation lines alone)
    if bar:
        tr = cfg.train
        callbacks.append(ProgressBar(task, built.batch_size, tr.max_steps, tr.stop_metric, tr.stop_at, refresh_rate=10))
    callbacks += extra_callbacks or []
    loggers = [JsonlLogger(run_dir / "metrics.jsonl", keep_until=ckpt_step)]
    if cfg.log.wandb:
        wb = make_wandb_logger(run_dir, run_dir.name, to_dict(cfg), cfg.log.project, cfg.log.group, ckpt_step)
        if wb is not None:
            loggers.append(wb)

    tr = cfg.train
    trainer = L.Trainer(
        max_steps=tr.max_steps,
        min_epochs=0,  # else Lightning refuses to stop early before an epoch ends (the stream has none)
        accelerator=tr.accelerator,
        devices=tr.devices,
        num_nodes=tr.num_nodes,
        strategy="ddp" if tr.devices * tr.num_nodes > 1 else "auto",
        precision="bf16-mixed" if tr.precision == "bf16" else "32-true",
        val_check_interval=tr.eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log.every,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        n = module.model.num_params()
        print(f"run {run_dir} | {task.__class__.__name__.lower()} | {n / 1e6:.2f}M parameters"
              f" | floor {task.floor_bits_per_example:.2f} bits/example"
              + (f" | resuming from step {ckpt_step}" if ckpt else ""), flush=True)
    t0 = time.time()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    finally:  # the wandb run ends with the run (a later run in this process must not reuse it)
        for logger in trainer.loggers:
            if logger.name != "jsonl" and getattr(logger, "_experiment", None) is not None:
                logger.experiment.finish()
    summary = {
        "run_dir": str(run_dir),
        "steps": trainer.global_step,
        "examples_seen": module.examples_seen,
        "wall_seconds_this_session": round(time.time() - t0, 1),
        "interrupted": checkpoints.stop_requested,
        "stopped_by": signal.Signals(checkpoints.stop_signal).name if checkpoints.stop_signal else None,
        **{k: v for k, v in module.last_eval.items() if k.startswith(("val/", "train/"))},
        **bits.last_dl,
        **twopart.last,
        **{k: v for k, v in probes.last.items() if not k.startswith("grok/fourier/")},
        **bits.totals(),
    }
    if trainer.is_global_zero:
        _, marks = run_figure(run_dir, cfg)  # grokking.png, or addition.png, multiplication.png
        if marks is not None:
            summary["marks"] = marks
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    return RunResult(run_dir, module, trainer, bits, summary)
