"""Pruners replayed on recorded learning curves: each rule must stop the trials Optuna's pruner (as hpo.search builds
it) stops, at the same epochs."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from hpo.bench import main
from hpo.bench_replay import hyperband_brackets, make_rule, replay, replay_table, rungs, successive_halving
from hpo.search import Settings, _make_pruner
from tests.conftest import refusal

EPOCHS = 6


def search_pruner(name: str, epochs: int = EPOCHS) -> optuna.pruners.BasePruner:
    settings = Settings(12, epochs, (8, 16, 16), 0, 16, 0.1, 0, "tpe", name, {})
    return _make_pruner(settings)


def optuna_stops(pruner: optuna.pruners.BasePruner, curves: np.ndarray, name: str = "replay") -> list[int]:
    """The epoch at which Optuna's pruner stops each trial, the trials run one after another as the search runs
    them (a pruning decision at the last epoch stops nothing)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
    stops = []
    for curve in curves:
        trial = study.ask()
        stop = len(curve)
        for epoch, value in enumerate(curve, 1):
            trial.report(float(value), epoch)
            if epoch < len(curve) and trial.should_prune():
                stop = epoch
                break
        if stop < len(curve):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(curve[-1]))
        stops.append(stop)
    return stops


@pytest.fixture
def curves():
    return np.random.default_rng(3).random((60, EPOCHS))


@pytest.mark.parametrize("pruner", ["asha", "median", "none"])
def test_each_rule_stops_the_trials_optuna_stops_at_the_same_epochs(pruner, curves):
    rule = make_rule(pruner, EPOCHS, np.random.default_rng(0))
    expected = optuna_stops(search_pruner(pruner), curves)
    assert [rule(c) for c in curves] == expected
    assert pruner == "none" or len(set(expected)) > 2  # the curves make the pruner decide at several epochs


def test_hyperband_is_successive_halving_within_optunas_brackets_in_its_proportions(curves):
    pruner = search_pruner("hyperband")
    stops = optuna_stops(pruner, curves, name="hb")
    brackets = hyperband_brackets(EPOCHS)
    assert [share for _, share in brackets] == pruner._trial_allocation_budgets
    assert [bracket_rungs for bracket_rungs, _ in brackets] == [[1, 3], [3]]
    # Optuna puts trial n into a bracket by hashing the study name and n; within a bracket it halves as ASHA does.
    fake_study = optuna.create_study(study_name="hb", direction="maximize")
    fake_study.ask()
    bracket_of = [pruner._get_bracket_id(fake_study, optuna.trial.FrozenTrial(**_frozen(n))) for n in range(60)]
    for b, (bracket_rungs, _) in enumerate(brackets):
        members = [i for i in range(len(curves)) if bracket_of[i] == b]
        halving = successive_halving(EPOCHS, bracket_rungs, {})
        assert [halving(curves[i]) for i in members] == [stops[i] for i in members]
    assert set(bracket_of) == {0, 1}


def _frozen(number: int) -> dict:
    return dict(
        number=number,
        state=optuna.trial.TrialState.RUNNING,
        value=None,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def test_rungs_start_at_the_minimum_resource_and_stop_before_the_last_epoch():
    assert rungs(6, 1) == [1, 3] and rungs(6, 3) == [3] and rungs(10, 1) == [1, 3, 9] and rungs(3, 3) == []


def test_a_replay_charges_the_epochs_each_trial_ran_and_keeps_the_best_finished_one():
    finals = np.array([0.5, 0.9, 0.7, 0.8])
    signal = np.tile(finals[:, None], (1, 4))
    stop_at_two = lambda curve: 2  # noqa: E731
    # 3 x 2 epochs fit in 7, a 4th does not; none finished, so none was chosen
    assert replay(finals, signal, np.arange(4), stop_at_two, [7]) == [(None, 3, 0)]
    # One pass answers every budget, in the order given: 3 epochs fit no 4-epoch trial, 9 fit two (trials 0 and 2:
    # the best is trial 2, 0.7), 16 all four (trial 1, 0.9).
    run_all = make_rule("none", 4, None)
    assert replay(finals, signal, np.array([0, 2, 1, 3]), run_all, [9, 3, 16]) == [(2, 2, 2), (None, 0, 0), (1, 4, 4)]


def test_pruning_pays_when_early_epochs_rank_trials_as_the_last_does_and_not_when_they_mislead():
    rng = np.random.default_rng(0)
    finals = rng.random(200)
    honest = np.column_stack([finals] * EPOCHS)  # every epoch ranks trials as the last does
    misleading = np.column_stack([1 - finals] * (EPOCHS - 1) + [finals])  # every earlier epoch ranks them backwards

    def table(accuracy):
        frame = pd.DataFrame(
            {
                "val_acc_curve": [json.dumps(list(c)) for c in accuracy],
                "val_loss_curve": [json.dumps(list(-c)) for c in accuracy],
            }
        )
        return replay_table(frame, EPOCHS, [30], pruners=("none", "hyperband"), replays=50).set_index("signal")

    good, bad = table(honest), table(misleading)
    assert good.loc["accuracy", 30] > good.loc["-", 30] and bad.loc["accuracy", 30] < bad.loc["-", 30]
    assert list(good.index) == ["-", "accuracy", "loss"]  # no-pruning needs no signal
    assert good.loc["loss", 30] == good.loc["accuracy", 30]  # the loss here ranks as the accuracy does
    assert good.loc["accuracy", "started"] > good.loc["-", "started"] == good.loc["-", "finished"] == 5
    assert good.loc["accuracy", "finished"] < good.loc["accuracy", "started"]  # pruning starts more, finishes fewer


def test_shorter_curves_are_left_out_of_a_replay():
    frame = pd.DataFrame(
        {"val_acc_curve": [json.dumps([0.1, 0.2]), json.dumps([0.3])], "val_loss_curve": ["[2.0, 1.0]", "[3.0]"]}
    )
    assert replay_table(frame, 2, [2], pruners=("none",), replays=3).attrs["trials"] == 1


def test_cli_replays_the_pruners_on_the_baselines_trials(tiny_data_dir, tmp_path, capsys):
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "1", "--budget", "4", "--jobs", "1", "--replay"]
    tiny = ["--widths", "8", "16", "16", "--batch-size", "16", "--device", "cpu", "--epochs", "2"]
    assert main([*args, "--strategies", "random:none", "--out", str(tmp_path), *tiny]) == 0
    text = capsys.readouterr().out
    replayed = text[text.index("pruners replayed") :]
    rows = [line.split("|")[1:3] for line in replayed.splitlines() if line.startswith("| ") and "epochs |" not in line]
    assert [(p.strip(), s.strip()) for p, s in rows] == [
        ("none", "-"),
        ("hyperband", "accuracy"),
        ("hyperband", "loss"),
        ("asha", "accuracy"),
        ("asha", "loss"),
        ("median", "accuracy"),
        ("median", "loss"),
    ]
    assert "pruners replayed on random search's 2 full-length trials" in text
    assert "trained again on" not in text  # fresh runs only when asked for
    line = refusal(main, ["--replay", "--data-dir", str(tiny_data_dir)], capsys)
    assert "--replay is for --search" in line
    line = refusal(main, ["--search", "--replay-fresh", "1", "--data-dir", str(tiny_data_dir)], capsys)
    assert "--replay-fresh is for --search --replay" in line


def test_fresh_scores_are_the_mean_fresh_score_of_the_trials_each_replay_chose():
    rng = np.random.default_rng(1)
    accuracy = rng.random((30, EPOCHS))
    frame = pd.DataFrame(
        {
            "val_acc_curve": [json.dumps(list(c)) for c in accuracy],
            "val_loss_curve": [json.dumps(list(-c)) for c in accuracy],
        }
    )
    plain = replay_table(frame, EPOCHS, [12, 30], pruners=("none", "asha"), replays=20)
    chosen = plain.attrs["chosen"]
    assert chosen and set(chosen) <= set(range(30)) and "fresh 30" not in plain
    # A fresh score that is the trial's own final accuracy gives back the plain table's bests...
    same = replay_table(
        frame, EPOCHS, [12, 30], pruners=("none", "asha"), replays=20, fresh=dict(enumerate(accuracy[:, -1]))
    )
    assert np.allclose(same["fresh 12"], plain[12]) and np.allclose(same["fresh 30"], plain[30])
    # ...and one that ranks the trials backwards shows what the choice is worth: less than a random trial.
    backwards = replay_table(
        frame, EPOCHS, [30], pruners=("none",), replays=20, fresh=dict(enumerate(1 - accuracy[:, -1]))
    )
    assert backwards["fresh 30"].iloc[0] < np.mean(1 - accuracy[:, -1])


def test_cli_trains_the_chosen_configs_again_on_fresh_seeds(tiny_data_dir, tmp_path, capsys):
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "1", "--budget", "4", "--jobs", "1", "--replay"]
    tiny = ["--widths", "8", "16", "16", "--batch-size", "16", "--device", "cpu", "--epochs", "2"]
    assert main([*args, "--replay-fresh", "1", "--strategies", "random:none", "--out", str(tmp_path), *tiny]) == 0
    text = capsys.readouterr().out
    fresh = pd.read_csv(tmp_path / "search-bench-replay-fresh.csv")
    assert len(fresh) >= 1 and all(len(json.loads(r)) == 1 for r in fresh.fresh_runs)
    curves = pd.read_csv(tmp_path / "search-bench-curves.csv")
    # each fresh row is a trial of the study, trained again: same params, its own (new) run
    for _, row in fresh.iterrows():
        trial = curves[(curves.strategy == row.strategy) & (curves.trial == row.trial)].iloc[0]
        assert trial.params == row.params and json.loads(trial.val_acc_curve)[-1] == row.search_acc
    table = text[text.index("the same replays, each scored by the config it chose") :]
    rows = [
        line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "epochs |" not in line
    ]
    assert rows == ["none", "hyperband", "hyperband", "asha", "asha", "median", "median"]


def test_fresh_runs_go_to_the_full_length_trials_at_the_chosen_positions(monkeypatch):
    import hpo.bench_search as bench_search

    baseline = pd.DataFrame(
        {
            "strategy": "random:none",
            "seed": 0,
            "trial": [0, 1, 2, 3],
            "params": [json.dumps({"momentum": m}) for m in (0.70, 0.75, 0.80, 0.85)],
            "val_acc_curve": [json.dumps(c) for c in ([0.1], [0.1, 0.2], [0.3, 0.4], [0.5, 0.6])],  # trial 0 diverged
        }
    )
    trained = []

    def fake_map_jobs(function, tasks, jobs):
        trained.extend(params["momentum"] for _, params, _, _ in tasks)
        return [[params["momentum"] / 10] * len(seeds) for _, params, seeds, _ in tasks]

    monkeypatch.setattr(bench_search, "map_jobs", fake_map_jobs)
    bench = bench_search.BenchSettings("data", 2, (8, 16, 16), 100, 16, 4, False)
    fresh = bench_search.replay_fresh(bench, baseline, [0, 2], seeds=2, jobs=1)
    # positions count the full-length trials only: 0 is trial 1, 2 is trial 3
    assert trained == [0.75, 0.85] and list(fresh.trial) == [1, 3] and list(fresh.position) == [0, 2]
    assert list(fresh.search_acc) == [0.2, 0.6] and list(fresh.fresh_acc) == pytest.approx([0.075, 0.085])
    assert [json.loads(r) for r in fresh.fresh_runs] == [[0.75 / 10] * 2, [0.85 / 10] * 2]
