"""Search strategies compared on one epoch budget: ``python -m hpo.bench --search``.

Each strategy (a sampler and a pruner, as ``hpo.search --sampler/--pruner`` would build them) runs R studies with
study seeds 0..R-1 over the default search space, on the same training/validation split, until it has spent the
epoch budget. Trials train on at most ``--train-subset`` images, and every training image they do not train on joins
the validation split, so that the scores a study ranks its trials by carry as little sampling noise as the data
allows. For each study we keep the anytime curve (best validation accuracy so far against cumulative epochs and
seconds); the table gives, per strategy, the final best and the epochs it needed to reach the baseline's
(random search without pruning) final best of the same seed, and the plot the mean best-so-far against epochs.
With ``--retrain-best K`` each study's best trial is retrained on K fresh seeds and scored on the test set, which
tells how good the chosen configurations are, free of the selection on validation noise that inflates a best score.
With ``--oracle N`` (``hpo.bench_oracle``) the best config the studies found is rerun on fresh seeds, which bounds
how soon any strategy can expect to reach random search's final best. With ``--replay`` (``hpo.bench_replay``)
each of the search's pruners is replayed on random search's full-length trials, fed validation accuracy or loss.
``--curves FILE`` reads the studies of an
earlier run back from its curves CSV instead of running them again (for ``--retrain-best``, ``--oracle`` and
``--replay``).

The studies run in ``--jobs`` processes of one thread each (2 jobs use both cores of a 2-core machine better than
one study on 2 threads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402

from hpo.data import Cifar10, Split, load_cifar10, train_val_split  # noqa: E402
from hpo.errors import HpoError  # noqa: E402
from hpo.objective import Objective  # noqa: E402
from hpo.parallel import map_in_processes  # noqa: E402
from hpo.report import anytime_curve  # noqa: E402
from hpo.search import PRUNERS, SAMPLERS, Settings, _first_trials, _make_pruner, _make_sampler  # noqa: E402
from hpo.space import SearchSpace  # noqa: E402
from hpo.stats import p_text, summarize  # noqa: E402
from hpo.train import cpu_cores, train  # noqa: E402
from hpo.worker import quiet_optuna  # noqa: E402

DEFAULT_STRATEGIES = ("tpe:hyperband", "tpe:none", "random:none")
BASELINE = "random:none"


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What every study of the benchmark shares; ``budget`` is epochs per study."""

    data_dir: str
    epochs: int
    widths: tuple[int, int, int]
    train_subset: int
    batch_size: int
    budget: int
    warm_start: bool
    device: str = "cpu"

    def search_settings(self, strategy: str, seed: int) -> Settings:
        sampler, pruner = parse_strategy(strategy)
        return Settings(
            n_trials=10**6,
            epochs=self.epochs,
            widths=self.widths,
            train_subset=self.train_subset,
            batch_size=self.batch_size,
            val_fraction=0.1,
            seed=seed,
            sampler=sampler,
            pruner=pruner,
            space=SearchSpace.default().describe(),
        )


def parse_strategy(text: str) -> tuple[str, str]:
    """``"tpe:hyperband"`` -> ("tpe", "hyperband"); one clear error for anything else."""
    sampler, _, pruner = text.partition(":")
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise HpoError(
            f"strategy {text!r} is not SAMPLER:PRUNER with a sampler from {', '.join(SAMPLERS)} "
            f"and a pruner from {', '.join(PRUNERS)} (for example tpe:hyperband)"
        )
    return sampler, pruner


def bench_sampler(settings: Settings) -> optuna.samplers.BaseSampler:
    """The search's sampler for this study seed, on a seed stream of its own per sampler: TPE's random start-up
    trials must not be the random search's first trials (each strategy finds its own best), while strategies with
    the same sampler share it, so their pruners are compared on the same proposals."""
    return _make_sampler(settings, 0, zlib.crc32(settings.sampler.encode()) % 100_003)


def bench_splits(data: Cifar10, settings: Settings) -> tuple[Split, Split]:
    """The benchmark's training images, the first ``train_subset`` of the search's training split, and its
    validation images: the search's validation split plus every training image the benchmark does not train on.
    On the 4 660-image subset that scores trials on 2 660 images instead of 466, so two configs' scores differ by
    sampling noise of about 1 point instead of 2-3, and a study's best is less its luckiest draw."""
    train_split, val_split = train_val_split(data.train, settings.val_fraction, seed=0)
    if settings.train_subset <= 0 or settings.train_subset >= len(train_split):
        return train_split, val_split
    unused = train_split.take(slice(settings.train_subset, None))
    return train_split.first(settings.train_subset), val_split.concat(unused)


def run_study(bench: BenchSettings, strategy: str, seed: int, threads: int = 1) -> pd.DataFrame:
    """One study of ``strategy`` with study seed ``seed`` until ``bench.budget`` epochs are spent; its anytime
    curve (one row per finished trial) with the strategy and seed added."""
    torch.set_num_threads(threads)
    quiet_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = bench.search_settings(strategy, seed)
    train_split, val_split = bench_splits(load_cifar10(bench.data_dir), settings)
    device = torch.device(bench.device)
    # A fixed name: Hyperband assigns trials to brackets by hashing the study name, so an auto-generated one would
    # make every run of the benchmark prune differently.
    study = optuna.create_study(
        study_name=f"bench {strategy} seed {seed}",
        direction="maximize",
        sampler=bench_sampler(settings),
        pruner=_make_pruner(settings),
    )
    for label, params in _first_trials(settings, [], warm=bench.warm_start):
        study.enqueue_trial(params, user_attrs={"enqueued": label})
    objective = Objective(
        space=SearchSpace.from_dict(settings.space),
        base=settings.base_config(),
        train_data=train_split.to(device),
        val_data=val_split.to(device),
        device=device,
        study_seed=seed,
    )

    def stop_at_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        spent = sum(t.user_attrs.get("epochs_run", 0) for t in study.get_trials(deepcopy=False))
        if spent >= bench.budget:
            study.stop()

    study.optimize(objective, callbacks=[stop_at_budget], catch=(Exception,))
    trials = study.get_trials(deepcopy=False)
    curve = anytime_curve(trials)
    curve.insert(0, "seed", seed)
    curve.insert(0, "strategy", strategy)
    pruned = {t.number for t in trials if t.state == optuna.trial.TrialState.PRUNED}
    curve["pruned"] = curve.trial.isin(pruned)
    for column in ("val_acc_curve", "val_loss_curve"):
        values = {t.number: t.user_attrs.get(column, []) for t in trials}
        curve[column] = [json.dumps(values[n]) for n in curve.trial]
    params = {t.number: t.params for t in trials}
    curve["params"] = [json.dumps(params[n]) for n in curve.trial]  # so a study's best can be retrained later
    return curve


def rank_correlations(curves: pd.DataFrame, epochs: int, signal: str = "val_acc_curve") -> pd.Series:
    """Spearman correlation between each epoch's ``signal`` (validation accuracy, or validation loss negated so
    that higher is better for both) and the last epoch's validation accuracy, over the trials that ran all
    ``epochs``: how much an early pruning decision on that signal at that epoch knows about the final ranking."""
    decoded = zip(curves[signal].map(json.loads), curves.val_acc_curve.map(json.loads))
    pairs = [(s, a) for s, a in decoded if len(a) == epochs and len(s) == epochs]
    if len(pairs) < 3:
        return pd.Series(dtype=float)
    sign = -1.0 if signal == "val_loss_curve" else 1.0
    table = pd.DataFrame([[sign * v for v in s] for s, _ in pairs], columns=range(1, epochs + 1))
    final = pd.Series([a[-1] for _, a in pairs])
    rho = table.corrwith(final, method="spearman").rename(f"Spearman with epoch {epochs}'s accuracy")
    rho.attrs["trials"] = len(pairs)
    return rho


def run_benchmark(bench: BenchSettings, strategies: list[str], seeds: int, jobs: int) -> pd.DataFrame:
    """Every (strategy, seed) study, ``jobs`` at a time; their anytime curves in one frame."""
    tasks = [(bench, s, seed) for seed in range(seeds) for s in strategies]
    curves = []

    def show(curve: pd.DataFrame) -> None:
        curves.append(curve)
        print(
            f"  {curve.strategy.iloc[0]:<16} seed {curve.seed.iloc[0]}: {len(curve)} trials "
            f"({curve.pruned.sum()} pruned), {curve.epochs.iloc[-1]} epochs, {curve.seconds.iloc[-1]:.0f} s, "
            f"best {curve.best.iloc[-1]:.4f}",
            flush=True,
        )

    if jobs == 1:
        for task in tasks:
            show(run_study(*task, threads=torch.get_num_threads()))
    else:
        for curve in map_in_processes(run_study, tasks, jobs):
            show(curve)
    return pd.concat(curves, ignore_index=True)


def epochs_to_reach(curve: pd.DataFrame, target: float) -> float:
    """Cumulative epochs at the first trial whose best-so-far reaches ``target``; inf if it never does."""
    reached = curve[curve.best >= target - 1e-12]
    return float(reached.epochs.iloc[0]) if len(reached) else math.inf


def best_trials(curves: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Per study, the full-length trial with the highest final validation accuracy (the first one on ties): what
    the search would hand to retraining. Pruned trials never count, however well they started."""
    rows = []
    for (strategy, seed), curve in curves.groupby(["strategy", "seed"], sort=False):
        accuracy = curve.val_acc_curve.map(json.loads)
        full = curve[accuracy.map(len).eq(epochs) & ~curve.pruned.astype(bool)]
        if full.empty:
            continue
        finals = accuracy[full.index].map(lambda a: a[-1])
        best = full.loc[finals.idxmax()]
        rows.append(
            {
                "strategy": strategy,
                "seed": seed,
                "trial": int(best.trial),
                "val_acc": float(finals.max()),
                "params": json.loads(best.params),
            }
        )
    return pd.DataFrame(rows)


RETRAIN_SEED_BASE = 100  # retraining seeds 100, 101, ...: none of them is a trial's seed in a short benchmark
REPLAY_SEED_BASE = 7000  # --replay-fresh's seeds; the oracle's (bench_oracle) start at 5000 and 9000


def fresh_runs(bench: BenchSettings, params: dict, seeds: list[int], split: str, threads: int = 1) -> list[float]:
    """Accuracy on ``split`` ("validation": the benchmark's validation images, "test": the test set) of the config
    ``params`` gives, trained once per seed on the benchmark's training images, as a trial is."""
    torch.set_num_threads(threads)
    data = load_cifar10(bench.data_dir)
    settings = bench.search_settings(BASELINE, 0)
    train_split, val_split = bench_splits(data, settings)
    scored = {"validation": val_split, "test": data.test}[split]
    config = SearchSpace.to_config(params, settings.base_config())
    device = torch.device(bench.device)
    train_data, eval_data = train_split.to(device), scored.to(device)
    return [train(config.replace(seed=seed), train_data, eval_data, device).val_acc for seed in seeds]


def retrain_on_test(bench: BenchSettings, params: dict, seeds: int, threads: int = 1) -> list[float]:
    """Test accuracy of the config ``params`` gives, trained ``seeds`` times on fresh seeds on the benchmark's
    training images: an estimate of the chosen config's quality free of the selection on validation noise."""
    return fresh_runs(bench, params, [RETRAIN_SEED_BASE + k for k in range(seeds)], "test", threads)


def replay_fresh(
    bench: BenchSettings, baseline: pd.DataFrame, chosen: list[int], seeds: int, jobs: int
) -> pd.DataFrame:
    """The configs the replays chose (positions among the baseline's full-length trials), each trained again on
    ``seeds`` new seeds and scored as a trial, ``jobs`` at a time: one row per config, with its runs and their
    mean."""
    from hpo.bench_replay import full_length_rows

    picked = full_length_rows(baseline, bench.epochs).iloc[chosen]
    seed_list = [REPLAY_SEED_BASE + k for k in range(seeds)]
    tasks = [(bench, json.loads(params), seed_list, "validation") for params in picked.params]
    runs = map_jobs(fresh_runs, tasks, jobs)
    return picked[["strategy", "seed", "trial", "params"]].assign(
        position=chosen,
        search_acc=[json.loads(curve)[-1] for curve in picked.val_acc_curve],
        fresh_runs=[json.dumps(r) for r in runs],
        fresh_acc=[float(np.mean(r)) for r in runs],
    )


def map_jobs(function, tasks: list[tuple], jobs: int) -> list:
    """``function(*task)`` for every task, in order: in this process with its threads when ``jobs`` is 1, else in
    ``jobs`` fresh single-threaded processes (spawned: no inherited thread pools)."""
    if jobs == 1:
        return [function(*task, threads=torch.get_num_threads()) for task in tasks]
    return list(map_in_processes(function, tasks, jobs))


def retrain_best(bench: BenchSettings, curves: pd.DataFrame, seeds: int, jobs: int) -> pd.DataFrame:
    """Every study's best trial retrained ``seeds`` times and scored on the test set (``jobs`` at a time)."""
    best = best_trials(curves, bench.epochs)
    results = map_jobs(retrain_on_test, [(bench, params, seeds) for params in best.params], jobs)
    best["test_runs"] = results
    best["test_acc"] = [float(np.mean(r)) for r in results]
    return best


def retrain_table(best: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per strategy: its studies' chosen configs, validation score against retrained test accuracy (mean ± CI over
    studies), and the paired difference in test accuracy from the baseline's study of the same seed."""
    base = best[best.strategy == baseline].set_index("seed").test_acc
    rows = []
    for strategy, group in best.groupby("strategy", sort=False):
        test = summarize(list(group.test_acc))
        paired = group.set_index("seed").test_acc.align(base, join="inner")
        diff = paired[0] - paired[1]
        p = float(sps.ttest_rel(*paired).pvalue) if strategy != baseline and len(diff) > 1 else math.nan
        rows.append(
            {
                "strategy": strategy,
                "studies": len(group),
                "best validation": float(group.val_acc.mean()),
                "retrained test": test.mean_ci(),
                "vs baseline": float(diff.mean()) if strategy != baseline else 0.0,
                "p (paired)": p,
            }
        )
    return pd.DataFrame(rows)


def summary_table(curves: pd.DataFrame, budget: int, baseline: str = BASELINE) -> pd.DataFrame:
    """Per strategy: trials, pruned share, final best (mean ± CI over seeds), and the epochs each study needed to
    reach the baseline's final best for the same seed, also as a fraction of the budget; bests within the budget."""
    # Final bests as the budget ends: a pruned study's last trial may run past it, and what it found there is
    # neither counted as reached nor as the target.
    finals = curves[curves.epochs <= budget].groupby(["strategy", "seed"]).best.last()
    rows = []
    for strategy, per_strategy in curves.groupby("strategy", sort=False):
        needed, trials, pruned, seconds = [], [], [], []
        for seed, curve in per_strategy.groupby("seed"):
            trials.append(len(curve))
            pruned.append(curve.pruned.mean())
            seconds.append(curve.seconds.iloc[-1])
            if (baseline, seed) in finals.index:
                needed.append(epochs_to_reach(curve, finals[(baseline, seed)]))
        final = summarize(list(finals[strategy]))
        # A pruned study may end up to a trial past the budget; reaching the target there does not count.
        reached = [n for n in needed if n <= budget]
        rows.append(
            {
                "strategy": strategy,
                "studies": len(trials),
                "trials / study": np.mean(trials),
                "pruned": np.mean(pruned),
                "train s / study": np.mean(seconds),
                "final best": final.mean_ci(),
                "reached baseline best": f"{len(reached)}/{len(needed)}",
                # Studies that never reach it count as the whole budget: the mean is then a lower bound.
                "epochs to baseline best": np.mean([min(n, budget) for n in needed]) if needed else math.nan,
                "lower bound": len(reached) < len(needed),
            }
        )
    table = pd.DataFrame(rows)
    table["fraction of budget"] = table["epochs to baseline best"] / budget
    return table


def print_table(table: pd.DataFrame, budget: int) -> None:
    print(
        "| strategy | studies | trials / study | pruned | train s / study | final best (mean ± 95 % CI) "
        f"| reached random's best | epochs to reach it (of {budget}) |"
    )
    print("|---|--:|--:|--:|--:|---|--:|--:|")
    for r in table.itertuples(index=False):
        bound = "≥ " if r[table.columns.get_loc("lower bound")] else ""
        epochs = r[table.columns.get_loc("epochs to baseline best")]
        fraction = r[table.columns.get_loc("fraction of budget")]
        print(
            f"| {r.strategy} | {r.studies} | {r[2]:.1f} | {r.pruned:.0%} | {r[4]:.0f} | {r[5]} | {r[6]} "
            f"| {bound}{epochs:.1f} ({bound}{fraction:.2f} of the budget) |"
        )


def print_retrain_table(table: pd.DataFrame) -> None:
    print(f"| strategy | studies | best validation (mean) | retrained test (mean ± 95 % CI) | vs {BASELINE} (paired) |")
    print("|---|--:|--:|---|--:|")
    for _, r in table.iterrows():
        p = r["p (paired)"]
        versus = f"{r['vs baseline']:+.4f}" + ("" if math.isnan(p) else f" (p {p_text(p, 2)})")
        if r.strategy == BASELINE:
            versus = "baseline"
        print(f"| {r.strategy} | {r.studies} | {r['best validation']:.4f} | {r['retrained test']} | {versus} |")


def mean_best_so_far(per_strategy: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """The seeds' mean best-so-far validation accuracy after each number of epochs in ``grid``; NaN until every
    seed has a completed trial (a mean of the fast seeds alone would look better than the strategy is)."""
    lines = []
    for _, curve in per_strategy.groupby("seed"):
        # Best so far after e epochs = the curve's value at its last row with epochs <= e (NaN before).
        idx = np.searchsorted(curve.epochs.to_numpy(), grid, side="right") - 1
        lines.append(np.where(idx >= 0, curve.best.to_numpy()[np.maximum(idx, 0)], np.nan))
    return pd.DataFrame(lines).mean(axis=0, skipna=False).to_numpy()


def plot(curves: pd.DataFrame, budget: int, path: Path) -> None:
    """Mean (over seeds) best-so-far validation accuracy against epochs spent, one line per strategy."""
    grid = np.arange(1, budget + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]  # strategies that find the same trials draw the same line: dashes show both
    for i, (strategy, per_strategy) in enumerate(curves.groupby("strategy", sort=False)):
        line = mean_best_so_far(per_strategy, grid)
        ax.step(grid, line, where="post", label=strategy, ls=styles[i % len(styles)], lw=2.2 - 0.4 * (i % 3))
    ax.set_xlabel("epochs spent by the study")
    ax.set_ylabel(f"best validation accuracy so far (mean over {curves.seed.nunique()} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


CURVE_COLUMNS = (
    "strategy",
    "seed",
    "trial",
    "epochs",
    "seconds",
    "best",
    "pruned",
    "val_acc_curve",
    "val_loss_curve",
    "params",
)


def load_curves(path: str, bench: BenchSettings) -> pd.DataFrame:
    """The studies of an earlier run (its ``search-bench-curves.csv``), checked against ``bench`` where the file can
    tell: the longest trial must be ``bench.epochs`` and every study must have stopped at ``bench.budget``."""
    try:
        curves = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise HpoError(f"cannot read --curves {path}: {exc}") from None
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise HpoError(f"--curves {path} is not a search-bench-curves.csv: no column {', '.join(missing)}")
    if BASELINE not in set(curves.strategy):
        raise HpoError(f"--curves {path} has no {BASELINE} studies to compare the others with")
    try:
        longest = max(len(json.loads(c)) for c in curves.val_acc_curve)
    except (TypeError, ValueError) as exc:  # a cell that is not a JSON list
        raise HpoError(f"--curves {path}: a val_acc_curve cell is not a JSON list ({exc})") from None
    spent = curves.groupby(["strategy", "seed"]).epochs.max()
    if longest != bench.epochs or not spent.between(bench.budget, bench.budget + bench.epochs - 1).all():
        raise HpoError(
            f"--curves {path} holds trials of up to {longest} epochs and studies of {spent.min()}-{spent.max()} "
            f"epochs, not --epochs {bench.epochs} and --budget {bench.budget}: pass the --epochs, --budget, "
            "--widths, --train-subset and --batch-size of the run that wrote it"
        )
    return curves


def search_benchmark(args, device: torch.device) -> None:
    if args.curves and args.strategies:
        raise HpoError("--curves reads the studies of an earlier run, strategies included: leave out --strategies")
    strategies = list(dict.fromkeys(args.strategies or DEFAULT_STRATEGIES))
    for strategy in strategies:
        parse_strategy(strategy)
    if BASELINE not in strategies:
        strategies.append(BASELINE)  # what 'epochs to reach' is measured against
    epochs = args.epochs or 6
    if args.budget is not None and args.budget < epochs:
        raise HpoError(f"--budget {args.budget} is less than one trial of --epochs {epochs}: pass a larger --budget")
    bench = BenchSettings(
        data_dir=args.data_dir,
        epochs=epochs,
        widths=tuple(args.widths or (16, 32, 64)),
        train_subset=args.train_subset if args.train_subset is not None else 2000,
        batch_size=args.batch_size or 128,
        budget=args.budget or 20 * epochs,
        warm_start=args.warm_start,
        device=str(device),
    )
    jobs = args.jobs or default_jobs(device)
    if jobs > 1 and device.type == "cuda":
        raise HpoError("--jobs > 1 is for the CPU; on a GPU run the studies one at a time (--jobs 1)")
    # A bad --data-dir fails here with one line, not in a worker process.
    train_split, val_split = bench_splits(load_cifar10(args.data_dir), bench.search_settings(BASELINE, 0))
    setup = (
        f"{bench.budget} epochs per study (trials of up to {epochs} epochs, widths "
        f"{'/'.join(map(str, bench.widths))}, batch {bench.batch_size}, {len(train_split)} training images, "
        f"{len(val_split)} validation images), warm start {'on' if bench.warm_start else 'off'}, {jobs} jobs"
    )
    if args.curves:
        curves = load_curves(args.curves, bench)
        studies = curves.groupby(["strategy", "seed"], sort=False).ngroups
        print(f"search benchmark on {device}: the {studies} studies of {args.curves}, read back, not rerun; {setup}")
    else:
        print(f"search benchmark on {device}: {len(strategies)} strategies x {args.seeds} study seeds, {setup}")
        curves = run_benchmark(bench, strategies, args.seeds, jobs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [f"plot: {out / 'search-bench.png'}"]
    if not args.curves:  # at once: a retrain or oracle that fails can then go on from them (--curves)
        curves.to_csv(out / "search-bench-curves.csv", index=False)
        written.insert(0, f"curves: {out / 'search-bench-curves.csv'}")
    table = summary_table(curves, bench.budget)
    print()
    print_table(table, bench.budget)
    for signal, what in (("val_acc_curve", "validation accuracy"), ("val_loss_curve", "validation loss (negated)")):
        correlations = rank_correlations(curves, epochs, signal)
        if len(correlations):
            print(
                f"\nrank correlation of epoch-k {what} with epoch {epochs}'s accuracy, over the "
                f"{correlations.attrs['trials']} full-length trials of all studies:"
            )
            print("  " + "  ".join(f"epoch {k}: {rho:.2f}" for k, rho in correlations.items()))
    if args.replay:
        from hpo.bench_replay import print_replay, replay_table

        budgets = sorted({b for b in (bench.budget // 4, bench.budget // 2, bench.budget) if b >= epochs})
        baseline = curves[curves.strategy == BASELINE]
        replayed = replay_table(baseline, epochs, budgets)
        if args.replay_fresh:
            fresh = replay_fresh(bench, baseline, replayed.attrs["chosen"], args.replay_fresh, jobs)
            fresh.to_csv(out / "search-bench-replay-fresh.csv", index=False)
            written.append(f"fresh runs: {out / 'search-bench-replay-fresh.csv'}")
            replayed = replay_table(baseline, epochs, budgets, fresh=dict(zip(fresh.position, fresh.fresh_acc)))
        print_replay(replayed, budgets, args.replay_fresh)
    if args.retrain_best:
        print(
            f"\nretraining each study's best trial with {args.retrain_best} fresh seeds, scored on the "
            f"{len(load_cifar10(args.data_dir).test)} test images:",
            flush=True,
        )
        best = retrain_best(bench, curves, args.retrain_best, jobs)
        as_json = {"params": best.params.map(json.dumps), "test_runs": best.test_runs.map(json.dumps)}
        best.assign(**as_json).to_csv(out / "search-bench-retrained.csv", index=False)
        print_retrain_table(retrain_table(best))
    if args.oracle:
        from hpo.bench_oracle import oracle_bound, print_oracle  # it builds on this module

        print("\noracle bound: the best config the studies found, run again and again on fresh seeds:", flush=True)
        screened, oracle, final, per_seed = oracle_bound(bench, curves, args.oracle, args.oracle_runs, jobs)
        print_oracle(screened, oracle, final, per_seed, table, bench.epochs, bench.budget)
        screened["oracle"] = screened.index == oracle.name
        screened["oracle_runs"] = [json.dumps(final) if chosen else "" for chosen in screened.oracle]
        screened.fresh_runs = screened.fresh_runs.map(json.dumps)
        screened.to_csv(out / "search-bench-oracle.csv", index=False)
        written.append(f"oracle: {out / 'search-bench-oracle.csv'}")
    plot(curves, bench.budget, out / "search-bench.png")
    print("\n" + "; ".join(written))


def default_jobs(device: torch.device) -> int:
    """On the CPU one single-threaded study per core; on a GPU one study at a time (each uses the whole device)."""
    return 1 if device.type == "cuda" else cpu_cores()
