"""Several hosts share one study through PostgreSQL: two separate hpo.search processes, one storage URL."""

from __future__ import annotations

import subprocess

import optuna
from optuna.trial import TrialState

from tests.pg import postgres_url  # noqa: F401
from tests.searchutil import TINY, search_cmd


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
        "2",
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
    # Both processes ran trials (each prints its own lines).
    assert all("trial " in out for out, _ in outputs)
