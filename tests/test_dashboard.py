"""``python -m hpo.dashboard`` serves studies made by ``hpo.search``, live and safely, with notes and artifacts."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note, save_note

from hpo.notes import (
    artifact_store_for,
    set_retrain_section,
    study_note_markdown,
    upload_trial_artifacts,
    write_study_note,
)
from hpo.space import DEFAULT_SPACE
from hpo.storage import files_dir
from hpo.worker import FINISHED
from tests.conftest import write_cifar_batches
from tests.dashutil import attrs, dashboard_cmd, replay_with_artifacts, serve
from tests.searchutil import TINY, search_cmd

TRIAL_ATTRS = {"config", "val_acc_curve", "val_loss_curve", "epochs_run", "train_seconds", "images_per_second"}
TRIAL_ATTRS |= {"device", "seed"}
LOCKED = "database is locked"


N_TRIALS = 4


@dataclass
class LiveRun:
    """A real 2-worker search on tiny data, watched through the dashboard while it ran."""

    db: Path
    returncode: int
    search_output: str
    dashboard_output: str
    polls: int
    finished_seen: list[int]  # finished trials in each successful poll
    failures: list[tuple[int, bytes]]  # non-200 polls
    note_status: int | None  # the dashboard's answer to a note saved mid-search
    final: dict  # the study as the dashboard showed it after the search


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveRun:
    """Run ``hpo.search --workers 2`` and poll the dashboard API every 0.2 s until it ends (saving a note once).

    The study file it leaves is what the other tests serve (read-only: copy it to change it).
    """
    root = tmp_path_factory.mktemp("live")
    data = write_cifar_batches(root / "cifar")
    db = root / "studies" / "cifar10.db"
    url = f"sqlite:///{db}"
    args = ["--storage", url, "--data-dir", str(data), "--epochs", "2", "--n-trials", str(N_TRIALS), *TINY]
    with open(root / "search.out", "w") as out, open(root / "search.err", "w") as err:
        search = subprocess.Popen(search_cmd(*args, "--workers", "2"), stdout=out, stderr=err, text=True)
    try:
        deadline = time.time() + 120
        while not _has_study(db):
            assert search.poll() is None and time.time() < deadline, (root / "search.err").read_text()
            time.sleep(0.1)
        seen, polls, failures, note_status = [], 0, [], None
        with serve("--storage", url, logs=root / "dash") as dash:
            while True:
                running = search.poll() is None
                status, body = dash.get(f"/api/studies/{dash.study_id}")
                polls += 1
                if status != 200:
                    failures.append((status, body[:300]))
                else:
                    detail = json.loads(body)
                    trials = detail["trials"]
                    seen.append(sum(t["state"] in ("Complete", "Pruned") for t in trials))
                    if note_status is None and any(t["state"] == "Running" for t in trials):
                        # A user editing the search's note mid-search: the dashboard writes while the workers write.
                        version = detail["note"]["version"] + 1
                        note_status = dash.put_json(
                            f"/api/studies/{dash.study_id}/note", {"version": version, "body": "written mid-search"}
                        )
                if not running:
                    break
                time.sleep(0.2)
            final = dash.study()
        search.wait(timeout=120)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
    search_output = (root / "search.out").read_text() + (root / "search.err").read_text()
    return LiveRun(db, search.returncode, search_output, dash.output(), polls, seen, failures, note_status, final)


def ran_trials(trials: list[dict]) -> list[dict]:
    """The dashboard's trials less the queued ones. With two workers, the one that loses the race for the last
    slot puts its trial back untouched (WAITING) for a later run: at most one such trial, and nothing else."""
    waiting = [t for t in trials if t["state"] == "Waiting"]
    assert len(waiting) <= 1 and all(not t["params"] and not t["artifacts"] for t in waiting), waiting
    return [t for t in trials if t["state"] != "Waiting"]


def copy_study(db: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    return dest


def test_dashboard_reads_live_while_two_workers_write(live):
    assert live.returncode == 0, live.search_output
    assert not live.failures, live.failures
    for output in (live.search_output, live.dashboard_output):
        assert LOCKED not in output, output
    assert "Traceback" not in live.dashboard_output and "Exception" not in live.dashboard_output, live.dashboard_output
    assert live.polls >= 5 and min(live.finished_seen) < N_TRIALS  # it watched the search run, not just its result
    assert live.note_status == 204 and live.final["note"]["body"] == "written mid-search"
    states = [t["state"] for t in live.final["trials"]]
    assert states.count("Complete") + states.count("Pruned") == N_TRIALS and "Running" not in states
    # The search itself attached each trial's learning curve and config for the dashboard.
    for trial in ran_trials(live.final["trials"]):
        names = sorted(a["filename"] for a in trial["artifacts"])
        assert names == [f"trial-{trial['number']}-config.json", f"trial-{trial['number']}-learning-curve.png"], names
    study = optuna.load_study(study_name="cifar10", storage=f"sqlite:///{live.db}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == N_TRIALS


def test_dashboard_serves_a_searched_study(live, tmp_path):
    with serve("--storage", f"sqlite:///{live.db}", logs=tmp_path) as dash:
        studies = dash.get_json("/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["cifar10"] and studies[0]["study_id"] == dash.study_id
        assert "hpo_settings" in attrs(studies[0]["user_attrs"])

        study = dash.study()
        assert study["objective_names"] == ["validation accuracy"] and study["directions"] == ["maximize"]
        assert len(ran_trials(study["trials"])) == N_TRIALS
        for trial in ran_trials(study["trials"]):
            assert trial["state"] in ("Complete", "Pruned")
            user = attrs(trial["user_attrs"])
            assert set(user) >= TRIAL_ATTRS, trial["user_attrs"]
            curve = json.loads(user["val_acc_curve"])
            steps = [v["step"] for v in trial["intermediate_values"]]
            assert steps == list(range(1, len(curve) + 1)) and int(user["epochs_run"]) == len(curve)
            assert [v["value"] for v in trial["intermediate_values"]] == pytest.approx(curve, abs=1e-5)
        best = study["best_trials"][0]
        assert best["values"][0] == max(t["values"][0] for t in study["trials"] if t["state"] == "Complete")

        status, page = dash.get(f"/dashboard/studies/{dash.study_id}")
        assert status == 200 and b"<html" in page.lower()
        assert dash.get_json("/api/meta")["artifact_is_available"] is True
    assert "Traceback" not in dash.output()


def test_artifacts_come_from_the_default_folder_or_artifacts_and_host_is_obeyed(live, tmp_path):
    db = copy_study(live.db, tmp_path / "a" / "cifar10.db")
    url = f"sqlite:///{db}"
    shutil.copytree(live.db.parent / "cifar10-artifacts", db.parent / "cifar10-artifacts")
    trial = live.final["trials"][0]
    path = f"/artifacts/{{}}/{trial['trial_id']}/{trial['artifacts'][0]['artifact_id']}"
    with serve("--storage", url, logs=tmp_path / "l1") as dash:  # default: <study folder>/<study>-artifacts
        assert dash.get(path.format(dash.study_id))[0] == 200
    moved = (db.parent / "cifar10-artifacts").rename(tmp_path / "store")
    with serve("--storage", url, "--artifacts", str(moved), logs=tmp_path / "l2") as dash:
        assert dash.get(path.format(dash.study_id))[0] == 200
    assert not (db.parent / "cifar10-artifacts").exists()  # --artifacts given: the default folder is not used
    with serve("--storage", url, "--host", "127.0.0.2", logs=tmp_path / "l3") as dash:
        assert dash.base.startswith("http://127.0.0.2:") and dash.get("/api/meta")[0] == 200
        port = int(dash.base.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening on 127.0.0.2 only


def _has_study(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return bool(conn.execute("SELECT count(*) FROM studies").fetchone()[0])
    except sqlite3.OperationalError:
        return False  # tables not created yet


def test_note_and_artifacts_show_in_the_dashboard(live, tmp_path):
    db = copy_study(live.db, tmp_path / "studies" / "cifar10.db")
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="cifar10", storage=url)
    settings = study.user_attrs["hpo_settings"]
    write_study_note(study, settings, "CIFAR-10 format test data: 90 train / 10 validation images", N_TRIALS)
    set_retrain_section(study, "best config retrained: **test accuracy 0.2100** (95% CI 0.18-0.24)")

    # What the objective will do: record the trial's curves, upload its artifacts, then tell.
    store = artifact_store_for("cifar10", files_dir(url))
    real = max(study.get_trials(states=FINISHED), key=lambda t: t.user_attrs["epochs_run"])
    trial, ids = replay_with_artifacts(study, real, store)
    with pytest.raises(ValueError, match="before study.tell"):
        upload_trial_artifacts(study, study.trials[-1], store)

    with serve("--storage", url, logs=tmp_path) as dash:
        detail = dash.study()
        note = detail["note"]["body"]
        lr = DEFAULT_SPACE["lr_decoupled"]
        assert "## Search space" in note and f"`lr_decoupled` | {lr.low:g} … {lr.high:g} (log scale)" in note
        assert "90 train / 10 validation" in note and "Hyperband over epochs" in note
        assert note.rstrip().endswith(
            "## Retrain\n\nbest config retrained: **test accuracy 0.2100** (95% CI 0.18-0.24)"
        )
        shown = next(t for t in detail["trials"] if t["trial_id"] == trial._trial_id)
        names = {a["filename"]: a for a in shown["artifacts"]}
        assert set(names) == {f"trial-{trial.number}-learning-curve.png", f"trial-{trial.number}-config.json"}
        assert {a["artifact_id"] for a in shown["artifacts"]} == set(ids)
        png = names[f"trial-{trial.number}-learning-curve.png"]
        status, body = dash.get(f"/artifacts/{dash.study_id}/{trial._trial_id}/{png['artifact_id']}")
        assert status == 200 and body.startswith(b"\x89PNG") and png["mimetype"] == "image/png"
        cfg = names[f"trial-{trial.number}-config.json"]
        status, body = dash.get(f"/artifacts/{dash.study_id}/{trial._trial_id}/{cfg['artifact_id']}")
        assert status == 200 and json.loads(body) == real.user_attrs["config"]
    assert sorted(p.name for p in (db.parent / "cifar10-artifacts").iterdir()) == sorted(ids)


def test_note_sections(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    settings = {
        "epochs": 4,
        "widths": [8, 16, 16],
        "train_subset": 5000,
        "batch_size": 128,
        "sampler": "random",
        "pruner": "none",
        "space": {"momentum": 0.9, "dropout": None, "scheduler": {"choices": ["cosine", "step"]}},
    }
    md = study_note_markdown("s", settings, "data", 12)
    assert "| `momentum` | fixed at `0.9` |" in md and "| `dropout` | not sampled (config default) |" in md
    assert "| `scheduler` | `cosine`, `step` |" in md and "at most 5000" in md and "all 4 epochs" in md
    set_retrain_section(study, "first")  # no note yet: the section alone
    assert get_note(study) == "## Retrain\n\nfirst\n"
    write_study_note(study, settings, "data", 12)  # rewriting the note keeps the retrain result
    assert get_note(study).startswith("# Study `s`") and get_note(study).endswith("## Retrain\n\nfirst\n")
    # Replaced in place; a section a user added after it survives.
    save_note(study, get_note(study) + "\n## My notes\n\nkeep me\n")
    set_retrain_section(study, "## Retrain\n\nsecond")
    body = get_note(study)
    assert "first" not in body and body.count("## Retrain") == 1
    assert body.index("second") < body.index("## My notes") and body.endswith("keep me\n")
    write_study_note(study, settings, "data", 20, retrain_md="third")
    assert "second" not in get_note(study) and get_note(study).endswith("## Retrain\n\nthird\n")


def _one_line_error(*args: str, cwd: Path) -> str:
    done = subprocess.run(dashboard_cmd(*args), capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr


def test_missing_or_wrong_study_is_one_line(live, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    err = _one_line_error("--storage", f"sqlite:///{tmp_path / 'nope.db'}", cwd=repo)
    assert "no study file" in err and "python -m hpo.search" in err
    assert not (tmp_path / "nope.db").exists()  # no empty study file left behind

    # The default location, from another folder: names the file and the command that creates it.
    err = _one_line_error("--study-name", "mnist", cwd=tmp_path)
    assert "no study file studies/mnist.db" in err and "python -m hpo.search --study-name mnist`" in err
    assert not (tmp_path / "studies").exists()

    err = _one_line_error("--storage", f"sqlite:///{live.db}", "--study-name", "other", cwd=repo)
    assert "no study 'other'" in err and "'cifar10'" in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        err = _one_line_error("--storage", f"sqlite:///{live.db}", "--port", port, cwd=repo)
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pass another --port" in err
    for host in ("999.1.1.1", "10.254.254.254"):  # not a host name; an address this machine does not have
        err = _one_line_error("--storage", f"sqlite:///{live.db}", "--host", host, "--port", "0", cwd=repo)
        assert f"cannot listen on {host}:0" in err and "pass another --host" in err
    err = _one_line_error("--storage", f"sqlite:///{live.db}", "--port", "70000", cwd=repo)
    assert "--port must be in 0..65535" in err


@pytest.mark.parametrize(("epochs", "expected"), [(1, "(1 epoch)"), (3, "(3 epochs)")])
def test_a_trials_learning_curve_is_titled_with_its_epochs(tmp_path, monkeypatch, epochs, expected):
    import hpo.notes

    titles = []
    real = hpo.notes.plot_learning_curve
    monkeypatch.setattr(hpo.notes, "plot_learning_curve", lambda *a: titles.append(a[3]) or real(*a))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    trial = study.ask()
    for name, value in {
        "val_acc_curve": [0.3] * epochs,
        "val_loss_curve": [2.0] * epochs,
        "epochs_run": epochs,
    }.items():
        trial.set_user_attr(name, value)
    upload_trial_artifacts(study, trial, artifact_store_for("s", tmp_path))
    assert titles == [f"s trial 0 {expected}"]
