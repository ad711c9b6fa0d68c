import glob
import os

import pytest

from lab.__main__ import main
from lab.config import Config, ConfigError, load


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "../configs/*.yaml"))))
def test_every_config_loads(path):
    cfg = load(path)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("override,key", [
    ("task.nope=1", "task.nope"),
    ("model.n_layer=abc", "model.n_layer"),
    ("train.lr=fast", "train.lr"),
    ("task.n_digits=0", "task.n_digits"),
    ("train.max_steps=0", "train.max_steps"),
    ("task.loss_on=half", "task.loss_on"),
    ("model.preset=gpt-9", "model.preset"),
    ("task.p=11", "task.p"),  # a modular key on the addition task
    ("train.resume=/nonexistent", "train.resume"),
    ("train.schedule=linear", "train.schedule"),
    ("model.position=alibi", "model.position"),
    ("model.position=absolute+absolute", "model.position"),
    ("model.position=", "model.position"),
    ("train.muon_ns_steps=0", "train.muon_ns_steps"),
])
def test_addition_config_errors_name_the_key(root, override, key):
    with pytest.raises(ConfigError) as e:
        load(f"{root}/configs/addition.yaml", [override])
    assert str(e.value).startswith(key), str(e.value)


@pytest.mark.parametrize("override,key", [
    ("task.train_fraction=1.5", "task.train_fraction"),
    ("task.op=x^5", "task.op"),
    ("task.label_noise=1.0", "task.label_noise"),
    ("model.position=coupled", "model.position"),  # no digits of known significance
])
def test_modular_config_errors_name_the_key(root, override, key):
    with pytest.raises(ConfigError) as e:
        load(f"{root}/configs/grokking.yaml", [override])
    assert str(e.value).startswith(key), str(e.value)


def test_division_needs_a_prime(root):
    with pytest.raises(ConfigError, match=r"^task.p: 98 is not prime"):
        load(f"{root}/configs/grokking.yaml", ["task.op=x/y", "task.p=98"])
    load(f"{root}/configs/grokking.yaml", ["task.op=x*y", "task.p=98"])  # fine without division


def test_overrides_are_typed(root):
    cfg = load(f"{root}/configs/addition.yaml", ["model.n_layer=2", "train.lr=3e-3", "train.stop_at=null"])
    assert cfg.model.n_layer == 2 and cfg.train.lr == 3e-3 and cfg.train.stop_at is None


def test_cli_bad_config_exits_2_and_writes_nothing(root, tmp_path, capsys):
    code = main(["train", f"{root}/configs/addition.yaml", "task.n_digits=0", f"log.dir={tmp_path}/runs"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: task.n_digits")
    assert not os.path.exists(f"{tmp_path}/runs")
    assert main(["train", f"{root}/configs/addition.yaml", "lr"]) == 2
    assert main(["train", f"{root}/configs/missing.yaml"]) == 2


@pytest.mark.parametrize("override,key", [
    ("model.n_embd=130", "model.n_embd"),  # not divisible by the 8 heads: was a traceback after config.yaml
    ("task.n_heldout=100000000000", "task.n_heldout"),  # was a 1.46 TiB allocation
    ("model.n_head=128", "model.position"),  # rotary needs an even head size; 128 / 128 = 1
])
def test_failed_starts_are_one_line_exit_2_and_write_nothing(root, tmp_path, capsys, override, key):
    code = main(["train", f"{root}/configs/addition.yaml", override, f"log.dir={tmp_path}/runs", "log.wandb=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"config error: {key}"), err
    assert not os.path.exists(f"{tmp_path}/runs")


def test_a_failure_while_building_the_run_writes_nothing(root, tmp_path, capsys, monkeypatch):
    """Whatever the validation misses and the task or model refuses is still a start-up error."""
    import lab.build

    def refuse(cfg):
        raise ValueError("task.n_digits: refused by the task")

    monkeypatch.setattr(lab.build, "make_task", refuse)
    code = main(["train", f"{root}/configs/addition.yaml", f"log.dir={tmp_path}/runs", "log.wandb=false"])
    assert code == 2 and capsys.readouterr().err.strip() == "config error: task.n_digits: refused by the task"
    assert not os.path.exists(f"{tmp_path}/runs")


@pytest.mark.parametrize("command", ["train", "tasks", "compress", "decompress", "dump", "sweep", "report",
                                     "dashboard"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: python -m lab {command}")
    if command in ("train", "compress", "dump"):  # the config keys, with types, defaults and docs
        assert "train.lr" in out and "float = 0.001" in out and "Peak learning rate of AdamW." in out
        assert "auto | all | answer" in out  # choices
        assert "task.name=multiplication" in out and "task.m_digits" in out  # every task's own options


def test_lab_tasks_lists_every_task_with_options_and_floors(capsys):
    from lab.tasks import TASKS

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert f"\n{name}: " in f"\n{out}"
    assert "floor 52.85 bits/example" in out and "task.train_fraction (float = 0.3)" in out


def test_choices_are_typed(root):
    with pytest.raises(ConfigError, match=r"^train.accelerator: Invalid value 'tpu', expected one of"):
        load(f"{root}/configs/addition.yaml", ["train.accelerator=tpu"])
    with pytest.raises(ConfigError, match=r"^task.op: Invalid value"):
        load(f"{root}/configs/grokking.yaml", ["task.op=x^5"])
