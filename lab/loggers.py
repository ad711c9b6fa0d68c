"""The run's local metrics file, and the wandb logger set up so that it never blocks.

`metrics.jsonl` holds one JSON object per log step: everything logged at that step (train, bits, val,
dl), with `step` (optimizer steps completed; Lightning and wandb count from 0, one less) and
`examples_seen`. Read it with `pandas.read_json(path, lines=True)` or
`lab.loggers.read_metrics`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lab.config import ConfigError


def log_metrics(trainer, metrics: dict) -> None:
    """Straight to the loggers in float64 (`self.log` would round to float32), at the step Lightning
    uses for what `self.log` logs now."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class JsonlLogger(Logger):
    """Merges everything logged at one step into one row; rows after `keep_until` are dropped (resume)."""

    def __init__(self, path: str | Path, keep_until: int | None = None):
        super().__init__()
        self.path = Path(path)
        self._row: dict = {}
        if keep_until is not None and self.path.exists() and rank_zero_only.rank == 0:
            rows = [r for r in read_metrics(self.path) if r["step"] <= keep_until]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

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
        step = step + 1  # Lightning logs the index of the batch just trained on
        if self._row and self._row["step"] != step:
            self._flush()
        self._row.setdefault("step", step)
        for k, v in metrics.items():
            if k == "epoch":  # always 0: the training stream is one endless epoch
                continue
            v = float(v)
            self._row[k] = v if math.isfinite(v) else None

    def _flush(self) -> None:
        if self._row:
            with open(self.path, "a") as f:
                f.write(json.dumps(self._row) + "\n")
            self._row = {}

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._flush()


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


def make_wandb_logger(run_dir: Path, run_name: str, cfg_dict: dict, project: str, group: str | None):
    """A WandbLogger writing under the run directory, x-axis `examples_seen`; None when disabled."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    agent = "WANDB_SWEEP_ID" in os.environ or "WANDB_RUN_ID" in os.environ  # a wandb agent names the run
    logger = WandbLogger(
        project=project, name=None if agent else run_name, id=None if agent else run_name.replace("/", "-"),
        resume="allow", group=group, save_dir=str(run_dir), mode=mode, config=cfg_dict,
    )
    exp = logger.experiment  # starts the (offline) run now, not in the middle of the first step
    if hasattr(exp, "define_metric"):
        exp.define_metric("examples_seen")
        for prefix in ("train", "val", "bits", "dl"):
            exp.define_metric(f"{prefix}/*", step_metric="examples_seen")
    return logger
