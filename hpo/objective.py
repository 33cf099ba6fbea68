"""The Optuna objective: trial -> config -> ``train`` with a reporting/pruning callback -> validation accuracy.

Everything worth keeping about a trial goes into the storage as user attributes, pruned and failed trials
included, so the study file is the system of record: a trial whose training raises (or is interrupted) still
gets ``config``, ``seed``, ``device``, ``val_acc_curve``, ``val_loss_curve`` and ``epochs_run`` up to the failure,
and ``wall_seconds``.

The search's ``deadline`` (``--timeout``) is checked at every epoch boundary: a trial with epochs left raises
``SearchTimeout`` there, after its checkpoint is saved; the worker fails it and queues a retry that resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
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
CHECKPOINT_EVERY_S = 30.0  # a trial's checkpoint is written at most this often (and at its end, and on interrupt)


class SearchTimeout(Exception):
    """The search's wall-clock budget ran out while this trial still had epochs to run."""


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed from the study seed and trial number: a single-worker study replays exactly.
    A retried trial keeps the seed of the trial it retries."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


def _drawing_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo-draw")  # its thread starts at the first job


@dataclasses.dataclass
class Objective:
    space: SearchSpace
    base: TrainConfig
    train_data: Split
    val_data: Split
    device: torch.device
    study_seed: int = 0
    checkpoint_dir: Path | None = None  # epoch checkpoints, so a retried trial resumes where it died
    artifact_store: Any = None  # where the dashboard finds each trial's learning curve and config
    checkpoint_every: float = CHECKPOINT_EVERY_S
    deadline: float | None = None  # time.time() after which no epoch starts (--timeout)
    command_start: float | None = None  # time.time() the command started: the first trial stores its start-up time
    # Learning curves are drawn in this thread while the next trial trains (close() waits for them).
    drawer: ThreadPoolExecutor = dataclasses.field(default_factory=_drawing_thread)

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
        if "epochs_run" in trial.user_attrs:
            # A retry carries the attributes of the attempt it retries; until it records its own (if it dies
            # outright it never does), it has trained nothing, so the accounting must not count those again.
            for name in ("epochs_run", "epochs_trained", "device_seconds", "wall_seconds"):
                trial.set_user_attr(name, 0)

        history: list[EpochStats] = []

        def report_and_ask(stats: EpochStats) -> bool:
            history.append(stats)
            trial.report(stats.val_acc, stats.epoch)
            if self.deadline is not None and time.time() >= self.deadline and stats.epoch < config.epochs:
                raise SearchTimeout(f"the --timeout budget ran out after epoch {stats.epoch}")
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
                checkpoint_every=self.checkpoint_every,
                on_first_step=self._startup_timer(trial),
            )
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the original error is what matters
                _record_failed(trial, history, time.perf_counter() - started)
            raise
        _record(trial, result, time.perf_counter() - started)
        if self.artifact_store is not None:
            try:
                upload_trial_artifacts(trial.study, trial, self.artifact_store, later=self.drawer)
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

    def close(self) -> None:
        """Wait for the learning curves still being drawn (the objective stays usable)."""
        self.drawer.shutdown(wait=True)
        self.drawer = _drawing_thread()

    def _startup_timer(self, trial: optuna.Trial):
        """For this process's first trial only: a callback storing the seconds from the command's start to the
        trial's first optimizer step (user attribute ``startup_seconds``)."""
        if self.command_start is None:
            return None
        start, self.command_start = self.command_start, None
        return lambda: trial.set_user_attr("startup_seconds", round(time.time() - start, 3))


def _record_curves(trial: optuna.Trial, history: list[EpochStats]) -> None:
    trial.set_user_attr("val_acc_curve", [round(s.val_acc, 6) for s in history])
    trial.set_user_attr("val_loss_curve", [round(s.val_loss, 6) for s in history])
    trial.set_user_attr("epochs_run", len(history))
    # Without the epochs a resumed attempt replayed from its checkpoint: what this attempt itself trained.
    trial.set_user_attr("epochs_trained", sum(not s.replayed for s in history))


def _record_failed(trial: optuna.Trial, history: list[EpochStats], wall_seconds: float) -> None:
    """What a trial whose training raised had done: its epochs so far and the time it took."""
    _record_curves(trial, history)
    trial.set_user_attr("wall_seconds", round(wall_seconds, 3))
    trial.set_user_attr("device_seconds", round(wall_seconds, 3))


def _record(trial: optuna.Trial, result: TrainResult, device_seconds: float) -> None:
    _record_curves(trial, result.history)
    trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
    trial.set_user_attr("wall_seconds", round(result.wall_seconds, 3))
    # This attempt's whole train() call (whitening, steps, evaluations), without a resumed attempt's time before it:
    # the device time the accounting adds up.
    trial.set_user_attr("device_seconds", round(device_seconds, 3))
    trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
