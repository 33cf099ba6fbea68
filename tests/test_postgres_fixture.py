"""The throwaway PostgreSQL server is real and Optuna's RDB storage works on it across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
from optuna.trial import TrialState

from tests.pg import postgres_url  # noqa: F401

N_TRIALS = 12

# One worker: join the study and optimize until the study holds N_TRIALS complete trials in total.
# MaxTrialsCallback alone overshoots with several workers (each checks only after its own trial ends,
# so trials already running elsewhere still complete); a trial whose number is past the target is
# pruned instead, which makes the COMPLETE count exact.
WORKER = textwrap.dedent(
    """
    import sys

    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=url)

    def objective(trial):
        if trial.number >= n:
            raise optuna.TrialPruned()
        x = trial.suggest_float("x", -1.0, 1.0)
        return x * x

    study.optimize(objective, callbacks=[MaxTrialsCallback(n, states=(TrialState.COMPLETE,))])
    """
)


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


def test_optuna_rdb_storage_across_processes(postgres_url):  # noqa: F811
    name = "two-process-study"
    # Create the schema and the study here first: two processes creating the tables of an empty
    # database at the same moment can collide in PostgreSQL's catalog.
    optuna.create_study(study_name=name, storage=postgres_url, direction="minimize")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, postgres_url, name, str(N_TRIALS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out

    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert sorted(t.number for t in complete) == list(range(N_TRIALS))
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # unique, no gaps
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    extra = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.PRUNED and t.number >= N_TRIALS for t in extra)
