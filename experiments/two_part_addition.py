"""The addition stream's two-part code beside its prequential code, for a finished run.

    python experiments/two_part_addition.py runs/addition-...      [--tol 0.05] [--probe 4096]

Two-part (Blier & Ollivier 2018): the run's final weights, quantized at the coarsest scale whose bits on
the first `--probe` stream examples stay within `--tol` bits per example of the unquantized model's,
really range-coded (`lab.twopart`), plus every example the run trained on coded by those weights.
Prequential (NNCP): the run's logged bits/total, which counts no weights at all: the receiver rebuilds
them by replaying the training program. Prints one table in Mbit and bits per example.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.build import load_trained  # noqa: E402
from lab.loggers import read_metrics  # noqa: E402
from lab.twopart import coarsest, data_bits, dequantize, encode_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--tol", type=float, default=0.05, help="bits per example the quantization may add")
    ap.add_argument("--probe", type=int, default=4096, help="stream examples the tolerance is checked on")
    args = ap.parse_args()
    run = Path(args.run)
    b, steps = load_trained(run)
    task, model, B = b.task, b.module.model, b.batch_size
    probe = torch.from_numpy(task.train_batch(0, args.probe).x) if args.probe else None
    scale, ints, qsteps, _ = coarsest(model, task, probe, args.tol)
    model_bits = 32 * len(encode_weights(ints, qsteps))
    model.load_state_dict(dequantize(ints, qsteps))
    data = sum(data_bits(model, task, torch.from_numpy(task.train_batch(s, B).x)) for s in range(steps))
    n = steps * B
    summary = run / "summary.json"  # the run's final counters; else its last metrics row
    logged = json.loads(summary.read_text()) if summary.exists() else \
        [r for r in read_metrics(run / "metrics.jsonl") if "bits/total" in r][-1]
    if logged["bits/examples"] != steps * B:
        raise SystemExit(f"{run}: the logged bits cover {logged['bits/examples']:.0f} examples, the checkpoint "
                         f"{steps * B}: use a run that ended at a log step or with a summary.json")
    floor = n * task.floor_bits_per_example
    print(f"{run}: {n} examples, {sum(q.size for q in ints.values())} weights at {scale} std per tensor\n")
    print("| code | Mbit | bits/example | above the floor, Mbit |\n|---|---|---|---|")
    rows = [("prequential (bits/total, logged)", logged["bits/total"], True), ("two-part: weights", model_bits, False),
            ("two-part: data given the weights", data, True), ("two-part: total", model_bits + data, True)]
    for name, bits, of_data in rows:
        above = f"{(bits - floor) / 1e6:.3f}" if of_data else "-"
        print(f"| {name} | {bits / 1e6:.3f} | {bits / n:.2f} | {above} |")
    print(f"\nfloor {floor / 1e6:.3f} Mbit ({task.floor_bits_per_example:.2f} bits/example)")


if __name__ == "__main__":
    main()
