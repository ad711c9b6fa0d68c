"""The lab's code length beside the compressors people know, on the same examples.

    python experiments/compressors.py [--sizes 10000 100000 1000000] [--decode-max 10000]
                                      [--tasks addition modular]

For each task and N: the first N examples of the training stream as text (`python -m lab dump`),
compressed by gzip -9, bzip2 -9, xz -9e and zstd -19 (those found on PATH); the prequential bits the
bits callback logs in a training run over the same N examples (`python -m lab train`); the size of the
lab's real arithmetic-coded file (`python -m lab compress`), round-tripped by `python -m lab decompress`
for N <= --decode-max; and the floor. Prints one table in bits per example and total size, then the
coder's speed against the training run's wall time on the same examples (run nothing else meanwhile,
or `--parallel` with `--set train.threads=1`: the training run and the encoder side by side, one core each).

Every command for one N uses the largest batch size up to the config's that divides N (250 for
addition at N = 10^4, 10^5, 10^6), so the training run, the coder and the text hold the same N examples.

Tasks: 8-digit addition on the reference's uniform law (configs/addition-uniform.yaml: the operands and the
sum coded by the model), the same on the chain-rich stream of `make addition` until 2026-12-01
(`addition-chain`, configs/addition-adamw.yaml) and the grokking recipe, a+b mod 97 (configs/grokking.yaml:
the question of each scheduled row is known to the receiver, the answer is coded by the model; `lab.bits`
states the definition). The modular stream revisits its train split epoch after epoch: its floor counts
first-pass examples only (a receiver that knows the schedule gets revisits free; text compressors see
them as repeats). The "file / logged" column is the arithmetic code's size over the logged bits/total
(the lab promises within 0.05% + 64 bits).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COMPRESSORS = {"gzip -9": ["gzip", "-9", "-c"], "bzip2 -9": ["bzip2", "-9", "-c"],
               "xz -9e": ["xz", "-9e", "-c"], "zstd -19": ["zstd", "-19", "-c", "-q"]}
TASKS = {
    "addition": ("configs/addition-uniform.yaml", []),
    "addition-chain": ("configs/addition-adamw.yaml", []),
    "grokking": ("configs/grokking.yaml", []),
}
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def start(*args: str) -> subprocess.Popen:
    """A lab command in the background; its output goes to files, so a long run never blocks on a pipe."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=out, stderr=err, text=True, env=ENV)
    proc.out, proc.err = out, err
    return proc


def finish(proc: subprocess.Popen) -> str:
    """Wait for `proc`; its stdout, or a RuntimeError with the last line of its stderr."""
    proc.wait()
    proc.out.seek(0), proc.err.seek(0)
    out, err = proc.out.read(), proc.err.read()
    proc.out.close(), proc.err.close()
    if proc.returncode != 0:
        raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
    return out


def lab(*args: str) -> str:
    return finish(start(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--decode-max", type=int, default=10_000)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--set", nargs="*", default=[], help="key=value for every lab command, e.g. train.threads=1")
    ap.add_argument("--parallel", action="store_true",
                    help="run the training run and the encoder side by side (give each train.threads=1): "
                         "the same conditions for both, in half the time")
    args = ap.parse_args()
    from lab.build import build
    from lab.coder import read
    from lab.config import load

    found = {k: v for k, v in COMPRESSORS.items() if shutil.which(v[0])}
    missing = sorted(set(COMPRESSORS) - set(found))
    rows, speed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.tasks:
            config, overrides = TASKS[name]
            cfg = load(config, [*overrides, *args.set])
            built = build(cfg)
            task, task_batch = built.task, built.batch_size
            for n in args.sizes:
                # the largest batch <= the config's that divides N: every command sees exactly N examples
                batch = max(d for d in range(1, task_batch + 1) if n % d == 0)
                overrides = [*TASKS[name][1], *args.set, f"train.batch_size={batch}"]
                text = tmp / f"{name}-{n}.txt"
                lab("dump", config, *overrides, "--examples", str(n), "-o", str(text))
                sizes = {k: len(subprocess.run(cmd + [str(text)], capture_output=True, check=True).stdout) * 8
                         for k, cmd in found.items()}
                steps = n // batch
                run = f"{name}-{n}"
                code = tmp / f"{run}.clab"
                training = start("train", config, *overrides, f"train.max_steps={steps}", "train.stop_at=null",
                                 f"train.eval_every={steps + 1}", f"log.dir={tmp}", f"log.name={run}",
                                 "log.progress_bar=false", "log.wandb=false")
                if not args.parallel:  # the encoder after the training run, on a quiet machine
                    finish(training)
                enc = _timing(lab("compress", config, *overrides, "--examples", str(n), "-o", str(code)))
                if args.parallel:
                    finish(training)
                summary = json.loads((tmp / run / "summary.json").read_text())
                train_s = summary["wall_seconds_this_session"]
                first_pass = summary["bits/examples"]
                logged = summary["bits/total"]
                file_bits = code.stat().st_size * 8
                code_bits = 32 * len(read(code)[1])  # the arithmetic code alone, without the header
                dec = "-"
                if n <= args.decode_max:
                    dec_s, dec_tps = _timing(lab("decompress", str(code), "-o", str(tmp / "back.txt")))
                    same = (tmp / "back.txt").read_bytes() == text.read_bytes()
                    dec = (f"{dec_tps:.0f} tokens/s ({dec_s:.0f} s, {dec_s / train_s:.2f}x training), "
                           f"round trip {'exact' if same else 'WRONG'}")
                floor = first_pass * task.floor_bits_per_example  # first-pass examples (all N for addition)
                rows.append((name, n, sizes, logged, code_bits, file_bits, floor))
                speed.append(f"| {name} | {n} | {batch} | {train_s:.0f} s | {enc[1]:.0f} tokens/s ({enc[0]:.0f} s, "
                             f"{enc[0] / train_s:.2f}x training) | {dec} |")
                print(f"done {name} {n}", file=sys.stderr, flush=True)

    cols = list(found) + ["lab, logged bits", "lab, code", "lab, whole file", "floor"]
    print("\nbits per example (total size in kB)\n")
    print("| task | N | " + " | ".join(cols) + " | code / logged |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for name, n, sizes, logged, code_bits, file_bits, floor in rows:
        vals = [sizes[k] for k in found] + [logged, code_bits, file_bits, floor]
        print(f"| {name} | {n} | " + " | ".join(f"{v / n:.2f} ({v / 8e3:.0f})" for v in vals)
              + f" | {code_bits / logged:.5f} |")
    if missing:
        print(f"\nnot on this machine: {', '.join(missing)}")
    print("\n'whole file' adds the JSON header: config, versions and a 16-hex-digit checksum per batch.")
    print("\ncoder speed, coded tokens per second (each side also trains: one step per batch), against the "
          "training run over the same examples (`lab train`, every callback, one final evaluation)\n")
    print("| task | N | batch | training | encode | decode |")
    print("|---|---|---|---|---|---|")
    print("\n".join(speed))


def _timing(out: str) -> tuple[float, float]:
    """(seconds, tokens/s) from the last line `... in S s (R tokens/s)` of compress / decompress."""
    m = re.search(r"in ([0-9.]+) s \(([0-9.]+) tokens/s\)", out)
    return float(m.group(1)), float(m.group(2))


if __name__ == "__main__":
    main()
