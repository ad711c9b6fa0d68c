"""Install like a library: the package admits any torch 2.x, the install step pins it; the test set-up
stays honest (strict markers, no helpers imported from conftest)."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_admits_any_torch_2_and_make_install_pins_it():
    deps = {r.name: r for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                                   ["dependencies"])}
    for version in ("2.1.0", "2.5.1", "2.13.0", "2.20.0"):
        assert deps["torch"].specifier.contains(version), version
    assert not deps["torch"].specifier.contains("1.13.0") and not deps["torch"].specifier.contains("3.0.0")
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert [str(p) for p in pins if p.name == "torch"] == ["torch==2.13.0"]
    install = re.search(r"^install:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert install.count("-c constraints.txt") == 2  # torch first, then the lab, both under the pin


def test_markers_are_strict_and_no_test_imports_from_conftest():
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in opts["addopts"]
    for path in (ROOT / "tests").glob("test_*.py"):
        assert not re.search(r"^\s*(from conftest import|import conftest)", path.read_text(), re.M), path.name



def test_the_lower_bounds_are_the_tested_versions():
    """Every runtime dependency but torch is pinned in constraints.txt (what `make install`, and so CI,
    installs and tests) at exactly its lower bound in pyproject.toml: the oldest version admitted is the
    one tested."""
    deps = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = {r.name.lower(): r for r in map(Requirement, (x for x in lines if x.strip() and not x.startswith("#")))}
    for dep in deps:
        if dep.name == "torch":
            continue
        low = next((s.version for s in dep.specifier if s.operator == ">="), None)
        assert low is not None, f"{dep.name} has no lower bound"
        assert str(pins[dep.name.lower()].specifier) == f"=={low}", (dep.name, low, pins.get(dep.name.lower()))
