"""Typed configuration: dataclasses, merged with a YAML file and dotted `key=value` overrides.

    cfg = load("configs/addition.yaml", ["model.n_layer=4", "train.lr=2e-3"])

Every field has a type and a docstring (the string under it), which `python -m lab train --help` prints
with its default and choices. The `task` section is the chosen task's own dataclass (a subclass of
`lab.tasks.TaskConfig` that the task's module registers): an option of another task is an unknown key.
This module assembles: it imports the task registry and the model presets (`PRESETS`), and nothing
below it imports it back. An unknown key, a value of the wrong type or an impossible value raises `ConfigError`,
whose message names the key; the CLI prints it on one line and exits with code 2 before anything is
written. Overrides may also be sections, as `wandb agent` passes nested sweep parameters:
`model={'preset': 'gpt-nano'}` sets model.preset and leaves the rest of the section alone.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lab.errors import ConfigError, check
from lab.tasks import TASKS, TaskConfig

# name -> (n_layer, n_head, n_embd); gpt-mini is the reference implementation's model
PRESETS = {
    "gpt-mini": (6, 6, 192),
    "gpt-micro": (4, 4, 128),
    "gpt-nano": (3, 3, 48),
    "grok": (2, 4, 128),  # Power et al. 2022
    "grok-1l": (1, 4, 128),  # Nanda et al. 2023 (with LayerNorm, unlike theirs)
}


@dataclass
class ModelConfig:
    preset: Literal[tuple(PRESETS)] = "gpt-micro"
    """Model sizes by name (n_layer, n_head, n_embd: gpt-mini 6, 6, 192 (the reference's); gpt-micro 4, 4,
    128; gpt-nano 3, 3, 48; grok 2, 4, 128 (Power et al.); grok-1l 1, 4, 128); the fields below override
    it."""
    n_layer: int | None = None
    """Transformer blocks (None: the preset's)."""
    n_head: int | None = None
    """Attention heads per block (None: the preset's); must divide n_embd."""
    n_embd: int | None = None
    """Width of the residual stream (None: the preset's)."""
    dropout: float = 0.0
    """Dropout in training; the bits come from a no-dropout forward (lab.bits)."""
    bias: bool = True
    """Biases in the linear layers and LayerNorms."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys (a learned gain per channel) before their product."""
    position: str = "absolute"
    """absolute (learned per position), coupled (a learned embedding per digit significance), rotary
    (rotary embeddings of the significance), or several joined by '+'; coupled and rotary need a task
    with digit significance."""

    @property
    def positions(self) -> list[str]:
        """"absolute+rotary" -> ["absolute", "rotary"]."""
        return self.position.split("+")

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd): the preset's, with the fields that are set."""
        n_layer, n_head, n_embd = PRESETS[self.preset]
        return self.n_layer or n_layer, self.n_head or n_head, self.n_embd or n_embd


@dataclass
class TrainConfig:
    batch_size: int = 256
    """Global batch; 0 = the whole train split (table tasks)."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW for every parameter; muon: torch.optim.Muon for the blocks' weight matrices (their update
    matched to AdamW's RMS), AdamW for embeddings, head, biases and norms (lab/optim.py)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    muon_lr: float | None = None
    """muon: peak learning rate of the Muon matrices (None: lr)."""
    muon_momentum: float = 0.95
    """muon: Muon's (Nesterov) momentum."""
    muon_ns_steps: int = 5
    """muon: Newton-Schulz iterations that orthogonalise each update (torch's default, 5); each costs
    4 s^2 l + 2 s^3 FLOPs on an s x l matrix (s <= l)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW's (beta1, beta2)."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    warmup_steps: int = 10
    """Linear warm-up from 0 to lr."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning rate after the warm-up."""
    decay_steps: int | None = None
    """cosine: steps to reach min_lr_ratio * lr (None: max_steps)."""
    min_lr_ratio: float = 0.1
    """cosine: the final learning rate as a fraction of lr."""
    grad_clip: float = 0.0
    """Clip the gradient's global norm to this (0 = off)."""
    grokfast_lambda: float = 0.0
    """Grokfast-EMA gradient filter strength (0 = off; Lee et al. 2024 use 2-5)."""
    grokfast_alpha: float = 0.98
    """Grokfast-EMA decay."""
    max_steps: int = 20_000
    """Steps at most (the run usually stops earlier, at stop_at)."""
    eval_every: int = 250
    """Steps between held-out evaluations."""
    eval_batch_size: int = 1000
    """Rows per evaluation batch."""
    stop_at: float | None = 0.99
    """Stop when stop_metric reaches this (None: run to max_steps)."""
    stop_metric: str = "val/exact_match"
    """What stop_at watches: one of the chosen task's evaluation shares (`python -m lab tasks` lists
    them): held-out exact match, its clean labels (label noise), the train split's (tables), or a task's
    own (addition: val/rule, the lower of held-out exact match and every carry-chain length's)."""
    precision: str = "32"
    """32 (float32) or bf16 (bf16-mixed)."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """Where to train."""
    devices: int = 1
    """Processes on this machine; > 1 runs DDP with the global batch split over them."""
    num_nodes: int = 1
    """Machines; > 1 runs DDP over devices x num_nodes processes, one `python -m lab train` started on each
    node by torchrun or SLURM's srun (Lightning reads their environment; docs/cluster.md). Needs log.name
    (or train.resume): the run directory every node shares."""
    checkpoint_every: int = 1000
    """Steps between periodic checkpoints (last.ckpt is also written at every stop)."""
    keep_checkpoints: int = 3
    """Periodic checkpoints kept besides last.ckpt."""
    resume: str | None = None
    """A run directory or .ckpt file to continue from."""


@dataclass
class LogConfig:
    dir: str = "runs"
    """Where run directories go."""
    name: str | None = None
    """Run directory name (None: <config stem>-<date>-<time>)."""
    every: int = 25
    """Steps between metric rows."""
    wandb: bool = True
    """Log to wandb (offline unless WANDB_MODE says otherwise or wandb is logged in)."""
    project: str = "compression-lab"
    """wandb project."""
    group: str | None = None
    """wandb group (None: the run's name)."""
    progress_bar: bool = True
    """Show the progress bar (on a terminal; a log file gets the one line per evaluation alone)."""
    verbose: bool = False
    """Also print Lightning's own messages (accelerators found, why fit stopped)."""


@dataclass
class Config:
    seed: int = 0
    """Seeds the data (held-out set, stream, split), the weights and the dropout masks."""
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _sources(path: str | Path | None, overrides: list[str], base: dict | None) -> list:
    """The layers to merge over the defaults, in order: `base`, the YAML file, each override."""
    layers = []
    if base is not None:
        layers.append(OmegaConf.create(base))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file: {path} does not exist")
        try:
            layer = OmegaConf.load(path)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file: {yaml_error(path, e)}") from None
        if not layer:
            raise ConfigError(f"config file: {path} is empty (no key set); give the keys it should change")
        layers.append(layer)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides are written key=value")
        key, value = item.split("=", 1)
        section = _python_dict(value)
        if section is not None:  # a section as `wandb agent` writes it: train={'lr': 0.001, 'stop_at': None}
            for part in reversed(key.split(".")):
                section = {part: section}
            layers.append(OmegaConf.create(section))
        else:
            layers.append(OmegaConf.from_dotlist([f"{key}=null" if value == "None" else item]))
    return layers


def yaml_error(path: str | Path, e: yaml.YAMLError) -> str:
    """"PATH line N: what is wrong" of a YAML syntax error or duplicate key."""
    mark = getattr(e, "problem_mark", None)
    return f"{path}{f' line {mark.line + 1}' if mark is not None else ''}: {getattr(e, 'problem', None) or e}"


def _python_dict(text: str) -> dict | None:
    """"{'lr': 0.001, 'stop_at': None}" (Python's str of a dict) -> the dict; anything else -> None."""
    if not text.startswith("{"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def load(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults <- `base` (a dict, e.g. a saved config) <- YAML file <- overrides; type-checked, validated."""
    try:
        layers = _sources(path, overrides, base)
        name = OmegaConf.select(OmegaConf.merge(*layers) if layers else OmegaConf.create(), "task.name",
                                default=TaskConfig.name)
        check(name in TASKS, "task.name", f"unknown task {name!r}; choose from {sorted(TASKS)}")
        cfg = OmegaConf.structured(Config(task=TASKS[name].Config()))
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
        obj: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None
    validate(obj)
    return obj


def check_once(overrides: list[str]) -> None:
    """A command line names each key once (in Python, a later override of the same key wins)."""
    seen: set[str] = set()
    for item in overrides:
        key = item.split("=", 1)[0]
        check(key not in seen, key, "given twice on the command line")
        seen.add(key)


def from_dict(d: dict) -> Config:
    return load(None, (), base=d)


# a run's config.yaml from before tasks had their own options held every task's keys at these values
_FLAT_TASK_DEFAULTS = {"n_digits": 8, "leading_zeros": False, "reverse_answer": False, "n_heldout": 2000,
                       "n_chain": 200, "chain_prob": 0.0, "op": "", "p": 97, "train_fraction": 0.3}


def load_saved(path: str | Path, overrides: list[str] = ()) -> Config:
    """A run's saved config.yaml (to resume it), with overrides. A config saved before each task had its
    own options lists every task's keys: those another task owns, at their old defaults, are dropped,
    and the old `op: ''` means the task's default operation."""
    d = OmegaConf.to_container(OmegaConf.load(path))
    task = d.get("task", {})
    cls = TASKS.get(task.get("name", TaskConfig.name))
    if cls is not None:
        own = {f.name for f in fields(cls.Config)}
        for key, old in _FLAT_TASK_DEFAULTS.items():
            if key in task and key not in own and task[key] == old:
                del task[key]
        if task.get("op") == "" and "op" in own:
            task["op"] = cls.Config().op
    return load(None, overrides, base=d)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested sections -> {dotted key: value}: {"train": {"lr": 0.001}} -> {"train.lr": 0.001}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def validate(cfg: Config) -> None:
    """Impossible values, each reported with its key."""
    t, m, tr, lg = cfg.task, cfg.model, cfg.train, cfg.log
    task = TASKS[t.name]
    for section in ("task", "model", "train", "log"):  # inf and nan are never a setting
        obj = getattr(cfg, section)
        for f in fields(obj):
            values = getattr(obj, f.name)
            for v in values if isinstance(values, list) else [values]:
                check(not isinstance(v, float) or math.isfinite(v), f"{section}.{f.name}",
                      f"{v} is not a finite number")
    check(0 <= cfg.seed < 2**32, "seed", f"{cfg.seed} is not in [0, 2^32)")
    t.validate()

    for key in ("n_layer", "n_head", "n_embd"):
        v = getattr(m, key)
        check(v is None or v >= 1, f"model.{key}", f"{v} is not >= 1")
    _, n_head, n_embd = m.sizes
    check(n_embd % n_head == 0, "model.n_embd", f"{n_embd} is not divisible by model.n_head={n_head}")
    check(0 <= m.dropout < 1, "model.dropout", f"{m.dropout} is not in [0, 1)")
    parts = m.positions
    check(bool(parts) and set(parts) <= {"absolute", "coupled", "rotary"} and len(set(parts)) == len(parts),
          "model.position", f"{m.position!r} is not absolute, coupled or rotary, or several joined by '+'")
    check(parts == ["absolute"] or task.significance, "model.position",
          f"coupled and rotary positions need digits of known significance; task {t.name!r} has none")
    check("rotary" not in parts or (n_embd // n_head) % 2 == 0, "model.position",
          f"rotary needs an even head size; n_embd / n_head = {n_embd // n_head}")

    check(tr.batch_size >= 0, "train.batch_size", f"{tr.batch_size} is negative")
    check(tr.batch_size > 0 or task.is_table, "train.batch_size", "0 (whole train split) needs a table task")
    check(tr.lr >= 0, "train.lr", f"{tr.lr} is negative")
    check(tr.muon_lr is None or tr.muon_lr >= 0, "train.muon_lr", f"{tr.muon_lr} is negative")
    check(0 <= tr.muon_momentum < 1, "train.muon_momentum", f"{tr.muon_momentum} is not in [0, 1)")
    check(tr.muon_ns_steps >= 1, "train.muon_ns_steps", f"{tr.muon_ns_steps} is not at least 1")
    check(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), "train.betas",
          f"{tr.betas} is not two numbers in [0, 1)")
    check(tr.weight_decay >= 0, "train.weight_decay", f"{tr.weight_decay} is negative")
    check(0 <= tr.min_lr_ratio <= 1, "train.min_lr_ratio", f"{tr.min_lr_ratio} is not in [0, 1]")
    for key in ("warmup_steps", "max_steps", "eval_every", "eval_batch_size", "checkpoint_every",
                "devices", "num_nodes", "threads", "keep_checkpoints"):
        v = getattr(tr, key)
        low = 0 if key in ("warmup_steps", "threads", "keep_checkpoints") else 1
        check(v >= low, f"train.{key}", f"{v} is not >= {low}")
    check(tr.decay_steps is None or tr.decay_steps >= 1, "train.decay_steps", f"{tr.decay_steps} is not >= 1")
    check(tr.grad_clip >= 0, "train.grad_clip", f"{tr.grad_clip} is negative")
    check(tr.grokfast_lambda >= 0, "train.grokfast_lambda", f"{tr.grokfast_lambda} is negative")
    check(0 <= tr.grokfast_alpha < 1, "train.grokfast_alpha", f"{tr.grokfast_alpha} is not in [0, 1)")
    check(tr.stop_at is None or 0 < tr.stop_at <= 1, "train.stop_at", f"{tr.stop_at} is not in (0, 1]")
    metrics = task.metric_names(t)
    check(tr.stop_metric in metrics, "train.stop_metric",
          f"{tr.stop_metric!r} is not a metric of task {t.name!r} with these options; choose from {metrics}")
    check(tr.precision in ("32", "bf16"), "train.precision", f"{tr.precision!r} is not '32' or 'bf16'")
    world = tr.devices * tr.num_nodes
    check(tr.batch_size == 0 or tr.batch_size >= world, "train.batch_size",
          f"{tr.batch_size} is smaller than the {world} processes (train.devices x train.num_nodes)")
    check(tr.num_nodes == 1 or lg.name is not None or tr.resume is not None, "log.name",
          "a run on several nodes needs a name every node knows (log.name=..., e.g. the job's name and id)")
    if tr.resume is not None:
        check(Path(tr.resume).exists(), "train.resume", f"{tr.resume} does not exist")
    check(lg.every >= 1, "log.every", f"{lg.every} is not >= 1")


def diff(a: Config, b: Config, sections: tuple[str, ...] = ("seed", "task", "model")) -> list[str]:
    """Dotted keys whose values differ between two configs, within the given sections."""
    out = []
    for name in sections:
        va, vb = getattr(a, name), getattr(b, name)
        if is_dataclass(va) and type(va) is not type(vb):
            out.append(f"{name}.name")
        elif is_dataclass(va):
            out += [f"{name}.{f.name}" for f in fields(va) if getattr(va, f.name) != getattr(vb, f.name)]
        elif va != vb:
            out.append(name)
    return out


# -- documentation ------------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} of a dataclass, from the string literal under each field (its bases' too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, "type = default", doc) for every field of a config dataclass, sections expanded."""
    docs, hints, obj = field_docs(cls), typing.get_type_hints(cls), cls()
    rows = []
    for f in fields(cls):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            rows += describe(type(value), f"{prefix}{f.name}.")
            continue
        hint = hints[f.name]
        kind = _type_name(hint)
        default = value if f.default is not MISSING or f.default_factory is not MISSING else "?"
        rows.append((prefix + f.name, f"{kind} = {default}", docs.get(f.name, "")))
    return rows


def _type_name(hint) -> str:
    """int, int | None, list[float], or the choices of a Literal: "auto | all | answer"."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, args))
    if type(None) in args:
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " | None"
    if args:
        return f"{typing.get_origin(hint).__name__}[{', '.join(map(_type_name, args))}]"
    return getattr(hint, "__name__", str(hint))


def help_text() -> str:
    """Every config key with its type or choices, default and docstring; the task options per task."""
    def block(rows: list[tuple[str, str, str]]) -> list[str]:
        width = max(len(k) for k, _, _ in rows)
        out = []
        for key, kind, doc in rows:
            out.append(f"  {key:<{width}}  {kind}")
            out += [f"  {'':<{width}}    {line}" for line in textwrap.wrap(doc, 90)]
        return out

    common = {f.name for f in fields(TaskConfig)}
    lines = ["config keys (YAML or key=value; a section may be given as section={key: value}):", ""]
    lines += block([r for r in describe(Config) if not r[0].startswith("task.") or r[0][5:] in common])
    for name, task in sorted(TASKS.items()):
        own = [r for r in describe(task.Config, "task.") if r[0][5:] not in common]
        lines += ["", f"task.name={name}: {task.summary()}"] + (block(own) if own else ["  (no options)"])
        lines.append(f"  train.stop_metric: {' | '.join(task.metric_names(task.Config()))} (at the defaults)")
    return "\n".join(lines)
