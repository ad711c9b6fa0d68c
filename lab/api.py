"""The lab from Python (a notebook, a script): train a run, load runs and sweeps, read and draw them.

    import lab
    run = lab.train("configs/grokking.yaml", ["train.max_steps=300"])   # a path, a dict or a Config
    run.dir, run.summary["val/exact_match"], run.rows[-1]["dl/table"]
    steps, acc = run.series("val/exact_match")
    df = run.frame()                          # metrics.jsonl as a pandas DataFrame (pandas installed)
    run.figure()                              # grokking.png / addition.png, drawn again: its path
    run = lab.load_run("runs/grokking-20261201-101500")
    sweep = lab.load_sweep("runs/sweeps/grokking-fraction-wd")
    sweep.runs, sweep.report()["spearman_by_measure"]

`lab.train` is `python -m lab train` (the same run directory, checkpoints, bits and figures; a bad
config raises `lab.errors.ConfigError` naming the key). Nothing here imports torch until it is used:
`import lab` stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    """A run directory (`lab.run` lays it out): its config, summary, metrics rows and figures."""

    dir: Path

    @property
    def config(self):
        """The run's resolved `lab.config.Config` (its config.yaml)."""
        from lab.config import load_saved

        return load_saved(self.dir / "config.yaml")

    @property
    def summary(self) -> dict:
        """summary.json (final figures); {} while the run has not ended."""
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def rows(self) -> list[dict]:
        """metrics.jsonl, one dict per logged step (malformed lines skipped)."""
        from lab.loggers import read_metrics

        path = self.dir / "metrics.jsonl"
        return read_metrics(path) if path.exists() else []

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one metric (a non-finite value is nan)."""
        from lab.plots import series

        return series(self.rows, key)

    def frame(self):
        """metrics.jsonl as a pandas DataFrame indexed by step (needs pandas: `pip install pandas`)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Run.frame needs pandas (pip install pandas); Run.rows has the same rows") from None
        return pd.DataFrame(self.rows).set_index("step")

    def figure(self) -> Path:
        """Draw the run's figure again from its metrics (grokking.png for a table task, <task>.png for a
        stream task) with today's code: its path."""
        from lab.plots import run_figure

        return run_figure(self.dir, self.config)[0]

    def report(self) -> dict:
        """`python -m lab report` of this run: final figures, report.csv/.md and report.png."""
        from lab.report import report

        return report(self.dir)


@dataclass
class Sweep:
    """A sweep directory (`python -m lab sweep`): its runs, and the report that scores them."""

    dir: Path

    @property
    def runs(self) -> list[Run]:
        """The runs that ran, as the sweep's report reads them (failed attempts left out)."""
        from lab.report import sweep_runs

        return [Run(d) for d in sweep_runs(self.dir)]

    def report(self) -> dict:
        """`python -m lab report` of the sweep: a row per run, Spearman's rho of compression against
        validation accuracy, report.csv/.md and report.png."""
        from lab.report import report

        return report(self.dir)


def train(config=None, overrides: list[str] | tuple = (), name: str | None = None) -> Run:
    """Train (or resume) a run: `config` a YAML path, a dict of sections ({"task": {"p": 53}}) or a
    `lab.config.Config`, then `key=value` overrides (as on the command line); None with
    `train.resume=RUN_DIR` continues that run with its saved config. `name` is the run
    directory's stem (default: the YAML file's, else "run"). -> the finished (or stopped) `Run`."""
    from lab.config import Config, load, to_dict
    from lab.run import resume_config
    from lab.run import train as train_run

    overrides = list(overrides)
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.resume=")), None)
    if config is None and resume:  # the run's saved config, as `python -m lab train train.resume=RUN`
        cfg = resume_config(resume, overrides)
    elif isinstance(config, Config):
        cfg = load(None, overrides, base=to_dict(config))
    elif isinstance(config, dict):
        cfg = load(None, overrides, base=config)
    else:
        cfg = load(config, overrides)
    stem = name or (Path(config).stem if isinstance(config, str | Path) else "run")
    return Run(train_run(cfg, stem).run_dir)


def load_run(path: str | Path) -> Run:
    """A run directory (it holds config.yaml); `lab.errors.RunError` if it is none."""
    from lab.errors import RunError

    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise RunError(f"run: {path} is not a run directory (no config.yaml)")
    return Run(path)


def load_sweep(path: str | Path) -> Sweep:
    """A sweep directory (its subdirectories are runs); `lab.errors.RunError` if it holds none."""
    from lab.errors import RunError

    sweep = Sweep(Path(path))
    if not sweep.runs:
        raise RunError(f"sweep: {path} holds no runs")
    return sweep
