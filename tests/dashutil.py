"""Helpers for tests that run ``python -m hpo.dashboard`` as a real server process."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna

URL_LINE = re.compile(r"optuna-dashboard: (http://[^/\s]+)/dashboard/studies/(\d+)")


@dataclass
class Dashboard:
    base: str  # http://127.0.0.1:PORT
    study_id: int
    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, f"GET {path}: HTTP {status} {body[:300]!r}\n{self.output()}"
        return json.loads(body)

    def put_json(self, path: str, data: dict) -> int:
        req = urllib.request.Request(
            self.base + path, data=json.dumps(data).encode(), method="PUT", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def study(self) -> dict:
        return self.get_json(f"/api/studies/{self.study_id}")

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def dashboard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpo.dashboard", *args]


@contextlib.contextmanager
def serve(*args: str, logs: Path, timeout: float = 60) -> Iterator[Dashboard]:
    """Run ``python -m hpo.dashboard ARGS --port 0`` until the block ends; yields where it listens."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "dashboard.stdout", logs / "dashboard.stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(dashboard_cmd(*args, "--port", "0"), stdout=fo, stderr=fe, text=True)
    try:
        deadline = time.time() + timeout
        while not (match := URL_LINE.search(out.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(
                    f"dashboard did not start (exit {proc.poll()}):\n{out.read_text()}{err.read_text()}"
                )
            time.sleep(0.1)
        yield Dashboard(match.group(1), int(match.group(2)), proc, out, err)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def attrs(items: list[dict]) -> dict[str, str]:
    """The dashboard's ``[{key, value}]`` attribute lists as a dict (values are JSON text for non-scalars)."""
    return {a["key"]: a["value"] for a in items}


def replay_with_artifacts(study, source, artifact_store) -> tuple[object, list[str]]:
    """A new trial with ``source``'s user attributes and its artifacts uploaded before ``tell``, as the objective
    does; returns the told trial and its artifact ids."""
    from hpo.notes import upload_trial_artifacts

    # A running trial with the same parameters, created directly: enqueue + ask would pop a trial that a search
    # left queued (WAITING) before this one.
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params=source.params, distributions=source.distributions
    )
    trial = optuna.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=template))
    for key, value in source.user_attrs.items():
        trial.set_user_attr(key, value)
    for step, value in source.intermediate_values.items():
        trial.report(value, step)
    ids = upload_trial_artifacts(study, trial, artifact_store)
    study.tell(trial, source.value if source.value is not None else 0.0)
    return trial, ids
