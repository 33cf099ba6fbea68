"""``python -m hpo.report``: the study as a pandas summary under ``reports/<study-name>/``.

Writes ``trials.csv`` (``study.trials_dataframe()``, user attributes included, as JSON where structured),
``summary.md`` and ``summary.html`` (counts, settings, best trial and config, top-k, per-parameter statistics,
importances, retrain result, compute accounting) and PNG plots embedded in both, and prints the Markdown to the
terminal.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hpo.config import TTA_NAMES  # noqa: E402
from hpo.errors import ArgumentParser, HpoError, output_folder, run_cli  # noqa: E402
from hpo.notes import counted  # noqa: E402
from hpo.records import RETRAIN_ATTR, RUN_ATTR, SETTINGS_ATTR, defaults_verdict, diverged_text  # noqa: E402
from hpo.space import Choice, SearchSpace, SpaceError  # noqa: E402
from hpo.storage import checked_study_name, default_storage_url, load_existing_study  # noqa: E402

TOP_K = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
    "td,th{padding:2px 8px;border-bottom:1px solid #ddd}img{max-width:100%}"
)
Block = tuple[str, Any]  # ("h2" | "p" | "table" | "img", payload)
# Under this many completed trials a correlation or an importance rests on too few points to mean much: said so.
FEW = 10
FEW_TRIALS = f"; with under {FEW}, a rough indication at best"


def build_report(study: optuna.Study, out_dir: Path) -> list[Block]:
    """Compute every section (and save the plots into ``out_dir``); return them as renderable blocks."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    blocks: list[Block] = [("h1", f"Study {study.study_name}")]

    counts = pd.Series([t.state.name for t in trials], dtype="object").value_counts().rename_axis("state")
    blocks += [("h2", "Trials by state"), ("table", counts.rename("trials").to_frame())]
    blocks += settings_blocks(settings)

    if complete:
        best = study.best_trial
        blocks += [
            ("h2", "Best trial"),
            (
                "p",
                f"Trial {best.number}: validation accuracy **{best.value:.4f}** "
                f"after {counted(best.user_attrs.get('epochs_run'), 'epoch')} "
                f"(test-time augmentation: {tta_name(best.user_attrs.get('config', {}))}).",
            ),
            (
                "table",
                pd.Series(best.user_attrs.get("config", best.params), name="value").rename_axis("key").to_frame(),
            ),
            ("h2", f"Top {min(TOP_K, len(complete))} trials" if len(complete) > 1 else "Top trial"),
            (
                "p",
                "Learning rate and weight decay as the search samples them, in airbench's decoupled units "
                "(`lr_decoupled`, `wd_decoupled`: per 1024 examples of a summed loss, independent of batch size, "
                "momentum and each other); the best trial's config above gives the SGD `lr` and `weight_decay` they "
                "convert to (`hpo.space.to_sgd`).",
            ),
            ("table", top_k_table(complete)),
        ]
    else:
        blocks += [("h2", "Best trial"), ("p", "No completed trial yet.")]

    blocks += [("h2", "Per-parameter statistics"), *parameter_blocks(finished)]
    blocks += [("h2", "Parameter importances"), *importance_blocks(study, out_dir)]
    blocks += [
        ("h2", "Retrain on train + validation, scored on the test set"),
        *retrain_blocks(study.user_attrs.get(RETRAIN_ATTR)),
    ]
    run = study.user_attrs.get(RUN_ATTR, {})
    blocks += [("h2", "Compute accounting"), ("table", accounting_table(trials, finished, settings, run))]
    blocks += [("h2", "Plots"), *plot_blocks(study, trials, out_dir)]
    return blocks


def settings_blocks(settings: dict[str, Any]) -> list[Block]:
    """The search's settings as the study stores them (the latest run's, which a resumed run keeps) and its space."""
    if not settings:
        return []  # a study made elsewhere, or by an older version
    shown = {k: "all" if k == "train_subset" and v == 0 else v for k, v in settings.items() if k != "space"}
    if "widths" in shown:
        shown["widths"] = "/".join(map(str, shown["widths"]))
    blocks: list[Block] = [
        ("h2", "Search settings"),
        ("table", pd.Series(shown, name="value", dtype=object).rename_axis("setting").to_frame()),
    ]
    if "space" not in settings:
        return blocks
    try:
        space = SearchSpace.from_dict(settings["space"], source="stored search space")
    except SpaceError as err:
        return [*blocks, ("p", f"Search space: {err}")]
    ranges = {
        name: ", ".join(map(str, p.choices)) if isinstance(p, Choice) else f"{p.low:g} … {p.high:g}{', log' * p.log}"
        for name, p in space.sampled.items()
    }
    ranges |= {name: f"fixed: {value}" for name, value in space.fixed.items()}
    table = pd.Series(ranges, name="range or choices", dtype=object).rename_axis("parameter").to_frame()
    return [*blocks, ("p", "Search space (what is not listed is the recipe's):"), ("table", table)]


def top_k_table(complete: list[optuna.trial.FrozenTrial]) -> pd.DataFrame:
    rows = []
    for t in sorted(complete, key=lambda t: t.value, reverse=True)[:TOP_K]:
        rows.append(
            {
                "trial": t.number,
                "val acc": round(t.value, 4),
                "epochs": t.user_attrs.get("epochs_run"),
                **_rounded(t.params),
            }
        )
    return pd.DataFrame(rows).set_index("trial")


def parameter_blocks(finished: list[optuna.trial.FrozenTrial]) -> list[Block]:
    """Statistics of the completed trials' final validation accuracy by parameter. A pruned trial's value is an
    earlier epoch's accuracy, so it is not mixed in; the categorical tables count how often each choice was pruned."""
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        return [("p", "No completed trial yet.")]
    frame = pd.DataFrame([{**t.params, "value": t.value} for t in complete])
    pruned = pd.DataFrame([t.params for t in finished if t.state == TrialState.PRUNED], columns=frame.columns)
    blocks: list[Block] = []
    numeric = [  # a boolean choice (lookahead: true/false) is a choice, not a number to average
        c
        for c in frame.columns
        if c != "value" and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    if numeric:
        described = frame[numeric].describe().T[["count", "mean", "std", "min", "max"]]
        with warnings.catch_warnings():  # a constant column has no correlation: NaN in the table, no warning
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy's ConstantInputWarning is one
            described["corr with val acc"] = [frame[c].corr(frame["value"], method="spearman") for c in numeric]
        blocks += [
            (
                "p",
                f"Numeric parameters over the {counted(len(complete), 'completed trial')} (Spearman correlation with "
                "the final validation accuracy; pruned trials, scored at an earlier epoch, are left out)"
                f"{FEW_TRIALS if len(complete) < FEW else ''}:",
            ),
            ("table", described.round(4)),
        ]
    for name in [c for c in frame.columns if c not in numeric and c != "value"]:
        grouped = frame.groupby(name)["value"].agg(["count", "mean", "max"]).round(4)
        grouped = grouped.rename(columns={"count": "completed", "mean": "mean val acc", "max": "max val acc"})
        counts = pruned[name].value_counts().rename("pruned")
        grouped = (
            grouped.join(counts, how="outer")
            .fillna({"completed": 0, "pruned": 0})
            .astype({"completed": int, "pruned": int})
        )
        blocks += [("p", f"`{name}`: final validation accuracy of the completed trials by choice"), ("table", grouped)]
    return blocks


def importance_blocks(study: optuna.Study, out_dir: Path) -> list[Block]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = {t.value for t in complete}
    if len(complete) > 1 and len(values) == 1:  # fANOVA would split it evenly, even onto a constant parameter
        return [
            (
                "p",
                f"Not available: every completed trial scored {values.pop():.4f}, so no parameter explains a "
                "difference.",
            )
        ]
    # A parameter that never changed explains nothing, but fANOVA still gives it a share of noise.
    names = dict.fromkeys(name for t in complete for name in t.params)
    varied = [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]
    if len(complete) > 1 and not varied:
        return [("p", "Not available: no parameter took more than one value in the completed trials.")]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, params=varied or None)
    except (ValueError, RuntimeError) as err:
        return [("p", f"Not available: {err}")]
    # Optuna 5 returns none before a trial completes, and equal ones (with a warning) while there are too few.
    if not importances or any("too small to compute importances" in str(w.message) for w in caught):
        return [("p", "Not available yet: too few completed trials to compute importances.")]
    fixed = [n for n in names if n not in varied]
    lead = (
        f"fANOVA over the {counted(len(complete), 'completed trial')}"
        + (f" ({', '.join(fixed)}: one value in all of them, left out)" if fixed else "")
        + (FEW_TRIALS if len(complete) < FEW else "")
        + ":"
    )
    table = pd.Series(importances, name="importance").rename_axis("parameter").round(4).to_frame()
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(table) + 1.2))
    table["importance"][::-1].plot.barh(ax=ax, color="tab:blue")
    ax.set_xlabel("fANOVA importance for validation accuracy")
    _save(fig, out_dir / "importances.png")
    return [("p", lead), ("table", table), ("img", "importances.png")]


def retrain_blocks(record: dict | None) -> list[Block]:
    if not record:
        return [("p", "Not retrained yet: run `python -m hpo.retrain` (or the search without `--no-retrain`).")]
    rows = []
    for c in record["candidates"]:
        s = c["summary"]
        rows.append(
            {
                "config": c["label"],
                "runs": s["n"],
                "mean test acc": round(s["mean"], 4),
                "sd": round(s["std"], 4) if s["n"] > 1 else "n/a",
                "95% CI": f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]" if not math.isnan(s["ci_low"]) else "n/a",
                "per seed": ", ".join(f"{a:.4f}" for a in c["test_acc"]),
                "TTA": tta_name(c.get("config", {})),
            }
        )
    blocks: list[Block] = [
        (
            "p",
            f"{record['train_images']} training images, {record['test_images']} test images, "
            f"seeds {record['seeds']}, {record['device']}, {record['date']}.",
        ),
        ("table", pd.DataFrame(rows).set_index("config")),
    ]
    if diverged := diverged_text(record):
        blocks.append(("p", diverged))
    comparisons = record.get("comparisons") or ([{"verdict": record["verdict"]}] if "verdict" in record else [])
    blocks += [("p", f"**Verdict:** {c['verdict']}.") for c in comparisons]
    if answer := defaults_verdict(record):
        blocks.append(("p", f"**Did the search beat the defaults?** {answer}"))
    if record.get("weights"):
        winner = record.get("winner", "the highest mean")
        text = (
            f"Weights of the winner, {winner} (seed 0): `{record['weights']}`, its config in `config.json` beside them."
        )
        best = record["candidates"][0]["label"]
        if "winner" in record and winner != best and best.startswith("best (trial"):
            text += (
                f" The winner is the candidate with the highest mean test accuracy, here not the search's best trial "
                f"({best}), whose config is `best-config.json`; see the verdicts for "
                "whether the difference is significant."
            )
        blocks.append(("p", text))
    return blocks


def tta_name(config: dict) -> str:
    """The test-time augmentation a config scores with (configs from before the field existed: none)."""
    return TTA_NAMES[config.get("tta_level", 0)]


def accounting_table(trials, finished, settings: dict, run: dict | None = None) -> pd.DataFrame:
    # A queued retry carries the attributes of the attempt it retries, so only the trials that ran are counted,
    # and each attempt's own epochs: a retry that resumed from a checkpoint replays the epochs before it.
    trials = [t for t in trials if t.state != TrialState.WAITING]
    max_epochs = settings.get("epochs") or max((t.user_attrs.get("epochs_run", 0) for t in finished), default=0)
    trained = sum(t.user_attrs.get("epochs_trained", t.user_attrs.get("epochs_run", 0)) for t in trials)
    epochs_finished = sum(t.user_attrs.get("epochs_run", 0) for t in finished)
    no_pruning = len(finished) * max_epochs
    saved = 1 - epochs_finished / no_pruning if no_pruning else 0.0
    train_s = [t.user_attrs["train_seconds"] for t in finished if "train_seconds" in t.user_attrs]
    rows = {
        "trials run (all states but queued)": len(trials),
        "total training seconds (finished trials)": round(sum(train_s), 1),
        "mean training seconds per finished trial": round(sum(train_s) / max(1, len(train_s)), 1),
        "epochs run (finished trials)": epochs_finished,
        "epochs trained (every attempt, incl. failed; replayed epochs once)": trained,
        f"epochs without pruning ({len(finished)} x {max_epochs})": no_pruning,
        "epochs saved by pruning": f"{no_pruning - epochs_finished} ({saved:.0%})",
    }
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        rows["calendar time, first trial start to last finish, across runs and the gaps between them (s)"] = round(
            (max(ends) - min(starts)).total_seconds(), 1
        )
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if complete and starts:
        best = max(complete, key=lambda t: t.value)
        rows["calendar time to reach the best value, from the first trial start (s)"] = round(
            (best.datetime_complete - min(starts)).total_seconds(), 1
        )
        rows["trials run before the best"] = sum(1 for t in trials if t.number < best.number)
    rows.update(device_rows(trials, run or {}))
    return pd.Series(rows, name="value").rename_axis("measure").astype(str).to_frame()


def device_rows(trials, run: dict) -> dict[str, Any]:
    """Device time per trial (each trial's own, overlapping when trials share a device), and the last run's: its
    devices x search seconds per finished trial, start-up time, concurrency and mean GPU utilisation."""
    own = [t.user_attrs["device_seconds"] for t in trials if "device_seconds" in t.user_attrs]
    rows: dict[str, Any] = {}
    if own:
        rows["device-seconds per trial, mean (its own train call)"] = round(sum(own) / len(own), 2)
        rows["device-seconds, total (all trials)"] = round(sum(own), 1)
    if not run:
        return rows
    if run.get("finished"):
        per_trial = run["search_seconds"] * run["devices"] / run["finished"]
        rows["device-seconds per finished trial, last run (search seconds x devices / trials)"] = round(per_trial, 2)
    rows["concurrent trials, last run (worker processes)"] = run.get("workers", 1)
    if run.get("startup_seconds") is not None:
        rows["start-up, last run: command to the first trial's first step (s)"] = run["startup_seconds"]
    on_cpu = all(str(t.user_attrs.get("device", "cpu")).startswith("cpu") for t in trials)
    rows["mean GPU utilisation, last run"] = _utilisation_text(run, on_cpu)
    return rows


def _utilisation_text(run: dict[str, Any], on_cpu: bool) -> str:
    """The last run's mean GPU utilisation, or why there is none."""
    utilisation = run.get("gpu_utilisation")
    if utilisation is not None:
        return f"{utilisation:.0f} %"
    if on_cpu:
        return "not measured: CPU run"
    if "gpu_samples" not in run:  # recorded before the sample count was
        return "not measured (no nvidia-smi, or no utilisation samples from it)"
    if run["gpu_samples"] is None:
        return "not measured (no nvidia-smi)"
    return "not measured: nvidia-smi gave no utilisation samples (it reports none for MIG devices)"


def plot_blocks(study: optuna.Study, trials, out_dir: Path) -> list[Block]:
    blocks: list[Block] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if any(t.state == TrialState.COMPLETE for t in trials):
            ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="validation accuracy")
            _save(ax.figure, out_dir / "history.png")
            blocks.append(("img", "history.png"))
        fig = validation_curves(trials)
        if fig is not None:
            _save(fig, out_dir / "curves.png")
            blocks.append(("img", "curves.png"))
        curve = anytime_curve(trials)
        if curve["best"].notna().any():
            _save(anytime_figure(curve), out_dir / "anytime.png")
            blocks.append(("img", "anytime.png"))
        if sum(t.state == TrialState.COMPLETE for t in trials) >= 2:
            # Equal values give an axis of zero height: matplotlib widens it, with a warning on the user's terminal.
            warnings.filterwarnings("ignore", "Attempting to set identical low and high ylims", UserWarning)
            ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target_name="validation accuracy")
            # Optuna's default is a 6.4-inch figure (axis labels overlap) whose worst trials are drawn white on grey.
            ax.figure.set_size_inches(max(8.0, 1.5 * len(ax.get_xticks())), 5)
            for lines in ax.collections:
                lines.set_cmap("viridis")
            _save(ax.figure, out_dir / "parallel.png")
            blocks.append(("img", "parallel.png"))
    return blocks


def anytime_curve(trials) -> pd.DataFrame:
    """Best validation accuracy so far against the compute spent so far, over finished trials in the order they
    finished: one row per trial with its cumulative epochs and training seconds (pruned trials cost, never win)."""
    done = sorted((t for t in trials if t.state in FINISHED), key=lambda t: (t.datetime_complete, t.number))
    rows, epochs, seconds, best = [], 0, 0.0, float("nan")
    for t in done:
        epochs += t.user_attrs.get("epochs_run", len(t.intermediate_values))
        seconds += t.user_attrs.get("train_seconds", 0.0)
        if t.state == TrialState.COMPLETE and not (t.value <= best):  # also replaces the initial NaN
            best = t.value
        rows.append({"trial": t.number, "epochs": epochs, "seconds": seconds, "best": best})
    return pd.DataFrame(rows, columns=["trial", "epochs", "seconds", "best"])


def anytime_figure(curve: pd.DataFrame) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, label in ((axes[0], "epochs", "epochs trained so far"), (axes[1], "seconds", "training seconds so far")):
        ax.step(curve[x], curve["best"], where="post", color="tab:red")
        ax.plot(curve[x], curve["best"], "o", color="tab:red", ms=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation accuracy so far")
    fig.suptitle("Anytime performance of the search")
    return fig


def validation_curves(trials) -> plt.Figure | None:
    """Every trial's validation accuracy per epoch; pruned trials in grey, visibly cut short."""
    curves = [(t, t.intermediate_values) for t in trials if t.intermediate_values]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    best = max((t for t, _ in curves if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
    for t, values in curves:
        epochs = sorted(values)
        style = (
            {"color": "0.7", "lw": 1, "marker": "x", "ms": 4}
            if t.state != TrialState.COMPLETE
            else {"color": "tab:blue", "lw": 1.2}
        )
        if t is best:
            style = {"color": "tab:red", "lw": 2.5, "label": f"best (trial {t.number})"}
        ax.plot(epochs, [values[e] for e in epochs], **style)
    ax.plot([], [], color="tab:blue", label="completed")
    ax.plot([], [], color="0.7", marker="x", label="pruned / failed (cut short)")
    ax.set_xlabel("epoch (a full run's last epoch is scored with its config's test-time augmentation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation curves of all trials")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounded(params: dict) -> dict:
    return {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in params.items()}


def table_text(table: pd.DataFrame, fmt: str) -> str:
    """A table as Markdown (``pipe``) or ``html``, both through tabulate, so they print every number alike; a
    missing value (an sd from one trial, a mean over none) as n/a rather than nan."""
    return table.astype(object).where(table.notna(), None).to_markdown(tablefmt=fmt, missingval="n/a")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}")
        elif kind == "h2":
            out.append(f"## {payload}")
        elif kind == "p":
            out.append(payload)
        elif kind == "table":
            out.append(table_text(payload, "pipe"))
        elif kind == "img":
            out.append(f"![{Path(payload).stem}]({payload})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            text = html.escape(payload)
            for mark, tag in (("**", "b"), ("`", "code")):
                parts = text.split(mark)
                text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
            body.append(f"<p>{text}</p>")
        elif kind == "table":
            body.append(table_text(payload, "html"))
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(payload)}" alt="{html.escape(Path(payload).stem)}"></p>')
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """``study.trials_dataframe()`` for a CSV: structured cells (configs, curves) as JSON rather than Python reprs,
    and without optuna-dashboard's one column per artifact id (the dashboard shows the artifacts)."""
    frame = study.trials_dataframe()
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("system_attrs_artifacts:")])
    for column in frame.columns:
        frame[column] = frame[column].map(lambda v: json.dumps(_finite(v)) if isinstance(v, (dict, list, tuple)) else v)
    return frame


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (a diverged curve) as None: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_report(study: optuna.Study, out_dir: Path) -> str:
    """Write trials.csv, summary.md, summary.html and the plots into ``out_dir``; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_table(study).to_csv(out_dir / "trials.csv", index=False)
    blocks = build_report(study, out_dir)
    markdown = to_markdown(blocks)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "summary.html").write_text(to_html(blocks, f"Study {study.study_name}"))
    return markdown


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m hpo.report", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", type=checked_study_name, default="cifar10", help="default cifar10")
    p.add_argument("--storage", help="default: sqlite:///studies/<study-name>.db")
    p.add_argument("--output-dir", type=Path, help="default reports/<study-name>/")
    args = p.parse_args(argv)
    out_dir = args.output_dir or Path("reports") / args.study_name
    output_folder(out_dir, "--output-dir")
    study = load_existing_study(args.study_name, args.storage or default_storage_url(args.study_name))
    try:
        markdown = write_report(study, out_dir)
    except OSError as err:  # the folder was writable when checked; a file in it may not be (or may be a folder)
        raise HpoError(f"cannot write {err.filename} ({err.strerror}): pass another --output-dir") from None
    print(markdown)
    print(f"written to {out_dir}/ (summary.md, summary.html, trials.csv, *.png)")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
