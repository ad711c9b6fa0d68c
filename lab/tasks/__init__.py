"""Tasks own their vocabulary, token layout, loss mask and exact aleatoric floors.

    task = make_task(cfg)   # from a lab.config.Config
"""

from lab.tasks.addition import Addition
from lab.tasks.base import Batch, Task
from lab.tasks.modular import Modular
from lab.tasks.permutation import Permutation

TASKS = {"addition": Addition, "modular": Modular, "permutation": Permutation}


def make_task(cfg) -> Task:
    t = cfg.task
    if t.name == "addition":
        loss_on = "all" if t.loss_on == "auto" else t.loss_on
        return Addition(t.n_digits, t.leading_zeros, t.reverse_answer, loss_on, t.n_heldout, cfg.seed,
                        t.label_noise, t.n_chain, t.chain_prob)
    loss_on = "answer" if t.loss_on == "auto" else t.loss_on
    if t.name == "permutation":
        return Permutation(t.op or "x*y", t.train_fraction, loss_on, t.label_noise, cfg.seed)
    return Modular(t.op or "x+y", t.p, t.train_fraction, loss_on, t.label_noise, cfg.seed)


__all__ = ["Addition", "Batch", "Modular", "Permutation", "Task", "TASKS", "make_task"]
