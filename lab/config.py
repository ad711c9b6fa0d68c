"""Typed configuration: dataclasses, merged with a YAML file and dotted `key=value` overrides.

    cfg = load("configs/addition.yaml", ["model.n_layer=4", "train.lr=2e-3"])

An unknown key, a value of the wrong type or an impossible value raises `ConfigError`, whose message
names the key; the CLI prints it on one line and exits with code 2 before anything is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration; the message starts with the offending key."""


@dataclass
class TaskConfig:
    name: str = "addition"  # addition | modular | permutation
    loss_on: str = "auto"  # all | answer | auto (addition: all, as the reference; modular: answer)
    label_noise: float = 0.0  # the answer replaced by a uniformly drawn wrong one w.p. label_noise
    # addition
    n_digits: int = 8
    leading_zeros: bool = False  # operands on [0, 10^n - 1] instead of [10^(n-1), 10^n - 1]
    reverse_answer: bool = False  # write the sum least significant digit first
    n_heldout: int = 2000
    n_chain: int = 200  # per carry-chain length 0..n-1: sums for the rule's evaluation (val/chain_exact/<k>)
    chain_prob: float = 0.0  # training stream: each pair below the leading one sums to 9 w.p. this (0: uniform)
    # modular and permutation (S5)
    op: str = ""  # "" = x+y (modular), x*y (permutation)
    p: int = 97  # modular only
    train_fraction: float = 0.3


@dataclass
class ModelConfig:
    preset: str = "gpt-micro"  # see lab.model.PRESETS; explicit sizes below override it
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float = 0.0
    bias: bool = True
    # absolute (learned per position) | coupled (a learned embedding shared by the positions that handle
    # digits of equal significance) | rotary (rotary embeddings of those significance ids): joined by "+"
    position: str = "absolute"

    @property
    def positions(self) -> list[str]:
        """"absolute+rotary" -> ["absolute", "rotary"]."""
        return self.position.split("+")


@dataclass
class TrainConfig:
    batch_size: int = 256  # global batch; 0 = the whole train split (finite tasks)
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.01
    warmup_steps: int = 10
    schedule: str = "constant"  # constant | cosine
    decay_steps: int | None = None  # cosine: steps to reach min_lr_ratio * lr (default max_steps)
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    grokfast_lambda: float = 0.0  # Grokfast-EMA gradient filter: 0 = off (Lee et al. 2024 use 2-5)
    grokfast_alpha: float = 0.98
    max_steps: int = 20_000
    eval_every: int = 250  # steps between held-out evaluations
    eval_batch_size: int = 1000
    stop_at: float | None = 0.99  # stop when stop_metric reaches this (None: never)
    stop_metric: str = "val/exact_match"  # or val/clean_exact_match (label noise), train/exact_match,
    # val/chain_exact_min (addition: every carry-chain length)
    precision: str = "32"  # 32 | bf16
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # >1: DDP, the global batch is split over the processes
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # periodic checkpoints kept besides last.ckpt
    resume: str | None = None  # run directory or .ckpt file to continue from


@dataclass
class LogConfig:
    dir: str = "runs"
    name: str | None = None  # run directory name; default: <config stem>-<date>-<time>
    every: int = 25  # steps between metric rows
    wandb: bool = True  # offline unless WANDB_MODE says otherwise or wandb is logged in
    project: str = "compression-lab"
    group: str | None = None
    progress_bar: bool = True


@dataclass
class Config:
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# keys that belong to one task only: setting them for another task is an error, not a silent no-op
TASK_KEYS = {
    "addition": {"n_digits", "leading_zeros", "reverse_answer", "n_heldout", "n_chain", "chain_prob"},
    "modular": {"op", "p", "train_fraction"},
    "permutation": {"op", "train_fraction"},
}


def load(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults <- `base` (a dict, e.g. a saved config) <- YAML file <- overrides; type-checked, validated."""
    try:
        cfg = OmegaConf.structured(Config)
        if base is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(base))
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file: {path} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"{item}: overrides are written key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        obj: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None
    validate(obj)
    return obj


def from_dict(d: dict) -> Config:
    return load(None, (), base=d)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> None:
    """Impossible values, each reported with its key."""
    from lab.model import PRESETS
    from lab.tasks import TASKS
    from lab.tasks.modular import DIVIDES, OPS, is_prime
    from lab.tasks.permutation import OPS as PERM_OPS

    t, m, tr, lg = cfg.task, cfg.model, cfg.train, cfg.log
    _check(t.name in TASKS, "task.name", f"unknown task {t.name!r}; choose from {sorted(TASKS)}")
    defaults = TaskConfig()
    for key in set().union(*TASK_KEYS.values()) - TASK_KEYS[t.name]:
        _check(getattr(t, key) == getattr(defaults, key), f"task.{key}", f"does not apply to task {t.name!r}")
    _check(t.loss_on in ("auto", "all", "answer"), "task.loss_on", f"{t.loss_on!r} is not auto, all or answer")
    _check(0 <= t.label_noise < 1, "task.label_noise", f"{t.label_noise} is not in [0, 1)")
    if t.name == "addition":
        _check(1 <= t.n_digits <= 18, "task.n_digits", f"{t.n_digits} is not in 1..18")
        lo = 0 if t.leading_zeros else 10 ** (t.n_digits - 1)
        pairs = (10**t.n_digits - lo) ** 2
        _check(t.n_heldout >= 0, "task.n_heldout", f"{t.n_heldout} is negative")
        _check(t.n_chain >= 0, "task.n_chain", f"{t.n_chain} is negative")
        _check(0 <= t.chain_prob < 1, "task.chain_prob", f"{t.chain_prob} is not in [0, 1)")
        _check(t.n_heldout <= pairs // 2, "task.n_heldout",
               f"{t.n_heldout} is more than half of the {pairs} operand pairs")
    if t.name == "permutation":
        _check(t.op in ("", *PERM_OPS), "task.op", f"unknown operation {t.op!r}; choose from {list(PERM_OPS)}")
        _check(0 < t.train_fraction < 1, "task.train_fraction", f"{t.train_fraction} is not in (0, 1)")
    if t.name == "modular":
        _check(t.op in ("", *OPS), "task.op", f"unknown operation {t.op!r}; choose from {list(OPS)}")
        _check(t.p >= 2, "task.p", f"{t.p} is not a modulus >= 2")
        if t.op in DIVIDES:
            _check(is_prime(t.p), "task.p", f"{t.p} is not prime; {t.op} needs inverses mod p")
        _check(0 < t.train_fraction < 1, "task.train_fraction", f"{t.train_fraction} is not in (0, 1)")
        n = t.p * (t.p - 1 if OPS[t.op or "x+y"][1] else t.p)
        _check(1 <= round(t.train_fraction * n) < n, "task.train_fraction",
               f"{t.train_fraction} leaves an empty split of the {n} examples")

    _check(m.preset in PRESETS, "model.preset", f"unknown preset {m.preset!r}; choose from {list(PRESETS)}")
    for key in ("n_layer", "n_head", "n_embd"):
        v = getattr(m, key)
        _check(v is None or v >= 1, f"model.{key}", f"{v} is not >= 1")
    _check(0 <= m.dropout < 1, "model.dropout", f"{m.dropout} is not in [0, 1)")
    parts = m.positions
    _check(bool(parts) and set(parts) <= {"absolute", "coupled", "rotary"} and len(set(parts)) == len(parts),
           "model.position", f"{m.position!r} is not absolute, coupled or rotary, or several joined by '+'")
    _check(parts == ["absolute"] or t.name == "addition", "model.position",
           f"coupled and rotary positions need digits of known significance; task {t.name!r} has none")

    _check(tr.batch_size >= 0, "train.batch_size", f"{tr.batch_size} is negative")
    _check(tr.batch_size > 0 or t.name != "addition", "train.batch_size",
           "0 (whole train split) needs a finite task")
    _check(tr.lr >= 0, "train.lr", f"{tr.lr} is negative")
    _check(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), "train.betas",
           f"{tr.betas} is not two numbers in [0, 1)")
    _check(tr.weight_decay >= 0, "train.weight_decay", f"{tr.weight_decay} is negative")
    _check(tr.schedule in ("constant", "cosine"), "train.schedule", f"{tr.schedule!r} is not constant/cosine")
    _check(0 <= tr.min_lr_ratio <= 1, "train.min_lr_ratio", f"{tr.min_lr_ratio} is not in [0, 1]")
    for key in ("warmup_steps", "max_steps", "eval_every", "eval_batch_size", "checkpoint_every",
                "devices", "threads", "keep_checkpoints"):
        v = getattr(tr, key)
        low = 0 if key in ("warmup_steps", "threads", "keep_checkpoints") else 1
        _check(v >= low, f"train.{key}", f"{v} is not >= {low}")
    _check(tr.decay_steps is None or tr.decay_steps >= 1, "train.decay_steps", f"{tr.decay_steps} is not >= 1")
    _check(tr.grad_clip >= 0, "train.grad_clip", f"{tr.grad_clip} is negative")
    _check(tr.grokfast_lambda >= 0, "train.grokfast_lambda", f"{tr.grokfast_lambda} is negative")
    _check(0 <= tr.grokfast_alpha < 1, "train.grokfast_alpha", f"{tr.grokfast_alpha} is not in [0, 1)")
    _check(tr.stop_at is None or 0 < tr.stop_at <= 1, "train.stop_at", f"{tr.stop_at} is not in (0, 1]")
    stop_metrics = ("val/exact_match", "val/clean_exact_match", "train/exact_match", "val/chain_exact_min")
    _check(tr.stop_metric in stop_metrics, "train.stop_metric", f"{tr.stop_metric!r} is not one of {stop_metrics}")
    _check(tr.precision in ("32", "bf16"), "train.precision", f"{tr.precision!r} is not '32' or 'bf16'")
    _check(tr.accelerator in ("auto", "cpu", "gpu"), "train.accelerator",
           f"{tr.accelerator!r} is not auto, cpu or gpu")
    _check(tr.batch_size == 0 or tr.batch_size >= tr.devices, "train.batch_size",
           f"{tr.batch_size} is smaller than train.devices={tr.devices}")
    if tr.resume is not None:
        _check(Path(tr.resume).exists(), "train.resume", f"{tr.resume} does not exist")
    _check(lg.every >= 1, "log.every", f"{lg.every} is not >= 1")


def diff(a: Config, b: Config, sections: tuple[str, ...] = ("seed", "task", "model")) -> list[str]:
    """Dotted keys whose values differ between two configs, within the given sections."""
    out = []
    for name in sections:
        va, vb = getattr(a, name), getattr(b, name)
        if hasattr(va, "__dataclass_fields__"):
            out += [f"{name}.{f.name}" for f in fields(va) if getattr(va, f.name) != getattr(vb, f.name)]
        elif va != vb:
            out.append(name)
    return out
