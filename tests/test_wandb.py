import pytest

from lab.config import ConfigError
from lab.loggers import wandb_mode
from lab.run import train


def test_wandb_mode_never_needs_a_login(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "")
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(ConfigError, match="^WANDB_MODE"):
        wandb_mode()


def test_offline_wandb_run_is_written_in_the_run_directory(monkeypatch, tmp_path, tiny_modular):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = train(tiny_modular(tmp_path, "log.wandb=true", "train.max_steps=10"))
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_a_resumed_run_is_a_new_wandb_run_in_the_same_group(monkeypatch, tmp_path, tiny_modular):
    """wandb cannot rewind an offline run: the resumed stretch goes to a new run `<name>-from-<step>-...`
    in the run's group, so no step is logged twice to one wandb run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = train(tiny_modular(tmp_path, "log.wandb=true", "train.max_steps=10"))
    resumed = train(tiny_modular(tmp_path, "log.wandb=true", "train.max_steps=20", f"train.resume={first.run_dir}"))
    ids = sorted(p.name.split("-", 3)[-1] for p in (first.run_dir / "wandb").glob("offline-run-*"))
    assert len(ids) == 2 and ids[0] == "t" and ids[1].startswith("t-from-10-")
    exp = [lg for lg in resumed.trainer.loggers if lg.name != "jsonl"][0].experiment
    assert exp.group == "t" and exp.config["resumed_from"] == {"run": "t", "step": 10}
