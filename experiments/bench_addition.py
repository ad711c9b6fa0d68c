"""How fast does a config learn 8-digit addition? Trains it for a wall-clock budget and prints one table.

    python experiments/bench_addition.py                              # configs/addition.yaml, seed 0, 15 min
    python experiments/bench_addition.py --seeds 0 1 2 --budget 900   # the default on 3 seeds
    python experiments/bench_addition.py configs/addition.yaml model.position=absolute --label no-coupling
    python experiments/bench_addition.py --vs-raw --steps 60          # Lightning + callbacks vs a raw loop

Learning mode: one full run per seed (`lab.run`, every callback the lab uses, bits included; no
progress bar or wandb), stopping at the config's stop rule or at the budget (`--rule` stops at the rule
instead: 99% exact match on held-out sums and on every carry-chain length, `val/rule`). Per seed it
prints examples/s and tokens/s (training only: evaluation time excluded), then for 50%, 90% and 99%
held-out exact match (greedy generation, checked every `train.eval_every` steps) and for the rule: the
examples and the wall seconds (evaluations included) at the first evaluation that reached it, and the
epistemic bits spent by then; finally the last windowed bits/example against the floor and the
epistemic bits of the whole run, the FLOP/s fraction (below) and the evaluations' share of the wall
time (the whole run's, the last evaluation included; each evaluation's seconds follow the row). When
the run stops at the rule it also prints the chance that one evaluation of a model right 99.5% (99%)
of the time on every kind of sum passes the config's stop rule.
`--append FILE` adds the rows to a markdown results file.

Every mode also prints the machine's own matrix-multiply throughput on the model's shapes (each matmul
of a training step, forward and backward, timed alone in the same process, the best of 5 timings) and
the training's achieved FLOP/s as a fraction of it: a figure that carries across machines, unlike wall
seconds.

--vs-raw mode: the same model, data and training step (`LabModule.step`) as a plain PyTorch loop, against
the lab's Lightning run with its callbacks (bits, checkpoints, report; no evaluation in the window); steps
per second over the same steady-state window, alternating the two `--repeat` times; the medians and
their ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

from lab.bits import PrequentialCode  # noqa: E402
from lab.build import build  # noqa: E402
from lab.config import Config, load  # noqa: E402
from lab.loggers import read_metrics  # noqa: E402
from lab.run import train  # noqa: E402

LEVELS = (0.5, 0.9, 0.99)
RULE = 0.99  # the rule: exact match on held-out sums and on every carry-chain length (val/rule)


# -- FLOP/s ---------------------------------------------------------------------------------------------
def matmuls(model: torch.nn.Module, batch: int, T: int) -> list[tuple[int, int, int, int]]:
    """(count, M, K, N) of the matrix multiplies one training step's forward makes: every linear layer
    on the B*T rows, and attention's scores and mixing as (B*h) batched (T, d) x (d, T), (T, T) x (T, d)."""
    out = [(1, batch * T, m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    cfg = model.cfg
    d = cfg.n_embd // cfg.n_head
    out += [(cfg.n_layer * batch * cfg.n_head, T, d, T), (cfg.n_layer * batch * cfg.n_head, T, T, d)]
    return out


def train_flops(model: torch.nn.Module, batch: int, T: int) -> float:
    """FLOPs of one training step: 2 M K N per multiply forward, twice that backward (input and weight)."""
    return sum(6.0 * c * m * k * n for c, m, k, n in matmuls(model, batch, T))


def machine_flops(model: torch.nn.Module, batch: int, T: int, repeats: int = 5) -> tuple[float, float]:
    """(FLOP/s of this machine on the model's own multiplies, each with its two backward multiplies, timed
    alone; FLOP/s of a 2048-square multiply), in float32, in this process (same threads). Each is the best
    of `repeats` timings: the machine's own speed, which another load on a shared host can only lower (a
    mean of 5 read 89-155 GFLOP/s after ten runs that all trained at 81-89)."""
    def seconds(a: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> float:
        def once() -> None:
            a @ w, g @ w.transpose(-1, -2), a.transpose(-1, -2) @ g  # forward, grad input, grad weight
        once()  # warm
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            once()
            best = min(best, time.perf_counter() - t0)
        return best

    flops = time_ = 0.0
    for count, m, k, n in matmuls(model, batch, T):
        time_ += seconds(torch.randn(count, m, k), torch.randn(count, k, n), torch.randn(count, m, n))
        flops += 6.0 * count * m * k * n
    big = torch.randn(2048, 2048)
    square = 3 * 2 * 2048**3 / seconds(big, big, big)  # three multiplies per call
    return flops / time_, square


def flops_line(model: torch.nn.Module, batch: int, T: int, steps_per_second: float) -> tuple[str, float]:
    """(the line, the FLOP/s fraction)."""
    achieved = train_flops(model, batch, T) * steps_per_second
    peak, square = machine_flops(model, batch, T)
    return (f"training {achieved / 1e9:.1f} GFLOP/s ({train_flops(model, batch, T) / batch / 1e6:.1f} MFLOP per "
            f"example) = {achieved / peak:.2f} of this machine's {peak / 1e9:.1f} GFLOP/s on the model's own "
            f"multiplies (2048-square: {square / 1e9:.1f} GFLOP/s)"), achieved / peak


class Clock(L.Callback):
    """Wall time, training-only time and, at every evaluation, (examples, seconds, exact match, epistemic
    bits); stops the run at the budget. `marks` and `step_times` are what the tables are made of."""

    def __init__(self, budget: float | None = None):
        self.budget = budget
        self.marks: list[dict] = []
        self.step_times: list[float] = []  # perf_counter at the end of each training step
        self.eval_seconds = 0.0
        self.evals: list[tuple[float, float]] = []  # (start, end) perf_counter of each evaluation

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_times.append(time.perf_counter())
        if self.budget is not None and time.perf_counter() - self.t0 > self.budget:
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        self.eval_seconds += now - self._v0
        self.evals.append((self._v0, now))
        bits = next(c for c in trainer.callbacks if isinstance(c, PrequentialCode)).totals()
        self.marks.append({
            "step": trainer.global_step, "examples": pl_module.examples_seen, "seconds": now - self.t0,
            "eval_seconds": now - self._v0,
            "exact": pl_module.last_eval.get("val/exact_match", 0.0), "epistemic": bits["bits/epistemic"],
            "rule": pl_module.last_eval.get("val/rule", math.nan),
        })


def learn(cfg: Config, budget: float, name: str) -> dict:
    """One run to 99% or the budget -> the figures of one table row."""
    clock = Clock(budget)
    res = train(cfg, name, extra_callbacks=[clock])
    t = clock.step_times
    wall = max([t[-1], *(end for _, end in clock.evals)]) - clock.t0  # the last evaluation (after the last step) too
    n, task = res.module.examples_seen, res.module.task
    row = {
        "ex/s": n / (wall - clock.eval_seconds), "steps": res.trainer.global_step, "examples": n,
        "seconds": wall, "final_exact": clock.marks[-1]["exact"] if clock.marks else 0.0,
        "epistemic": res.bits.totals()["bits/epistemic"], "floor": task.floor_bits_per_example,
        "run_dir": str(res.run_dir), "eval_seconds": clock.eval_seconds, "marks": clock.marks,
    }
    row["tok/s"] = row["ex/s"] * task.block_size
    last = [r for r in read_metrics(res.run_dir / "metrics.jsonl") if "bits/example" in r]
    row["bits/ex"] = last[-1]["bits/example"] if last else math.nan
    for level in LEVELS:
        hit = next((m for m in clock.marks if m["exact"] >= level), None)
        row[level] = hit
    row["rule"] = next((m for m in clock.marks if m["rule"] >= RULE), None)
    row["final_rule"] = clock.marks[-1]["rule"] if clock.marks else math.nan
    between = sum(end - start for start, end in clock.evals if t[0] <= start and end <= t[-1])  # in the steps' span
    row["steps/s"] = (len(t) - 1) / (t[-1] - t[0] - between) if len(t) > 1 else 0
    row["flops_line"], row["flops"] = flops_line(res.module.model, res.bits.batch_size, task.block_size, row["steps/s"])
    return row


def rule_pass_probability(cfg: Config, error: float = 0.005) -> float:
    """The chance that one evaluation of a model wrong on a share `error` of the sums of every kind (held-out
    and each carry-chain length, independently) passes the rule: held-out exact match >= stop_at on
    n_heldout sums, and each length's >= stop_at - 3 / n_chain on n_chain sums (the screen) and >=
    stop_at on the n_chain + n_chain_confirm sums pooled (without confirmation sums: >= stop_at on n_chain)."""
    from lab.tasks.addition import screen_margin

    t, stop = cfg.task, cfg.train.stop_at

    def pmf(n: int, k: int) -> float:
        return math.comb(n, k) * error**k * (1 - error) ** (n - k)

    def at_most(n: int, k: int) -> float:
        return sum(pmf(n, i) for i in range(max(-1, k) + 1))

    def errors_allowed(n: int, share: float) -> int:
        return math.floor(n * (1 - share) + 1e-9)

    n1, n2 = t.n_chain, t.n_chain_confirm
    if n2 == 0:
        chain = at_most(n1, errors_allowed(n1, stop))
    else:
        screen, pooled = errors_allowed(n1, stop - screen_margin(n1)), errors_allowed(n1 + n2, stop)
        chain = sum(pmf(n1, e) * at_most(n2, pooled - e) for e in range(screen + 1))
    return chain**t.n_digits * at_most(t.n_heldout, errors_allowed(t.n_heldout, stop))


def fmt_row(label: str, seed: int, r: dict) -> str:
    cells = [label, str(seed), f"{r['ex/s']:.0f}", f"{r['tok/s'] / 1e3:.1f}k"]
    for hit in [r[level] for level in LEVELS] + [r["rule"]]:
        cells += ["-", "-", "-"] if hit is None else [
            f"{hit['examples'] / 1e3:.0f}k", f"{hit['seconds']:.0f}", f"{hit['epistemic'] / 1e6:.2f}"]
    cells += [f"{r['final_exact']:.4f}", f"{r['final_rule']:.3f}", f"{r['seconds']:.0f}",
              f"{r['bits/ex']:.2f} / {r['floor']:.2f}", f"{r['epistemic'] / 1e6:.2f}", f"{r['flops']:.2f}",
              f"{r['eval_seconds'] / r['seconds']:.1%}"]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| config | seed | ex/s | tok/s | ex@50% | s@50% | Mbit@50% | ex@90% | s@90% | Mbit@90% | ex@99% | s@99% "
    "| Mbit@99% | ex@rule | s@rule | Mbit@rule | final exact | final rule | s | bits/ex (floor) | epistemic Mbit "
    "| FLOP/s fraction | eval share |\n"
    "|" + "---|" * 23
)


# -- raw loop vs Lightning ------------------------------------------------------------------------------
def raw_loop(cfg: Config, steps: int) -> tuple[torch.nn.Module, list[float]]:
    """The lab's training as a plain loop: the same model and initialisation, data stream and training
    step (`LabModule.step`: loss, Grokfast, clipping, AdamW groups, schedule, the per-token bits) and
    precision, without Lightning or callbacks. -> (model, the perf_counter at the end of each step)."""
    b = build(cfg)  # the model, its optimizer and schedule exactly as the lab builds them
    task, module, tr = b.task, b.module, cfg.train
    opt, sched = b.optimizer()
    times = []
    for step in range(steps):
        x = torch.from_numpy(task.train_batch(step, b.batch_size).x)  # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tr.precision == "bf16"):
            module.step(x, opt, sched, step)
        times.append(time.perf_counter())
    return module.model, times


def raw_steps_per_second(cfg: Config, steps: int, warm: int) -> float:
    _, times = raw_loop(cfg, warm + steps)
    return steps / (times[-1] - times[warm - 1])


def lab_steps_per_second(cfg: Config, steps: int, warm: int, name: str) -> float:
    cfg.train.max_steps = warm + steps
    cfg.train.eval_every = 10 * (warm + steps)  # no evaluation inside the window
    clock = Clock()
    train(cfg, name, extra_callbacks=[clock])
    t = clock.step_times
    return steps / (t[-1] - t[warm - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/addition.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--budget", type=float, default=900.0, help="wall-clock seconds per run")
    ap.add_argument("--label", default=None, help="the config's name in the table")
    ap.add_argument("--append", default=None, help="also append the rows to this markdown file")
    ap.add_argument("--rule", action="store_true",
                    help="stop at the rule (99%% held-out and on every carry-chain length)")
    ap.add_argument("--vs-raw", action="store_true", help="throughput: Lightning + callbacks vs a raw loop")
    ap.add_argument("--steps", type=int, default=60, help="--vs-raw: steps timed after --warm steps")
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if "=" in args.config:  # only overrides were given: they apply to the default config
        args.overrides, args.config = [args.config, *args.overrides], ap.get_default("config")
    label = args.label or " ".join([Path(args.config).stem, *args.overrides])
    base = ["log.wandb=false", "log.progress_bar=false", "log.dir=runs/bench"]
    if args.rule:
        base += ["train.stop_metric=val/rule", f"train.stop_at={RULE}"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}", flush=True)

    if args.vs_raw:
        cfg = load(args.config, [*base, *args.overrides])
        rows = []
        for i in range(args.repeat):
            lab = lab_steps_per_second(load(args.config, [*base, *args.overrides]), args.steps, args.warm,
                                       f"vs-raw-{i}")
            raw = raw_steps_per_second(cfg, args.steps, args.warm)
            rows.append((lab, raw))
            print(f"  repeat {i}: lab {lab:.3f} steps/s, raw {raw:.3f} steps/s, ratio {lab / raw:.3f}", flush=True)
        lab, raw = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"\n| config | batch | lab steps/s | raw steps/s | lab / raw |\n|---|---|---|---|---|\n"
              f"| {label} | {cfg.train.batch_size} | {lab:.3f} | {raw:.3f} | {lab / raw:.3f} |")
        b = build(cfg)
        print(flops_line(b.module.model, b.batch_size, b.task.block_size, lab)[0])
        return

    lines, flops = [], []
    for seed in args.seeds:
        cfg = load(args.config, [*base, *args.overrides, f"seed={seed}"])
        row = learn(cfg, args.budget, f"{Path(args.config).stem}-s{seed}")
        flops.append(f"seed {seed}: {row['flops_line']}")
        lines.append(fmt_row(label, seed, row))
        each = ", ".join(f"{m['eval_seconds']:.1f}" for m in row["marks"])
        print(f"{lines[-1]}\n  {row['run_dir']}: {row['steps']} steps, evaluation {row['eval_seconds']:.0f} s "
              f"of {row['seconds']:.0f} s (each: {each})\n  {flops[-1]}", flush=True)
    table = "\n".join(lines)
    if cfg.task.name == "addition" and cfg.train.stop_metric == "val/rule" and cfg.train.stop_at:
        t = cfg.task
        print(f"the stop rule: {t.n_heldout} held-out sums, {t.n_chain} per carry-chain length every evaluation"
              f" + {t.n_chain_confirm} more near the stop; one evaluation of a model right 99.5% of the time on"
              f" every kind of sum passes it with probability {rule_pass_probability(cfg, 0.005):.3f}, one right"
              f" 99% of the time with {rule_pass_probability(cfg, 0.01):.3f}")
    print(f"\nbudget {args.budget:.0f} s per run; Mbit = epistemic bits (above the floor) spent by then; the rule: "
          f"{RULE:.0%} exact match held-out and on every carry-chain length\n{HEADER}\n{table}\n" + "\n".join(flops))
    if args.append:
        with open(args.append, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
