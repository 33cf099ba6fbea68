"""How soon could *any* strategy reach random search's final best? The oracle bound of ``bench --search --oracle N``.

A trial's validation score is one draw of a noisy quantity: the same config on another training seed scores about
a point higher or lower at the benchmark's size. Random search's final best of 20 trials is therefore partly its
luckiest draw, and "epochs to reach it" partly a lottery that no sampler or pruner can win on purpose. The oracle
measures how much:

1. it takes the ``N`` best full-length configs of all the benchmark's studies (by their search score) and trains
   each on ``SCREEN_SEEDS`` fresh seeds, scored on the same validation images; the gap between their search score
   and their fresh mean is the winner's curse;
2. the config with the best fresh mean is the oracle: the best config the studies found. It trains on ``runs`` new
   seeds (the screening runs are not reused, so the choice does not inflate them);
3. for each study seed, ``p`` is the share of those runs that reach random search's final best of that seed, and an
   oracle that did nothing but run that config at full length would need ``E[min(epochs * G, budget)]`` epochs to
   reach it, ``G`` geometric with ``p`` (a study that never reaches it counts as the budget, as in the table).

A strategy must first *find* that config, so on these seeds it cannot expect to need fewer epochs than the oracle,
unless the space holds a better config than any the studies ran.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hpo.bench_search import BASELINE, BenchSettings, fresh_runs, map_jobs
from hpo.stats import summarize

SCREEN_SEEDS = 8
# Fresh training seeds: no trial of a benchmark study has them (study seed s, trial n trains on s * 1_000_003 + n).
SCREEN_SEED_BASE = 5000
ORACLE_SEED_BASE = 9000


def candidates(curves: pd.DataFrame, epochs: int, n: int) -> pd.DataFrame:
    """The ``n`` distinct configs with the highest final validation accuracy among all studies' full-length,
    unpruned trials (the first trial of each config, the first ones on ties)."""
    accuracy = curves.val_acc_curve.map(json.loads)
    full = curves[accuracy.map(len).eq(epochs) & ~curves.pruned.astype(bool)].copy()
    full["search_acc"] = accuracy[full.index].map(lambda a: a[-1])
    full = full.drop_duplicates("params").sort_values("search_acc", ascending=False, kind="stable")
    return full.head(n)[["strategy", "seed", "trial", "search_acc", "params"]].reset_index(drop=True)


def reach_share(runs: np.ndarray | list[float], target: float) -> float:
    """The share of ``runs`` at or above ``target`` (equal counts, up to float rounding)."""
    return float(np.mean(np.asarray(runs) >= target - 1e-12))


def expected_epochs(p: float, epochs: int, budget: int) -> float:
    """E[min(epochs * G, budget)] for G ~ Geometric(p) on 1, 2, ...: the epochs an oracle running full-length
    trials that each reach the target with chance ``p`` spends until one does, capped at the budget."""
    trials = budget // epochs  # trials that fit; if none of them reaches the target the study counts as the budget
    q = 1.0 - p
    reach = sum(k * epochs * p * q ** (k - 1) for k in range(1, trials + 1))
    return reach + budget * q**trials


def mean_epochs_ci(
    final: list[float], targets: list[float], epochs: int, budget: int, resamples: int = 2000
) -> tuple[float, float]:
    """95 % bootstrap interval of the oracle's expected epochs, mean over the seeds' ``targets``, from resampling its
    runs: how much the finite number of runs leaves ``p`` uncertain (the targets themselves are fixed)."""
    rng = np.random.default_rng(0)
    runs = np.asarray(final)
    means = []
    for _ in range(resamples):
        sample = rng.choice(runs, size=len(runs), replace=True)
        means.append(np.mean([expected_epochs(reach_share(sample, t), epochs, budget) for t in targets]))
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def oracle_bound(
    bench: BenchSettings, curves: pd.DataFrame, n: int, runs: int, jobs: int
) -> tuple[pd.DataFrame, pd.Series, list[float], pd.DataFrame]:
    """The screened candidates (with their fresh runs), the oracle (the best fresh mean), its ``runs`` new runs,
    and per study seed of the baseline: its final best, the share of the oracle's runs reaching it, and the
    oracle's expected epochs to reach it."""
    screened = candidates(curves, bench.epochs, n)
    oracle_seeds = [ORACLE_SEED_BASE + k for k in range(runs)]
    # One task per run, so that the runs spread evenly over the jobs (map keeps their order).
    screen = [(json.loads(p), SCREEN_SEED_BASE + k) for p in screened.params for k in range(SCREEN_SEEDS)]
    done = _map(bench, screen, jobs)
    screened["fresh_runs"] = [done[i : i + SCREEN_SEEDS] for i in range(0, len(done), SCREEN_SEEDS)]
    screened["fresh_mean"] = screened.fresh_runs.map(np.mean)
    oracle = screened.loc[screened.fresh_mean.idxmax()]  # the first one on ties
    final = _map(bench, [(json.loads(oracle.params), seed) for seed in oracle_seeds], jobs)
    targets = curves[curves.strategy == BASELINE].groupby("seed").best.max()
    rows = []
    for seed, target in targets.items():
        p = reach_share(final, target)
        rows.append(
            {
                "seed": int(seed),
                "target": float(target),
                "p": p,
                "oracle epochs": expected_epochs(p, bench.epochs, bench.budget),
            }
        )
    return screened, oracle, final, pd.DataFrame(rows)


def _map(bench: BenchSettings, runs: list[tuple[dict, int]], jobs: int) -> list[float]:
    """Validation accuracy of each (params, seed) run, trained as a trial is, ``jobs`` at a time."""
    tasks = [(bench, params, [seed], "validation") for params, seed in runs]
    return [accuracy[0] for accuracy in map_jobs(fresh_runs, tasks, jobs)]


def print_oracle(
    screened: pd.DataFrame,
    oracle: pd.Series,
    final: list[float],
    per_seed: pd.DataFrame,
    table: pd.DataFrame,
    epochs: int,
    budget: int,
) -> None:
    """The screening, the oracle's runs, and per seed what it would need against what each strategy needed."""
    curse = screened.search_acc - screened.fresh_mean
    print(
        f"the {len(screened)} best configs by search score ({screened.search_acc.min():.4f}-"
        f"{screened.search_acc.max():.4f}), each on {SCREEN_SEEDS} fresh seeds: fresh means "
        f"{screened.fresh_mean.min():.4f}-{screened.fresh_mean.max():.4f}; search score - fresh mean "
        f"{curse.mean():+.4f} on average (the winner's curse)"
    )
    print(
        f"oracle: {oracle.strategy} seed {oracle.seed} trial {oracle.trial} (search {oracle.search_acc:.4f}, "
        f"fresh mean {oracle.fresh_mean:.4f}); {len(final)} new runs: {summarize(final)}, "
        f"max {max(final):.4f}"
    )
    print("\n| study seed | random's final best | oracle runs reaching it | oracle's expected epochs |")
    print("|--:|--:|--:|--:|")
    for _, r in per_seed.iterrows():
        print(f"| {r['seed']:.0f} | {r['target']:.4f} | {r['p']:.0%} | {r['oracle epochs']:.1f} |")
    mean = per_seed["oracle epochs"].mean()
    low, high = mean_epochs_ci(final, list(per_seed.target), epochs, budget)
    measured = ", ".join(
        f"{r.strategy} {'≥ ' if r['lower bound'] else ''}{r['epochs to baseline best']:.1f}"
        for _, r in table.iterrows()
        if r.strategy != BASELINE
    )
    print(f"| mean | | | **{mean:.1f}** (95 % bootstrap CI over the runs {low:.1f}-{high:.1f}) |")
    measured = f"; measured: {measured}" if measured else ""  # nothing to set beside it when random ran alone
    print(f"\nepochs to reach random's final best, mean over seeds: oracle {mean:.1f}{measured}")
