"""Command line: `python -m lab COMMAND ...`.

    train [CONFIG] [key=value ...]                              train (or resume) a run
    compress CONFIG [key=value ...] --examples N -o FILE        arithmetic-code the training stream
    decompress FILE -o OUT                                      rebuild the stream by replaying training
    dump CONFIG [key=value ...] --examples N -o FILE            the stream as text, one example per line
    sweep FILE [--parallel N] [--count N] [--dry-run]           run a W&B sweep file locally
    report RUN_OR_SWEEP_DIR                                     tables and figures from local metrics
    dashboard [--entity E] [--project P] [--save]               the wandb workspace, as code

    python -m lab train configs/addition.yaml model.n_layer=4 train.lr=2e-3
    python -m lab train train.resume=runs/addition-20261122-101500      # continue a stopped run
    python -m lab train configs/addition.yaml train.resume=runs/...      # the same, config checked

A bad configuration prints one line naming the key and exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab.config import ConfigError, load


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...] -> (config path or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args: list[str]) -> int:
    from lab.train import resume_config, train

    path, overrides = _split(args)
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.resume=")), None)
    if path is None and resume is None:
        raise ConfigError("config: give a config file (configs/*.yaml) or train.resume=RUN_DIR")
    cfg = load(path, overrides) if path else resume_config(resume, overrides)
    name = Path(path).stem if path else "run"
    result = train(cfg, name)
    s = result.summary
    if result.trainer.is_global_zero:
        rule = s.get("val/chain_exact_min")
        rule = "" if rule is None else f" (lowest over carry-chain lengths {rule:.4f})"
        print(f"done: {s['steps']} steps, {s['examples_seen']} examples in {s['wall_seconds_this_session']} s"
              f" | val exact {s.get('val/exact_match', float('nan')):.4f}{rule}"
              f" | bits {s['bits/total'] / 1e6:.3f} Mbit = floor {s['bits/floor'] / 1e6:.3f}"
              f" + epistemic {s['bits/epistemic'] / 1e6:.3f} Mbit | {s['run_dir']}")
        marks = s.get("marks")
        if marks:
            acc, dl = marks["val_acc_0.9"], marks["dl_half"]
            print(f"validation accuracy reached 0.9 at step {acc}; dl/table fell half-way from raw to final "
                  f"at step {dl}; wall time {s['wall_seconds_this_session']} s; figure {s['run_dir']}/grokking.png")
        if s["interrupted"]:
            print(f"stopped; continue with: python -m lab train train.resume={s['run_dir']}")
    return 0


def _stream_args(args: list[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m lab {prog}")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--examples", type=int, required=True)
    ap.add_argument("-o", "--output", required=True)
    ns = ap.parse_args(args)
    if ns.examples < 1:
        raise ConfigError(f"--examples: {ns.examples} is not >= 1")
    ns.cfg = load(ns.config, ns.overrides)
    return ns


def cmd_compress(args: list[str]) -> int:
    from lab.coder import compress

    ns = _stream_args(args, "compress")
    s = compress(ns.cfg, ns.examples, ns.output)
    print(f"{ns.output}: {s.examples} examples, {s.coded_tokens} coded tokens, {s.code_bits} bits "
          f"({s.code_bits / s.examples:.2f} bits/example; ideal {s.ideal_bits / s.examples:.2f}) in {s.seconds:.1f} s "
          f"({s.tokens_per_second:.0f} tokens/s)")
    return 0


def cmd_decompress(args: list[str]) -> int:
    from lab.coder import CodecError, decompress

    ap = argparse.ArgumentParser(prog="python -m lab decompress")
    ap.add_argument("file")
    ap.add_argument("-o", "--output", required=True)
    ns = ap.parse_args(args)
    try:
        s = decompress(ns.file, ns.output)
    except (CodecError, OSError) as e:
        print(f"decompress error: {e}", file=sys.stderr)
        return 1
    print(f"{ns.output}: {s.examples} examples, {s.coded_tokens} tokens decoded in {s.seconds:.1f} s "
          f"({s.tokens_per_second:.0f} tokens/s)")
    return 0


def cmd_dump(args: list[str]) -> int:
    from lab.coder import dump

    ns = _stream_args(args, "dump")
    dump(ns.cfg, ns.examples, ns.output)
    return 0


def cmd_sweep(args: list[str]) -> int:
    from lab.sweep import run_sweep, sweep_name

    ap = argparse.ArgumentParser(prog="python -m lab sweep")
    ap.add_argument("file")
    ap.add_argument("overrides", nargs="*", help="key=value added to every run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (1 is fastest on 2 cores)")
    ap.add_argument("--count", type=int, default=None, help="random sweeps: runs to draw (default run_cap)")
    ap.add_argument("--seed", type=int, default=0, help="random sweeps: the seed of the draws")
    ap.add_argument("--dir", default="runs/sweeps")
    ap.add_argument("--dry-run", action="store_true", help="print the runs without running them")
    ns = ap.parse_args(args)
    results = run_sweep(ns.file, ns.dir, ns.parallel, ns.count, ns.seed, ns.dry_run, ns.overrides)
    for r in results:
        print(f"{r['run']}: {r['status']}" + (f"\n  {r['command']}" if "command" in r else ""))
    failed = [r for r in results if r["status"].startswith("failed")]
    print(f"{len(results)} runs, {len(failed)} failed")
    if not ns.dry_run and len(failed) < len(results):
        cmd_report([str(Path(ns.dir) / sweep_name(ns.file))])
    return 1 if failed else 0


def cmd_report(args: list[str]) -> int:
    from lab.report import report

    ap = argparse.ArgumentParser(prog="python -m lab report")
    ap.add_argument("path")
    ns = ap.parse_args(args)
    r = report(ns.path)
    if r["kind"] == "sweep":
        rhos = ", ".join(f"{m} {rho:.3f}" for m, rho in r["spearman_by_measure"].items())
        print(f"{r['runs']} runs varying {', '.join(r['varying']) or 'nothing'}: Spearman rho of final "
              f"compression against validation accuracy: {rhos}")
    else:
        print("\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in r["final"].items()))
    print(f"figure {r['figure']}; tables report.csv, report.md beside it")
    return 0


def cmd_dashboard(args: list[str]) -> int:
    from lab.dashboard import main as dashboard

    ap = argparse.ArgumentParser(prog="python -m lab dashboard")
    ap.add_argument("--entity", default=None)
    ap.add_argument("--project", default="compression-lab")
    ap.add_argument("--save", action="store_true")
    ns = ap.parse_args(args)
    return dashboard(ns.entity, ns.project, ns.save)


COMMANDS = {"train": cmd_train, "compress": cmd_compress, "decompress": cmd_decompress, "dump": cmd_dump,
            "sweep": cmd_sweep, "report": cmd_report, "dashboard": cmd_dashboard}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG] [key=value ...]")
    ns = parser.parse_args(argv)
    from lab.bits import NonFiniteError

    try:
        return COMMANDS[ns.command](ns.args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"training error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
