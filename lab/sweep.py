"""Sweeps: W&B sweep files, run locally one after another (or by `wandb agent` on many machines).

A sweep file is a W&B sweep configuration, usable unchanged by `wandb sweep FILE` + `wandb agent`:

    name: grokking-fraction-wd
    method: grid                      # grid | random (bayes needs the W&B server: use wandb agent)
    metric: {name: dl/table, goal: minimize}
    parameters:
      task.train_fraction: {values: [0.2, 0.3, 0.4, 0.5]}
      train:                          # nested keys are flattened: train.weight_decay
        parameters:
          weight_decay: {values: [0.1, 1.0]}
    command: [${env}, python, -m, lab, train, configs/grokking.yaml, ${args_no_hyphens}]

`python -m lab sweep FILE` expands it (grid: every combination in order; random: `run_cap` draws,
seeded by `--seed`), runs each as `python -m lab train CONFIG [fixed args] key=value ...` in
`runs/sweeps/<name>/<run>/`, grouped in wandb by the sweep name. Relaunching skips finished runs and
resumes interrupted ones; a failing run is recorded in `sweep.jsonl` and the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from lab.config import ConfigError


def flatten(params: dict, prefix: str = "") -> dict[str, dict]:
    """W&B parameters (possibly nested with `parameters:`) -> {dotted key: spec}."""
    out = {}
    for key, spec in params.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"parameters.{prefix}{key}: expected a mapping with values/value/distribution")
        if "parameters" in spec:
            out.update(flatten(spec["parameters"], f"{prefix}{key}."))
        else:
            out[prefix + key] = spec
    return out


def sample(spec: dict, key: str, rng: np.random.Generator):
    """One draw from a W&B parameter spec."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][int(rng.integers(len(spec["values"])))]
    dist = spec.get("distribution", "uniform" if "min" in spec and isinstance(spec["min"], float) else None)
    lo, hi = spec.get("min"), spec.get("max")
    if dist == "uniform":
        return float(rng.uniform(lo, hi))
    if dist == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "int_uniform":
        return int(rng.integers(lo, hi + 1))
    if dist == "q_uniform":
        q = spec.get("q", 1.0)
        return float(round(rng.uniform(lo, hi) / q) * q)
    raise ConfigError(f"parameters.{key}: unsupported distribution {dist!r} "
                      "(values, value, uniform, log_uniform_values, int_uniform, q_uniform)")


def expand(sweep: dict, count: int | None = None, seed: int = 0) -> list[dict]:
    """The runs of a sweep, each {dotted key: value}."""
    method = sweep.get("method", "grid")
    params = flatten(sweep.get("parameters", {}))
    if method == "bayes":
        raise ConfigError("method: bayes needs the W&B sweep server; run it with `wandb sweep FILE` and `wandb agent`")
    if method == "grid":
        grids = []
        for key, spec in params.items():
            if "values" in spec:
                grids.append([(key, v) for v in spec["values"]])
            elif "value" in spec:
                grids.append([(key, spec["value"])])
            else:
                raise ConfigError(f"parameters.{key}: a grid sweep needs values or value, not a distribution")
        return [dict(combo) for combo in itertools.product(*grids)]
    if method == "random":
        n = count or sweep.get("run_cap")
        if not n:
            raise ConfigError("run_cap: a random sweep needs run_cap (or --count)")
        rng = np.random.default_rng(seed)
        return [{key: sample(spec, key, rng) for key, spec in params.items()} for _ in range(n)]
    raise ConfigError(f"method: {method!r} is not grid, random or bayes")


def base_command(sweep: dict) -> list[str]:
    """The config file and fixed arguments from the sweep's `command` (what precedes the sweep's args)."""
    cmd = sweep.get("command") or ["${env}", "python", "-m", "lab", "train", "${args_no_hyphens}"]
    if "train" not in cmd:
        raise ConfigError("command: must run `python -m lab train CONFIG ${args_no_hyphens}`")
    return [c for c in cmd[cmd.index("train") + 1 :] if not c.startswith("${")]


def run_name(i: int, params: dict) -> str:
    short = "-".join(f"{k.split('.')[-1]}_{_fmt(v)}" for k, v in params.items())
    return f"{i:03d}-{short}"[:120].replace("/", "_")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def status(run_dir: Path) -> str:
    """finished | interrupted (a checkpoint to resume) | new."""
    summary = run_dir / "summary.json"
    if summary.exists() and not json.loads(summary.read_text()).get("interrupted"):
        return "finished"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return "interrupted"
    return "new"


def sweep_name(path: str | Path) -> str:
    path = Path(path)
    return yaml.safe_load(path.read_text()).get("name") or path.stem


def run_sweep(path: str | Path, root: str | Path = "runs/sweeps", parallel: int = 1, count: int | None = None,
              seed: int = 0, dry_run: bool = False, extra: list[str] = ()) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep: {path} does not exist")
    sweep = yaml.safe_load(path.read_text())
    name = sweep_name(path)
    runs = expand(sweep, count, seed)
    base = base_command(sweep)
    sweep_dir = Path(root) / name
    log = sweep_dir / "sweep.jsonl"

    def one(i: int, params: dict) -> dict:
        run = run_name(i, params)
        run_dir = sweep_dir / run
        state = status(run_dir)
        record = {"run": run, "params": params}
        if state == "finished":
            return {**record, "status": "skipped (finished)"}
        args = [*base, *(f"{k}={_yaml_value(v)}" for k, v in params.items()), *extra, f"log.dir={sweep_dir}",
                f"log.name={run}", f"log.group={name}", "log.progress_bar=false"]
        if state == "interrupted":
            args.append(f"train.resume={run_dir}")
        cmd = [sys.executable, "-m", "lab", "train", *args]
        if dry_run:
            return {**record, "status": "would run", "command": " ".join(cmd)}
        t0 = time.time()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / f"{run}.log", "w") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}).returncode
        result = {**record, "status": "finished" if code == 0 else f"failed (exit {code})",
                  "seconds": round(time.time() - t0, 1)}
        if code != 0:
            tail = (sweep_dir / f"{run}.log").read_text().strip().splitlines()[-1:]
            result["error"] = tail[0] if tail else ""
        with open(log, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"[{name}] {run}: {result['status']} ({result['seconds']} s)", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda a: one(*a), enumerate(runs)))


def _yaml_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)
