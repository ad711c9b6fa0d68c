import json
import math

import pytest
import yaml
from conftest import ROOT, tiny_modular

from lab.config import ConfigError
from lab.dashboard import build, describe
from lab.report import report, spearman
from lab.sweep import base_command, expand, flatten, run_sweep
from lab.train import train


def test_grid_expansion_with_nested_keys():
    sweep = {"method": "grid", "parameters": {
        "task.train_fraction": {"values": [0.2, 0.3]},
        "train": {"parameters": {"weight_decay": {"values": [0.1, 1.0]}, "lr": {"value": 1e-3}}},
    }}
    runs = expand(sweep)
    assert runs == [
        {"task.train_fraction": 0.2, "train.weight_decay": 0.1, "train.lr": 1e-3},
        {"task.train_fraction": 0.2, "train.weight_decay": 1.0, "train.lr": 1e-3},
        {"task.train_fraction": 0.3, "train.weight_decay": 0.1, "train.lr": 1e-3},
        {"task.train_fraction": 0.3, "train.weight_decay": 1.0, "train.lr": 1e-3},
    ]
    assert set(flatten(sweep["parameters"])) == {"task.train_fraction", "train.weight_decay", "train.lr"}


def test_random_expansion_is_seeded_and_in_range():
    sweep = {"method": "random", "run_cap": 20, "parameters": {
        "train": {"parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}},
        "model.n_layer": {"distribution": "int_uniform", "min": 1, "max": 3},
        "model.preset": {"values": ["gpt-nano", "gpt-micro"]},
    }}
    a, b, c = expand(sweep, seed=1), expand(sweep, seed=1), expand(sweep, seed=2)
    assert a == b and a != c and len(a) == 20
    assert all(1e-4 <= r["train.lr"] <= 1e-2 and r["model.n_layer"] in (1, 2, 3) for r in a)
    assert {r["model.preset"] for r in a} == {"gpt-nano", "gpt-micro"}
    assert len(expand(sweep, count=3, seed=1)) == 3


def test_sweep_errors_are_clear():
    with pytest.raises(ConfigError, match="wandb agent"):
        expand({"method": "bayes", "parameters": {}})
    with pytest.raises(ConfigError, match="run_cap"):
        expand({"method": "random", "parameters": {"x": {"values": [1]}}})
    with pytest.raises(ConfigError, match="parameters.x"):
        expand({"method": "grid", "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    with pytest.raises(ConfigError, match="command"):
        base_command({"command": ["python", "other.py"]})


@pytest.mark.parametrize("name", ["grokking.yaml", "addition.yaml"])
def test_shipped_sweeps_expand_and_keep_the_wandb_command(name):
    sweep = yaml.safe_load(open(f"{ROOT}/configs/sweeps/{name}"))
    assert "${args_no_hyphens}" in sweep["command"]
    assert len(expand(sweep)) == 8
    assert base_command(sweep)[0].startswith("configs/")


TINY = ["task.p=11", "train.batch_size=16", "model.preset=gpt-nano", "model.n_layer=1", "train.max_steps=20",
        "train.eval_every=10", "log.every=5", "log.wandb=false", "train.threads=1"]


def _sweep_file(tmp_path, fractions):
    sweep = {"name": "tiny", "method": "grid", "parameters": {"task.train_fraction": {"values": fractions}},
             "command": ["${env}", "python", "-m", "lab", "train", f"{ROOT}/configs/grokking.yaml", *TINY,
                         "${args_no_hyphens}"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_local_sweep_skips_finished_runs_and_survives_a_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = _sweep_file(tmp_path, [0.3, 1.5, 0.5])  # 1.5 is an impossible train fraction
    results = run_sweep(path, tmp_path / "runs")
    assert [r["status"] for r in results] == ["finished", "failed (exit 2)", "finished"]
    assert "task.train_fraction" in results[1]["error"]
    log = [json.loads(line) for line in open(tmp_path / "runs/tiny/sweep.jsonl")]
    assert len(log) == 3 and log[1]["status"].startswith("failed")
    again = run_sweep(path, tmp_path / "runs")
    assert [r["status"] for r in again] == ["skipped (finished)", "failed (exit 2)", "skipped (finished)"]
    rep = report(tmp_path / "runs/tiny")
    assert rep["kind"] == "sweep" and rep["runs"] == 2 and rep["metric"] == "dl/table"
    assert set(rep["spearman_by_measure"]) == {"dl/table", "dl/two_part", "dl/model"}  # 2 runs: nan each
    assert rep["varying"] == ["task.train_fraction"]
    for f in ("report.csv", "report.md", "report.png"):
        assert (tmp_path / "runs/tiny" / f).exists()


def test_run_report(tmp_path):
    result = train(tiny_modular(tmp_path, "train.max_steps=20"))
    rep = report(result.run_dir)
    assert rep["kind"] == "run" and rep["final"]["step"] == 20
    assert (result.run_dir / "report.png").stat().st_size > 10_000
    with pytest.raises(ConfigError, match="neither a run"):
        report(tmp_path / "nothing")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(0.9486833, rel=1e-6)  # ties: average ranks
    assert math.isnan(spearman([1, 2], [2, 1]))


def test_dashboard_builds_offline():
    workspace = build("me", "compression-lab")
    text = describe(workspace)
    assert "bits per example vs the floor" in text and "description length of the table" in text
    model = workspace._to_model()
    assert "examples_seen" in model.model_dump_json()
