"""One worker's loop over a study: ask, train, tell, until the study has its trials.

Uses ask/tell rather than ``Study.optimize`` so that the total is exact across workers and restarts (a trial
that loses the race for the last slot goes back to the queue untouched), interrupted trials are re-queued to
resume from their checkpoint, and one trial's failure never ends the search.
"""

from __future__ import annotations

import contextlib
import gc
import re
import time
import traceback
import warnings

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from tqdm import tqdm

from hpo.errors import HpoError, interrupts_deferred, sigterm_as_interrupt
from hpo.objective import Objective, SearchTimeout
from hpo.space import DEFAULT_SPACE
from hpo.storage import RETRY_STALE, ask_lock, heartbeat, heartbeat_interval

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials that count towards --n-trials or are being run for it. (A WAITING trial is a queued retry: the next
# ask() runs it, so it does not hold a slot.)
TAKEN = (*FINISHED, TrialState.RUNNING)
SAME_FAILURE_LIMIT = 3
# Numbers and quoted names (a sampled value, a temporary file's random name) differ between trials with one fault.
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
TIMED_OUT = "timeout"  # _run_trial's error for a trial the search's deadline stopped
WAIT_POLL_S = 2.0


def quiet_optuna() -> None:
    # Heartbeat, retries, metric names and fail_stale_trials are "experimental" in Optuna but are what we rely
    # on; we run the heartbeat with ask/tell ourselves (hpo.storage.heartbeat), which Optuna warns about.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def run_worker(
    study: optuna.Study, objective: Objective, n_trials: int, deadline: float | None, tag: str = "", bar: bool = True
) -> int:
    """Run trials until the study has ``n_trials`` finished (complete or pruned) trials, or the ``deadline``
    (``time.time()``) passes: then no trial starts, and the objective stops a running one at its next epoch."""
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    # disable=None: tqdm draws the bar only on a terminal, so a log file (nohup, CI) gets the trial lines without the
    # bar's carriage-return redraws between them (50 in the default CPU run's log).
    progress = tqdm(
        total=n_trials, initial=min(finished, n_trials), unit="trial", disable=None if bar else True, dynamic_ncols=True
    )
    failures: list[str] = []
    has_heartbeat = bool(heartbeat_interval(study._storage))
    with progress, sigterm_as_interrupt(), warnings.catch_warnings(), contextlib.closing(objective):
        quiet_optuna()
        while deadline is None or time.time() < deadline:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and re-queued for retry
            if len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_trials:
                break
            if len(study.get_trials(deepcopy=False, states=TAKEN)) >= n_trials:
                if not has_heartbeat:
                    break  # nothing could tell a dead worker's trial from a slow one
                # Other workers hold the last trials; wait in case one of them dies and its trial is retried.
                time.sleep(WAIT_POLL_S)
                continue
            trial = None
            try:
                with interrupts_deferred():  # ask() creates the RUNNING row: a signal must not land before we hold it
                    trial = claim_trial(study, n_trials)
                if trial is None:
                    continue
                claimed = study._storage.get_trial(trial._trial_id)
                origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(claimed)
                origin = trial.number if origin is None else origin
                state, error = _run_trial(study, trial, objective, origin)
            except KeyboardInterrupt:
                if trial is not None:
                    _interrupted(study, trial)  # a signal that came before _run_trial could record it
                raise
            if error != TIMED_OUT:  # a timed-out trial's checkpoint stays for its retry
                _tidy_checkpoint(study, objective, trial.number, origin, state)
            frozen = study._storage.get_trial(trial._trial_id)
            progress.write(_trial_line(frozen, tag))
            progress.n = min(n_trials, len(study.get_trials(deepcopy=False, states=FINISHED)))
            progress.refresh()
            failures = failures + [error] if state == TrialState.FAIL and error != TIMED_OUT else []
            if len(failures) >= SAME_FAILURE_LIMIT and len({_kind(e) for e in failures[-SAME_FAILURE_LIMIT:]}) == 1:
                raise HpoError(
                    f"{SAME_FAILURE_LIMIT} trials in a row failed with the same error ({failures[-1]}); "
                    "stopping instead of burning the budget: see the trials' fail_reason attribute"
                )
    return 0


def _kind(error: str) -> str:
    """An error message with its numbers and quoted names blanked: the same fault in trials with other sampled
    values (or other temporary files) is one kind."""
    return _VARYING.sub("#", error)


def claim_trial(study: optuna.Study, n_trials: int) -> optuna.Trial | None:
    """``study.ask()``, unless the asked trial lost the race for the last slot: then it goes back to the queue
    (WAITING, untouched) for a later run, and the answer is None."""
    with ask_lock(study._storage):
        trial = study.ask()
    earlier = [t for t in study.get_trials(deepcopy=False, states=TAKEN) if t.number < trial.number]
    if len(earlier) < n_trials:
        return trial
    study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
    return None


def _interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record a trial still RUNNING when Ctrl-C or SIGTERM came as interrupted: FAIL, with a retry queued."""
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != TrialState.RUNNING:
        return  # told already
    RETRY_STALE(study, frozen)  # same as a dead worker's trial
    trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); the next run retries it")
    study.tell(trial, state=TrialState.FAIL)


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, origin: int) -> tuple[TrialState, str]:
    """Run one trial to a told state. Ctrl-C marks it FAIL (interrupted), queues a retry that resumes from its
    checkpoint, and propagates; the search's deadline does the same without propagating."""
    with heartbeat(study._storage, trial._trial_id):
        try:
            value = objective(trial, origin)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED, ""
        except SearchTimeout as err:
            # Failed, not pruned: the pruner and sampler must not take a cut-short trial for a bad one, and it
            # does not count towards --n-trials, so the next run resumes it from its checkpoint.
            RETRY_STALE(study, study._storage.get_trial(trial._trial_id))
            trial.set_user_attr("fail_reason", f"timeout: {err}; the next run resumes it")
            study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL, TIMED_OUT
        except KeyboardInterrupt:
            _interrupted(study, trial)
            raise
        except Exception as err:  # noqa: BLE001 - one trial's error must not end the study
            trial.set_user_attr("fail_reason", traceback.format_exc()[-4000:])
            out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError)
            if out_of_memory:
                trial.set_user_attr("stop_reason", "CUDA out of memory")
            study.tell(trial, state=TrialState.FAIL)
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        else:
            error = ""
    if error:
        if out_of_memory:
            # Only here, out of the except block: until then the error's traceback holds the failed trial's frames
            # (model, optimizer, the step's activations). Freed and returned to the GPU, they serve the next trial
            # and the other trials packed on the device.
            gc.collect()
            torch.cuda.empty_cache()
        return TrialState.FAIL, error
    study.tell(trial, value)
    return TrialState.COMPLETE, ""


def _tidy_checkpoint(study: optuna.Study, objective: Objective, number: int, origin: int, state: TrialState) -> None:
    """Drop a finished trial's checkpoint, keeping the best completed trial's as ``best-trial.pt``.

    (Trials that died or were interrupted never get here: their checkpoint stays for the retry.)"""
    path = objective.checkpoint_path(origin)
    if path is None or not path.exists():
        return
    if state == TrialState.COMPLETE and study.best_trial.number == number:
        path.replace(path.with_name("best-trial.pt"))
    else:
        path.unlink(missing_ok=True)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _trial_line(t: optuna.trial.FrozenTrial, tag: str) -> str:
    config = t.user_attrs.get("config", {})
    value = f"val {t.value:.4f}" if t.value is not None else "val   -   "
    params = (
        f"lr {config.get('lr', float('nan')):.3g} mom {config.get('momentum', float('nan')):.2f} "
        f"wd {config.get('weight_decay', float('nan')):.2g} drop {config.get('dropout', float('nan')):.2f} "
        f"{config.get('augmentation', '?')}/{config.get('scheduler', '?')}"
    )
    # A space file's extra parameters (batch size, label smoothing, components) are shown too.
    extra = [f"{name} {_short(value)}" for name, value in t.params.items() if name not in DEFAULT_SPACE]
    params = " ".join([params, *extra])
    seconds = t.user_attrs.get("wall_seconds", 0.0)
    prefix = f"[{tag}] " if tag else ""
    epochs = t.user_attrs.get("epochs_run", 0)
    return f"{prefix}trial {t.number:3d} {t.state.name:<8} {value}  {params}  {epochs} ep  {seconds:.1f}s"
