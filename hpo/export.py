"""``python -m hpo.export``: write a trial's full config (best by default) as JSON or YAML, with provenance.

The file is ``{"config": {...}, "provenance": {...}}``, which ``python -m hpo.train --config`` and
``python -m hpo.retrain --config`` read as it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpo.config import TrainConfig
from hpo.errors import ArgumentParser, HpoError, run_cli, write_output
from hpo.records import SETTINGS_ATTR
from hpo.storage import checked_study_name, default_storage_url, load_existing_study, redact

PACKAGES = ("hpo", "torch", "torchvision", "optuna", "optuna-dashboard", "pandas")


def trial_config(trial: FrozenTrial) -> TrainConfig:
    """The full config a trial trained with (stored by the objective as the ``config`` user attribute)."""
    if "config" not in trial.user_attrs:
        raise HpoError(f"trial {trial.number} has no stored config (it failed before training started)")
    return TrainConfig.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}")


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "config" in t.user_attrs]
    return sorted(done, key=lambda t: t.value, reverse=True)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def export_document(study: optuna.Study, trial: FrozenTrial, storage_url: str) -> dict[str, Any]:
    """The trial's config and provenance; the storage URL is redacted (exported files are shared)."""
    return {
        "config": trial_config(trial).to_dict(),
        "provenance": {
            "study_name": study.study_name,
            "storage": redact(storage_url),
            "trial_number": trial.number,
            "state": trial.state.name,
            "validation_accuracy": trial.value,
            # the epoch that accuracy was scored at (a pruned trial's is earlier than config.epochs) and why it stopped
            "epochs_run": trial.user_attrs.get("epochs_run"),
            "stop_reason": trial.user_attrs.get("stop_reason"),
            "params": trial.params,
            # how the study searched and scored (validation share, seeds, sampler, pruner, space)
            "search_settings": study.user_attrs.get(SETTINGS_ATTR),
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    }


def dump(document: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False)
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m hpo.export", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", type=checked_study_name, default="cifar10", help="default cifar10")
    p.add_argument("--storage", help="default: sqlite:///studies/<study-name>.db")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="export this trial number instead of the best")
    which.add_argument("--top-k", type=int, help="export the k best completed trials, one file each")
    p.add_argument("--format", choices=("json", "yaml"), default="json", help="default json")
    p.add_argument("--output", help="file (or folder with --top-k); '-' prints; default studies/<study>-<trial>.<fmt>")
    args = p.parse_args(argv)

    url = args.storage or default_storage_url(args.study_name)
    study = load_existing_study(args.study_name, url)
    ranked = ranked_trials(study)
    if args.trial is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == args.trial]
        if not matches:
            raise HpoError(f"study {args.study_name!r} has no trial {args.trial} (it has {len(study.trials)} trials)")
        trials = matches
    elif args.top_k is not None:
        if args.top_k < 1:
            raise HpoError(f"--top-k must be at least 1, got {args.top_k}")
        trials = ranked[: args.top_k]
    else:
        trials = ranked[:1]
    if not trials:
        raise HpoError(f"study {args.study_name!r} has no completed trial to export yet: run python -m hpo.search")

    for trial in trials:
        text = dump(export_document(study, trial, url), args.format)
        if args.output == "-":
            sys.stdout.write(text)
            continue
        name = f"{args.study_name}-{'best' if len(trials) == 1 and args.trial is None else f'trial{trial.number}'}"
        if args.output and args.top_k is None:
            path = Path(args.output)
        else:
            path = Path(args.output or "studies") / f"{name}.{args.format}"
        write_output(path, text, "--output")
        print(f"trial {trial.number} (validation accuracy {trial.value}) -> {path}")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
