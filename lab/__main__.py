"""Command line: `python -m lab train [CONFIG] [key=value ...]`.

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
        print(f"done: {s['steps']} steps, {s['examples_seen']} examples in {s['wall_seconds_this_session']} s"
              f" | val exact {s.get('val/exact_match', float('nan')):.4f}"
              f" | bits {s['bits/total'] / 1e6:.3f} Mbit = floor {s['bits/floor'] / 1e6:.3f}"
              f" + epistemic {s['bits/epistemic'] / 1e6:.3f} Mbit | {s['run_dir']}")
        if s["interrupted"]:
            print(f"stopped; continue with: python -m lab train train.resume={s['run_dir']}")
    return 0


COMMANDS = {"train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG] [key=value ...]")
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns.args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
