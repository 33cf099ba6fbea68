import json
import signal
import sqlite3
import subprocess

import optuna
import pytest

from tests.searchutil import TINY, finished, run_search, search_cmd, states, wait_for_running


def sqlite_url(path):
    return f"sqlite:///{path}"


def test_search_runs_exactly_n_trials_and_resumes(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "2", *TINY]
    first = run_search(*args, "--n-trials", "3")
    assert first.returncode == 0, first.stderr
    assert finished(url) == 3
    assert "trial   0" in first.stdout and "best trial" in first.stdout
    second = run_search(*args, "--n-trials", "5")
    assert second.returncode == 0, second.stderr
    assert finished(url) == 5 and "RUNNING" not in states(url)
    numbers = sorted(t.number for t in optuna.load_study(study_name="cifar10", storage=url).trials)
    assert numbers == list(range(5))
    again = run_search(*args, "--n-trials", "5")  # nothing left to do
    assert again.returncode == 0 and finished(url) == 5


def test_resume_reuses_the_studys_settings_and_rejects_conflicts(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    base = ["--storage", url, "--data-dir", str(tiny_data_dir), "--device", "cpu", "--no-retrain"]
    tiny_model = ["--widths", "8", "16", "16", "--batch-size", "16", "--train-subset", "0"]
    assert run_search(*base, "--n-trials", "1", "--epochs", "2", *tiny_model).returncode == 0
    # No settings given: the stored ones (epochs 2, tiny widths) are used, not the CPU defaults.
    resumed = run_search(*base, "--n-trials", "2")
    assert resumed.returncode == 0, resumed.stderr
    config = optuna.load_study(study_name="cifar10", storage=url).trials[1].user_attrs["config"]
    assert config["epochs"] == 2 and config["widths"] == [8, 16, 16]
    conflict = run_search(*base, "--n-trials", "3", "--epochs", "4")
    assert conflict.returncode == 2 and "Traceback" not in conflict.stderr
    assert "epochs: study has 2, now 4" in conflict.stderr and "--study-name" in conflict.stderr
    assert finished(url) == 2


def test_ctrl_c_records_the_trial_and_the_next_run_continues(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "25", "--pruner", "none", *TINY]
    proc = subprocess.Popen(
        search_cmd(*args, "--n-trials", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_running(url)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    study = optuna.load_study(study_name="cifar10", storage=url)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "interrupted" in failed[0].user_attrs["fail_reason"]
    assert "RUNNING" not in states(url)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    again = run_search(*args, "--n-trials", "2")
    assert again.returncode == 0, again.stderr
    assert finished(url) == 2
    # The interrupted trial was retried with the same parameters and resumed from its last epoch checkpoint:
    # the epochs it had reported reappear unchanged at the start of the retry's curve.
    study = optuna.load_study(study_name="cifar10", storage=url)
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    done = failed[0].intermediate_values
    assert done and all(retry[0].intermediate_values[e] == v for e, v in done.items())
    assert not list((tmp_path / "studies").glob("cifar10-checkpoints/trial-*.pt"))  # cleaned up


def test_parallel_workers_complete_exactly_n_trials_without_lock_errors(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    proc = run_search(
        "--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "2", "--workers", "3", "--n-trials", "9", *TINY
    )
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr + proc.stdout
    s = states(url)
    assert finished(url) == 9 and "FAIL" not in s and "RUNNING" not in s
    workers = {line.split("]")[0] for line in proc.stdout.splitlines() if line.startswith("[w")}
    assert len(workers) >= 2  # trials really ran in several processes
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_killed_worker_trial_is_failed_and_retried(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = [
        "--storage",
        url,
        "--data-dir",
        str(tiny_data_dir),
        "--epochs",
        "40",
        "--pruner",
        "none",
        "--heartbeat",
        "1",
        *TINY,
    ]
    proc = subprocess.Popen(search_cmd(*args, "--n-trials", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_running(url)
    proc.kill()
    proc.wait()
    assert states(url).get("RUNNING") == 1  # SIGKILL left it running
    again = run_search(*args, "--n-trials", "2")
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="cifar10", storage=url)
    assert finished(url) == 2 and "RUNNING" not in states(url)
    stale = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(stale) == 1
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED")
    assert retried[0].params == stale[0].params


@pytest.mark.integration
def test_cli_on_the_real_subset_with_default_storage_and_optuna_cli(subset_dir, tmp_path):
    args = [
        "--data-dir",
        str(subset_dir),
        "--n-trials",
        "4",
        "--epochs",
        "2",
        "--widths",
        "16",
        "32",
        "32",
        "--train-subset",
        "1500",
        "--device",
        "cpu",
        "--retrain-seeds",
        "2",
    ]
    proc = run_search(*args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "studies" / "cifar10.db"
    assert db.is_file()
    url = sqlite_url(db)
    study = optuna.load_study(study_name="cifar10", storage=url)
    assert finished(url) == 4
    assert study.metric_names == ["validation accuracy"]
    for t in study.trials:
        assert {"val_acc_curve", "train_seconds", "images_per_second", "epochs_run", "device", "seed"} <= set(
            t.user_attrs
        )
        assert len(t.user_attrs["val_acc_curve"]) == t.user_attrs["epochs_run"] == len(t.intermediate_values)
    listed = subprocess.run(
        ["optuna", "trials", "--storage", url, "--study-name", "cifar10", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert "best trial" in proc.stdout and "pruning saved" in proc.stdout
    # The pipeline went on: retrain of best + runner-up stored in the study, report and best config written.
    record = study.user_attrs["retrain"]
    assert [len(c["test_acc"]) for c in record["candidates"]] == [2, 2]
    assert record["test_images"] == 932 and record["train_images"] == 4660
    assert "verdict" in record and (tmp_path / "studies" / "cifar10-best" / "model.pt").is_file()
    report = tmp_path / "reports" / "cifar10"
    assert {"summary.md", "summary.html", "trials.csv", "best-config.json", "curves.png"} <= {
        p.name for p in report.iterdir()
    }
    from hpo.config import load_config
    from hpo.export import trial_config

    assert load_config(report / "best-config.json") == trial_config(study.best_trial)
