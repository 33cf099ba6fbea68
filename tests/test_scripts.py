"""The ``hpo-*`` console scripts the package installs run the modules' command lines."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared() -> dict[str, str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_every_module_with_a_cli_has_its_script():
    assert declared() == {
        f"hpo-{name}": f"hpo.{name}:cli" for name in ("search", "train", "export", "retrain", "report", "dashboard")
    }
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("hpo-")}
    assert installed == declared()  # what `pip install -e .` put on the PATH


def test_scripts_run_the_commands(tmp_path):
    missing = [name for name in declared() if shutil.which(name) is None]
    assert not missing, f"not on PATH: {missing} (pip install -e .)"
    procs = {
        name: subprocess.Popen([name, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in declared()
    }
    bad = subprocess.Popen(
        ["hpo-export", "--study-name", "nope"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        module = declared()[name].split(":")[0]
        assert proc.returncode == 0 and out.startswith(f"usage: python -m {module}"), (name, out, err)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and err.startswith("error: no study file studies/nope.db"), err
