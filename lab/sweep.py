"""Sweeps: W&B sweep files, run locally one after another (or by `wandb agent` on many machines).

A sweep file is a W&B sweep configuration, usable unchanged by `wandb sweep FILE` + `wandb agent`:

    name: grokking-fraction-wd
    method: grid                      # grid | random (bayes needs the W&B server: use wandb agent)
    metric: {name: dl/table, goal: minimize}
    parameters:
      task.train_fraction: {values: [0.2, 0.3, 0.4, 0.5]}
      train:                          # a section: passed as train={'weight_decay': 0.1}
        parameters:
          weight_decay: {values: [0.1, 1.0]}
    command: [${env}, python, -m, lab, train, configs/grokking.yaml, ${args_no_hyphens}]

`python -m lab sweep FILE` makes the runs W&B would make of the same file: each parameter's type is
inferred as W&B infers it (`param_type`: {min: 100, max: 200} is int_uniform, {values, probabilities}
categorical_w_probabilities, ...); a grid is every combination in W&B's order, int_uniform and q_uniform
expanded as W&B expands them; a random sweep draws `run_cap` runs (seeded by `--seed`) from the same
distributions. Each run gets the command line `wandb agent` would build (`agent_args`): the command's
fixed arguments, then one `name=value` per parameter (a section as `train={'lr': 0.001}`, which the
config loader merges key by key), in `runs/sweeps/<name>/<run>/`, grouped in wandb by the sweep name.
What only the W&B server can do (bayes, early_terminate, ...) is an error naming the key, never ignored.
Relaunching skips finished runs and resumes interrupted ones; a failing run is recorded in
`sweep.jsonl` and the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from lab.config import flatten, yaml_error
from lab.errors import ConfigError, RunError

# W&B's parameter types, in the order W&B tries them (its sweep schema's `parameter.anyOf`): a spec is the
# first whose required keys it has, whose other keys it may have, and whose checks its values pass.
NUMBER = (int, float)
_is_num = lambda v: isinstance(v, NUMBER) and not isinstance(v, bool)  # noqa: E731
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_is_float = lambda v: isinstance(v, float)  # noqa: E731
_Q = {"q": 1.0}
_MU = {"mu": 0.0, "sigma": 1.0}
PARAM_TYPES = [  # (type = its distribution name, required, optional keys with defaults, check)
    ("q_beta", {"distribution"}, {"a": 1, "b": 1, **_Q}, None),
    ("beta", {"distribution"}, {"a": 1, "b": 1}, None),
    ("categorical", {"values"}, {}, lambda s: isinstance(s["values"], list) and len(s["values"]) >= 1),
    ("categorical_w_probabilities", {"values", "probabilities"}, {},
     lambda s: isinstance(s["values"], list) and len(s["values"]) >= 1 and isinstance(s["probabilities"], list)
     and all(_is_num(p) and p >= 0 for p in s["probabilities"])),
    ("int_uniform", {"min", "max"}, {}, lambda s: _is_int(s["min"]) and _is_int(s["max"])),
    ("uniform", {"min", "max"}, {}, lambda s: _is_num(s["min"]) and _is_num(s["max"])
     and ("distribution" in s or _is_float(s["min"]) or _is_float(s["max"]))),
    ("log_normal", {"distribution"}, dict(_MU), None),
    ("log_uniform", {"distribution", "min", "max"}, {}, None),
    ("inv_log_uniform", {"distribution", "min", "max"}, {}, None),
    ("normal", {"distribution"}, dict(_MU), None),
    ("q_log_normal", {"distribution"}, {**_MU, **_Q}, None),
    ("q_log_uniform", {"distribution", "min", "max"}, dict(_Q), None),
    ("q_normal", {"distribution"}, {**_MU, **_Q}, None),
    ("q_uniform", {"distribution", "min", "max"}, dict(_Q), None),
    ("constant", {"value"}, {}, None),
    ("inv_log_uniform_values", {"distribution", "min", "max"}, {}, lambda s: s["min"] > 0),
    ("log_uniform_values", {"distribution", "min", "max"}, {}, lambda s: s["min"] > 0),
    ("q_log_uniform_values", {"distribution", "min", "max"}, dict(_Q), lambda s: s["min"] > 0),
]
NUMERIC = {"min", "max", "q", "a", "b", "mu", "sigma"}
SWEEP_KEYS = {"name", "description", "method", "metric", "parameters", "command", "run_cap", "program",
              "project", "entity"}  # what the local runner does; W&B's other keys are errors here
WANDB_ONLY = {"apiVersion", "kind", "controller", "job", "image_uri", "metrics", "scheduler", "early_terminate"}


def param_type(spec: dict, key: str) -> tuple[str, dict]:
    """A W&B parameter spec -> (its type, the spec with W&B's defaults filled in), as W&B infers it:
    {min: 1, max: 5} is int_uniform, {min: 0.1, max: 1} uniform, {values: [...]} categorical, ..."""
    if not isinstance(spec, dict):
        raise ConfigError(f"parameters.{key}: expected a mapping (values, value, min/max, distribution, ...)")
    for name, required, optional, ok in PARAM_TYPES:
        keys = set(spec)
        if not required <= keys or not keys <= required | set(optional) | {"distribution"}:
            continue
        if spec.get("distribution", name) != name:
            continue
        if any(k in NUMERIC and not _is_num(v) for k, v in spec.items()):
            continue
        if ok is not None and not ok(spec):
            continue
        filled = {**optional, **spec, "distribution": name}
        if "min" in filled and not filled["min"] < filled["max"]:
            raise ConfigError(f"parameters.{key}: min {filled['min']} is not less than max {filled['max']}")
        if name == "categorical_w_probabilities" and (len(spec["values"]) != len(spec["probabilities"])
                                                      or not math.isclose(sum(spec["probabilities"]), 1.0)):
            raise ConfigError(f"parameters.{key}: probabilities must match values and sum to 1")
        if "q" in filled and not filled["q"] > 0:
            raise ConfigError(f"parameters.{key}: q {filled['q']} is not > 0")
        return name, filled
    raise ConfigError(f"parameters.{key}: {spec} is no W&B parameter (values, value, min/max, distribution, ...)")


def unnest(params: dict, prefix: tuple = ()) -> list[tuple[tuple, str, dict]]:
    """W&B parameters -> [(path, type, filled spec)] in W&B's order: names sorted at each level, a spec
    with `parameters` opened in place (its values become a section of the run's config)."""
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"parameters{''.join('.' + p for p in prefix)}: expected a non-empty mapping")
    out = []
    for key, spec in sorted(params.items()):
        path = (*prefix, key)
        if isinstance(spec, dict) and "parameters" in spec:
            if set(spec) != {"parameters"}:
                raise ConfigError(f"parameters.{'.'.join(path)}: a section holds only `parameters`")
            out += unnest(spec["parameters"], path)
        else:
            out.append((path, *param_type(spec, ".".join(path))))
    return out


def draw(kind: str, s: dict, rng: np.random.Generator):
    """One draw from a filled spec of W&B type `kind` (the distributions of W&B's random search)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    quant = lambda x: (round(x / s["q"]) * s["q"]) if not _is_int(s["q"]) else int(round(x / s["q"]) * s["q"])  # noqa: E731
    if kind == "constant":
        return s["value"]
    if kind == "categorical":
        return s["values"][int(rng.integers(len(s["values"])))]
    if kind == "categorical_w_probabilities":
        p = np.asarray(s["probabilities"], dtype=float)
        return s["values"][int(rng.choice(len(s["values"]), p=p / p.sum()))]
    if kind == "int_uniform":
        return int(rng.integers(s["min"], s["max"] + 1))
    if kind == "uniform":
        return u(s["min"], s["max"])
    if kind == "q_uniform":
        return quant(u(s["min"], s["max"]))
    if kind in ("log_uniform", "q_log_uniform"):  # min and max are exponents: exp(uniform(min, max))
        x = math.exp(u(s["min"], s["max"]))
        return quant(x) if kind.startswith("q_") else x
    if kind in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(u(math.log(s["min"]), math.log(s["max"])))
        return quant(x) if kind.startswith("q_") else x
    if kind == "inv_log_uniform":
        return math.exp(-u(s["min"], s["max"]))
    if kind == "inv_log_uniform_values":
        return math.exp(-u(-math.log(s["max"]), -math.log(s["min"])))
    if kind in ("normal", "q_normal"):
        x = float(rng.normal(s["mu"], s["sigma"]))
        return quant(x) if kind.startswith("q_") else x
    if kind in ("log_normal", "q_log_normal"):
        x = float(rng.lognormal(s["mu"], s["sigma"]))
        return quant(x) if kind.startswith("q_") else x
    if kind in ("beta", "q_beta"):
        x = float(rng.beta(s["a"], s["b"]))
        return quant(x) if kind.startswith("q_") else x
    raise ConfigError(f"distribution {kind!r} is not known")


def grid_values(path: tuple, kind: str, s: dict) -> list:
    """The values a grid takes for one parameter, as W&B's grid search expands them."""
    if kind == "categorical":
        return list(s["values"])
    if kind == "int_uniform":
        return list(range(s["min"], s["max"] + 1))
    if kind == "q_uniform":  # W&B: numpy.arange(min, max, q), max excluded
        return np.arange(s["min"], s["max"], s["q"]).tolist()
    raise ConfigError(f"parameters.{'.'.join(path)}: a grid sweep takes values, value, int_uniform or q_uniform, "
                      f"not {kind}" + (" (W&B refuses probabilities in a grid)" if "probabilities" in s else ""))


def nest(items: list[tuple[tuple, object]]) -> dict:
    """[(path, value)] -> a run's parameters as W&B passes them: sections become nested dicts."""
    out: dict = {}
    for path, value in items:
        d = out
        for part in path[:-1]:
            d = d.setdefault(part, {})
        d[path[-1]] = value
    return out


def check_sweep(sweep: dict) -> None:
    """Top-level keys: what W&B knows but the local runner cannot do is an error naming the key."""
    if not isinstance(sweep, dict):
        raise ConfigError("sweep: expected a mapping")
    for key in sweep:
        if key in WANDB_ONLY:
            raise ConfigError(f"{key}: needs the W&B sweep server; run this file with `wandb sweep` + `wandb agent`")
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{key}: not a key of a W&B sweep configuration")
    if "run_cap" in sweep and not (_is_int(sweep["run_cap"]) and sweep["run_cap"] > 0):
        raise ConfigError(f"run_cap: {sweep['run_cap']} is not a positive integer")


def expand(sweep: dict, count: int | None = None, seed: int = 0) -> list[dict]:
    """The runs of a sweep, each the nested parameters W&B would give it. grid: every combination, in
    W&B's order (names sorted, the first name varying slowest; int_uniform and q_uniform expanded as W&B
    does), at most run_cap; random: run_cap (or `count`) draws seeded by `seed` (the same
    distributions as W&B, not the same draws)."""
    check_sweep(sweep)
    method = sweep.get("method")
    if method in ("bayes", "custom"):
        raise ConfigError(f"method: {method} needs the W&B sweep server; run it with `wandb sweep FILE` and "
                          "`wandb agent`")
    if method not in ("grid", "random"):
        raise ConfigError(f"method: {method!r} is not grid, random, bayes or custom")
    params = unnest(sweep.get("parameters"))
    cap = count or sweep.get("run_cap")
    if method == "grid":
        fixed = [(p, s["value"]) for p, kind, s in params if kind == "constant"]
        axes = [[(p, v) for v in grid_values(p, kind, s)] for p, kind, s in params if kind != "constant"]
        runs = [nest([*combo, *fixed]) for combo in itertools.product(*axes)]
        return runs[:cap] if cap else runs
    if not cap:
        raise ConfigError("run_cap: a random sweep needs run_cap (or --count)")
    rng = np.random.default_rng(seed)
    return [nest([(p, draw(kind, s, rng)) for p, kind, s in params]) for _ in range(cap)]


def agent_args(run: dict) -> list[str]:
    """`${args_no_hyphens}` as `wandb agent` writes it: one `name=value` per top-level parameter, with
    Python's str() of the value (a section: `train={'lr': 0.001}`)."""
    return [f"{k}={v}" for k, v in run.items()]


def base_command(sweep: dict, path: Path | None = None) -> list[str]:
    """The config file and fixed arguments from the sweep's `command` (what precedes the sweep's args);
    with the sweep file's `path`, its config files as absolute paths (`config_path`)."""
    cmd = sweep.get("command")
    if not isinstance(cmd, list) or "train" not in cmd or "${args_no_hyphens}" not in cmd:
        raise ConfigError("command: must run `python -m lab train CONFIG ... ${args_no_hyphens}` (W&B's default "
                          "command passes --key=value, which the lab does not read)")
    args = [c for c in cmd[cmd.index("train") + 1 :] if not c.startswith("${")]
    return [config_path(a, path) if path is not None else a for a in args]


def config_path(arg: str, sweep_file: Path) -> str:
    """A config file the sweep's command names, as the sweep file means it, whatever the working directory:
    absolute, or relative to the sweep file's folder or a folder above it (configs/sweeps/grokking.yaml
    names configs/grokking.yaml: the repository's). Other arguments as they are."""
    if "=" in arg or not arg.endswith((".yaml", ".yml")) or Path(arg).is_absolute():
        return arg
    here = sweep_file.resolve().parent
    for base in (here, *here.parents):
        if (base / arg).is_file():
            return str(base / arg)
    raise ConfigError(f"command: {arg} is neither beside {sweep_file} nor in a folder above it")


def last_wins(args: list[str]) -> list[str]:
    """The command's arguments with each key=value key once, at its last value (what is added to every
    run replaces the sweep command's own setting; `lab train` refuses a key given twice)."""
    last = {a.split("=", 1)[0]: i for i, a in enumerate(args) if "=" in a}
    return [a for i, a in enumerate(args) if "=" not in a or last[a.split("=", 1)[0]] == i]


def run_name(i: int, params: dict) -> str:
    short = "-".join(f"{k.split('.')[-1]}_{_fmt(v)}" for k, v in flatten(params).items())
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
        raise RunError(f"sweep: {path} does not exist")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep: {yaml_error(path, e)}") from None
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: {path} is not a sweep (a mapping with name, method, parameters, command)")
    name = sweep_name(path)
    runs = expand(sweep, count, seed)
    base = base_command(sweep, path)
    sweep_dir = Path(root) / name
    log = sweep_dir / "sweep.jsonl"

    def one(i: int, params: dict) -> dict:
        run = run_name(i, params)
        run_dir = sweep_dir / run
        state = status(run_dir)
        record = {"run": run, "params": params}
        if state == "finished":
            return {**record, "status": "skipped (finished)"}
        args = [*base, *agent_args(params), *extra, f"log.dir={sweep_dir}",
                f"log.name={run}", f"log.group={name}", "log.progress_bar=false"]
        if "project" in sweep:  # where wandb agent's runs would go
            args.append(f"log.project={sweep['project']}")
        if state == "interrupted":
            args.append(f"train.resume={run_dir}")
        elif run_dir.exists() and not dry_run:  # a run that failed before its first checkpoint: kept aside
            run_dir.rename(run_dir.with_name(f"{run}.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
        cmd = [sys.executable, "-m", "lab", "train", *last_wins(args)]
        if dry_run:
            return {**record, "status": "would run", "command": shlex.join(cmd)}
        t0 = time.time()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / f"{run}.log", "w") as out:
            env = {**os.environ, **({"WANDB_ENTITY": str(sweep["entity"])} if "entity" in sweep else {})}
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        outcome = ("finished" if code == 0 else f"interrupted (exit {code})" if code in (130, 143)  # a signal
                   else f"failed (exit {code})")
        result = {**record, "status": outcome,
                  "seconds": round(time.time() - t0, 1)}
        if code != 0:
            tail = (sweep_dir / f"{run}.log").read_text().strip().splitlines()[-1:]
            result["error"] = tail[0] if tail else ""
        with open(log, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"[{name}] {run}: {result['status']} ({result['seconds']} s)", flush=True)
        return result

    if dry_run:
        return [one(i, params) for i, params in enumerate(runs)]
    from lab.loggers import check_writable_dir
    from lab.run import RunLock  # one writer per sweep directory, as per run directory

    check_writable_dir(sweep_dir, "--dir")
    lock = RunLock(sweep_dir)
    lock.acquire("sweep")
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(lambda a: one(*a), enumerate(runs)))
    finally:
        lock.release()
