"""Tasks own their vocabulary, token layout, loss mask and exact aleatoric floors.

    task = make_task(cfg)   # from a lab.config.Config

Every module of this package is imported here, so a task registers itself (`lab.tasks.base.register`)
by being a file in `lab/tasks/`; a task in another package registers through the entry-point group
`compression_lab.tasks` (each entry point names its module). `TASKS` maps names to task classes.
"""

import importlib
import pkgutil
from importlib.metadata import entry_points

from lab.tasks.base import TASKS, Batch, Finite, Task, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
for _entry in entry_points(group="compression_lab.tasks"):
    _entry.load()

from lab.tasks.addition import Addition  # noqa: E402
from lab.tasks.modular import Modular  # noqa: E402
from lab.tasks.permutation import Permutation  # noqa: E402


def make_task(cfg) -> Task:
    """The task of a `lab.config.Config` (its `task` section and seed)."""
    return TASKS[cfg.task.name].from_config(cfg.task, cfg.seed)


__all__ = ["Addition", "Batch", "Finite", "Modular", "Permutation", "Task", "TASKS", "make_task", "register"]
