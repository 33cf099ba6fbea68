import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.config import TrainConfig
from hpo.space import DEFAULT_SPACE
from tests.conftest import write_cifar_batches
from tests.procutil import children_running, gone_within
from tests.searchutil import TINY, finished, run_search, search_cmd, states, wait_for_running

MARK = 0.123456  # a validation accuracy no real epoch on the tiny data reports


def sqlite_url(path):
    return f"sqlite:///{path}"


def default_sigint() -> None:
    # A background job (`cmd &` in a script) starts with SIGINT ignored, and its children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def heartbeats(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM trial_heartbeats").fetchone()[0]


def test_search_start_up_imports_no_report_libraries():
    # pandas, scipy and matplotlib serve only the retrain and report after the search; importing them at the top
    # adds about a second to every search's and every packed worker's start-up.
    code = "import sys, hpo.search; print(' '.join(m for m in ('pandas', 'scipy', 'matplotlib') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == []


@pytest.mark.parametrize("module", ["hpo.export", "hpo.report", "hpo.dashboard"])
def test_commands_that_only_read_a_study_do_not_import_torch(module):
    # torch takes about 2.5 s of a 2-core machine's start-up; exporting a config or writing a report needs none of it.
    code = f"import sys, {module}; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_a_tiled_training_set_gets_a_warning_that_validation_repeats_it(tmp_path):
    # Every batch the same 20 images, as when a small set is tiled up to full size: each validation image is also
    # a training image, so validation accuracy measures memorising.
    data = write_cifar_batches(tmp_path / "tiled", per_batch=20)
    batches = data / "cifar-10-batches-py"
    for i in range(2, 6):
        (batches / f"data_batch_{i}").write_bytes((batches / "data_batch_1").read_bytes())
    proc = run_search(
        "--storage", sqlite_url(tmp_path / "s.db"), "--data-dir", str(data), "--n-trials", "1", "--epochs", "1", *TINY
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: 10 of 10 validation images (100%) are exact copies of training images" in proc.stdout


def test_search_runs_exactly_n_trials_and_resumes(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "2", *TINY]
    first = run_search(*args, "--n-trials", "3")
    assert first.returncode == 0, first.stderr
    assert finished(url) == 3
    assert "trial   0" in first.stdout and "best trial" in first.stdout
    assert "exact copies" not in first.stdout  # random images: no validation image is a training image
    second = run_search(*args, "--n-trials", "5")
    assert second.returncode == 0, second.stderr
    assert finished(url) == 5 and "RUNNING" not in states(url)
    study = optuna.load_study(study_name="cifar10", storage=url)
    assert sorted(t.number for t in study.trials) == list(range(5))
    again = run_search(*args)  # no --n-trials: the study's 5, not the CPU default 12, so nothing left to do
    assert again.returncode == 0 and finished(url) == 5, again.stderr
    assert study.user_attrs["hpo_settings"]["n_trials"] == 5
    # Finished trials' checkpoints are gone; the best completed trial's is kept, beside the study file.
    checkpoints = tmp_path / "cifar10-checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-trial.pt"]
    kept = torch.load(checkpoints / "best-trial.pt", map_location="cpu", weights_only=True)
    assert kept["config"] == study.best_trial.user_attrs["config"]
    assert heartbeats(tmp_path / "s.db") > 0  # the default --heartbeat 30 records heartbeats
    # Another host holds the last trial: without a heartbeat this run stops at once, and not for its --timeout.
    study.ask()
    held = run_search(*args, "--n-trials", "6", "--heartbeat", "0", "--timeout", "9999")
    assert held.returncode == 0 and finished(url) == 5, held.stderr
    assert "search stopped" not in held.stdout


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_records_the_trial_and_the_next_run_continues(tiny_data_dir, tmp_path, sig):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "25", "--pruner", "none", *TINY]
    proc = subprocess.Popen(
        search_cmd(*args, "--n-trials", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # as at a terminal, even when pytest itself runs where SIGINT is ignored
    )
    wait_for_running(url)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    study = optuna.load_study(study_name="cifar10", storage=url)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "interrupted" in failed[0].user_attrs["fail_reason"]
    assert "RUNNING" not in states(url)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Its checkpoint waits beside the study file. Mark epoch 1 in it: a retry that resumes from the checkpoint
    # replays the marked value, one that trains from scratch (same seed, same values) would not.
    checkpoint = tmp_path / "cifar10-checkpoints" / f"trial-{failed[0].number}.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["history"][0]["val_acc"] = MARK
    torch.save(state, checkpoint)
    again = run_search(*args, "--n-trials", "1")  # the retry is the first trial to finish: enough
    assert again.returncode == 0, again.stderr
    assert finished(url) == 1
    # The interrupted trial was retried with the same parameters and resumed from its last epoch checkpoint:
    # the epochs it had reported reappear unchanged at the start of the retry's curve (epoch 1 as marked).
    study = optuna.load_study(study_name="cifar10", storage=url)
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    done = {**failed[0].intermediate_values, 1: MARK}
    assert all(retry[0].intermediate_values[e] == v for e, v in done.items())
    assert len(retry[0].intermediate_values) == 25
    left = sorted(p.name for p in (tmp_path / "cifar10-checkpoints").iterdir())
    assert left == ["best-trial.pt"]  # finished trials' checkpoints cleaned up, the best one kept


def test_timeout_stops_the_running_trial_at_an_epoch_end_and_the_next_run_resumes_it(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "200", "--pruner", "none", *TINY]
    proc = run_search(*args, "--n-trials", "3", "--timeout", "2")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="cifar10", storage=url)
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["fail_reason"].startswith("timeout: the --timeout budget ran out after epoch")
    epochs = failed.user_attrs["epochs_run"]
    assert 1 <= epochs < 200 and states(url) == {"FAIL": 1, "WAITING": 1}  # no new trial; its retry is queued
    run = study.user_attrs["last_run"]
    assert (run["timeout"], run["finished"], run["workers"], run["gpu_utilisation"]) == (2, 0, 1, None)
    assert failed.user_attrs["startup_seconds"] == run["startup_seconds"] > 0 and failed.user_attrs["device_seconds"]
    assert f"start-up: {run['startup_seconds']:.1f}s from the command to the first trial's first step" in proc.stdout
    stopped = "search stopped: --timeout 2 s ran out with 0 of 3 trials finished; the same command continues the study"
    assert stopped in proc.stdout
    # Its checkpoint was written when it stopped (not every epoch: the default writes at most every 30 s).
    checkpoint = tmp_path / "cifar10-checkpoints" / f"trial-{failed.number}.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(state["history"]) == epochs
    state["history"][0]["val_acc"] = MARK
    torch.save(state, checkpoint)
    again = run_search(*args, "--n-trials", "3", "--timeout", "6")  # time to replay its epochs and train on
    assert again.returncode == 0, again.stderr
    retry = optuna.load_study(study_name="cifar10", storage=url).trials[failed.number + 1]
    assert retry.system_attrs["failed_trial"] == failed.number and retry.intermediate_values[1] == MARK
    assert len(retry.intermediate_values) > epochs  # resumed, then trained on until this run's budget ran out
    # The accounting counts each epoch once: the retry's own epochs leave out the ones it replayed.
    assert retry.user_attrs["epochs_trained"] == retry.user_attrs["epochs_run"] - epochs


def test_parallel_workers_complete_exactly_n_trials_without_lock_errors(tiny_data_dir, tmp_path):
    # --trials-per-gpu 3 on a CPU: 3 worker processes, as --workers 3 (which the soak and dashboard tests use).
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "2", "--n-trials", "9", *TINY]
    proc = run_search(*args, "--trials-per-gpu", "3")
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr + proc.stdout
    assert (
        "packing: 3 concurrent trials on the CPU, cores split between them = 3 worker processes (--trials-per-gpu)"
        in proc.stdout
    )
    s = states(url)
    assert finished(url) == 9 and "FAIL" not in s and "RUNNING" not in s
    workers = {line.split("]")[0] for line in proc.stdout.splitlines() if line.startswith("[w")}
    assert len(workers) >= 2  # trials really ran in several processes
    assert "[w0" in workers and workers <= {"[w0", "[w1", "[w2"}  # this process is worker 0 and starts 1 and 2
    run = optuna.load_study(study_name="cifar10", storage=url).user_attrs["last_run"]
    assert (run["workers"], run["devices"], run["finished"]) == (3, 1, 9)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # One trial left: no more processes than trials are started.
    more = run_search(*[a if a != "9" else "10" for a in args], "--trials-per-gpu", "3")
    assert more.returncode == 0 and "1 trial(s) left to run: 1 worker process(es)" in more.stdout, more.stderr
    run = optuna.load_study(study_name="cifar10", storage=url).user_attrs["last_run"]
    assert (run["workers"], run["finished"]) == (1, 1) and finished(url) == 10


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["SIGTERM-to-the-search", "Ctrl-C-to-all-its-processes"])
def test_stopping_a_search_with_workers_records_every_running_trial_and_stops_them_all(tiny_data_dir, tmp_path, ctrl_c):
    # The search runs trials itself as worker 0 beside the one it starts. A Ctrl-C at the terminal reaches both;
    # a SIGTERM (a job scheduler, kill) reaches the search alone, which must pass it on.
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "25", "--pruner", "none", *TINY]
    proc = subprocess.Popen(
        search_cmd(*args, "--n-trials", "6", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job
        preexec_fn=default_sigint,
    )
    deadline = time.time() + 120
    while len(running_with_epochs(url)) < 2:
        assert time.time() < deadline and proc.poll() is None, "two trials never ran at once"
        time.sleep(0.2)
    if ctrl_c:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    failed = [t for t in optuna.load_study(study_name="cifar10", storage=url).trials if t.state.name == "FAIL"]
    assert len(failed) == 2 and all("interrupted" in t.user_attrs["fail_reason"] for t in failed)
    assert "RUNNING" not in states(url)
    count = len(optuna.load_study(study_name="cifar10", storage=url).trials)
    time.sleep(3)
    assert len(optuna.load_study(study_name="cifar10", storage=url).trials) == count  # no worker runs on


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sigterm_while_the_search_waits_for_its_workers_still_reaches_them(tiny_data_dir, tmp_path):
    # The search (worker 0) has run out of trials and waits for worker 1 to finish its last one, as after a
    # --timeout or without a heartbeat. A SIGTERM then must be passed on, not leave worker 1's trial RUNNING.
    url = sqlite_url(tmp_path / "s.db")
    driver = tmp_path / "driver.py"
    driver.write_text("import hpo.search\nhpo.search.run_worker = lambda *a, **k: 0\nhpo.search.cli()\n")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "25", "--pruner", "none", *TINY]
    proc = subprocess.Popen(
        [sys.executable, str(driver), *args, "--n-trials", "2", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_running(url, timeout=120)
    workers = children_running("--worker-id", proc.pid)
    assert len(workers) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    trials = optuna.load_study(study_name="cifar10", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # recorded as interrupted, its retry queued
    assert "interrupted" in trials[0].user_attrs["fail_reason"]
    assert gone_within(workers, 10) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_search_leaves_no_worker_running(tiny_data_dir, tmp_path):
    # SIGKILL cannot be passed on: the kernel kills the workers with the search (their running trials are then
    # failed by the heartbeat and retried by the next run, as the search's own).
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "25", "--pruner", "none", *TINY]
    proc = subprocess.Popen(search_cmd(*args, "--n-trials", "6", "--workers", "2"), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(running_with_epochs(url)) < 2:
        assert time.time() < deadline and proc.poll() is None, "two trials never ran at once"
        time.sleep(0.2)
    workers = children_running("--worker-id", proc.pid)
    assert len(workers) == 1
    proc.kill()
    proc.wait()
    assert gone_within(workers, 10) == []


def running_with_epochs(url: str) -> list:
    try:
        study = optuna.load_study(study_name="cifar10", storage=url)
    except KeyError:
        return []  # not created yet
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.intermediate_values]


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
    # best, runner-up and the recipe; fewer when only one trial completed or one of them is the recipe
    labels = [c["label"] for c in record["candidates"]]
    assert labels[0].startswith("best (trial") and all(len(c["test_acc"]) == 2 for c in record["candidates"])
    assert len(labels) >= 2 or labels[0].endswith(", the recipe)")
    assert record["test_images"] == 932 and record["train_images"] == 4660
    assert (tmp_path / "studies" / "cifar10-winner" / "model.pt").is_file()
    assert "**Did the search beat the defaults?**" in (tmp_path / "reports" / "cifar10" / "summary.md").read_text()
    report = tmp_path / "reports" / "cifar10"
    assert {"summary.md", "summary.html", "trials.csv", "best-config.json", "curves.png"} <= {
        p.name for p in report.iterdir()
    }
    from hpo.config import load_config
    from hpo.export import trial_config

    assert load_config(report / "best-config.json") == trial_config(study.best_trial)
    # The same command again: nothing left to search, and the stored retrain covers the same runs, so it is reused.
    (report / "summary.md").unlink()
    again = run_search(*args, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "reused" in again.stdout and " seed 0 test acc" not in again.stdout  # nothing trained again
    best = record["candidates"][0]
    assert f"retrain {best['label']}: test accuracy {best['text']}" in again.stdout  # the stored results, shown
    assert optuna.load_study(study_name="cifar10", storage=url).user_attrs["retrain"]["date"] == record["date"]
    assert "**Did the search beat the defaults?**" in (report / "summary.md").read_text()


# ---- what the README promises about options --------------------------------------------------------------


def test_default_cpu_run_says_what_it_uses_and_timeout_stops_new_trials(tiny_data_dir, tmp_path):
    # Only --data-dir, --device cpu and a --timeout: the CPU defaults apply, in the default study file.
    proc = run_search(
        "--data-dir", str(tiny_data_dir), "--device", "cpu", "--no-retrain", "--timeout", "2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "no GPU: CPU defaults (12 trials x up to 6 epochs, widths 32/64/128, batch 64, at most 5000 training images)"
        in proc.stdout
    )
    db = tmp_path / "studies" / "cifar10.db"
    assert "study 'cifar10' in sqlite:///studies/cifar10.db" in proc.stdout
    study = optuna.load_study(study_name="cifar10", storage=sqlite_url(db))
    settings = study.user_attrs["hpo_settings"]
    assert (settings["n_trials"], settings["epochs"], settings["widths"]) == (12, 6, [32, 64, 128])
    assert (settings["batch_size"], settings["train_subset"], settings["sampler"]) == (64, 5000, "tpe")
    assert (settings["pruner"], settings["seed"], settings["val_fraction"]) == ("hyperband", 0, 0.1)
    # --timeout 2, a wall-clock budget: no trial starts after 2 s and a running one stops at its next epoch end
    # (failed, with a retry queued), long before the 12 trials the defaults ask for.
    ran = [t for t in study.trials if t.state.name != "WAITING"]
    assert 1 <= len(ran) < 12 and "RUNNING" not in states(sqlite_url(db))
    assert all(t.user_attrs["fail_reason"].startswith("timeout: ") for t in ran if t.state.name == "FAIL")


def test_space_seed_sampler_and_pruner_are_used_and_resumed(tiny_data_dir, tmp_path):
    from hpo.objective import trial_seed
    from hpo.space import SearchSpace

    db = tmp_path / "s.db"
    url = sqlite_url(db)
    (tmp_path / "space.yaml").write_text("momentum: 0.9\naugmentation: {choices: [flip]}\nscheduler: constant\n")
    (tmp_path / "other.yaml").write_text("momentum: 0.8\n")
    base = ["--storage", url, "--data-dir", str(tiny_data_dir)]
    first = run_search(
        *base, *TINY, "--epochs", "1", "--n-trials", "2", "--space", str(tmp_path / "space.yaml"),
        "--seed", "5", "--sampler", "random", "--pruner", "none", "--heartbeat", "0",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "no warm start: the recipe: augmentation 'flip_translate' is not among the space's choices" in first.stdout
    assert heartbeats(db) == 0  # --heartbeat 0: off (the resumed run below has the default, 30)
    resumed = run_search(*base, "--device", "cpu", "--no-retrain", "--n-trials", "3")  # nothing else given
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="cifar10", storage=url)
    settings = study.user_attrs["hpo_settings"]
    assert (settings["seed"], settings["sampler"], settings["pruner"]) == (5, "random", "none")
    assert settings["space"] == SearchSpace.load(tmp_path / "space.yaml").describe()
    assert finished(url) == 3
    for t in study.trials:  # the space file's fixed values and choices, in the resumed trial too
        config = t.user_attrs["config"]
        assert (config["momentum"], config["augmentation"], config["scheduler"]) == (0.9, "flip", "constant")
        assert "momentum" not in t.params and t.params["augmentation"] == "flip"
        assert t.user_attrs["seed"] == trial_seed(5, t.number)  # --seed, kept on resume
        assert config["widths"] == [8, 16, 16] and len(t.intermediate_values) == 1
    other = run_search(*base, "--device", "cpu", "--no-retrain", "--space", str(tmp_path / "other.yaml"))
    assert other.returncode == 2 and "exists with a different search (space: study has" in other.stderr
    assert "--study-name" in other.stderr and "Traceback" not in other.stderr
    assert "continuing the study with" not in resumed.stdout  # nothing changed
    switched = run_search(*base, "--device", "cpu", "--no-retrain", "--n-trials", "3", "--sampler", "tpe")
    assert switched.returncode == 0, switched.stderr
    assert "continuing the study with sampler tpe (its earlier trials: random); its note and report" in switched.stdout


def test_journal_storage_runs_and_resumes(tiny_data_dir, tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    log = tmp_path / "j" / "s.log"
    args = ["--storage", f"journal:{log}", "--data-dir", str(tiny_data_dir), "--epochs", "1", *TINY]
    assert run_search(*args, "--n-trials", "2").returncode == 0
    again = run_search(*args, "--n-trials", "3")
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="cifar10", storage=JournalStorage(JournalFileBackend(str(log))))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 3
    assert (log.parent / "cifar10-checkpoints" / "best-trial.pt").is_file()  # files beside the journal


def test_a_surplus_trial_goes_back_to_waiting_untouched(tmp_path):
    from hpo.worker import claim_trial

    study = optuna.create_study(storage=sqlite_url(tmp_path / "s.db"), direction="maximize")
    other = study.ask()  # another worker holds the only slot
    assert claim_trial(study, n_trials=2) is not None  # a free slot: the trial is ours
    assert claim_trial(study, n_trials=2) is None  # lost the race for the last slot
    surplus = study.get_trials(deepcopy=False)[-1]
    assert surplus.state.name == "WAITING" and surplus.params == {} and not surplus.user_attrs
    study.tell(other, 0.5)
    again = study.ask()  # the next ask takes the queued trial back
    assert again.number == surplus.number


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
    ],
)
def test_samplers_are_the_named_kind_and_seeded(name, kind):
    from hpo.config import TrainConfig
    from hpo.search import _make_sampler
    from hpo.space import SearchSpace

    def params(seed: int, worker: int = 0, n_existing: int = 0) -> list[dict]:
        sampler = _make_sampler(settings(sampler=name, seed=seed), worker=worker, n_existing=n_existing)
        assert isinstance(sampler, kind)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        out = []
        for i in range(3):
            trial = study.ask()
            SearchSpace.default().suggest(trial, TrainConfig())
            study.tell(trial, 0.1 * i)
            out.append(trial.params)
        return out

    assert params(3) == params(3) and params(3) != params(4)
    # Workers don't draw the same points, and a resumed run doesn't replay the first run's.
    assert params(3, worker=1) != params(3) and params(3, n_existing=5) != params(3)
    # The largest study seed, offset by a worker and a resumed study's trials, is still a seed the sampler takes.
    assert isinstance(_make_sampler(settings(sampler=name, seed=2**32 - 1), worker=3, n_existing=50), kind)


def settings(**changes):
    from hpo.search import Settings
    from hpo.space import SearchSpace

    values = dict(n_trials=4, epochs=6, widths=(8, 16, 16), train_subset=0, batch_size=16, val_fraction=0.1)
    values.update(seed=0, sampler="tpe", pruner="hyperband", space=SearchSpace.default().describe())
    return Settings(**{**values, **changes})


def pruned_at(pruner: optuna.pruners.BasePruner, others: list[list[float]], curve: list[float]) -> int | None:
    """The epoch at which ``pruner`` stops a trial with ``curve``, after completed trials with curves ``others``."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for values in others:
        trial = study.ask()
        for epoch, value in enumerate(values, 1):
            trial.report(value, epoch)
            trial.should_prune()  # successive halving records each rung's value here
        study.tell(trial, values[-1])
    trial = study.ask()
    for epoch, value in enumerate(curve, 1):
        trial.report(value, epoch)
        if trial.should_prune():
            return epoch
    return None


def test_median_pruner_prunes_from_epoch_2_after_4_trials():
    from hpo.search import _make_pruner

    median = _make_pruner(settings(pruner="median"))
    good = [[0.8, 0.85, 0.9]] * 4
    assert pruned_at(median, good, [0.1, 0.1, 0.1]) == 2  # not at epoch 1: the notes say "from epoch 2"
    assert pruned_at(median, good[:3], [0.1, 0.1, 0.1]) is None  # fewer than 4 completed trials: no pruning


def test_hyperband_pruner_spans_one_epoch_to_the_trial_length_in_thirds():
    from hpo.search import _make_pruner

    hyperband = _make_pruner(settings(pruner="hyperband", epochs=6))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    # What the README's evidence was measured with (private attributes: Optuna has no getters for them).
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 6, 3)


def test_asha_and_none_pruners():
    from hpo.search import _make_pruner

    asha = _make_pruner(settings(pruner="asha"))
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    assert pruned_at(asha, [[0.8, 0.85, 0.9]] * 3, [0.1, 0.1, 0.1]) == 1  # rung 0 is epoch 1
    assert pruned_at(_make_pruner(settings(pruner="none")), [[0.8, 0.85, 0.9]] * 4, [0.1, 0.1, 0.1]) is None


def test_resume_takes_seed_sampler_pruner_space_and_n_trials_from_the_study():
    from hpo.search import CPU_DEFAULTS, _resolve_settings, build_parser

    stored = settings(n_trials=40, seed=5, sampler="cmaes", pruner="median", space={"momentum": 0.9}).to_json()
    plain = build_parser().parse_args([])
    resumed = _resolve_settings(plain, None, stored, CPU_DEFAULTS)
    assert resumed.to_json() == stored
    given = build_parser().parse_args(["--n-trials", "50", "--sampler", "random", "--seed", "1"])
    changed = _resolve_settings(given, None, stored, CPU_DEFAULTS)
    assert (changed.n_trials, changed.sampler, changed.seed, changed.pruner) == (50, "random", 1, "median")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retrain-seeds", "0"], "--retrain-seeds must be at least 1, got 0"),
        (["--retrain-seeds", "-2"], "--retrain-seeds must be at least 1, got -2"),
        (["--n-trials", "0"], "--n-trials must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--epochs", "5000"], "--epochs: epochs must be in [1, 1000]"),
        (["--widths", "8", "0", "8"], "--widths: widths must be three channel counts"),
        (["--batch-size", "100000"], "--batch-size: batch_size must be in [1, 65536]"),
        (["--train-subset", "-1"], "--train-subset must be at least 0"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--trials-per-gpu", "0"], "--trials-per-gpu must be at least 1"),
        (["--workers", "2", "--trials-per-gpu", "2"], "--workers and --trials-per-gpu both set the worker processes"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be a number of seconds >= 0"),
        (["--heartbeat", "-1"], "--heartbeat must be at least 0"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--seed", str(2**32)], "--seed must be at most 4294967295"),
        (["--timeout", "nan"], "--timeout must be a positive number"),
        (["--timeout", "-3"], "--timeout must be a positive number"),
        (["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
        (["--study-name", " "], "argument --study-name: ' ' is not a usable study name: it names files, so give"),
        (["--study-name", "exp?1"], "'exp?1' is not a usable study name"),
        (["--study-name", "../escape"], "'../escape' is not a usable study name"),
        (["--sampler", "bayes"], "invalid choice: 'bayes'"),
        (["--n-trials", "many"], "invalid int value: 'many'"),
        (["--enqueue", "missing.json"], "cannot read config file missing.json"),
    ],
)
def test_bad_flags_are_refused_before_any_work(tmp_path, monkeypatch, args, message):
    from hpo.errors import HpoError
    from hpo.search import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(HpoError) as err:
        main(["--data-dir", str(tmp_path / "no-data"), *args])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no study file, no data download, nothing


@pytest.mark.parametrize("storage", [[], ["--storage", "journal:studies/cifar10.log"]], ids=["sqlite", "journal"])
def test_a_refused_first_command_leaves_no_study_file(tmp_path, tiny_data_dir, monkeypatch, storage):
    from hpo.errors import HpoError
    from hpo.search import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "drop.yaml").write_text("dropout: 0.9\n")
    (tmp_path / "broken" / "cifar-10-batches-py").mkdir(parents=True)
    for args, message in [
        (["--data-dir", str(tiny_data_dir), "--enqueue", "drop.yaml"], "dropout 0.9 is outside the search space"),
        (["--data-dir", "broken"], "data_batch_1 is missing"),
    ]:
        with pytest.raises(HpoError, match=message):
            main([*args, *storage])
        assert not (tmp_path / "studies").exists()


def test_bad_retrain_seeds_exits_2_with_one_line(tmp_path):
    proc = run_search("--retrain-seeds", "0", "--data-dir", str(tmp_path / "no-data"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: --retrain-seeds must be at least 1, got 0"], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_new_study_runs_the_recipe_first_and_only_once(tiny_data_dir, tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "1", "--pruner", "none", *TINY]
    assert run_search(*args, "--n-trials", "2").returncode == 0
    assert run_search(*args, "--n-trials", "3").returncode == 0  # resume: nothing queued again
    trials = optuna.load_study(study_name="cifar10", storage=url).trials
    assert [t.user_attrs.get("enqueued") for t in trials] == ["recipe (the defaults)", None, None]
    recipe = TrainConfig.recipe(batch_size=16, epochs=1, widths=(8, 16, 16))
    first = TrainConfig.from_dict(trials[0].user_attrs["config"])
    assert first.replace(seed=0).matches(recipe) and first.lr == pytest.approx(recipe.lr)
    assert trials[0].params["lr_decoupled"] == pytest.approx(11.5 * (1024 / 16) ** 0.5)  # airbench94's, sqrt-scaled
    assert trials[0].params["momentum"] == 0.85
    assert TrainConfig.from_dict(trials[1].user_attrs["config"]).lr != recipe.lr  # then the sampler's


def test_enqueue_files_run_first_and_no_warm_start_leaves_the_recipe_out(tiny_data_dir, tmp_path):
    mine = TrainConfig.recipe(  # an lr of its own: at momentum 0.9 the recipe's would leave the space
        batch_size=16, lr=0.05, momentum=0.9, dropout=0.1, augmentation="flip", scheduler="cosine"
    )
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"config": mine.to_dict(), "provenance": {"by": "hand"}}))
    url = sqlite_url(tmp_path / "s.db")
    args = ["--storage", url, "--data-dir", str(tiny_data_dir), "--epochs", "1", "--n-trials", "2", *TINY]
    proc = run_search(*args, "--no-warm-start", "--enqueue", str(path))
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="cifar10", storage=url).trials
    assert [t.user_attrs.get("enqueued") for t in trials] == [str(path), None]
    got = TrainConfig.from_dict(trials[0].user_attrs["config"])
    assert (got.momentum, got.dropout, got.augmentation, got.scheduler) == (0.9, 0.1, "flip", "cosine")
    assert got.lr == pytest.approx(mine.lr)


def test_an_enqueued_config_outside_the_space_is_one_line(tiny_data_dir, tmp_path):
    path = tmp_path / "wild.yaml"
    path.write_text("dropout: 0.9\n")
    url = sqlite_url(tmp_path / "s.db")
    proc = run_search("--storage", url, "--data-dir", str(tiny_data_dir), "--enqueue", str(path), *TINY)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: dropout 0.9 is outside the search space [0, {DEFAULT_SPACE['dropout'].high:g}]: widen it "
        "with --space, or leave this "
        "config out"
    ]


def test_resume_with_another_val_fraction_is_refused():
    # Another fraction is another validation set: trials scored on it would not compare with the study's.
    from hpo.errors import HpoError
    from hpo.search import CPU_DEFAULTS, _resolve_settings, build_parser

    stored = settings(val_fraction=0.1).to_json()
    with pytest.raises(HpoError, match="val_fraction: study has 0.1, now 0.2"):
        _resolve_settings(build_parser().parse_args(["--val-fraction", "0.2"]), None, stored, CPU_DEFAULTS)


def test_a_cpu_worker_takes_its_share_of_the_cores(tiny_data_dir, tmp_path, monkeypatch):
    # K worker processes on a CPU: cores / K threads each, not K x all the cores fighting.
    import hpo.search
    from hpo.search import COUNT_ENV, START_ENV

    seen = []
    monkeypatch.setattr(hpo.search, "cpu_cores", lambda: 8)
    monkeypatch.setattr(hpo.search, "run_worker", lambda *a, **k: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.setenv(START_ENV, "0.0")
    monkeypatch.setenv(COUNT_ENV, "4")
    monkeypatch.delenv("HPO_PARENT_PID", raising=False)
    threads = torch.get_num_threads()
    try:
        argv = ["--storage", f"sqlite:///{tmp_path / 's.db'}", "--data-dir", str(tiny_data_dir), "--worker-id", "1"]
        hpo.search.main([*argv, "--device", "cpu", "--n-trials", "2", "--epochs", "1", "--widths", "8", "16", "16"])
    finally:
        torch.set_num_threads(threads)
    assert seen == [2]


@pytest.mark.parametrize(
    ("pruner", "line"),
    [("none", "epochs run 5 of 6 (--pruner none: nothing pruned; 1 not run after a trial's loss diverged)"),
     ("hyperband", "epochs run 5 of 6 without pruning: pruning saved 1 (17%)")],
)  # fmt: skip
def test_the_summary_does_not_credit_a_search_without_a_pruner_with_pruning(capsys, pruner, line):
    from optuna.trial import create_trial

    from hpo.search import Settings, print_summary

    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.3, user_attrs={"epochs_run": 3}))
    diverged = create_trial(state=TrialState.PRUNED, value=0.1, user_attrs={"epochs_run": 2}, intermediate_values={})
    study.add_trial(diverged)  # a diverged trial is PRUNED, whatever the pruner
    settings = Settings(2, 3, (8, 8, 8), 0, 16, 0.1, 0, "tpe", pruner, {})
    print_summary(study, settings, 10.0)
    assert line in capsys.readouterr().out


@pytest.mark.parametrize("module", ["search", "report", "export", "dashboard"])
def test_help_shows_plain_text_not_docstring_markup(module, capsys):
    import importlib

    command = importlib.import_module(f"hpo.{module}")
    assert "``" in command.__doc__.splitlines()[0]  # the description --help takes from it has the markup
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0
    assert "``" not in capsys.readouterr().out


def test_help_gives_each_devices_defaults_and_the_resume_rule(capsys):
    from hpo.search import CPU_DEFAULTS, GPU_DEFAULTS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, key in (("--n-trials", "n_trials"), ("--epochs", "epochs"), ("--batch-size", "batch_size")):
        assert f"{option} " in text and f"(default {GPU_DEFAULTS[key]} on a GPU, {CPU_DEFAULTS[key]} on a CPU)" in text
    assert (
        "(default 64/256/256 on a GPU, 32/64/128 on a CPU)" in text and "(default all on a GPU, 5000 on a CPU)" in text
    )
    assert "take the values the study was started with" in text


def test_a_trial_line_shows_the_parameters_a_space_file_adds():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from hpo.worker import _trial_line

    config = {"lr": 0.265, "momentum": 0.85, "weight_decay": 0.00133, "dropout": 0.0, "augmentation": "flip",
              "scheduler": "onecycle", "batch_size": 32, "label_smoothing": 0.1234}  # fmt: skip
    trial = optuna.trial.create_trial(
        params={"momentum": 0.85, "batch_size": 32, "label_smoothing": 0.1234},
        distributions={
            "momentum": FloatDistribution(0.7, 0.92),
            "batch_size": CategoricalDistribution([32, 64, 128]),
            "label_smoothing": FloatDistribution(0.0, 0.3),
        },
        value=0.75,
        user_attrs={"config": config, "epochs_run": 6, "wall_seconds": 27.0},
    )
    line = _trial_line(trial, "")
    assert line.endswith("flip/onecycle batch_size 32 label_smoothing 0.123  6 ep  27.0s"), line
    assert "momentum 0.85" not in line  # the default space's parameters keep their short names
