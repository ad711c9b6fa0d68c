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
