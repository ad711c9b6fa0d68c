"""Command line: `python -m lab COMMAND ...`.

    train [CONFIG] [key=value ...]                              train (or resume) a run
    tasks                                                       the registered tasks, their options and floors
    compress CONFIG [key=value ...] --examples N -o FILE        arithmetic-code the training stream
    decompress FILE -o OUT                                      rebuild the stream by replaying training
    dump CONFIG [key=value ...] --examples N -o FILE            the stream as text, one example per line
    sweep FILE [--parallel N] [--count N] [--dry-run]           run a W&B sweep file locally
    report RUN_OR_SWEEP_DIR                                     tables and figures from local metrics
    dashboard [--entity E] [--project P] [--save]               the wandb workspace, as code

    python -m lab train configs/addition.yaml model.n_layer=4 train.lr=2e-3
    python -m lab train train.resume=runs/addition-20261122-101500      # continue a stopped run
    python -m lab train configs/addition.yaml train.resume=runs/...      # the same, config checked

A bad configuration (or a run directory, checkpoint or output path that cannot be used) prints one line
naming the key and exits with code 2, before anything is written.
`python -m lab COMMAND --help` explains a command; for train, compress and dump it lists every config key
with its type or choices, default and meaning.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from lab.config import check_once, load
from lab.errors import ConfigError, LabError


def _parser(prog: str, description: str, config_keys: bool = False) -> argparse.ArgumentParser:
    """A command's parser; with `config_keys`, its --help ends with every config key, documented."""
    from lab.config import help_text

    return argparse.ArgumentParser(prog=f"python -m lab {prog}", description=description,
                                   epilog=help_text() if config_keys else None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...] -> (config path or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args: list[str]) -> int:
    from lab.run import resume_config, train

    ap = _parser("train", "Train a run, or resume one (train.resume=RUN_DIR). A CONFIG is a YAML file "
                 "(configs/*.yaml); key=value overrides it.", config_keys=True)
    ap.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    path, overrides = _split(ap.parse_args(args).args)
    check_once(overrides)
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.resume=")), None)
    if path is None and resume is None:
        raise ConfigError("config: give a config file (configs/*.yaml) or train.resume=RUN_DIR")
    cfg = load(path, overrides) if path else resume_config(resume, overrides)
    name = Path(path).stem if path else "run"
    result = train(cfg, name)
    s = result.summary
    if result.trainer.is_global_zero:
        own = [f"{label} {s[k]:.4f}" for k, label in result.module.task.headline.items() if k in s]
        own = f" ({', '.join(own)})" if own else ""
        print(f"done: {s['steps']} steps, {s['examples_seen']} examples in {s['wall_seconds_this_session']} s"
              f" | val exact {s.get('val/exact_match', float('nan')):.4f}{own}"
              f" | bits {s['bits/total'] / 1e6:.3f} Mbit = floor {s['bits/floor'] / 1e6:.3f}"
              f" + epistemic {s['bits/epistemic'] / 1e6:.3f} Mbit | {s['run_dir']}")
        marks = s.get("marks")
        if marks:
            at = lambda step: "not yet" if step is None else f"at step {step:.0f}"  # noqa: E731
            print(f"validation accuracy 0.9: {at(marks['val_acc_0.9'])}; dl/table half-way from raw to final: "
                  f"{at(marks['dl_half'])}; figure {s['run_dir']}/grokking.png")
        if s["interrupted"]:
            print(f"stopped; continue with: python -m lab train train.resume={s['run_dir']}", flush=True)
    if s["interrupted"]:  # 128 + the signal's number, as a shell reports a process a signal stopped
        return 128 + int(signal.Signals[s["stopped_by"] or "SIGINT"])
    return 0


def _stream_args(args: list[str], prog: str, description: str) -> argparse.Namespace:
    ap = _parser(prog, description, config_keys=True)
    ap.add_argument("config", help="a YAML file (configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value")
    ap.add_argument("--examples", type=int, required=True, help="examples of the training stream")
    ap.add_argument("-o", "--output", required=True)
    ns = ap.parse_intermixed_args(args)  # options anywhere among the overrides
    if ns.examples < 1:
        raise ConfigError(f"--examples: {ns.examples} is not >= 1")
    check_once(ns.overrides)
    ns.cfg = load(ns.config, ns.overrides)
    from lab.loggers import check_output

    check_output(ns.output, "-o", (ns.config,))
    return ns


def cmd_compress(args: list[str]) -> int:
    from lab.coder import compress

    ns = _stream_args(args, "compress", "Arithmetic-code the first N examples of a config's training stream "
                      "(the sender trains as it codes; `decompress` replays it).")
    s = compress(ns.cfg, ns.examples, ns.output)
    print(f"{ns.output}: {s.examples} examples, {s.coded_tokens} coded tokens, {s.code_bits} bits "
          f"({s.code_bits / s.examples:.2f} bits/example; ideal {s.ideal_bits / s.examples:.2f}) in {s.seconds:.1f} s "
          f"({s.tokens_per_second:.0f} tokens/s)")
    return 0


def cmd_decompress(args: list[str]) -> int:
    from lab.coder import CodecError, decompress
    from lab.loggers import check_output

    ap = _parser("decompress", "Rebuild a stream from a `compress` file by replaying the training it records.")
    ap.add_argument("file")
    ap.add_argument("-o", "--output", required=True)
    ns = ap.parse_args(args)
    if not Path(ns.file).is_file():
        raise ConfigError(f"file: {ns.file} does not exist or is not a file")
    check_output(ns.output, "-o", (ns.file,))
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

    ns = _stream_args(args, "dump", "Write the first N examples of a config's training stream as text, one per "
                      "line (what the classical compressors are given).")
    dump(ns.cfg, ns.examples, ns.output)
    return 0


def cmd_sweep(args: list[str]) -> int:
    from lab.sweep import run_sweep, sweep_name

    ap = _parser("sweep", "Run a W&B sweep file locally, one run after another, with the runs W&B would "
                 "make of it; then report the sweep. Relaunching skips finished runs and resumes the others.")
    ap.add_argument("file")
    ap.add_argument("overrides", nargs="*", help="key=value added to every run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (1 is fastest on 2 cores)")
    ap.add_argument("--count", type=int, default=None, help="random sweeps: runs to draw (default run_cap)")
    ap.add_argument("--seed", type=int, default=0, help="random sweeps: the seed of the draws")
    ap.add_argument("--dir", default="runs/sweeps")
    ap.add_argument("--dry-run", action="store_true", help="print the runs without running them")
    ns = ap.parse_intermixed_args(args)  # options anywhere among the overrides
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

    ap = _parser("report", "Tables and figures from a run's or a sweep's local metrics.")
    ap.add_argument("path", help="a run directory or a sweep directory")
    ns = ap.parse_args(args)
    r = report(ns.path)
    if r["kind"] == "sweep":
        rhos = ", ".join(f"{m} {rho:.3f}" for m, rho in r["spearman_by_measure"].items())
        print(f"{r['runs']} runs varying {', '.join(r['varying']) or 'nothing'}: Spearman rho of final "
              f"compression against validation accuracy: {rhos}")
    else:
        print("\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in r["final"].items()))
    for path, lines in r["skipped"].items():
        print(f"skipped {len(lines)} malformed line(s) of {path}: {', '.join(map(str, lines[:20]))}"
              + (" ..." if len(lines) > 20 else ""))
    print(f"figure {r['figure']}; tables report.csv, report.md beside it")
    return 0


def cmd_dashboard(args: list[str]) -> int:
    from lab.dashboard import main as dashboard

    ap = _parser("dashboard", "The wandb workspace as code: offline, validate and describe it; --save "
                 "creates it online.")
    ap.add_argument("--entity", default=None)
    ap.add_argument("--project", default="compression-lab")
    ap.add_argument("--save", action="store_true")
    ns = ap.parse_args(args)
    return dashboard(ns.entity, ns.project, ns.save)


def cmd_tasks(args: list[str]) -> int:
    from lab.config import describe
    from lab.tasks import TASKS

    ap = _parser("tasks", "The registered tasks: layout, options (with defaults), floors at the defaults and "
                 "the metrics train.stop_metric may watch.")
    ap.parse_args(args)
    for name, cls in sorted(TASKS.items()):
        task = cls()
        kind = "table, revisited for epochs" if task.is_table else "endless stream"
        print(f"{name}: {cls.summary()}")
        example = task.show(task.eval_sets()["val"][0])
        print(f"  {kind}; {task.seq_len} tokens, {task.vocab_size}-token vocabulary; floor "
              f"{task.floor_bits_per_example:.2f} bits/example at the defaults; e.g. {example}")
        print(f"  stop metrics at the defaults: {', '.join(cls.metric_names(task.cfg))}")
        for key, kind, doc in describe(cls.Config, "task."):
            print(f"  {key} ({kind}): {doc}")
        print()
    return 0


COMMANDS = {"train": cmd_train, "tasks": cmd_tasks, "compress": cmd_compress, "decompress": cmd_decompress,
            "dump": cmd_dump, "sweep": cmd_sweep, "report": cmd_report, "dashboard": cmd_dashboard}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS), help="python -m lab COMMAND --help explains one")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG] [key=value ...]")
    ns = parser.parse_args(argv)
    from lab.bits import NonFiniteError
    from lab.run import NothingToDo

    try:
        return COMMANDS[ns.command](ns.args)
    except LabError as e:  # a bad key or value, or a directory, checkpoint or path that cannot be used
        print(f"{e.kind}: {e}", file=sys.stderr)
        return 2
    except NothingToDo as e:
        print(e)
        return 0
    except OSError as e:  # a full disk, a file system gone read-only: one line; the last checkpoint stays
        print(f"I/O error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; the last good checkpoint "
              f"(if any) is kept", file=sys.stderr)
        return 1
    except NonFiniteError as e:
        print(f"training error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
