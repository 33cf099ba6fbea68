"""Faults and bad input: trials fail alone, kills lose nothing, bad input explains itself and changes nothing."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse

import optuna
import pytest
import sqlalchemy.exc
import torch

import hpo.bench
import hpo.report
import hpo.retrain
import hpo.search
import hpo.storage
import hpo.train
from hpo.config import COMPONENTS_OFF, TrainConfig
from hpo.data import load_cifar10, train_val_split
from hpo.errors import HpoError
from hpo.objective import Objective
from hpo.space import SearchSpace
from hpo.storage import checked_study_name
from hpo.worker import run_worker
from tests.conftest import refusal, write_cifar_batches
from tests.searchutil import TINY, finished, run_search, search_cmd, states

OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def integrity(db) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()


# ---- trial-level faults end the trial, not the study ------------------------------------------------------


@pytest.fixture
def objective(tiny_data_dir):
    train_split, val_split = train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)
    base = TrainConfig(widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=3)
    space = SearchSpace.from_dict({"augmentation": "none", "scheduler": "constant"})
    return Objective(space, base, train_split, val_split, torch.device("cpu"))


def test_cuda_oom_fails_one_trial_and_the_study_goes_on(objective, monkeypatch):
    import hpo.objective

    real_train, calls = hpo.objective.train, []

    def oom_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", oom_once)
    study = optuna.create_study(direction="maximize")
    run_worker(study, objective, n_trials=2, deadline=None, bar=False)
    trials = study.trials
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["stop_reason"] == "CUDA out of memory"
    assert "OutOfMemoryError" in trials[0].user_attrs["fail_reason"]
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


def test_after_an_out_of_memory_error_the_failed_trials_tensors_are_freed_before_the_cache_is_emptied(monkeypatch):
    import weakref

    from hpo.worker import _run_trial

    held = []

    def objective(trial, origin):
        model = torch.zeros(1000)  # stands for the failed trial's model, optimizer state and activations
        held.append(weakref.ref(model))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alive_at_empty_cache = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_empty_cache.append(held[0]() is not None))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    state, error = _run_trial(study, trial, objective, trial.number)
    assert state.name == "FAIL" and error.startswith("OutOfMemoryError: CUDA out of memory")
    # Emptied once, with nothing of the trial left to hold the memory (emptying earlier returns nothing to the GPU).
    assert alive_at_empty_cache == [False]


def test_any_exception_is_recorded_with_traceback_and_repeats_stop_the_study(objective, monkeypatch):
    import hpo.objective

    def broken(*args, **kwargs):
        raise ValueError("shapes do not match")

    monkeypatch.setattr(hpo.objective, "train", broken)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(HpoError, match="3 trials in a row failed with the same error .*shapes do not match"):
        run_worker(study, objective, n_trials=10, deadline=None, bar=False)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3  # stopped instead of burning 10 trials
    assert "Traceback" in study.trials[0].user_attrs["fail_reason"]


def test_out_of_memory_in_every_trial_stops_the_study_though_each_asks_for_another_size(objective, monkeypatch):
    import hpo.objective

    sizes = iter(range(2, 100))

    def oom(*args, **kwargs):  # failed trials do not count towards n_trials: without the stop this never ends
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {next(sizes)}.00 GiB")

    monkeypatch.setattr(hpo.objective, "train", oom)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(HpoError, match="3 trials in a row failed with the same error .*CUDA out of memory"):
        run_worker(study, objective, n_trials=4, deadline=None, bar=False)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3


def test_one_error_repeated_with_other_numbers_stops_the_study_too(objective, monkeypatch):
    import hpo.objective

    values = iter([2.5, 1.878e-3, -0.25, 7])
    names = iter(["'/s/.tmp-8sz_qvnj.pt'", "'/s/.tmp-x1_aa.pt'", "'/s/.tmp-q.pt'", "'/s/.tmp-z.pt'"])

    def broken(*args, **kwargs):  # a space whose sampled combinations give no config; a checkpoint it cannot write
        raise ValueError(f"weight_decay must be in [0, 1), got {next(values)}; Permission denied: {next(names)}")

    monkeypatch.setattr(hpo.objective, "train", broken)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(HpoError, match="3 trials in a row failed with the same error"):
        run_worker(study, objective, n_trials=10, deadline=None, bar=False)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3


@pytest.mark.parametrize("where", ["inside the ask", "after the ask", "in the trial"])
def test_an_interrupt_anywhere_in_a_trial_leaves_it_failed_with_a_retry_queued(objective, monkeypatch, where):
    import hpo.objective
    import hpo.worker

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    study = optuna.create_study(direction="maximize")
    if where == "inside the ask":  # a SIGTERM once ask() has stored the RUNNING trial, before it returns it
        real_ask = study.ask

        def ask_then_signal(*args, **kwargs):
            trial = real_ask(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return trial

        monkeypatch.setattr(study, "ask", ask_then_signal)
    elif where == "after the ask":  # the signal lands between study.ask() and the trial's own handler
        monkeypatch.setattr(hpo.worker.RetryHeartbeatStaleTrialCallback, "retried_trial_number", interrupt)
    else:
        monkeypatch.setattr(hpo.objective, "train", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, objective, n_trials=2, deadline=None, bar=False)
    first, retry = study.trials
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"].startswith("interrupted")
    assert retry.state.name == "WAITING"  # the next run takes it


def test_divergence_stops_the_trial_early_with_a_reason(tiny_data_dir):
    train_split, val_split = train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)
    base = TrainConfig(
        widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=6, lr=100.0, weight_decay=0.0, momentum=0.99
    ).without(*COMPONENTS_OFF)  # the recipe's net shrugs off lr 100; the plain one blows up
    # (with momentum 0.9 it blew up with 2 threads but not with 1: 0.99 does with 1, 2 and 4)
    space = SearchSpace.from_dict(
        {k: None for k in ("lr_decoupled", "wd_decoupled", "momentum", "dropout")}
        | {"augmentation": "none", "scheduler": "constant"}
    )
    objective = Objective(space, base, train_split, val_split, torch.device("cpu"))
    study = optuna.create_study(direction="maximize")
    run_worker(study, objective, n_trials=1, deadline=None, bar=False)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["stop_reason"].startswith("diverged")
    assert trial.user_attrs["epochs_run"] < 6


# ---- bad input: one line, exit 2, no traceback, existing study untouched ----------------------------------


def bad_data(root, kind):
    folder = write_cifar_batches(root) / "cifar-10-batches-py"
    batch = folder / "data_batch_2"
    if kind == "truncated":
        batch.write_bytes(batch.read_bytes()[:1000])
    elif kind == "labels":
        entry = pickle.loads(batch.read_bytes())
        entry["labels"][0] = 42
        batch.write_bytes(pickle.dumps(entry))
    elif kind == "shape":
        entry = pickle.loads(batch.read_bytes())
        entry["data"] = entry["data"][:, :1000]
        batch.write_bytes(pickle.dumps(entry))
    return root


def test_bad_inputs_are_refused_and_leave_the_study_untouched(tiny_data_dir, tmp_path, monkeypatch, capsys):
    db = tmp_path / "s.db"
    base = ["--storage", f"sqlite:///{db}", "--epochs", "2", *TINY]
    assert run_search(*base, "--data-dir", str(tiny_data_dir), "--n-trials", "2", cwd=tmp_path).returncode == 0
    before = digest(db)
    (tmp_path / "space.yaml").write_text("augmentation: {choices: [mixup]}\n")
    (tmp_path / "a-file").write_text("not a folder")
    cases = [
        (["--sampler", "bayes"], "invalid choice: 'bayes'"),
        (["--pruner", "early"], "invalid choice: 'early'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--n-trials", "0"], "--n-trials must be at least 1"),
        (["--n-trials", "-5"], "--n-trials must be at least 1"),
        (["--timeout", "0"], "--timeout must be a positive number"),
        (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
        (["--epochs", "9"], "exists with a different search (epochs: study has 2, now 9)"),
        (["--space", str(tmp_path / "space.yaml")], "augmentation must be one of"),
        (["--space", str(tmp_path / "missing.yaml")], "cannot read space file"),
        (["--data-dir", str(tmp_path / "empty")], "cifar-10-python.tar.gz"),
        (["--data-dir", str(bad_data(tmp_path / "trunc", "truncated"))], "data_batch_2 is truncated or corrupted"),
        (["--data-dir", str(bad_data(tmp_path / "labels", "labels"))], "labels must be in 0..9"),
        (["--data-dir", str(bad_data(tmp_path / "shape", "shape"))], "uint8 rows of 3072"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU is available"))
    monkeypatch.chdir(tmp_path)
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    for extra, message in cases:
        # In this process, as the command runs it (run_cli): a new process per case would cost ~5 s of imports.
        assert message in refusal(hpo.search.main, [*base, "--data-dir", str(tiny_data_dir), *extra], capsys), extra
        assert digest(db) == before, extra
    for extra, message in (cases[0], cases[-2]):  # a bad option and bad data, as separate processes too
        args = [*base, "--data-dir", str(tiny_data_dir), *extra]
        proc = subprocess.run(
            search_cmd(*args), capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, **OFFLINE}
        )
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert digest(db) == before, extra
    assert finished(f"sqlite:///{db}") == 2 and integrity(db) == ("ok",)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("not a url", "malformed storage URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "cannot open storage"),
        ("sqlite:///{tmp}/a-file/s.db", "is writable"),
        ("sqlite:///:memory:", "names no database file"),
        ("journal:{tmp}/garbage.log", "garbage.log is not an Optuna journal file (UnicodeDecodeError)"),
        ("journal:{tmp}/words.log", "words.log is not an Optuna journal file (JSONDecodeError)"),
        ("sqlite:///file:mem?mode=memory&uri=true", "names no database file"),
    ],
)
def test_bad_storage_is_refused(tiny_data_dir, tmp_path, storage, message):
    (tmp_path / "a-file").write_text("a file where a folder should be")
    (tmp_path / "garbage.log").write_bytes(b"\x92\x00 not a journal\n")
    (tmp_path / "words.log").write_text("hello world\n")  # Optuna would append a record to it, then fail
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()}
    proc = run_search("--storage", storage.format(tmp=tmp_path), "--data-dir", str(tiny_data_dir), *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    after = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()}
    assert after == before  # no study, lock or checkpoint file made, no file changed


@pytest.mark.parametrize("module", ["search", "retrain", "report", "export", "dashboard"])
def test_a_study_name_that_is_not_a_file_name_is_refused(module, tmp_path, monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"hpo.{module}").main
    for name in ("../escape", "exp?1", "", ".hidden", "a" * 101):
        line = refusal(main, ["--study-name", name], capsys)
        assert f"{name[:40]!r}" in line and "is not a usable study name" in line
    assert list(tmp_path.iterdir()) == []
    # Names other tools may have given a study are fine where they can name a file.
    assert checked_study_name("lr sweep (2)") == "lr sweep (2)" and checked_study_name("a" * 100)


def test_a_read_only_study_file_is_refused_by_the_search_and_still_read_by_the_report(tiny_data_dir, tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    assert run_search("--storage", url, "--data-dir", str(tiny_data_dir), "--n-trials", "1", *TINY).returncode == 0
    db.chmod(0o444)
    locked = not os.access(db, os.W_OK)
    if not locked:  # root writes whatever the mode says: make the file immutable instead, where that is possible
        locked = subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode == 0
    if not locked:
        pytest.skip("cannot make a file read-only for this user here")
    try:
        before = digest(db)
        proc = run_search("--storage", url, "--data-dir", str(tiny_data_dir), "--n-trials", "2", *TINY)
        assert proc.returncode == 2 and proc.stderr == f"error: SQLite study file {db} is read-only: " + (
            "make it writable, or copy it and pass --storage with the copy\n"
        )
        with pytest.raises(HpoError, match="s.db is read-only: make it writable"):  # before training, not after
            hpo.retrain.main(["--storage", url, "--data-dir", str(tmp_path / "no-data")])
        report = subprocess.run(
            [sys.executable, "-m", "hpo.report", "--storage", url, "--output-dir", str(tmp_path / "r")],
            capture_output=True,
            text=True,
        )
        assert report.returncode == 0, report.stderr
        assert digest(db) == before
        # A read-only file in rollback-journal mode (as plain Optuna makes them) is read without switching it to WAL.
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)
        db.chmod(0o644)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        db.chmod(0o444)
        if os.access(db, os.W_OK):
            subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=True)
        export = subprocess.run(
            [sys.executable, "-m", "hpo.export", "--storage", url, "--output", "-"], capture_output=True, text=True
        )
        assert export.returncode == 0 and '"config"' in export.stdout, export.stderr
        assert journal_mode(db) == "delete"
    finally:
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)
        db.chmod(0o644)


@pytest.mark.parametrize(
    ("name", "mode", "beside"),
    [("ro", "wal", None), ("r#o %?", "wal", None), ("ro", "delete", None), ("ro", "wal", "-journal")],
    ids=["wal", "wal-odd-folder-name", "rollback-journal", "wal-with-a-journal-beside"],
)
def test_a_study_file_in_a_read_only_folder_is_still_read(tmp_path, name, mode, beside):
    # WAL: SQLite cannot make the "-shm" file a reader needs there; with no "-wal" or "-journal" file beside it
    # nobody writes, so it is read as it stands (immutable). Rollback-journal mode needs nothing beside it.
    folder = tmp_path / name
    folder.mkdir()
    db = folder / "s.db"
    url = f"sqlite:///{urllib.parse.quote(str(db))}"  # SQLAlchemy decodes it: ? and % are the path's
    study = optuna.create_study(study_name="cifar10", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0.1, 1.0), n_trials=3)
    values = [t.value for t in study.trials]
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA journal_mode={mode}").fetchone()
    if beside:
        pathlib.Path(f"{db}{beside}").write_bytes(b"")
    files = sorted(p.name for p in folder.iterdir())
    before = digest(db)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only for this user here")
    try:
        if beside:  # a writer's file: not read as it stands, but refused in one line
            with pytest.raises(HpoError, match="cannot open SQLite study file"):
                hpo.storage.load_existing_study("cifar10", url)
            return
        loaded = hpo.storage.load_existing_study("cifar10", url)
        assert [t.value for t in loaded.trials] == values
        assert re.search(r"\| COMPLETE \|\s+3 \|", hpo.report.write_report(loaded, tmp_path / "r"))
        # The commands that write to the study refuse it before any work, not after the training.
        for main in (hpo.retrain.main, hpo.search.main):
            with pytest.raises(HpoError, match="s.db is in a read-only folder: make .* writable"):
                main(["--storage", url, "--data-dir", str(tmp_path / "no-data")])
        assert sorted(p.name for p in folder.iterdir()) == files and digest(db) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "r"])  # no database made elsewhere
        assert db.read_bytes()[18] == (2 if mode == "wal" else 1)  # the file format: still in its journal mode
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def journal_mode(db) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_refusals_leave_a_study_file_made_elsewhere_byte_for_byte_unchanged(tiny_data_dir, tmp_path):
    # Study files made by plain Optuna are in rollback-journal mode; a refused run must not even switch them to WAL.
    minimize, maximize = tmp_path / "min.db", tmp_path / "max.db"
    optuna.create_study(study_name="cifar10", storage=f"sqlite:///{minimize}", direction="minimize")
    optuna.create_study(study_name="cifar10", storage=f"sqlite:///{maximize}", direction="maximize")
    digests = {db: digest(db) for db in (minimize, maximize)}
    cases = [
        (minimize, str(tiny_data_dir), "minimizes its objective"),
        (maximize, str(bad_data(tmp_path / "labels", "labels")), "labels must be in 0..9"),
    ]
    for db, data_dir, message in cases:
        proc = run_search("--storage", f"sqlite:///{db}", "--data-dir", data_dir, *TINY, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "--study-name" in proc.stderr or "labels" in message
        assert digest(db) == digests[db] and journal_mode(db) == "delete", message
    assert len(optuna.load_study(study_name="cifar10", storage=f"sqlite:///{minimize}").trials) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"config": {"lr": "fast"}}', "lr must be of type float"),
        ('{"config": {"lr": 500}}', "lr must be in (0, 100]"),
        ('{"config": {"learning_rate": 0.1}}', "unknown key(s) learning_rate"),
        ('{"config": ', "is not valid JSON"),
    ],
)
def test_invalid_exported_config_is_refused(tiny_data_dir, tmp_path, text, message, capsys):
    (tmp_path / "cfg.json").write_text(text)
    for main in (hpo.train.main, hpo.retrain.main):
        argv = ["--config", str(tmp_path / "cfg.json"), "--data-dir", str(tiny_data_dir), "--device", "cpu"]
        assert message in refusal(main, argv, capsys)


@pytest.mark.parametrize("where", ["under a file", "a folder", "unwritable"])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, where, capsys):
    (tmp_path / "a-file").write_text("")
    path, message = {
        "under a file": (tmp_path / "a-file" / "out", "a-file"),  # "is a file, not a folder" or "Not a directory"
        "a folder": (tmp_path, "is a folder: pass another --output, a file name"),
        "unwritable": (pathlib.Path("/proc/no-such-folder/out"), "cannot write to /proc/no-such-folder"),
    }[where]
    # No data and no study exist: a refusal that names the output came before any loading or training.
    no_data = ["--data-dir", str(tmp_path / "no-data"), "--device", "cpu"]
    commands = [
        (hpo.train.main, [*no_data, "--output", str(path)]),
        (hpo.retrain.main, [*no_data, "--output", str(path), "--storage", f"sqlite:///{tmp_path}/none.db"]),
    ]
    if where != "a folder":  # these two take folders
        commands += [
            (hpo.bench.main, [*no_data, "--search", "--out", str(path)]),
            (hpo.report.main, ["--output-dir", str(path), "--storage", f"sqlite:///{tmp_path}/none.db"]),
        ]
    for main, argv in commands:
        line = refusal(main, argv, capsys)
        assert message in line and "pass another" in line, main.__module__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_command_refused_after_its_output_check_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "deeper"
    commands = [
        (hpo.train.main, ["--output", str(out / "r.json"), "--set", "lr=[1,"]),
        (hpo.retrain.main, ["--output", str(out / "r.json"), "--storage", f"sqlite:///{tmp_path}/none.db"]),
        (hpo.report.main, ["--output-dir", str(out), "--storage", f"sqlite:///{tmp_path}/none.db"]),
        (hpo.bench.main, ["--search", "--out", str(out), "--strategies", "foo:bar"]),
    ]
    for main, argv in commands:
        refusal(main, argv, capsys)
        assert list(tmp_path.iterdir()) == [], main.__module__


# ---- kill anywhere, resume: nothing lost, nothing stuck ---------------------------------------------------


KILL_PLAN = [("start-up", 0), ("training", 0), ("training", 1), ("start-up", 1), ("retrain", 0)]


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="cifar10", storage=url).get_trials(deepcopy=False)
    except (KeyError, ValueError, sqlalchemy.exc.SQLAlchemyError):
        return []  # no study (or no tables) yet


def _count(url: str, state: str) -> int:
    return sum(t.state.name == state for t in _trials(url))


def _wait(condition, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends first (False)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _kill_in(phase: str, min_complete: int, args: list, url: str, cwd, rng: random.Random) -> bool:
    """Start the search, SIGKILL it at a random moment of ``phase``; True when the kill verifiably landed there."""
    out = cwd / "run.out"
    before = len(_trials(url))
    with open(out, "w") as f:
        proc = subprocess.Popen(search_cmd(*args), stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        if phase == "start-up":  # imports, storage, study, data: before this run asks for a trial
            ready = _count(url, "COMPLETE") >= min_complete
            time.sleep(rng.uniform(0.2, 2.0))
        elif phase == "training":  # a trial of this run reporting epochs (storage writes, checkpoints, heartbeats)
            ready = _wait(
                lambda: (
                    _count(url, "COMPLETE") >= min_complete
                    and any(t.state.name == "RUNNING" and t.intermediate_values for t in _trials(url)[before:])
                ),
                proc,
            )
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # retrain: all trials done, best + runner-up being retrained
            ready = _wait(lambda: "retraining" in out.read_text(), proc)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    trials = _trials(url)
    if phase == "start-up":
        return ready and len(trials) == before and " trial " not in f" {out.read_text()}"
    if phase == "training":
        return ready and any(t.state.name == "RUNNING" for t in trials[before:])
    return ready and "retrain" not in optuna.load_study(study_name="cifar10", storage=url).user_attrs


@pytest.mark.fault
def test_sigkill_in_every_phase_then_resume(tiny_data_dir, tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    n = 6
    args = [
        "--storage",
        url,
        "--data-dir",
        str(tiny_data_dir),
        "--epochs",
        "8",
        "--pruner",
        "none",
        "--heartbeat",
        "1",
        "--n-trials",
        str(n),
        *TINY[:-1],
        "--retrain-seeds",
        "1",
    ]
    rng = random.Random(1234)
    hit: list[str] = []
    completed_before: dict[int, float] = {}
    for phase, min_complete in KILL_PLAN:
        for _ in range(3):  # a kill that came too late for its phase is tried again
            if _kill_in(phase, min_complete, args, url, tmp_path, rng):
                hit.append(phase)
                break
        completed_before |= {t._trial_id: t.value for t in _trials(url) if t.state.name == "COMPLETE"}
        assert integrity(db) == ("ok",), phase
    assert hit == [phase for phase, _ in KILL_PLAN], hit  # every planned kill landed in its phase
    assert completed_before  # so "no completed trial lost" below checks something
    final = run_search(*args, cwd=tmp_path, timeout=600)
    assert final.returncode == 0, final.stderr
    study = optuna.load_study(study_name="cifar10", storage=url)
    s = states(url)
    assert finished(url) == n and "RUNNING" not in s
    after = {t._trial_id: t.value for t in study.trials}
    assert all(after[i] == v for i, v in completed_before.items())  # no completed trial lost or changed
    assert integrity(db) == ("ok",)
    assert "retrain" in study.user_attrs and (tmp_path / "reports" / "cifar10" / "summary.md").is_file()
    print(f"\nfault injection: SIGKILLs in {hit}, states after resume {s}, lost 0, stuck 0")


# ---- concurrency soak ------------------------------------------------------------------------------------


@pytest.mark.fault
def test_soak_four_workers_and_a_reader(tiny_data_dir, tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    n = 24
    args = [
        "--storage",
        url,
        "--data-dir",
        str(tiny_data_dir),
        "--epochs",
        "1",
        "--workers",
        "4",
        "--n-trials",
        str(n),
        *TINY,
    ]
    optuna.create_study(study_name="cifar10", storage=url, direction="maximize")  # the reader has a study to poll
    errors: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader():
        nonlocal reads
        while not stop.is_set():
            try:
                optuna.load_study(study_name="cifar10", storage=url).trials_dataframe()
                reads += 1
            except Exception as err:  # noqa: BLE001 - every failure is what the test counts
                errors.append(repr(err))
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        proc = subprocess.run(search_cmd(*args), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, proc.stderr
    assert not errors, errors[:3]
    assert "locked" not in proc.stdout + proc.stderr
    s = states(url)
    assert finished(url) == n and "FAIL" not in s and "RUNNING" not in s
    assert reads > 20
    print(f"\nsoak: 4 workers, {n} trials, {reads} concurrent reads, {len(errors)} lock/read failures")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_the_progress_bar_is_drawn_on_a_terminal_only_and_the_trial_lines_always(objective, monkeypatch, capsys, tty):
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    run_worker(optuna.create_study(direction="maximize"), objective, n_trials=2, deadline=None, bar=True)
    assert ("trial/s" in stream.getvalue()) == tty
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [["trial", "0"], ["trial", "1"]]


def test_the_heartbeat_beats_for_as_long_as_the_trial_runs():
    # One beat and then silence would make every trial longer than the grace period look dead, and be retried
    # while it still runs.
    class Storage:
        beats: list[float] = []

        def get_heartbeat_interval(self) -> float:
            return 0.05

        def record_heartbeat(self, trial_id: int) -> None:
            Storage.beats.append(time.monotonic())

    start = time.monotonic()
    with hpo.storage.heartbeat(Storage(), 1):
        time.sleep(0.5)
    assert len(Storage.beats) >= 4 and Storage.beats[-1] - start > 0.3
    count = len(Storage.beats)
    time.sleep(0.15)
    assert len(Storage.beats) == count  # and it stops with the trial


@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_read_only_journal_is_read_but_refused_by_the_commands_that_write(tmp_path, locked):
    log = tmp_path / "j" / "s.log"
    url = f"journal:{log}"
    study = optuna.create_study(study_name="cifar10", storage=hpo.storage.open_storage(url), direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0.1, 1.0), n_trials=2)
    target = log if locked == "file" else log.parent
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        target.chmod(0o555 if locked == "folder" else 0o444)
        if os.access(target, os.W_OK):
            pytest.skip("cannot make a file read-only for this user here")
    try:
        assert len(hpo.storage.load_existing_study("cifar10", url).trials) == 2
        for main in (hpo.retrain.main, hpo.search.main):  # before loading data or training, not a traceback after
            with pytest.raises(HpoError, match=f"journal file {log} or its folder is read-only"):
                main(["--storage", url, "--data-dir", str(tmp_path / "no-data")])
    finally:
        subprocess.run(["chattr", "-i", str(target)], capture_output=True)
        target.chmod(0o755)


def test_failures_separated_by_successes_do_not_stop_the_study(tiny_data_dir, monkeypatch):
    # The guard stops a study after failures *in a row*; a success in between starts the count again.
    import hpo.objective

    train_split, val_split = train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)
    base = TrainConfig(widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=1)
    space = SearchSpace.from_dict({"augmentation": "none", "scheduler": "constant"})
    objective = Objective(space, base, train_split, val_split, torch.device("cpu"))
    real_train, calls = hpo.objective.train, []

    def every_other_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2:
            raise ValueError("flaky disk")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", every_other_fails)
    study = optuna.create_study(direction="maximize")
    run_worker(study, objective, n_trials=3, deadline=None, bar=False)  # 3 failures, never 2 in a row
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"] * 3


@pytest.mark.parametrize("name", [" lead", "trail ", "\tx"])
def test_a_study_name_with_whitespace_at_either_end_is_refused(name):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="is not a usable study name"):
        checked_study_name(name)


def test_ask_lock_holds_an_exclusive_lock_beside_a_sqlite_study(tmp_path):
    # The race it prevents (two workers taking one queued trial) is too rare for the parallel tests to catch.
    import fcntl

    storage = hpo.storage.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None)
    lock_path = tmp_path / "s.db.ask-lock"
    # Another open file description on the lock file, as another worker's:
    with hpo.storage.ask_lock(storage), open(lock_path, "a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_path, "a") as other:  # released afterwards
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_deferred_sigterm_comes_back_as_terminated_so_it_reaches_the_workers():
    from hpo.errors import Terminated, interrupts_deferred

    with pytest.raises(KeyboardInterrupt) as held, interrupts_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
    assert type(held.value) is Terminated
    with pytest.raises(KeyboardInterrupt) as held, interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
    assert type(held.value) is KeyboardInterrupt


@pytest.mark.parametrize(
    "url", ["postgresql://u:pa/ss@h:5432:x/db", "postgresql://u:p@ss@h:5432:x/db", "nonsense //u:pa/ss@h"]
)
def test_a_password_is_hidden_even_in_a_url_that_does_not_parse(url):
    # Without a PostgreSQL server: the fallback for URLs SQLAlchemy cannot parse stopped at the first "/".
    assert "pa/ss" not in hpo.storage.redact(url) and "p@ss" not in hpo.storage.redact(url)
    assert "u:***@h" in hpo.storage.redact(url)


def test_an_unreadable_study_file_in_a_read_only_folder_is_not_taken_for_a_frozen_one(tmp_path, monkeypatch):
    # (root reads any file, so the unreadable file is simulated.) Opening it then says what is wrong in one line.
    db = tmp_path / "s.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(84))
    monkeypatch.setattr(hpo.storage, "_writable_folder", lambda path: False)

    def unreadable(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "open", unreadable)
    assert hpo.storage._frozen_wal_file(db) is False
