"""Tasks own their vocabulary, token layout, loss mask, exact aleatoric floors and evaluation metrics.

    task = make_task(cfg)               # from a lab.config.Config: TASKS[cfg.task.name](cfg.task, cfg.seed)
    task = Addition.of(n_digits=4)      # options by keyword, the rest at their defaults

Every module of this package is imported here, so a task registers itself (`lab.tasks.base.register`)
by being a file in `lab/tasks/`; a task in another package registers through the entry-point group
`compression_lab.tasks` (each entry point names its module). `TASKS` maps names to task classes. The
package imports numpy and `lab.errors` only: neither torch nor `lab.config`.
"""

import importlib
import pkgutil
from importlib.metadata import entry_points

from lab.tasks.base import TASKS, Batch, Plan, Score, Task, TaskConfig, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
for _entry in entry_points(group="compression_lab.tasks"):
    _entry.load()

from lab.tasks.addition import Addition  # noqa: E402
from lab.tasks.modular import Modular  # noqa: E402
from lab.tasks.multiplication import Multiplication  # noqa: E402
from lab.tasks.permutation import Permutation  # noqa: E402
from lab.tasks.table import TableConfig, TableTask  # noqa: E402


def make_task(cfg) -> Task:
    """The task of a `lab.config.Config` (its `task` section and seed)."""
    return TASKS[cfg.task.name](cfg.task, cfg.seed)


__all__ = ["Addition", "Batch", "Modular", "Multiplication", "Permutation", "Plan", "Score", "TableConfig",
           "TableTask", "Task", "TaskConfig", "TASKS", "make_task", "register"]
