"""Helpers for tests that run ``python -m hpo.search`` as a real process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

TINY = ["--widths", "8", "16", "16", "--batch-size", "16", "--train-subset", "0", "--device", "cpu", "--no-retrain"]


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpo.search", *args]


def run_search(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def states(storage: str, name: str = "cifar10") -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=storage)
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished(storage: str, name: str = "cifar10") -> int:
    s = states(storage, name)
    return s.get("COMPLETE", 0) + s.get("PRUNED", 0)


def wait_for_running(storage: str, name: str = "cifar10", timeout: float = 60) -> None:
    """Block until the study has a RUNNING trial that has reported at least one epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                return
        except KeyError:
            pass  # the study is not created yet
        time.sleep(0.2)
    raise AssertionError("no trial started running in time")
