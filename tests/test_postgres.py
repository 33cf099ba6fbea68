"""Several hosts share one study through PostgreSQL: two separate hpo.search processes, one storage URL."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.dashutil import serve
from tests.pg import postgres_url  # noqa: F401
from tests.searchutil import TINY, search_cmd

TRIAL_LINE = re.compile(r"^trial +(\d+) (?:COMPLETE|PRUNED) ", flags=re.M)
SECRET = "s3cret-password"


def test_server_is_real_postgres(postgres_url):  # noqa: F811
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("select version()")).scalar_one()
            database = conn.execute(sqlalchemy.text("select current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == "hpo_test"


def test_two_search_processes_share_one_study(postgres_url, tiny_data_dir, tmp_path):  # noqa: F811
    # Both start on an empty database at once, as two hosts would: schema creation races are retried.
    args = [
        "--storage",
        postgres_url,
        "--study-name",
        "shared",
        "--n-trials",
        "8",
        "--epochs",
        "3",
        "--pruner",
        "none",  # trials long enough that the second process joins before the first has run them all
        "--data-dir",
        str(tiny_data_dir),
        *TINY,
    ]
    procs = [
        subprocess.Popen(search_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 8
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no duplicates
    # Both processes ran trials: each prints one line per trial it finished, and together they are the study's.
    ran = [{int(n) for n in TRIAL_LINE.findall(out)} for out, _ in outputs]
    assert all(ran) and not ran[0] & ran[1], ran
    assert ran[0] | ran[1] == {t.number for t in done}


def children(parent: int) -> dict[int, str]:
    """Command lines of ``parent``'s child processes, as ``ps`` shows them to any user."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # it may have ended meanwhile
            ppid = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                out[int(proc.name)] = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*search_cmd()[:2], module, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_a_password_in_the_storage_url_never_leaves_the_process(postgres_url, tiny_data_dir, tmp_path):  # noqa: F811
    from optuna_dashboard import get_note
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)  # trust auth: any works
    storage = ["--storage", url, "--study-name", "secret"]
    outputs = []
    search = subprocess.Popen(
        search_cmd(*storage, "--n-trials", "3", "--epochs", "1", "--data-dir", str(tiny_data_dir), *TINY[:-1],
                   "--retrain-seeds", "1", "--workers", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    workers = {}  # pid -> command line of the worker processes it started
    while search.poll() is None:
        workers |= {pid: line for pid, line in children(search.pid).items() if "--worker-id" in line}
        time.sleep(0.05)
    search = subprocess.CompletedProcess(search.args, search.returncode, *search.communicate(timeout=60))
    assert search.returncode == 0, search.stderr
    assert len(workers) == 1 and not [line for line in workers.values() if SECRET in line], workers  # w0 is itself
    assert "postgres:***@127.0.0.1" in search.stdout  # the storage line, redacted
    outputs.append(search)
    exported = run_module("hpo.export", *storage, "--output", "-", cwd=tmp_path)
    assert exported.returncode == 0 and '"storage": "postgresql+psycopg2://postgres:***@' in exported.stdout
    outputs += [exported, run_module("hpo.export", *storage, "--format", "yaml", cwd=tmp_path)]
    outputs.append(run_module("hpo.report", *storage, cwd=tmp_path))
    broken = make_url(url).set(port=1).render_as_string(hide_password=False)  # nothing listens on port 1
    outputs += [run_module("hpo.export", "--storage", broken, cwd=tmp_path)]
    outputs += [run_module("hpo.search", "--storage", url.replace("/hpo_test", ":x/hpo_test"), cwd=tmp_path)]
    assert [p.returncode for p in outputs] == [0, 0, 0, 0, 2, 2], [p.stderr for p in outputs]
    assert "cannot open storage postgresql+psycopg2://postgres:***@" in outputs[-2].stderr
    assert "malformed storage URL 'postgresql+psycopg2://postgres:***@" in outputs[-1].stderr
    with serve(*storage, logs=tmp_path / "dash") as dash:
        assert dash.study()["trials"]
    printed = "".join(p.stdout + p.stderr for p in outputs) + dash.output()
    assert SECRET not in printed
    files = [p for d in ("reports", "studies") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert {"best-config.json", "summary.md", "trials.csv", "secret-best.yaml"} - {p.name for p in files} == set()
    leaks = [p for p in files if SECRET.encode() in p.read_bytes() or b"password" in p.read_bytes()]
    assert not leaks, leaks
    study = optuna.load_study(study_name="secret", storage=postgres_url)
    stored = [get_note(study), repr(study.user_attrs), *(repr(t.user_attrs) for t in study.trials)]
    assert not [text for text in stored if SECRET in text]
