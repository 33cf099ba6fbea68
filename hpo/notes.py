"""What optuna-dashboard shows beside the numbers: the study's Markdown note and per-trial artifacts.

- ``write_study_note``: the search's setup (data, budget, sampler/pruner, search space) as the study note;
  ``set_retrain_section`` adds or replaces its "Retrain" section later (the retrain result with its CI).
- ``upload_trial_artifacts``: a trial's learning curve (PNG) and config (JSON), stored in an artifact store
  (``artifact_store_for``: ``<studies dir>/<study name>-artifacts/``) and listed in the dashboard's trial view.
  Optuna refuses to change a finished trial, so call it before ``study.tell``. With a ``later`` executor (the
  search's drawing thread) the PNG is attached at once and drawn there, off the training path.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna_dashboard import get_note, save_note

RETRAIN_HEADING = "## Retrain"
CURVE_SUFFIX = "learning-curve.png"
CONFIG_SUFFIX = "config.json"

SAMPLER_TEXT = {
    "tpe": "TPE (Tree-structured Parzen Estimator)",
    "random": "random sampling",
    "gp": "Gaussian-process Bayesian optimisation",
    "cmaes": "CMA-ES",
}
PRUNER_TEXT = {
    "hyperband": "Hyperband over epochs (min 1 epoch, max {epochs}, reduction factor 3)",
    "asha": "ASHA / successive halving over epochs (min 1 epoch, reduction factor 3)",
    "median": "median rule (after 4 completed trials, from epoch 2)",
    "none": "none: every trial runs all {epochs} epochs",
}


# ---------------------------------------------------------------------------------------------------------- note


def write_study_note(
    study: optuna.Study,
    settings: dict[str, Any],
    data_description: str,
    n_trials: int,
    retrain_md: str | None = None,
) -> str:
    """Save the study note describing the search; returns the Markdown.

    ``settings`` is the study's ``hpo_settings`` (``Settings.to_json()``). An existing "Retrain" section is
    kept unless ``retrain_md`` replaces it.
    """
    body = study_note_markdown(study.study_name, settings, data_description, n_trials)
    retrain = retrain_md if retrain_md is not None else _retrain_section(get_note(study))
    if retrain:
        body = f"{body.rstrip()}\n\n{_with_heading(retrain)}\n"
    save_note(study, body)
    return body


def set_retrain_section(study: optuna.Study, retrain_md: str) -> str:
    """Add or replace the note's "Retrain" section (text starting with ``## Retrain``, added if missing)."""
    note = get_note(study)
    new = _with_heading(retrain_md)
    match = _SECTION.search(note)
    if match:
        rest = note[match.end() :].strip()
        body = f"{note[: match.start()]}{new}\n" + (f"\n{rest}\n" if rest else "")
    else:
        body = f"{note.rstrip()}\n\n{new}\n".lstrip()
    save_note(study, body)
    return body


def study_note_markdown(study_name: str, settings: dict[str, Any], data_description: str, n_trials: int) -> str:
    epochs = settings["epochs"]
    subset = settings.get("train_subset") or 0
    lines = [
        f"# Study `{study_name}`",
        "",
        "Each trial trains the airbench-style convnet with one sampled configuration and reports **validation "
        "accuracy** after every epoch; the pruner stops unpromising trials early. Each trial's *Artifacts* hold "
        "its learning curve and config; its user attributes hold the full config and per-epoch curves.",
        "",
        "## Data",
        "",
        data_description.strip(),
        "",
        "## Budget",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| trials | {n_trials} finished (complete + pruned) |",
        f"| epochs per trial | up to {epochs} |",
        f"| widths | {' / '.join(str(w) for w in settings['widths'])} |",
        f"| batch size | {settings['batch_size']} |",
        f"| training images | {'all' if not subset else f'at most {subset}'} |",
        f"| validation fraction | {settings.get('val_fraction', 0.1)} |",
        f"| seed | {settings.get('seed', 0)} |",
        "",
        "## Sampler and pruner",
        "",
        f"- sampler: {SAMPLER_TEXT.get(settings['sampler'], settings['sampler'])}",
        f"- pruner: {PRUNER_TEXT.get(settings['pruner'], settings['pruner']).format(epochs=epochs)}",
        "",
        "## Search space",
        "",
        "| parameter | values |",
        "| --- | --- |",
        *(f"| `{name}` | {_describe_param(spec)} |" for name, spec in settings["space"].items()),
        "",
    ]
    return "\n".join(lines)


def _describe_param(spec: Any) -> str:
    if spec is None:
        return "not sampled (config default)"
    if isinstance(spec, dict) and "choices" in spec:
        return ", ".join(f"`{c}`" for c in spec["choices"])
    if isinstance(spec, dict):
        return f"{spec['low']:g} … {spec['high']:g}{' (log scale)' if spec.get('log') else ''}"
    return f"fixed at `{spec}`"


def _with_heading(md: str) -> str:
    md = md.strip()
    return md if md.startswith(RETRAIN_HEADING) else f"{RETRAIN_HEADING}\n\n{md}"


# The Retrain section: from its heading line up to the next level-2 heading or the end.
_SECTION = re.compile(rf"^{re.escape(RETRAIN_HEADING)}[ \t]*$.*?(?=^## |\Z)", flags=re.M | re.S)


def _retrain_section(note: str) -> str:
    match = _SECTION.search(note)
    return match.group(0).strip() if match else ""


# ----------------------------------------------------------------------------------------------------- artifacts


def artifact_dir_for(study_name: str, studies_dir: str | Path = "studies") -> Path:
    return Path(studies_dir) / f"{study_name}-artifacts"


def artifact_store_for(study_name: str, studies_dir: str | Path = "studies") -> FileSystemArtifactStore:
    """The study's artifact store, ``<studies_dir>/<study_name>-artifacts/`` (created if missing)."""
    path = artifact_dir_for(study_name, studies_dir)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


def upload_trial_artifacts(
    study: optuna.Study,
    trial: optuna.Trial | optuna.trial.FrozenTrial,
    artifact_store: Any,
    later: Executor | None = None,
) -> list[str]:
    """Upload the trial's learning curve (PNG, if it has run an epoch) and config (JSON); returns artifact ids.

    Reads the user attributes ``val_acc_curve``, ``val_loss_curve`` and ``config`` from the storage. The trial
    must still be running: call this after the objective has recorded them and before ``study.tell``. With
    ``later``, the curve is uploaded as an empty file now and drawn into the store by ``later``.
    """
    storage = study._storage
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state.is_finished():
        raise ValueError(
            f"trial {frozen.number} is already {frozen.state.name}: Optuna cannot attach artifacts to a finished "
            "trial, so upload them before study.tell"
        )
    attrs = frozen.user_attrs

    def upload(path: Path) -> str:
        return upload_artifact(
            artifact_store=artifact_store, file_path=str(path), study_or_trial=frozen, storage=storage
        )

    ids = []
    with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
        acc, loss = attrs.get("val_acc_curve") or [], attrs.get("val_loss_curve") or []
        if acc or loss:
            title = f"{study.study_name} trial {frozen.number} ({counted(attrs.get('epochs_run', len(acc)), 'epoch')})"
            path = Path(tmp) / f"trial-{frozen.number}-{CURVE_SUFFIX}"
            if later is None:
                ids.append(upload(plot_learning_curve(acc, loss, path, title)))
            else:
                path.touch()  # the artifact's name and type now (a finished trial takes none), its picture later
                ids.append(upload(path))
                later.submit(_draw_into_store, artifact_store, ids[-1], acc, loss, title)
        if "config" in attrs:
            path = Path(tmp) / f"trial-{frozen.number}-{CONFIG_SUFFIX}"
            path.write_text(json.dumps(attrs["config"], indent=2, sort_keys=True) + "\n")
            ids.append(upload(path))
    return ids


def _draw_into_store(artifact_store: Any, artifact_id: str, acc: list, loss: list, title: str) -> None:
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
            path = plot_learning_curve(acc, loss, Path(tmp) / "curve.png", title)
            with open(path, "rb") as f:
                artifact_store.write(artifact_id, f)
    except Exception as err:  # noqa: BLE001 - a plotting problem must not end the search
        warnings.warn(f"{title}: learning curve not drawn ({err})", stacklevel=1)


def counted(n: int | None, noun: str) -> str:
    """ "1 epoch", "3 epochs" (or "an unknown number of epochs")."""
    return f"an unknown number of {noun}s" if n is None else f"{n} {noun}{'' if n == 1 else 's'}"


def plot_learning_curve(val_acc: list[float], val_loss: list[float], path: Path, title: str = "") -> Path:
    """Validation accuracy (left axis) and loss (right axis) per epoch, as a PNG at ``path``."""
    # The object-oriented API on the Agg canvas: no pyplot state, no display needed, safe in worker processes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines = []
    if val_acc:
        lines += ax.plot(range(1, len(val_acc) + 1), val_acc, "o-", color="tab:blue", label="val accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy", color="tab:blue")
    ax.grid(alpha=0.3)
    if val_loss:
        ax2 = ax.twinx()
        lines += ax2.plot(range(1, len(val_loss) + 1), val_loss, "s--", color="tab:red", label="val loss")
        ax2.set_ylabel("validation loss", color="tab:red")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    if title:
        ax.set_title(title)
    fig.savefig(path)
    return path
