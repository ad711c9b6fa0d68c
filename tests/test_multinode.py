"""Training over several machines: two "nodes" of one process each, started by torchrun on 127.0.0.1 as a
cluster starts them (one `python -m lab train` per node), train as one process does: the same examples,
one run directory written by the first node, the same bits and weights but for the rounding of the
gradients' all-reduce (two processes on one machine round it alike)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab.loggers import read_metrics

ROOT = str(Path(__file__).resolve().parents[1])
BASE = ["configs/addition.yaml", "task.n_digits=3", "task.n_heldout=200", "task.n_chain=20", "model.preset=gpt-nano",
        "train.batch_size=64", "train.max_steps=12", "train.eval_every=6", "log.every=4", "train.lr=3e-3",
        "train.checkpoint_every=6"]
QUIET = ["log.wandb=false", "log.progress_bar=false", "train.threads=1", "train.accelerator=cpu"]


def _env() -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}
    for key in ("LAB_RUN_NAME", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_PROCID"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tmp_path, name: str, *extra: str) -> list[str]:
    config, *rest = BASE
    return ["-m", "lab", "train", f"{ROOT}/{config}", *rest, *QUIET, f"log.dir={tmp_path}", f"log.name={name}", *extra]


def _one_machine(tmp_path, name: str, *extra: str) -> None:
    out = subprocess.run([sys.executable, *_args(tmp_path, name, *extra)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]


def _two_nodes(tmp_path, name: str, *extra: str) -> list[str]:
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
         "--master-addr=127.0.0.1", f"--master-port={port}",
         *_args(tmp_path, name, "train.num_nodes=2", *extra)],  # torchrun's -m lab train ...
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=_env())
        for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_two_torchrun_nodes_train_as_one_process(tmp_path):
    outs = _two_nodes(tmp_path, "nodes")
    _one_machine(tmp_path, "one")
    nodes, one = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("nodes", "one"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["nodes", "one"]  # one run directory
    assert sum("done:" in o for o in outs) == 1  # the first node reports; the other writes nothing of its own
    assert [r["step"] for r in nodes] == [r["step"] for r in one]
    assert [r["examples_seen"] for r in nodes] == [r["examples_seen"] for r in one]
    assert [r["bits/examples"] for r in nodes if "bits/examples" in r] == [256.0, 512.0, 768.0]
    bits = [r["bits/total"] for r in nodes if "bits/total" in r]
    assert bits == pytest.approx([r["bits/total"] for r in one if "bits/total" in r], rel=1e-6)
    a, b = _weights(tmp_path / "nodes"), _weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

