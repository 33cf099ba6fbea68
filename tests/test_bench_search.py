"""The search benchmark: strategies on one epoch budget, their anytime curves, and the epochs to reach the baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from hpo.bench import main
from hpo.bench_oracle import candidates, expected_epochs, mean_epochs_ci
from hpo.bench_search import (
    BASELINE,
    BenchSettings,
    bench_sampler,
    bench_splits,
    best_trials,
    epochs_to_reach,
    mean_best_so_far,
    rank_correlations,
    retrain_table,
    run_study,
    summary_table,
)
from hpo.data import load_cifar10
from hpo.space import SearchSpace
from tests.conftest import refusal

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


def test_a_target_reached_only_past_the_budget_is_not_reached():
    # A pruned study may end a trial past the budget (12): reaching random's best there (at 17) does not count.
    curves = pd.concat(
        [
            _curve(BASELINE, 0, [6, 12], [0.5, 0.6]),
            _curve("tpe:hyperband", 0, [1, 2, 6, 11, 17], [0.4, 0.4, 0.5, 0.5, 0.61], [True, True, False, True, False]),
        ]
    )
    tpe = summary_table(curves, budget=12).set_index("strategy").loc["tpe:hyperband"]
    assert tpe["reached baseline best"] == "0/1" and tpe["lower bound"] and tpe["epochs to baseline best"] == 12
    assert tpe["final best"] == "0.5000"  # as the budget ended, not the 0.61 found after it
    # A budget that is no multiple of the trial length: random's own last trial ends past it too (at 12 of 10);
    # its target is its best within the budget, which it reached itself.
    table = summary_table(curves, budget=10).set_index("strategy")
    assert table.loc[BASELINE, "reached baseline best"] == "1/1" and not table.loc[BASELINE, "lower bound"]
    assert table.loc[BASELINE, "final best"] == "0.5000" and table.loc[BASELINE, "epochs to baseline best"] == 6


def test_the_mean_best_so_far_starts_where_every_seed_has_a_best():
    curves = pd.concat(
        [
            _curve("tpe:hyperband", 0, [6, 12], [0.5, 0.5]),
            _curve("tpe:hyperband", 1, [1, 2, 8, 12], [math.nan, math.nan, 0.7, 0.7], [True, True, False, False]),
        ]
    )
    mean = mean_best_so_far(curves, np.arange(1, 13))
    assert np.isnan(mean[:7]).all()  # epochs 1-7: seed 1 has no completed trial yet (0.5 was drawn as the mean)
    assert mean[7:] == pytest.approx([0.6] * 5)


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


def _keys(split) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.images}


@pytest.mark.parametrize("subset, n_train, n_val", [(30, 30, 70), (0, 90, 10), (90, 90, 10), (500, 90, 10)])
def test_images_the_benchmark_does_not_train_on_join_the_validation_split(tiny_data_dir, subset, n_train, n_val):
    data = load_cifar10(tiny_data_dir)  # 100 training images: a validation split of 10, 90 to train on
    settings = BenchSettings(str(tiny_data_dir), 1, (8, 16, 16), subset, 16, budget=1, warm_start=False)
    train, val = bench_splits(data, settings.search_settings(BASELINE, 0))
    assert (len(train), len(val)) == (n_train, n_val)
    assert not _keys(train) & _keys(val) and _keys(train) | _keys(val) == _keys(data.train)
    label_of = {image.numpy().tobytes(): int(label) for image, label in zip(data.train.images, data.train.labels)}
    assert all(label_of[image.numpy().tobytes()] == int(label) for image, label in zip(val.images, val.labels))


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


def test_a_study_trains_and_scores_on_the_benchmark_splits(tiny_data_dir, monkeypatch):
    import hpo.bench_search as bench_search

    sizes = []

    class Recording(bench_search.Objective):
        def __init__(self, **kwargs):
            sizes.append((len(kwargs["train_data"]), len(kwargs["val_data"])))
            super().__init__(**kwargs)

    monkeypatch.setattr(bench_search, "Objective", Recording)
    run_study(BenchSettings(str(tiny_data_dir), 1, (8, 16, 16), 30, 16, budget=1, warm_start=False), BASELINE, 0)
    assert sizes == [(30, 70)]


def test_cli_prints_the_table_and_writes_curves_and_plot(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "2", "--budget", "4", "--jobs", "1"]
    assert main([*args, "--strategies", "tpe:median", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["tpe:median", BASELINE]  # the baseline is always added
    assert "| 2/2 |" in rows[1]  # the baseline reaches its own final best in every study
    assert "90 training images, 10 validation images" in text  # --train-subset 2000: all 90 train, none left over
    curves_csv = pd.read_csv(out / "search-bench-curves.csv")
    full = sum(len(json.loads(c)) == 2 and not p for c, p in zip(curves_csv.val_acc_curve, curves_csv.pruned))
    assert f"accuracy, over the {full} full-length trials of all studies:" in text
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
    refusal(main, ["--search", "--data-dir", str(tiny_data_dir), *flags], capsys)


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
    assert rho.attrs["trials"] == 4  # printed beside the correlations


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
    assert rho.attrs["trials"] == 4  # printed beside the correlations


def test_samplers_draw_their_own_points_and_pruners_share_them():
    import optuna

    bench = BenchSettings("data", 2, (8, 16, 16), 0, 16, budget=4, warm_start=False)

    def first_points(strategy: str) -> list[float]:
        study = optuna.create_study(sampler=bench_sampler(bench.search_settings(strategy, seed=1)))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_points("tpe:hyperband") == first_points("tpe:none")  # same proposals: only the pruner differs
    assert first_points("tpe:none") != first_points("random:none")  # TPE's start-up is not random search's


def _studies(rows: list[tuple]) -> pd.DataFrame:
    """(strategy, seed, trial, pruned, accuracy curve, lr) rows as the benchmark's curves frame."""
    return pd.DataFrame(
        [
            {
                "strategy": st,
                "seed": seed,
                "trial": trial,
                "pruned": pruned,
                "val_acc_curve": json.dumps(curve),
                "params": json.dumps({"lr_decoupled": lr}),
            }
            for st, seed, trial, pruned, curve, lr in rows
        ]
    )


def test_best_trials_are_the_highest_full_length_ones_never_a_pruned_one():
    curves = _studies(
        [
            ("tpe:hyperband", 0, 0, False, [0.2, 0.5], 10.0),
            ("tpe:hyperband", 0, 1, True, [0.9], 20.0),  # pruned after a lucky first epoch: not a candidate
            ("tpe:hyperband", 0, 2, False, [0.3, 0.6], 30.0),
            ("tpe:hyperband", 0, 3, False, [0.4, 0.6], 40.0),  # a tie: the first one stays the best
            (BASELINE, 0, 0, False, [0.1, 0.4], 50.0),
        ]
    )
    best = best_trials(curves, epochs=2).set_index("strategy")
    assert best.loc["tpe:hyperband", "trial"] == 2 and best.loc["tpe:hyperband", "params"] == {"lr_decoupled": 30.0}
    assert best.loc["tpe:hyperband", "val_acc"] == pytest.approx(0.6)
    assert best.loc[BASELINE, "trial"] == 0


def test_retrain_table_pairs_each_study_with_the_baseline_of_its_seed():
    best = pd.DataFrame(
        {
            "strategy": ["tpe:hyperband"] * 3 + [BASELINE] * 3,
            "seed": [2, 0, 1, 0, 1, 2],  # out of order: the pairing goes by seed, not by row
            "val_acc": [0.6, 0.6, 0.6, 0.7, 0.7, 0.7],
            "test_acc": [0.53, 0.51, 0.50, 0.50, 0.52, 0.48],
        }
    )
    table = retrain_table(best).set_index("strategy")
    # by seed: 0.51 - 0.50, 0.50 - 0.52, 0.53 - 0.48 (row by row would pair 0.53 with 0.50, ...)
    assert table.loc["tpe:hyperband", "vs baseline"] == pytest.approx((0.01 - 0.02 + 0.05) / 3)
    assert table.loc["tpe:hyperband", "p (paired)"] == pytest.approx(0.5784, abs=1e-3)
    assert table.loc[BASELINE, "best validation"] == pytest.approx(0.7)


def test_retraining_trains_on_the_benchmark_images_and_scores_on_the_test_set(tiny_data_dir, monkeypatch):
    import hpo.bench_search as bench_search

    calls = []

    def fake_train(config, train_data, eval_data, device):
        calls.append((config.seed, config.lr, len(train_data), len(eval_data)))
        return type("Result", (), {"val_acc": 0.5})()

    monkeypatch.setattr(bench_search, "train", fake_train)
    bench = BenchSettings(str(tiny_data_dir), 1, (8, 16, 16), 30, 16, budget=1, warm_start=False)
    params = {"lr_decoupled": 8.0, "wd_decoupled": 0.01, "momentum": 0.8, "dropout": 0.0}
    params.update(augmentation="flip", scheduler="cosine")
    assert bench_search.retrain_on_test(bench, params, 2) == [0.5, 0.5]
    assert [c[0] for c in calls] == [100, 101]  # fresh seeds
    assert {c[2:] for c in calls} == {(30, 20)}  # the benchmark's 30 training images; the 20 test images


def test_cli_retrains_the_best_of_each_study(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "2", "--budget", "4", "--jobs", "1"]
    assert main([*args, "--strategies", "tpe:median", "--retrain-best", "1", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "scored on the 20 test images" in text
    header = next(line for line in text.splitlines() if line.startswith("| strategy | studies | best validation"))
    rows = text.split(header)[1].strip().splitlines()[1:3]
    assert [r.split("|")[1].strip() for r in rows] == ["tpe:median", BASELINE]
    assert rows[1].rstrip().endswith("| baseline |")
    retrained = pd.read_csv(out / "search-bench-retrained.csv")
    assert len(retrained) == 4 and retrained.test_runs.map(lambda r: len(json.loads(r))).eq(1).all()
    assert retrained.params.map(lambda p: set(json.loads(p))).map(lambda keys: "lr_decoupled" in keys).all()


# ---- the oracle bound (hpo.bench_oracle) ------------------------------------------------------------------


def test_oracle_expected_epochs_is_a_capped_geometric_mean():
    assert expected_epochs(1.0, 6, 120) == pytest.approx(6)  # the first run reaches it
    assert expected_epochs(0.0, 6, 120) == pytest.approx(120)  # never: the whole budget, as in the table
    # p = 1/2, 2 trials fit: 6 epochs half the time, 12 a quarter, the budget (12) the last quarter
    assert expected_epochs(0.5, 6, 12) == pytest.approx(6 * 0.5 + 12 * 0.25 + 12 * 0.25)
    assert expected_epochs(0.1, 6, 10_000) == pytest.approx(60, rel=1e-6)  # uncapped: epochs / p


def test_oracle_candidates_are_the_best_distinct_full_length_unpruned_configs():
    curves = _studies(
        [
            ("tpe:hyperband", 0, 0, False, [0.2, 0.5], 10.0),
            ("tpe:hyperband", 0, 1, True, [0.2, 0.9], 20.0),  # pruned at the last epoch: not a candidate
            ("tpe:hyperband", 0, 2, False, [0.9], 30.0),  # stopped early: not a candidate
            ("tpe:none", 0, 0, False, [0.2, 0.6], 10.0),  # tpe:none proposes what tpe:hyperband did: one config
            (BASELINE, 0, 0, False, [0.1, 0.4], 50.0),
            (BASELINE, 1, 0, False, [0.1, 0.7], 60.0),
        ]
    )
    chosen = candidates(curves, epochs=2, n=3)
    assert [json.loads(p)["lr_decoupled"] for p in chosen.params] == [60.0, 10.0, 50.0]
    assert list(chosen.search_acc) == [0.7, 0.5, 0.4]  # the config's first trial's score
    assert len(candidates(curves, epochs=2, n=2)) == 2


def test_oracle_picks_the_best_fresh_mean_and_scores_new_runs_against_each_seeds_random_best(monkeypatch, capsys):
    import hpo.bench_oracle as bench_oracle

    # Fresh accuracy by config: lr 10 scored best in the search but is worse on fresh seeds than lr 20.
    fresh = {10.0: 0.50, 20.0: 0.55}
    calls = []

    def fake_runs(bench, params, seeds, split, threads=1):
        assert split == "validation"
        calls.append((params["lr_decoupled"], tuple(seeds)))
        return [fresh[params["lr_decoupled"]] + (0.1 if s % 2 else 0.0) for s in seeds]  # odd seeds 0.1 higher

    monkeypatch.setattr(bench_oracle, "fresh_runs", fake_runs)
    curves = _studies(
        [
            ("tpe:hyperband", 0, 0, False, [0.3, 0.62], 10.0),
            ("tpe:hyperband", 0, 1, False, [0.3, 0.58], 20.0),
            (BASELINE, 0, 0, False, [0.3, 0.5], 30.0),
            (BASELINE, 1, 0, False, [0.3, 0.5], 40.0),
            (BASELINE, 2, 0, False, [0.3, 0.5], 50.0),
        ]
    )
    # Random's final best: seed 0 0.6 (half of the runs, 0.55 and 0.65, reach it), seed 1 0.65 (equal reaches it
    # too), seed 2 0.66 (none does).
    curves["best"] = [0.62, 0.62, 0.6, 0.65, 0.66]
    bench = BenchSettings("unused", 2, (8, 16, 16), 30, 16, budget=4, warm_start=False)
    screened, oracle, final, per_seed = bench_oracle.oracle_bound(bench, curves, n=2, runs=4, jobs=1)
    screen = [c for c in calls if c[1][0] < bench_oracle.ORACLE_SEED_BASE]
    assert sorted({c[0] for c in screen}) == [10.0, 20.0]  # the two best by search score
    assert sorted(c[1][0] for c in screen if c[0] == 10.0) == list(range(5000, 5000 + bench_oracle.SCREEN_SEEDS))
    assert json.loads(oracle.params)["lr_decoupled"] == 20.0  # best fresh mean, not best search score
    assert [c for c in calls if c[1][0] >= bench_oracle.ORACLE_SEED_BASE] == [(20.0, (s,)) for s in range(9000, 9004)]
    assert final == pytest.approx([0.55, 0.65, 0.55, 0.65])
    rows = per_seed.set_index("seed")
    assert list(rows.target) == [0.6, 0.65, 0.66] and list(rows.p) == [0.5, 0.5, 0.0]
    assert rows.loc[0, "oracle epochs"] == pytest.approx(expected_epochs(0.5, 2, 4))
    assert rows.loc[2, "oracle epochs"] == 4  # never: the budget
    table = pd.DataFrame(
        {"strategy": ["tpe:hyperband", BASELINE], "lower bound": [True, False], "epochs to baseline best": [3.5, 2.0]}
    )
    endings = [(table, "; measured: tpe:hyperband ≥ 3.5\n"), (table.iloc[1:], "mean over seeds: oracle 3.3\n")]
    for strategies, ending in endings:
        capsys.readouterr()
        bench_oracle.print_oracle(screened, oracle, final, per_seed, strategies, 2, 4)
        assert capsys.readouterr().out.endswith(ending)  # random alone: nothing to set beside the oracle


def test_fresh_runs_train_like_a_trial_and_score_on_the_validation_images_or_the_test_set(tiny_data_dir, monkeypatch):
    import hpo.bench_search as bench_search

    calls = []

    def fake_train(config, train_data, eval_data, device):
        calls.append((config.seed, len(train_data), len(eval_data)))
        return type("Result", (), {"val_acc": 0.5})()

    monkeypatch.setattr(bench_search, "train", fake_train)
    bench = BenchSettings(str(tiny_data_dir), 1, (8, 16, 16), 30, 16, budget=1, warm_start=False)
    params = {"lr_decoupled": 8.0, "wd_decoupled": 0.01, "momentum": 0.8, "dropout": 0.0}
    params.update(augmentation="flip", scheduler="cosine")
    assert bench_search.fresh_runs(bench, params, [7, 9], "validation") == [0.5, 0.5]
    assert calls == [(7, 30, 70), (9, 30, 70)]  # the benchmark's 30 training images; its 70 validation images
    assert bench_search.fresh_runs(bench, params, [3], "test") == [0.5]
    assert calls[-1] == (3, 30, 20)  # the 20 test images


def test_cli_oracle_reads_back_an_earlier_run_without_rerunning_it(tiny_data_dir, tmp_path, capsys, monkeypatch):
    import hpo.bench_search as bench_search

    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "2", "--budget", "4", "--jobs", "1", *TINY]
    assert main([*args, "--strategies", "tpe:hyperband", "--out", str(first)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tpe:hyperband")]

    def no_studies(*_args, **_kwargs):
        raise AssertionError("--curves must not rerun the studies")

    monkeypatch.setattr(bench_search, "run_benchmark", no_studies)
    curves = str(first / "search-bench-curves.csv")
    assert main([*args, "--curves", curves, "--oracle", "2", "--oracle-runs", "3", "--out", str(second)]) == 0
    text = capsys.readouterr().out
    assert f"the 4 studies of {curves}, read back, not rerun" in text
    assert [line for line in text.splitlines() if line.startswith("| tpe:hyperband")] == table  # same table
    seeds = [line for line in text.split("| study seed |")[1].splitlines()[2:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in seeds] == ["0", "1", "mean"]
    assert "epochs to reach random's final best, mean over seeds: oracle " in text
    oracle = pd.read_csv(second / "search-bench-oracle.csv")
    assert len(oracle) == 2 and oracle.oracle.sum() == 1
    assert oracle.fresh_runs.map(lambda r: len(json.loads(r))).eq(8).all()
    assert len(json.loads(oracle.oracle_runs[oracle.oracle].iloc[0])) == 3
    assert not (second / "search-bench-curves.csv").exists()  # read back, not written again


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--search", "--curves", "missing.csv"], "cannot read --curves missing.csv"),
        (["--search", "--curves", "{curves}", "--epochs", "3"], "pass the --epochs, --budget"),
        (["--search", "--curves", "{curves}", "--budget", "9"], "pass the --epochs, --budget"),
        (["--search", "--curves", "{other}"], "is not a search-bench-curves.csv: no column"),
        (["--search", "--curves", "{garbled}"], "garbled.csv: a val_acc_curve cell is not a JSON list"),
        (["--search", "--curves", "{curves}", "--strategies", "tpe:none"], "leave out --strategies"),
        (["--oracle", "2"], "--oracle is for --search"),
        (["--curves", "x.csv"], "--curves is for --search"),
        (["--search", "--oracle", "-1"], "--oracle must be >= 0, got -1"),
        (["--search", "--replay", "--replay-fresh", "-2"], "--replay-fresh must be >= 0, got -2"),
        (["--search", "--oracle", "2", "--oracle-runs", "0"], "--oracle-runs must be at least 1"),
        (["--search", "--epochs", "3", "--budget", "2"], "--budget 2 is less than one trial of --epochs 3"),
    ],
)
def test_bad_curves_or_oracle_flags_are_one_line(tiny_data_dir, tmp_path, flags, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    curves = pd.concat([_curve(BASELINE, 0, [2, 4], [0.3, 0.4]), _curve("tpe:none", 0, [1, 4], [0.2, 0.4])])
    curves["val_acc_curve"] = json.dumps([0.2, 0.4])  # trials of 2 epochs
    curves["val_loss_curve"] = json.dumps([2.0, 1.9])
    curves["params"] = "{}"
    curves.to_csv(tmp_path / "curves.csv", index=False)
    curves.drop(columns="params").to_csv(tmp_path / "other.csv", index=False)
    curves.assign(val_acc_curve="[0.2, 0.4").to_csv(tmp_path / "garbled.csv", index=False)
    flags = [f.format(curves="curves.csv", other="other.csv", garbled="garbled.csv") for f in flags]
    base = ["--data-dir", str(tiny_data_dir), "--budget", "4", "--jobs", "1", *TINY]
    assert message in refusal(main, [*base, *flags], capsys)


def test_oracle_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_runs():
    few = [0.6, 0.5, 0.5, 0.5]  # p = 1/4 against a target of 0.6
    many = few * 16
    estimate = expected_epochs(0.25, 6, 120)
    low, high = mean_epochs_ci(few, [0.6], 6, 120)
    assert low <= estimate <= high and low < high
    low_many, high_many = mean_epochs_ci(many, [0.6], 6, 120)
    assert low <= low_many <= estimate <= high_many <= high and high_many - low_many < (high - low) / 2
    assert mean_epochs_ci([0.7] * 8, [0.6, 0.65], 6, 120) == (6.0, 6.0)  # every run reaches both targets


def test_the_curves_are_written_before_a_retrain_that_fails(tiny_data_dir, tmp_path, monkeypatch):
    import hpo.bench_search as bench_search

    def failing_retrain(*_args, **_kwargs):
        raise RuntimeError("retrain failed")

    monkeypatch.setattr(bench_search, "retrain_best", failing_retrain)
    out = tmp_path / "out"
    args = ["--search", "--data-dir", str(tiny_data_dir), "--seeds", "1", "--budget", "2", "--jobs", "1", *TINY]
    with pytest.raises(RuntimeError, match="retrain failed"):
        main([*args, "--strategies", "tpe:median", "--retrain-best", "1", "--out", str(out)])
    curves = pd.read_csv(out / "search-bench-curves.csv")  # the studies are kept: --curves can go on from them
    assert set(curves.strategy) == {"tpe:median", BASELINE}


@pytest.mark.parametrize(("device", "jobs"), [("cuda", 1), ("cpu", 2)])
def test_the_default_jobs_are_one_study_at_a_time_on_a_gpu_and_one_per_core_on_the_cpu(
    tiny_data_dir, tmp_path, monkeypatch, capsys, device, jobs
):
    import torch

    import hpo.bench_search

    class Ran(Exception):
        pass

    def run_benchmark(bench, strategies, seeds, jobs):
        raise Ran(jobs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: the studies themselves never run
    monkeypatch.setattr(hpo.bench_search, "cpu_cores", lambda: 2)
    monkeypatch.setattr(hpo.bench_search, "run_benchmark", run_benchmark)
    args = ["--search", "--data-dir", str(tiny_data_dir), "--device", device, "--out", str(tmp_path)]
    with pytest.raises(Ran) as ran:
        main(args)
    assert ran.value.args == (jobs,)
    if device == "cuda":  # more than one at a time is refused on a GPU, with one line
        line = refusal(main, [*args, "--jobs", "2"], capsys)
        assert "--jobs > 1 is for the CPU; on a GPU run the studies one at a time" in line
