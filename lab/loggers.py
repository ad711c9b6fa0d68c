"""The run's local metrics file, and the wandb logger set up so that it never blocks.

`metrics.jsonl` holds one JSON object per log step: everything logged at that step (train, bits, val,
dl), with `step` (optimizer steps completed; Lightning and wandb count from 0, one less) and
`examples_seen`. Read it with `pandas.read_json(path, lines=True)` or `lab.loggers.read_metrics`.

Crash safety: every call to the logger is appended to the file at once (nothing waits in memory), and
`sync()` fsyncs it; the checkpoint callback syncs before it renames a checkpoint into place, so the
rows a checkpoint covers are on disk whenever the checkpoint is. While a run is going, one step may
span several lines; `read_metrics` merges them, and the file is rewritten with one line per step when
the run ends or resumes (keeping the rows up to the checkpoint it resumes from). A malformed line (a
partial write, another tool, an editor) is skipped by readers, never the rows after it, and moved to
`metrics.jsonl.bad` when the file is rewritten.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lab.errors import ConfigError, RunError


def log_metrics(trainer, metrics: dict) -> None:
    """Straight to the loggers in float64 (`self.log` would round to float32), at the step Lightning
    uses for what `self.log` logs now."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)


def read_metrics(path: str | Path, skipped: list[int] | None = None) -> list[dict]:
    """The rows of a metrics file, one per step (lines of the same step merged, in order). A line that is
    not a JSON object with an integer `step` (cut short by a crash, or written by another tool) is
    skipped, never the rows after it; its line number (from 1) goes to `skipped`."""
    rows: list[dict] = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = isinstance(r, dict) and isinstance(r.get("step"), int) and not isinstance(r["step"], bool)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                if skipped is not None:
                    skipped.append(i)
                continue
            if rows and rows[-1]["step"] == r["step"]:
                rows[-1].update(r)
            else:
                rows.append(r)
    return rows



def write_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file, fsynced, renamed into place (a failure, a full
    disk say, leaves the old file and no temporary one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_dir(path: str | Path, key: str) -> None:
    """Raise RunError naming `key` unless `path` is a directory this process can write in, or can be
    created as one. Checks only: writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{key}: {path} is a file, not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{key}: {path} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{key}: {ancestor} is not writable (read-only file system or no permission)")


def check_output(out: str | Path, key: str, inputs: tuple = ()) -> None:
    """Raise RunError naming `key` unless `out` can be written as a file before any work is done: its
    directory exists and is writable, it is not a directory, and it is none of the `inputs`."""
    out = Path(out)
    if out.is_dir():
        raise RunError(f"{key}: {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise RunError(f"{key}: the directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise RunError(f"{key}: {out.parent} is not writable (read-only file system or no permission)")
    for src in inputs:
        same = out.exists() and Path(src).exists() and os.path.samefile(out, src)
        if same or out.resolve() == Path(src).resolve():
            raise RunError(f"{key}: {out} is the input file; writing it would destroy the input")


class JsonlLogger(Logger):
    """Appends what is logged at each call; rows after `keep_until` are dropped (resume)."""

    def __init__(self, path: str | Path, keep_until: int | None = None):
        super().__init__()
        self.path = Path(path)
        self._file = None
        if keep_until is not None and self.path.exists() and rank_zero_only.rank == 0:
            self._compact(keep_until)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {"step": step + 1}  # Lightning logs the index of the batch just trained on
        for k, v in metrics.items():
            if k == "epoch":  # always 0: the training stream is one endless epoch
                continue
            v = float(v)
            row[k] = v if math.isfinite(v) else None
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()  # in the operating system's hands: survives the process being killed

    @rank_zero_only
    def sync(self) -> None:
        """Everything logged so far is on disk (fsync): called before a checkpoint is renamed into place."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def _compact(self, keep_until: float = math.inf) -> None:
        """Rewrite the file with one line per step, keeping the steps <= keep_until. Lines that are not
        rows are kept too, verbatim, in `metrics.jsonl.bad` (with their line numbers), not dropped."""
        skipped: list[int] = []
        rows = [r for r in read_metrics(self.path, skipped) if r["step"] <= keep_until]
        if skipped:
            lines = self.path.read_text().splitlines()
            with open(self.path.with_name(self.path.name + ".bad"), "a") as f:
                f.writelines(f"{datetime.now():%Y-%m-%d %H:%M:%S} line {i}: {lines[i - 1]}\n" for i in skipped)
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path.exists():
            self._compact()


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")


def wandb_mode() -> str:
    """WANDB_MODE if set; else online only when wandb has credentials; never a login prompt."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        if mode not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE: {mode!r} is not one of {', '.join(WANDB_MODES)}")
        return mode
    os.environ.pop("WANDB_MODE", None)  # an empty value would make wandb itself fail
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def make_wandb_logger(run_dir: Path, run_name: str, cfg_dict: dict, project: str, group: str | None,
                      resumed_from: int | None = None):
    """A WandbLogger writing under the run directory, x-axis `examples_seen`; None when disabled.

    Every run is in a wandb group (`log.group`, else the run's name). A resumed run (from the checkpoint
    of step `resumed_from`) is a *new* wandb run in that group, `<name>-from-<step>-<time>`, with
    `resumed_from` in its config: wandb cannot rewind a run's history (its rewind is a private preview,
    and offline runs have none), and appending to the first run would show the steps between the
    checkpoint and the crash twice. The first run ends where the crash was; its points after the
    checkpoint's step are superseded by the new run's, as in metrics.jsonl."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    agent = "WANDB_SWEEP_ID" in os.environ or "WANDB_RUN_ID" in os.environ  # a wandb agent names the run
    run_id, name = run_name.replace("/", "-"), run_name
    if resumed_from is not None:
        run_id = name = f"{run_id}-from-{resumed_from}-{datetime.now():%H%M%S}"
        cfg_dict = {**cfg_dict, "resumed_from": {"run": run_name, "step": resumed_from}}
    logger = WandbLogger(
        project=project, name=None if agent else name, id=None if agent else run_id,
        resume="allow", group=group or run_name, save_dir=str(run_dir), mode=mode, config=cfg_dict,
    )
    logger._wandb_init.pop("anonymous", None)  # (Lightning passes None, which wandb warns is deprecated)
    exp = logger.experiment  # starts the (offline) run now, not in the middle of the first step
    if hasattr(exp, "define_metric"):
        exp.define_metric("examples_seen")
        for prefix in ("train", "val", "bits", "dl"):
            exp.define_metric(f"{prefix}/*", step_metric="examples_seen")
    return logger
