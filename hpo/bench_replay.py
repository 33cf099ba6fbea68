"""Pruners replayed on random search's recorded learning curves: ``python -m hpo.bench --search --replay``.

Random search proposes configs without looking at results, so a random study under any pruner is the same stream of
configs cut short at different epochs. The benchmark's random-search studies (``random:none``) train every trial to
the end and record its validation accuracy and loss after each epoch, so each pruner can be replayed on them: draw
the recorded trials in a random order, let the pruner decide after each epoch from what it would have seen so far,
charge the epochs it lets run, and keep the best final accuracy of the trials it lets finish. Each rule follows the
Optuna pruner that ``hpo.search`` builds under the same name, fed the validation accuracy (what the search reports)
or the validation loss (negated, so higher is better). Hyperband's brackets are drawn at random in Optuna's
proportions, where Optuna hashes the trial number.

A best of more finished trials is more inflated by luck (each trial is one noisy draw), so with fresh scores
(``--replay-fresh K``: every config some replay chose, trained again on K new seeds) each row also gives the mean
fresh score of the configs it chose: what the choice is worth, free of the luck that made it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

REDUCTION_FACTOR = 3  # as hpo.search builds Hyperband and ASHA
MEDIAN_STARTUP, MEDIAN_WARMUP = 4, 2  # as hpo.search builds the median pruner

# A rule is made fresh for each replay: it takes a trial's recorded curve and returns the epoch it stops at.
Rule = Callable[[np.ndarray], int]


def successive_halving(epochs: int, rung_epochs: list[int], competing: dict[int, list[float]]) -> Rule:
    """Optuna's promotion rule: at each rung a trial goes on if its value is in the top 1/REDUCTION_FACTOR of the
    values recorded there so far, its own included (the first few always go on)."""

    def stop_at(curve: np.ndarray) -> int:
        for rung in rung_epochs:
            values = competing.setdefault(rung, [])
            values.append(curve[rung - 1])
            ranked = sorted(values, reverse=True)
            if curve[rung - 1] < ranked[max(len(ranked) // REDUCTION_FACTOR - 1, 0)]:
                return rung
        return epochs

    return stop_at


def rungs(epochs: int, min_resource: int) -> list[int]:
    """The epochs, before the last, at which successive halving from ``min_resource`` decides."""
    out, rung = [], min_resource
    while rung < epochs:
        out.append(rung)
        rung *= REDUCTION_FACTOR
    return out


def hyperband_brackets(epochs: int) -> list[tuple[list[int], int]]:
    """Optuna's Hyperband brackets for trials of 1 to ``epochs`` epochs: each bracket's rungs and its share of the
    trials (Optuna's trial allocation budget; bracket b starts halving at REDUCTION_FACTOR**b epochs)."""
    n = math.floor(math.log(epochs, REDUCTION_FACTOR)) + 1
    return [
        (rungs(epochs, REDUCTION_FACTOR**b), math.ceil(n * REDUCTION_FACTOR ** (n - 1 - b) / (n - b))) for b in range(n)
    ]


def make_rule(pruner: str, epochs: int, rng: np.random.Generator) -> Rule:
    """A fresh replay of one of hpo.search's pruners on trials of ``epochs`` epochs."""
    if pruner == "none":
        return lambda curve: epochs
    if pruner == "asha":
        return successive_halving(epochs, rungs(epochs, 1), {})
    if pruner == "hyperband":
        brackets = hyperband_brackets(epochs)
        halvings = [successive_halving(epochs, bracket_rungs, {}) for bracket_rungs, _ in brackets]
        shares = np.array([share for _, share in brackets], float)
        return lambda curve: halvings[rng.choice(len(halvings), p=shares / shares.sum())](curve)
    if pruner == "median":
        completed: list[np.ndarray] = []

        def stop_at(curve: np.ndarray) -> int:
            # Optuna's MedianPruner: from step MEDIAN_WARMUP on, once MEDIAN_STARTUP trials have completed, stop a
            # trial whose best value so far is below the completed trials' median at this step.
            if len(completed) >= MEDIAN_STARTUP:
                for epoch in range(MEDIAN_WARMUP, epochs):
                    if curve[:epoch].max() < np.median([c[epoch - 1] for c in completed]):
                        return epoch
            completed.append(curve)
            return epochs

        return stop_at
    raise ValueError(f"no replay of pruner {pruner!r}")


def replay(
    finals: np.ndarray, signal: np.ndarray, order: np.ndarray, rule: Rule, budgets: list[int]
) -> list[tuple[int | None, int, int]]:
    """For each of ``budgets``: (index of the best trial run to the end by final accuracy, None if none was,
    trials started, trials run to the end) of one study drawing trials in ``order`` until the next one would overrun
    that many epochs. One pass: a smaller budget's study is a prefix of a larger one's, since the rule decides the
    same way whatever the budget."""
    epochs = signal.shape[1]
    best, spent, started, finished = None, 0, 0, 0
    out: list[tuple[int | None, int, int]] = []
    pending = sorted(budgets)
    for i in order:
        stop = rule(signal[i])
        while pending and spent + stop > pending[0]:
            out.append((best, started, finished))
            pending.pop(0)
        if not pending:
            break
        spent, started = spent + stop, started + 1
        if stop == epochs:
            best = int(i) if best is None or finals[i] > finals[best] else best
            finished += 1
    out += [(best, started, finished)] * len(pending)  # budgets that outlast every trial
    by_budget = dict(zip(sorted(budgets), out, strict=True))
    return [by_budget[b] for b in budgets]


def full_length_rows(curves: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """The trials in ``curves`` that ran all ``epochs`` epochs (random search without pruning stops only the trials
    whose loss diverged)."""
    return curves[curves.val_acc_curve.map(lambda curve: len(json.loads(curve)) == epochs)]


def full_length(curves: pd.DataFrame, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, loss) curves of ``full_length_rows``, one row per trial."""
    rows = full_length_rows(curves, epochs)
    accuracy = np.array([json.loads(c) for c in rows.val_acc_curve], float).reshape(-1, epochs)
    loss = np.array([json.loads(c) for c in rows.val_loss_curve], float).reshape(-1, epochs)
    return accuracy, loss


def replay_table(
    curves: pd.DataFrame,
    epochs: int,
    budgets: list[int],
    pruners: tuple[str, ...] = ("none", "hyperband", "asha", "median"),
    replays: int = 1000,
    seed: int = 0,
    fresh: dict[int, float] | None = None,
) -> pd.DataFrame:
    """Per pruner and signal: the mean best final accuracy at each budget and the mean numbers of trials started and
    finished within the last, over ``replays`` random orders of the full-length trials in ``curves``. ``attrs``
    keeps which of those trials (positions in ``full_length_rows``) any replay chose. With ``fresh`` (position ->
    fresh score) a column ``fresh B`` per budget gives the mean fresh score of the chosen trials."""
    accuracy, loss = full_length(curves, epochs)
    finals = accuracy[:, -1]
    signals = {"accuracy": accuracy, "loss": -loss}
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(finals)) for _ in range(replays)]
    rows, chosen = [], set()
    for pruner in pruners:
        for signal_name, signal in signals.items():
            if pruner == "none" and signal_name == "loss":
                continue  # nothing is pruned, so the signal does not matter
            row: dict = {"pruner": pruner, "signal": "-" if pruner == "none" else signal_name}
            # The same orders and bracket draws for every row: the rows differ only in pruner and signal.
            results = [
                replay(finals, signal, order, make_rule(pruner, epochs, np.random.default_rng([seed, k])), budgets)
                for k, order in enumerate(orders)
            ]
            for j, budget in enumerate(budgets):
                picks = [study[j][0] for study in results if study[j][0] is not None]
                chosen.update(picks)
                row[budget] = float(np.mean(finals[picks])) if picks else math.nan
                if fresh is not None:
                    row[f"fresh {budget}"] = float(np.mean([fresh[i] for i in picks])) if picks else math.nan
            row["started"] = float(np.mean([study[-1][1] for study in results]))
            row["finished"] = float(np.mean([study[-1][2] for study in results]))
            rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(trials=len(finals), replays=replays, chosen=sorted(chosen))
    return table


def print_replay(table: pd.DataFrame, budgets: list[int], fresh_seeds: int = 0) -> None:
    print(
        f"\npruners replayed on random search's {table.attrs['trials']} full-length trials ({table.attrs['replays']} "
        "random orders each): the best final validation accuracy among the trials a pruner lets finish, by epochs "
        "spent (a best of more finished trials is more inflated by luck: see the last column)"
    )
    last = budgets[-1]
    print(
        "| pruner | pruned on | "
        + " | ".join(f"{b} epochs" for b in budgets)
        + f" | vs none at {last} | trials started / finished in {last} |"
    )
    print("|---|---|" + "--:|" * (len(budgets) + 2))
    none = table[table.pruner == "none"][last].iloc[0]
    for _, row in table.iterrows():
        cells = " | ".join(f"{row[b]:.4f}" for b in budgets)
        print(
            f"| {row.pruner} | {row.signal} | {cells} | {row[last] - none:+.4f} "
            f"| {row.started:.1f} / {row.finished:.1f} |"
        )
    if not fresh_seeds:
        return
    print(
        f"\nthe same replays, each scored by the config it chose trained again on {fresh_seeds} new "
        f"seed(s) (the mean of those runs, scored as a trial; {len(table.attrs['chosen'])} configs): what the "
        "choice is worth without the luck of its own run"
    )
    print("| pruner | pruned on | " + " | ".join(f"{b} epochs" for b in budgets) + f" | vs none at {last} |")
    print("|---|---|" + "--:|" * (len(budgets) + 1))
    fresh_none = table[table.pruner == "none"][f"fresh {last}"].iloc[0]
    for _, row in table.iterrows():
        cells = " | ".join(f"{row[f'fresh {b}']:.4f}" for b in budgets)
        print(f"| {row.pruner} | {row.signal} | {cells} | {row[f'fresh {last}'] - fresh_none:+.4f} |")
