import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from lab.__main__ import main
from lab.config import load
from lab.dashboard import build, describe
from lab.errors import ConfigError, RunError
from lab.report import report, spearman
from lab.run import train
from lab.sweep import agent_args, base_command, expand, param_type, run_sweep

ROOT = str(Path(__file__).resolve().parents[1])


SCHEMA = json.loads((Path(__file__).parent / "data" / "wandb_sweep_schema.json").read_text())
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("float")(lambda v: isinstance(v, float))  # as W&B's sweeps/config/schema.py
FORMATS.checks("integer")(lambda v: isinstance(v, int))


def wandb_type(spec: dict) -> str | None:
    """The parameter type W&B gives a spec: the first of its schema's `parameter.anyOf` that validates
    (wandb/sweeps, config/schema.py: fill_parameter), as a distribution name; None if none does."""
    for ref in SCHEMA["definitions"]["parameter"]["anyOf"]:
        name = ref["$ref"].split("/")[-1]
        sub = {**SCHEMA["definitions"][name], "definitions": SCHEMA["definitions"]}
        if jsonschema.Draft7Validator(sub, format_checker=FORMATS).is_valid(spec):
            if name == "param_dict":
                return "dict"
            props = sub["properties"] if "properties" in sub else sub["anyOf"][0]["properties"]
            return props["distribution"]["enum"][0]
    return None


SPECS = [
    {"value": 3}, {"value": [1, 2]}, {"values": [1, 2, 3]}, {"values": ["a"], "distribution": "categorical"},
    {"values": [1, 2], "probabilities": [0.25, 0.75]}, {"min": 100, "max": 200}, {"min": 0.1, "max": 1},
    {"min": 1, "max": 2.5}, {"min": 0.5, "max": 2.0}, {"min": 1, "max": 5, "distribution": "uniform"},
    {"min": 1, "max": 5, "distribution": "int_uniform"}, {"min": 0, "max": 10, "distribution": "q_uniform"},
    {"min": 0, "max": 1, "q": 0.25, "distribution": "q_uniform"},
    {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"},
    {"min": -9.2, "max": -4.6, "distribution": "log_uniform"},
    {"min": 1e-4, "max": 1e-2, "distribution": "inv_log_uniform_values"},
    {"min": 1, "max": 100, "q": 2, "distribution": "q_log_uniform_values"},
    {"distribution": "normal"}, {"distribution": "normal", "mu": 1, "sigma": 2},
    {"distribution": "q_normal", "q": 0.5}, {"distribution": "log_normal", "sigma": 0.5},
    {"distribution": "q_log_normal"}, {"distribution": "beta", "a": 2, "b": 3}, {"distribution": "q_beta", "q": 0.1},
    {"min": 1.5, "max": 3.0, "distribution": "inv_log_uniform"}, {"min": 0, "max": 3, "distribution": "q_log_uniform"},
    {"min": "a", "max": 2}, {"values": []}, {"values": [1], "q": 1}, {"distribution": "gaussian"},
    {"min": True, "max": 3}, {"value": 1, "values": [1]},
    {"min": 0.0, "max": 1e-2, "distribution": "log_uniform_values"},
]


@pytest.mark.parametrize("spec", SPECS, ids=[json.dumps(s) for s in SPECS])
def test_parameter_types_are_those_of_the_wandb_schema(spec):
    want = wandb_type(spec)
    if want is None:
        with pytest.raises(ConfigError, match="^parameters.x"):
            param_type(spec, "x")
    else:
        assert param_type(spec, "x")[0] == want


def test_grid_expands_as_wandb_does():
    """Names sorted (the first varies slowest), sections nested, constants kept, int_uniform as
    range(min, max + 1) and q_uniform as numpy.arange(min, max, q) (max excluded), as W&B's grid search."""
    sweep = {"method": "grid", "parameters": {
        "train": {"parameters": {"weight_decay": {"values": [0.1, 1.0]}, "lr": {"value": 1e-3}}},
        "seed": {"min": 0, "max": 1},
        "task.train_fraction": {"min": 0.2, "max": 0.5, "q": 0.15, "distribution": "q_uniform"},
    }}
    runs = expand(sweep)
    want = [{"seed": s, "task.train_fraction": f, "train": {"weight_decay": wd, "lr": 1e-3}}
            for s in (0, 1) for f in np.arange(0.2, 0.5, 0.15).tolist() for wd in (0.1, 1.0)]
    assert runs == want and len(runs) == 8
    assert agent_args(runs[0]) == ["seed=0", "task.train_fraction=0.2", "train={'weight_decay': 0.1, 'lr': 0.001}"]
    assert len(expand({**sweep, "run_cap": 3})) == 3
    with pytest.raises(ConfigError, match="^parameters.x: .*probabilities"):
        expand({"method": "grid", "parameters": {"x": {"values": [1, 2], "probabilities": [0.5, 0.5]}}})
    with pytest.raises(ConfigError, match="^parameters.x: a grid"):
        expand({"method": "grid", "parameters": {"x": {"min": 0.0, "max": 1.0}}})


def test_random_draws_follow_the_inferred_distributions():
    sweep = {"method": "random", "run_cap": 400, "parameters": {
        "train": {"parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}},
        "train.max_steps": {"min": 100, "max": 200},  # int_uniform, as W&B infers it
        "model.preset": {"values": ["gpt-nano", "gpt-micro"], "probabilities": [0.9, 0.1]},
    }}
    a, b, c = expand(sweep, seed=1), expand(sweep, seed=1), expand(sweep, seed=2)
    assert a == b and a != c and len(a) == 400
    assert all(1e-4 <= r["train"]["lr"] <= 1e-2 for r in a)
    assert all(isinstance(r["train.max_steps"], int) and 100 <= r["train.max_steps"] <= 200 for r in a)
    assert 0.85 < sum(r["model.preset"] == "gpt-nano" for r in a) / 400 < 0.95  # probabilities are used
    assert len(expand(sweep, count=3, seed=1)) == 3


def test_the_command_line_of_a_run_is_what_wandb_agent_passes(root):
    """A section arrives as train={'weight_decay': 0.1}: it sets that key and keeps the section's others."""
    run = {"task.train_fraction": 0.4, "train": {"weight_decay": 0.1, "stop_at": None}}
    cfg = load(f"{root}/configs/grokking.yaml", agent_args(run))
    assert cfg.task.train_fraction == 0.4 and cfg.train.weight_decay == 0.1 and cfg.train.stop_at is None
    assert cfg.train.lr == load(f"{root}/configs/grokking.yaml").train.lr  # the rest of train is the YAML's


def test_sweep_errors_name_the_key():
    ok = {"x": {"values": [1]}}
    for sweep, key in [({"method": "bayes", "parameters": ok}, "method"),
                       ({"method": "random", "parameters": ok}, "run_cap"),
                       ({"method": "grid", "parameters": ok, "early_terminate": {"type": "hyperband"}},
                        "early_terminate"),
                       ({"method": "grid", "parameters": ok, "paramters": {}}, "paramters"),
                       ({"method": "grid", "parameters": {"x": {"vals": [1]}}}, "parameters.x"),
                       ({"method": "grid", "parameters": {"x": {"min": 2, "max": 1}}}, "parameters.x")]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            expand(sweep)
    with pytest.raises(ConfigError, match="^command"):
        base_command({"command": ["python", "other.py"]})
    with pytest.raises(ConfigError, match="^command"):
        base_command({"command": ["python", "-m", "lab", "train", "${args}"]})  # --key=value


SHIPPED = {"grokking.yaml": 8, "addition.yaml": 8, "grokking-threshold.yaml": 10,  # runs each makes
           "grokking-arrivals.yaml": 12}


@pytest.mark.parametrize("name", sorted(p.name for p in Path(f"{ROOT}/configs/sweeps").glob("*.yaml")))
def test_shipped_sweeps_are_valid_wandb_sweeps(name):
    sweep = yaml.safe_load(open(f"{ROOT}/configs/sweeps/{name}"))
    jsonschema.Draft7Validator(SCHEMA, format_checker=FORMATS).validate(sweep)
    assert len(expand(sweep)) == SHIPPED[name]
    assert base_command(sweep)[0].startswith("configs/")
    for run in expand(sweep):
        load(f"{ROOT}/{base_command(sweep)[0]}", [*base_command(sweep)[1:], *agent_args(run)])  # every run loads


TINY = ["task.p=11", "train.batch_size=16", "model.preset=gpt-nano", "model.n_layer=1", "train.max_steps=20",
        "train.eval_every=10", "log.every=5", "log.wandb=false", "train.threads=1"]


def _sweep_file(tmp_path, fractions):
    sweep = {"name": "tiny", "method": "grid", "parameters": {"task.train_fraction": {"values": fractions}},
             "command": ["${env}", "python", "-m", "lab", "train", f"{ROOT}/configs/grokking.yaml", *TINY,
                         "${args_no_hyphens}"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_options_go_anywhere_among_the_overrides(tmp_path, capsys):
    from lab.__main__ import main

    code = main(["sweep", str(_sweep_file(tmp_path, [0.3, 0.5])), "train.lr=0.002", "--dir", str(tmp_path),
                 "seed=3", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "2 runs" in out and out.count("train.lr=0.002 seed=3") == 2
    assert not (tmp_path / "tiny").exists()  # a dry run writes nothing


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


def test_run_report(tmp_path, tiny_modular):
    result = train(tiny_modular(tmp_path, "train.max_steps=20"))
    rep = report(result.run_dir)
    assert rep["kind"] == "run" and rep["final"]["step"] == 20
    assert (result.run_dir / "report.png").stat().st_size > 10_000
    with pytest.raises(RunError, match="neither a run"):
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


def test_a_sweep_runs_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """The sweep file's config paths resolve against the file's folder or a folder above it (the
    repository), not the working directory: a sweep launched elsewhere runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sweep = f"{ROOT}/configs/sweeps/grokking.yaml"
    args = ["sweep", sweep, "--count", "1", "--dir", str(tmp_path / "sweeps"), "train.max_steps=4", "task.p=11",
            "model.preset=gpt-nano", "train.batch_size=16", "train.eval_every=2", "log.wandb=false", "train.threads=1"]
    assert main(args) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "1 runs, 0 failed" in out
    run = next((tmp_path / "sweeps" / "grokking-fraction-wd").glob("000-*"))
    assert (run / "summary.json").exists()
    lost = tmp_path / "s.yaml"  # a config that is nowhere: named, before any run starts
    lost.write_text("name: s\nmethod: grid\nparameters: {seed: {values: [0]}}\n"
                    "command: [python, -m, lab, train, nowhere.yaml, '${args_no_hyphens}']\n")
    with pytest.raises(ConfigError, match="^command: nowhere.yaml is neither beside"):
        run_sweep(lost, tmp_path / "sw", dry_run=True)
