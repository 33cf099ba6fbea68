"""The Optuna objective: trial -> config -> ``train`` with a reporting/pruning callback -> validation accuracy.

Everything worth keeping about a trial goes into the storage as user attributes, pruned and failed trials
included, so the study file is the system of record: a trial whose training raises (or is interrupted) still
gets ``config``, ``seed``, ``device``, ``val_acc_curve``, ``val_loss_curve`` and ``epochs_run`` up to the failure,
and ``wall_seconds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.config import TrainConfig
from hpo.data import Split
from hpo.notes import upload_trial_artifacts
from hpo.space import SearchSpace
from hpo.train import EpochStats, TrainResult, train

OBJECTIVE_NAME = "validation accuracy"
SETTINGS_ATTR = "hpo_settings"  # study user attribute holding the search settings
RETRAIN_ATTR = "retrain"  # study user attribute holding the retrain result


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed from the study seed and trial number: a single-worker study replays exactly.
    A retried trial keeps the seed of the trial it retries."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


@dataclasses.dataclass
class Objective:
    space: SearchSpace
    base: TrainConfig
    train_data: Split
    val_data: Split
    device: torch.device
    study_seed: int = 0
    checkpoint_dir: Path | None = None  # per-epoch checkpoints, so a retried trial resumes where it died
    artifact_store: Any = None  # where the dashboard finds each trial's learning curve and config

    def config_for(self, trial: optuna.Trial, origin: int) -> TrainConfig:
        return self.space.suggest(trial, self.base).replace(seed=trial_seed(self.study_seed, origin))

    def checkpoint_path(self, origin: int) -> Path | None:
        return self.checkpoint_dir / f"trial-{origin}.pt" if self.checkpoint_dir else None

    def __call__(self, trial: optuna.Trial, origin: int | None = None) -> float:
        """Train the trial's config. ``origin`` is the number of the trial this one retries (seed + checkpoint)."""
        origin = trial.number if origin is None else origin
        config = self.config_for(trial, origin)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("seed", config.seed)
        trial.set_user_attr("device", str(self.device))

        history: list[EpochStats] = []

        def report_and_ask(stats: EpochStats) -> bool:
            history.append(stats)
            trial.report(stats.val_acc, stats.epoch)
            return trial.should_prune()  # True stops training; we raise TrialPruned once it has returned

        started = time.perf_counter()
        try:
            result = train(
                config,
                self.train_data,
                self.val_data,
                self.device,
                on_epoch=report_and_ask,
                checkpoint=self.checkpoint_path(origin),
            )
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the original error is what matters
                _record_failed(trial, history, time.perf_counter() - started)
            raise
        _record(trial, result)
        if self.artifact_store is not None:
            try:
                upload_trial_artifacts(trial.study, trial, self.artifact_store)
            except Exception as err:  # noqa: BLE001 - a plotting problem must not fail a trial that trained fine
                warnings.warn(f"trial {trial.number}: artifacts not uploaded ({err})", stacklevel=1)
        if result.diverged:
            reason = f"diverged: training loss became NaN/inf in epoch {result.epochs_run}"
            trial.set_user_attr("stop_reason", reason)
            raise optuna.TrialPruned(reason)
        if result.stopped_early:
            trial.set_user_attr("stop_reason", f"pruned after epoch {result.epochs_run}")
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run} at val acc {result.val_acc:.4f}")
        return result.val_acc


def _record_curves(trial: optuna.Trial, history: list[EpochStats]) -> None:
    trial.set_user_attr("val_acc_curve", [round(s.val_acc, 6) for s in history])
    trial.set_user_attr("val_loss_curve", [round(s.val_loss, 6) for s in history])
    trial.set_user_attr("epochs_run", len(history))


def _record_failed(trial: optuna.Trial, history: list[EpochStats], wall_seconds: float) -> None:
    """What a trial whose training raised had done: its epochs so far and the time it took."""
    _record_curves(trial, history)
    trial.set_user_attr("wall_seconds", round(wall_seconds, 3))


def _record(trial: optuna.Trial, result: TrainResult) -> None:
    _record_curves(trial, result.history)
    trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
    trial.set_user_attr("wall_seconds", round(result.wall_seconds, 3))
    trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
