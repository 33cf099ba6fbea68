"""The search benchmark: strategies on one epoch budget, their anytime curves, and the epochs to reach the baseline."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from hpo.bench import main
from hpo.bench_search import (
    BASELINE,
    BenchSettings,
    bench_sampler,
    epochs_to_reach,
    rank_correlations,
    run_study,
    summary_table,
)
from hpo.errors import run_cli
from hpo.space import SearchSpace

TINY = ["--widths", "8", "16", "16", "--batch-size", "16", "--device", "cpu", "--epochs", "2"]


def _curve(strategy: str, seed: int, epochs: list[int], best: list[float], pruned=None) -> pd.DataFrame:
    n = len(epochs)
    return pd.DataFrame(
        {
            "strategy": strategy,
            "seed": seed,
            "trial": range(n),
            "epochs": epochs,
            "seconds": [float(e) for e in epochs],
            "best": best,
            "pruned": pruned or [False] * n,
        }
    )


def test_epochs_to_reach_is_the_first_row_at_or_above_the_target():
    curve = _curve("tpe:hyperband", 0, [2, 3, 5, 9], [0.3, 0.3, 0.5, 0.6])
    assert epochs_to_reach(curve, 0.5) == 5
    assert epochs_to_reach(curve, 0.3) == 2
    assert epochs_to_reach(curve, 0.61) == math.inf


def test_summary_compares_each_seed_with_the_baseline_of_the_same_seed():
    curves = pd.concat(
        [
            _curve(BASELINE, 0, [4, 8, 12], [0.4, 0.5, 0.5]),  # final best 0.5
            _curve(BASELINE, 1, [4, 8, 12], [0.6, 0.6, 0.7]),  # final best 0.7
            _curve("tpe:hyperband", 0, [1, 2, 3, 7], [0.1, 0.5, 0.5, 0.8], [True, False, True, False]),
            _curve("tpe:hyperband", 1, [1, 2, 6, 10], [0.2, 0.6, 0.65, 0.69]),  # never reaches 0.7
        ]
    )
    table = summary_table(curves, budget=12).set_index("strategy")
    tpe = table.loc["tpe:hyperband"]
    assert tpe["reached baseline best"] == "1/2"
    assert tpe["epochs to baseline best"] == pytest.approx((2 + 12) / 2)  # unreached counts as the budget
    assert tpe["lower bound"]
    assert tpe["fraction of budget"] == pytest.approx(7 / 12)
    assert tpe["pruned"] == pytest.approx((0.5 + 0.0) / 2)
    assert tpe["trials / study"] == 4
    base = table.loc[BASELINE]
    assert base["reached baseline best"] == "2/2" and not base["lower bound"]
    assert base["epochs to baseline best"] == pytest.approx((8 + 12) / 2)


def test_a_study_stops_once_it_has_spent_its_budget(tiny_data_dir):
    bench = BenchSettings(str(tiny_data_dir), 2, (8, 16, 16), 0, 16, budget=5, warm_start=True)
    curve = run_study(bench, "random:none", seed=3)
    assert curve.epochs.iloc[-1] >= 5 and curve.epochs.iloc[-2] < 5  # the trial that crossed the budget was last
    assert curve.epochs.diff().dropna().eq(2).all()  # no pruning: every trial runs its 2 epochs
    assert (curve.seed == 3).all() and (curve.strategy == "random:none").all()
    assert curve.best.dropna().is_monotonic_increasing


def test_studies_are_named_by_strategy_and_seed_so_hyperband_brackets_repeat(tiny_data_dir, monkeypatch):
    import optuna

    names = []
    create = optuna.create_study

    def recording_create(*args, **kwargs):
        names.append(kwargs.get("study_name"))
        return create(*args, **kwargs)

    monkeypatch.setattr(optuna, "create_study", recording_create)
    bench = BenchSettings(str(tiny_data_dir), 1, (8, 16, 16), 0, 16, budget=1, warm_start=False)
    for seed in (0, 0, 1):
        run_study(bench, "tpe:hyperband", seed=seed)
    assert names[0] is not None and names[0] == names[1] != names[2]


def test_cli_prints_the_table_and_writes_curves_and_plot(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "2", "--budget", "4", "--jobs", "1"]
    assert main([*args, "--strategies", "tpe:median", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["tpe:median", BASELINE]  # the baseline is always added
    assert "| 2/2 |" in rows[1]  # the baseline reaches its own final best in every study
    curves = pd.read_csv(out / "search-bench-curves.csv")
    assert set(curves.strategy) == {"tpe:median", BASELINE} and set(curves.seed) == {0, 1}
    lengths = [
        (len(json.loads(a)), len(json.loads(loss))) for a, loss in zip(curves.val_acc_curve, curves.val_loss_curve)
    ]
    assert all(n_acc == n_loss > 0 for n_acc, n_loss in lengths)  # each trial's loss curve, epoch for epoch
    space = set(SearchSpace.default().describe())
    assert all(set(json.loads(p)) == space for p in curves.params)  # each trial's sampled values
    assert (out / "search-bench.png").stat().st_size > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--strategies", "tpe:bogus"],
        ["--strategies", "annealing:none"],
        ["--budget", "0"],
        ["--search", "--ablation"],
        ["--ablation", "--augment-only"],
    ],
)
def test_bad_strategy_or_budget_is_one_line(tiny_data_dir, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--search", "--data-dir", str(tiny_data_dir), *flags]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_rank_correlations_use_only_full_length_trials():
    curves = pd.DataFrame(
        {
            "val_acc_curve": [
                "[0.1, 0.2, 0.3]",
                "[0.2, 0.1, 0.4]",
                "[0.3, 0.3, 0.5]",
                "[0.9]",  # pruned after one epoch: left out
                "[0.4, 0.5, 0.6]",
            ]
        }
    )
    rho = rank_correlations(curves, epochs=3)
    assert rho[3] == pytest.approx(1.0)
    assert rho[2] == pytest.approx(0.8)  # ranks 2,1,3,4 against 1,2,3,4
    assert rho[1] == pytest.approx(1.0)
    assert "4 trials" in rho.name


def test_loss_correlations_rank_lower_loss_as_better_against_final_accuracy():
    curves = pd.DataFrame(
        {
            "val_acc_curve": ["[0.1, 0.3]", "[0.2, 0.4]", "[0.3, 0.5]", "[0.4, 0.6]"],
            # epoch 1: loss falls as the final accuracy rises (rho +1 once negated); epoch 2: ranks 2,1,3,4
            "val_loss_curve": ["[2.0, 1.5]", "[1.8, 1.6]", "[1.6, 1.2]", "[1.4, 1.1]"],
        }
    )
    rho = rank_correlations(curves, epochs=2, signal="val_loss_curve")
    assert rho[1] == pytest.approx(1.0)
    assert rho[2] == pytest.approx(0.8)
    assert "4 trials" in rho.name


def test_samplers_draw_their_own_points_and_pruners_share_them():
    import optuna

    bench = BenchSettings("data", 2, (8, 16, 16), 0, 16, budget=4, warm_start=False)

    def first_points(strategy: str) -> list[float]:
        study = optuna.create_study(sampler=bench_sampler(bench.search_settings(strategy, seed=1)))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_points("tpe:hyperband") == first_points("tpe:none")  # same proposals: only the pruner differs
    assert first_points("tpe:none") != first_points("random:none")  # TPE's start-up is not random search's
