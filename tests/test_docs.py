"""The README and docs/ say only what runs: every command they show names a make target, a `python -m
lab` command, a config and a script that exist (a `lab train` command's config and overrides load),
every link points at a file that exists, and the README stays a front door (at most 200 lines)."""

import re
import shlex
from pathlib import Path

import pytest

from lab.__main__ import COMMANDS
from lab.config import load

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PREFIXES = ("make ", "python -m lab ", ".venv/bin/python ", "python experiments/", "python tests/", "torchrun ",
            "srun ")
PLACEHOLDER = re.compile(r"<|>|\bRUN\b|RUN_DIR|\.\.\.|ENTITY|SWEEP_ID|MASTER|\$|=[A-Z][A-Z_]*$")


def commands(page: Path) -> list[str]:
    """The shell commands a page shows: the lines of its bash code blocks (continuations joined, comments
    cut) and the code spans that start like a command."""
    text = page.read_text()
    out = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("", "bash", "sh"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(PREFIXES):
                out.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(PREFIXES) and "..." not in span]
    return out


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def check(cmd: str) -> None:
    words = shlex.split(cmd)
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        assert targets and set(targets) <= make_targets(), f"{cmd}: no such make target"
        return
    if "-m" in words and words[words.index("-m") + 1] == "lab":  # python -m lab, torchrun/srun ... -m lab
        args = words[words.index("-m") + 2 :]
        assert args and args[0] in COMMANDS, f"{cmd}: no such command"
        files = [a for a in args if a.endswith((".yaml", ".yml")) and not PLACEHOLDER.search(a)]
        assert all((ROOT / f).is_file() for f in files), f"{cmd}: a file does not exist"
        if args[0] == "train" and files and not any(PLACEHOLDER.search(a) or a.startswith("train.resume=")
                                                    for a in args[1:]):
            load(ROOT / files[0], [a for a in args[2:] if "=" in a and not a.startswith("-")])
        return
    scripts = [w for w in words if w.endswith(".py")]
    assert scripts and all((ROOT / s).is_file() for s in scripts), f"{cmd}: the script does not exist"
    configs = [w for w in words if w.endswith(".yaml") and not PLACEHOLDER.search(w)]
    assert all((ROOT / c).is_file() for c in configs), f"{cmd}: a config does not exist"


@pytest.mark.parametrize("page", PAGES, ids=[p.name if p.parent == ROOT else f"docs/{p.name}" for p in PAGES])
def test_every_command_a_page_shows_runs_and_every_link_resolves(page):
    shown = commands(page)
    for cmd in shown:
        check(cmd)
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: link {target} points at nothing"


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert len(commands(ROOT / "README.md")) >= 8  # set-up, tests, the three targets, overrides (checked above)
    for page in (ROOT / "docs").glob("*.md"):  # every page is reachable from the README's index
        assert page.name == "README.md" or f"docs/{page.name}" in readme, page.name


def test_the_check_catches_what_does_not_run():
    for bad in ("make nonesuch", "python -m lab trian configs/grokking.yaml", "python -m lab train configs/nope.yaml",
                "python -m lab train configs/grokking.yaml train.lrr=1", "python experiments/nope.py"):
        with pytest.raises((AssertionError, Exception)):
            check(bad)
