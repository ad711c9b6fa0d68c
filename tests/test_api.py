"""The Python API (`import lab`): a run trained from a path, a dict or a Config, read back as rows, a
series, a figure and a sweep, as a notebook uses it."""

import subprocess
import sys

import pytest

import lab
from lab.errors import ConfigError, RunError

TINY = ["task.p=11", "train.batch_size=16", "model.preset=gpt-nano", "model.n_layer=1", "train.max_steps=20",
        "train.eval_every=10", "log.every=5", "train.threads=1", "log.wandb=false", "log.progress_bar=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("api")
    return lab.train(f"{root}/configs/grokking.yaml", [*TINY, f"log.dir={out}/runs", "log.name=a"])


def test_a_run_trained_from_python_reads_back_as_the_command_lines(run):
    from lab.loggers import read_metrics

    assert run.dir.name == "a" and run.summary["steps"] == 20 and run.config.task.p == 11
    assert run.rows == read_metrics(run.dir / "metrics.jsonl") and run.rows[-1]["step"] == 20
    steps, acc = run.series("val/exact_match")
    assert steps == [10, 20] and acc[-1] == run.summary["val/exact_match"]
    again = lab.load_run(run.dir)
    assert again.summary == run.summary and again.rows == run.rows


def test_the_figure_is_drawn_again_from_the_metrics(run):
    path = run.figure()
    assert path == run.dir / "grokking.png" and path.stat().st_size > 10_000


def test_a_frame_needs_pandas_and_says_so(run):
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            run.frame()
    else:
        df = run.frame()
        assert list(df.index) == [r["step"] for r in run.rows] and df.loc[20, "val/exact_match"] == run.summary[
            "val/exact_match"]


def test_a_dict_config_and_a_sweep_of_runs(tmp_path, run):
    runs = tmp_path / "sweep"
    b = lab.train({"task": {"name": "modular", "p": 11}, "train": {"weight_decay": 0.1}},
                  [*TINY, f"log.dir={runs}", "log.name=b"])
    c = lab.train(run.config, ["train.weight_decay=1.0", f"log.dir={runs}", "log.name=c"])  # a Config, changed
    assert b.config.train.weight_decay == 0.1 and c.config.train.weight_decay == 1.0 and c.config.task.p == 11
    more = lab.train(None, [f"train.resume={b.dir}", "train.max_steps=30"])  # resumed with a raised budget
    assert more.dir == b.dir and more.summary["steps"] == 30
    sweep = lab.load_sweep(runs)
    assert [r.dir.name for r in sweep.runs] == ["b", "c"]
    rep = sweep.report()
    assert rep["runs"] == 2 and "train.weight_decay" in rep["varying"]


def test_bad_input_names_the_problem(tmp_path, root):
    with pytest.raises(ConfigError, match="^train.lrr"):
        lab.train(f"{root}/configs/grokking.yaml", ["train.lrr=1"])
    with pytest.raises(RunError, match="not a run directory"):
        lab.load_run(tmp_path)
    with pytest.raises(RunError, match="holds no runs"):
        lab.load_sweep(tmp_path)


def test_import_lab_imports_no_torch():
    code = "import sys, lab; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
