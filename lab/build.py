"""The one assembly of a run's parts: config -> task, seeded module, global batch size, optimizer.

    b = build(cfg)                     # the task, the module with its initial weights, the batch size
    opt, sched = b.optimizer()         # AdamW and its schedule, as `lab train` steps them
    loss, nats, logits = b.module.step(x, opt, sched, step)
    b, step = load_trained("runs/addition-...", "last.ckpt")   # a run's parts with a checkpoint's weights

`lab train`, both sides of the coder, the benchmarks and the experiment scripts build here, so they
start from the same weights (the seed is set just before the model is made) and resolve the batch
size the same way (`Task.batch_size`: 0 means a table's whole train split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from lab.config import Config
from lab.errors import ConfigError
from lab.module import LabModule
from lab.tasks import Task, make_task


@dataclass
class Built:
    cfg: Config
    task: Task
    module: LabModule
    batch_size: int  # the global batch: `train.batch_size` resolved by the task

    def optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """A fresh optimizer and schedule over the module's parameters (what Lightning gets from
        `LabModule.configure_optimizers`)."""
        conf = self.module.configure_optimizers()
        return conf["optimizer"], conf["lr_scheduler"]["scheduler"]


def build(cfg: Config) -> Built:
    """The task and the seeded module, before anything is written: a failure here is a start-up error
    (ConfigError, naming the key where the message does)."""
    if cfg.train.accelerator == "gpu" and torch.cuda.device_count() < cfg.train.devices:
        raise ConfigError(f"train.accelerator: gpu asks for {cfg.train.devices} CUDA device(s); this machine has "
                          f"{torch.cuda.device_count()} (use train.accelerator=cpu or auto)")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        task = make_task(cfg)
        module = LabModule(cfg, task)
    except (ValueError, MemoryError) as e:
        msg = str(e) or type(e).__name__
        raise ConfigError(msg if msg.split(":")[0].count(".") == 1 else f"config: {msg}") from None
    return Built(cfg, task, module, task.batch_size(cfg.train.batch_size))


def load_trained(run_dir: str | Path, checkpoint: str | Path = "last.ckpt") -> tuple[Built, int]:
    """A run's parts with the weights of one of its checkpoints (a file in `<run>/checkpoints/`, or a path):
    (the built run, its module in eval mode; the checkpoint's step)."""
    from lab.config import load_saved

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / checkpoint  # a name in the run's checkpoints/, else a path
    ckpt = ckpt if ckpt.is_file() else Path(checkpoint)
    b = build(load_saved(run_dir / "config.yaml"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    b.module.load_state_dict(saved["state_dict"])
    b.module.eval()
    return b, saved["global_step"]
