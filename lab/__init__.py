"""Compression Lab: a transformer trained on generated tasks whose law is known, and the code length of
its training stream (the prequential code) beside its generalization.

    import lab
    run = lab.train("configs/grokking.yaml", ["train.max_steps=300"])
    run.summary, run.rows, run.frame(), run.figure()
    lab.load_run("runs/..."), lab.load_sweep("runs/sweeps/...")

docs/python.md walks through it; `python -m lab --help` is the command line.
"""

from lab.api import Run, Sweep, load_run, load_sweep, train

__all__ = ["Run", "Sweep", "load_run", "load_sweep", "train"]
