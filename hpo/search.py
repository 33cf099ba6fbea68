"""``python -m hpo.search``: an Optuna study over CIFAR-10 training configs, stored in SQLite (or any Optuna storage).

Re-running the same command continues the study: ``--n-trials`` is the study's total of finished (complete or
pruned) trials, counted across workers and restarts. Settings not given on the command line (``--n-trials``
included) are taken from the study when it exists, else from the machine's defaults (smaller on a CPU-only machine).
Every option is checked before anything is opened or trained; a refused run changes no stored byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.accounting import GpuUtilisation, process_start_time
from hpo.config import MAX_SEED, RECIPE_LABEL, ConfigError, TrainConfig, load_config
from hpo.data import Split, copies_of, load_cifar10, train_val_split
from hpo.errors import ArgumentParser, HpoError, run_cli
from hpo.export import dump, export_document, ranked_trials
from hpo.notes import artifact_store_for, write_study_note
from hpo.objective import CHECKPOINT_EVERY_S, OBJECTIVE_NAME, Objective
from hpo.packing import choose_trials_per_gpu, data_bytes, measure_trial_peak
from hpo.parallel import die_with_parent
from hpo.records import RUN_ATTR, SETTINGS_ATTR
from hpo.space import Choice, SearchSpace, SpaceError
from hpo.storage import (
    checked_study_name,
    default_storage_url,
    files_dir,
    new_storage_file,
    open_storage,
    redact,
    use_wal,
)
from hpo.train import cpu_cores, resolve_device
from hpo.worker import FINISHED, quiet_optuna, run_worker

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("hyperband", "asha", "median", "none")

# What a search uses when neither the command line nor an existing study says otherwise.
# On a CPU: a narrower net, at most 5000 images and small batches (enough steps per epoch for epoch-1 pruning
# decisions to mean something), so the default search takes minutes. Batch 64, not 128: at 6 epochs the recipe
# trains 1.4 points better there in the same time, the √-scaled lr taking twice the steps (README, "Search space").
GPU_DEFAULTS = {"n_trials": 50, "epochs": 10, "widths": (64, 256, 256), "train_subset": 0, "batch_size": 512}
CPU_DEFAULTS = {"n_trials": 12, "epochs": 6, "widths": (32, 64, 128), "train_subset": 5000, "batch_size": 64}
MACHINE_KEYS = ("epochs", "widths", "train_subset", "batch_size")
# The storage URL reaches --workers processes through the environment (readable by the same user only), not
# their command line (readable by everyone on the machine through ps), since it may carry a password.
STORAGE_ENV = "HPO_WORKER_STORAGE"
# What the parent tells the processes it starts: when the command started (for start-up timing), the search's
# deadline (--timeout counts for the whole search, not per worker), how many workers share the machine, and its pid
# (a worker dies with it: a killed search leaves no worker running on).
START_ENV, DEADLINE_ENV, COUNT_ENV = "HPO_COMMAND_START", "HPO_DEADLINE", "HPO_WORKER_COUNT"
PARENT_ENV = "HPO_PARENT_PID"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What defines a study's search; stored with it so a resumed run searches the same thing (and as many trials)."""

    n_trials: int
    epochs: int
    widths: tuple[int, int, int]
    train_subset: int
    batch_size: int
    val_fraction: float
    seed: int
    sampler: str
    pruner: str
    space: dict[str, Any]

    def base_config(self) -> TrainConfig:
        """The recipe at this search's size: what every parameter the space does not sample takes."""
        return TrainConfig.recipe(
            epochs=self.epochs, widths=self.widths, train_subset=self.train_subset, batch_size=self.batch_size
        )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m hpo.search",
        description=__doc__.splitlines()[0],
        epilog="Run the same command again to continue a study: the options left out of it (--n-trials, --epochs, "
        "--widths, --train-subset, --batch-size, --val-fraction, --space, --seed, --sampler, --pruner) then take the "
        "values the study was started with; the defaults above are a new study's.",
    )
    g, c = GPU_DEFAULTS, CPU_DEFAULTS

    def new_study(key: str, show: Callable[[Any], object] = str) -> str:
        return f"(default {show(g[key])} on a GPU, {show(c[key])} on a CPU)"

    p.add_argument(
        "--study-name",
        type=checked_study_name,
        default="cifar10",
        help="study name; it also names files (default cifar10)",
    )
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study-name>.db)")
    p.add_argument(
        "--n-trials", type=int, help=f"finished trials the study should have in total {new_study('n_trials')}"
    )
    p.add_argument(
        "--timeout", type=float, help="wall-clock budget of the search in seconds: running trials stop at an epoch end"
    )
    p.add_argument("--epochs", type=int, help=f"max epochs per trial, the pruning resource {new_study('epochs')}")
    p.add_argument(
        "--widths",
        type=int,
        nargs=3,
        metavar="W",
        help=f"model widths of the three conv groups {new_study('widths', lambda w: '/'.join(map(str, w)))}",
    )
    p.add_argument(
        "--train-subset",
        type=int,
        help=f"train on only this many images, 0 = all {new_study('train_subset', lambda n: n or 'all')}",
    )
    p.add_argument(
        "--batch-size", type=int, help=f"batch size when the space does not sample it {new_study('batch_size')}"
    )
    p.add_argument("--val-fraction", type=float, help="validation share of the training set (default 0.1)")
    p.add_argument("--space", type=Path, help="YAML/JSON file changing the search space")
    p.add_argument(
        "--enqueue",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="run this config (JSON/YAML or an exported file) as a trial first; repeatable",
    )
    p.add_argument(
        "--no-warm-start", action="store_true", help="a new study does not start with the recipe's hyperparameters"
    )
    p.add_argument("--sampler", choices=SAMPLERS, help="default tpe")
    p.add_argument("--pruner", choices=PRUNERS, help="default hyperband")
    p.add_argument("--seed", type=int, help="study seed (default 0)")
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default data/)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    p.add_argument("--workers", type=int, help="worker processes on this machine (default 1; see --trials-per-gpu)")
    p.add_argument(
        "--trials-per-gpu",
        type=int,
        metavar="K",
        help="concurrent trials per device (default: from free memory on a GPU, at most 4; 1 on a CPU)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=CHECKPOINT_EVERY_S,
        metavar="S",
        help=f"write a trial's checkpoint at most every S seconds (default {CHECKPOINT_EVERY_S:g}; 0 = every epoch)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="heartbeat seconds on database storages, 0 = off (default 30); a dead worker's trial is retried",
    )
    p.add_argument("--no-retrain", action="store_true", help="skip retraining the best config and the report")
    p.add_argument("--retrain-seeds", type=int, help="seeds per retrained config (default 5)")
    p.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)  # set on the processes --workers starts
    return p


def main(argv: list[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial lines replace Optuna's
    quiet_optuna()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_args(args)
    enqueue = [(str(path), load_config(path)) for path in args.enqueue]  # unreadable or invalid: refused now
    device = resolve_device(args.device)
    space = SearchSpace.load(args.space) if args.space else None
    is_worker = args.worker_id is not None
    if is_worker and PARENT_ENV in os.environ:
        die_with_parent(int(os.environ[PARENT_ENV]))
    command_start = float(os.environ[START_ENV]) if is_worker else process_start_time()
    if is_worker and device.type == "cpu":
        # K workers on a CPU share its cores: K processes of (cores / K) threads, not K x cores threads fighting.
        torch.set_num_threads(max(1, cpu_cores() // int(os.environ.get(COUNT_ENV, 1))))
    inherited = os.environ.get(STORAGE_ENV) if is_worker else None
    storage_url = args.storage or inherited or default_storage_url(args.study_name)
    # A SQLite or journal file that does not exist yet holds no study: it is created only once every check has
    # passed, so a refused first command leaves no empty study file behind.
    storage = None if new_storage_file(storage_url) else open_storage(storage_url, args.heartbeat or None)
    existing = _existing_settings(storage, args.study_name) if storage is not None else None
    defaults = CPU_DEFAULTS if device.type == "cpu" else GPU_DEFAULTS
    settings = _resolve_settings(args, space, existing, defaults)
    n_trials = settings.n_trials
    if not is_worker:
        if existing is None and device.type == "cpu":
            images = f"at most {settings.train_subset}" if settings.train_subset else "all"
            print(
                f"no GPU: CPU defaults ({n_trials} trials x up to {settings.epochs} epochs, widths "
                f"{'/'.join(map(str, settings.widths))}, batch {settings.batch_size}, {images} "
                "training images); --n-trials/--epochs/--widths/--batch-size/--train-subset change them",
                flush=True,
            )
        print(f"study {args.study_name!r} in {redact(storage_url)}", flush=True)
        changed = [
            k
            for k in ("sampler", "pruner", "seed")
            if existing and k in existing and existing[k] != getattr(settings, k)
        ]
        if changed:
            print(
                "continuing the study with "
                + ", ".join(f"{k} {getattr(settings, k)} (its earlier trials: {existing[k]})" for k in changed)
                + "; its note and report name the latest",
                flush=True,
            )

    first = [] if is_worker else _first_trials(settings, enqueue, warm=existing is None and not args.no_warm_start)
    data = load_cifar10(args.data_dir)  # before touching the study: bad data must not leave an empty study behind
    if storage is None:
        storage = open_storage(storage_url, args.heartbeat or None)
    study = _create_or_load_study(storage, args.study_name, settings, existing)
    use_wal(storage_url)  # only now: every check that may refuse the run has passed
    if not is_worker:
        for label, params in first:
            # skip_if_exists: a host that raced this one to create the study has queued the same trial already.
            study.enqueue_trial(params, user_attrs={"enqueued": label}, skip_if_exists=True)
        if existing != settings.to_json():
            study.set_user_attr(SETTINGS_ATTR, settings.to_json())  # a plain rerun resumes these (and n_trials)
        data_text = (
            f"CIFAR-10 from `{args.data_dir}`: {len(data.train)} training images (a seeded "
            f"{settings.val_fraction:.0%} of them for validation) and {len(data.test)} test images (retrain only)"
        )
        write_study_note(study, settings.to_json(), data_text, n_trials)
    train_split, val_split = train_val_split(data.train, settings.val_fraction, seed=0)
    train_split = train_split.first(settings.train_subset)
    if not is_worker:
        _warn_on_copies(val_split, train_split)
    started, started_at = time.perf_counter(), datetime.datetime.now()  # Optuna's trial times are naive local
    if is_worker:
        deadline = float(os.environ[DEADLINE_ENV]) if DEADLINE_ENV in os.environ else None
    else:
        deadline = time.time() + args.timeout if args.timeout else None

    env = {STORAGE_ENV: storage_url, START_ENV: repr(command_start)}
    if deadline is not None:
        env[DEADLINE_ENV] = repr(deadline)
    pool = WorkerPool(argv, env, device)
    threads = torch.get_num_threads()
    utilisation, sampling = None, False
    try:
        # This process is worker 0 and starts the others. On a GPU, measuring K (one step at the search's shapes,
        # when over one trial is left) has already loaded and autotuned the kernels of its own first trial.
        left = n_trials - len(study.get_trials(deepcopy=False, states=FINISHED))
        workers = 1 if is_worker else _workers_for(args, device, settings, data_bytes(train_split, val_split), left)
        if device.type == "cuda" and not is_worker:  # only now is it known which GPUs the run uses
            utilisation = GpuUtilisation(gpus=pool.gpus_used(workers))
            sampling = utilisation.start()
        pool.start(workers - 1)
        if pool.procs and device.type == "cpu":
            torch.set_num_threads(max(1, cpu_cores() // workers))  # as each worker: K processes of cores / K threads
        objective = Objective(
            space=SearchSpace.from_dict(settings.space, source="stored search space"),
            base=settings.base_config(),
            train_data=train_split.to(device),
            val_data=val_split.to(device),
            device=device,
            study_seed=settings.seed,
            checkpoint_dir=files_dir(storage_url) / f"{args.study_name}-checkpoints",
            artifact_store=artifact_store_for(args.study_name, files_dir(storage_url)),
            checkpoint_every=args.checkpoint_every,
            deadline=deadline,
            command_start=command_start,
        )
        worker = args.worker_id or 0
        study.sampler = _make_sampler(settings, worker, len(study.get_trials(deepcopy=False)))
        tag = f"w{worker}" if is_worker or pool.procs else ""
        code = run_worker(study, objective, n_trials, deadline, tag=tag, bar=not is_worker)
        pool.wait()  # inside the try: the workers may still be training, and a SIGTERM now must reach them too
    except BaseException as err:
        # A Ctrl-C reached the workers too; a SIGTERM or an error of this process is passed on to them.
        pool.interrupt(forward=type(err) is not KeyboardInterrupt)
        if sampling:
            utilisation.stop()
        raise
    torch.set_num_threads(threads)
    if not is_worker:
        gpu_utilisation = utilisation.stop() if sampling else None
        gpu_samples = len(utilisation.samples) if sampling else None
        seconds = time.perf_counter() - started
        devices = max(1, len(pool.gpus_used(workers)))  # on a CPU: the one
        record_run(study, started_at, seconds, devices, workers, gpu_utilisation, gpu_samples, args.timeout)
        ran_out = deadline is not None and time.time() >= deadline
        print_summary(study, settings, seconds, args.timeout if ran_out else None)
        if not args.no_retrain:
            finish_pipeline(study, storage_url, data, device, args.retrain_seeds)
    return code


def finish_pipeline(study: optuna.Study, storage_url: str, data, device: torch.device, seeds: int | None) -> None:
    """Retrain the best (and runner-up) config, export the best, and write the report: one command, whole job."""
    # Imported here: pandas, matplotlib and scipy are needed only now, and at the top they would add their import
    # time to every search's (and every packed worker's) start-up.
    from hpo.report import write_report
    from hpo.retrain import default_seeds, retrain_study

    ranked = ranked_trials(study)
    if not ranked:
        print("no completed trial: nothing to retrain or report yet")
        return
    print(
        f"\nretraining the best config{' and the runner-up' if len(ranked) > 1 else ''} on train + validation, "
        "scored on the test set (skip with --no-retrain)",
        flush=True,
    )
    retrain_study(study, data, device, seeds or default_seeds(device), files_dir(storage_url), reuse=True)
    out_dir = Path("reports") / study.study_name
    write_report(study, out_dir)
    (out_dir / "best-config.json").write_text(dump(export_document(study, ranked[0], storage_url), "json"))
    print(
        f"report: {out_dir}/summary.md (and summary.html, trials.csv, plots); best config: {out_dir}/best-config.json"
    )


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad option values before anything is opened, loaded or trained (one line each)."""
    for name, minimum in (
        ("n_trials", 1),
        ("epochs", 1),
        ("workers", 1),
        ("trials_per_gpu", 1),
        ("batch_size", 1),
        ("heartbeat", 0),
        ("train_subset", 0),
        ("seed", 0),
        ("retrain_seeds", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise HpoError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if args.seed is not None and args.seed > MAX_SEED:
        raise HpoError(f"--seed must be at most {MAX_SEED}, got {args.seed}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise HpoError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not (math.isfinite(args.checkpoint_every) and args.checkpoint_every >= 0):
        raise HpoError(f"--checkpoint-every must be a number of seconds >= 0, got {args.checkpoint_every}")
    if args.workers is not None and args.trials_per_gpu is not None:
        raise HpoError("--workers and --trials-per-gpu both set the worker processes: give one of them")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise HpoError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    for name in ("epochs", "widths", "batch_size", "train_subset"):
        value = getattr(args, name)
        try:
            TrainConfig(**({name: value} if value is not None else {}))
        except ConfigError as err:
            raise HpoError(f"--{name.replace('_', '-')}: {err}") from None


def _first_trials(settings: Settings, enqueue: list[tuple[str, TrainConfig]], warm: bool) -> list[tuple[str, dict]]:
    """(label, params) of the trials to queue before any sampled one: with ``warm`` (a new study, unless
    --no-warm-start) the recipe's hyperparameters, which are the trainer's defaults, so the search's best is never
    worse than a user's starting point and the sampler learns from it; then each --enqueue file's."""
    space = SearchSpace.from_dict(settings.space, source="search space")
    first = []
    if warm:
        try:
            first.append((RECIPE_LABEL, space.params_for(settings.base_config(), "the recipe")))
        except SpaceError as err:  # the user's space leaves the recipe out: search it as given
            print(f"no warm start: {err}", flush=True)
    return first + [(label, space.params_for(config, label)) for label, config in enqueue]


def _existing_settings(storage: optuna.storages.BaseStorage, name: str) -> dict | None:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id).get(SETTINGS_ATTR, {})


def _resolve_settings(args, space: SearchSpace | None, existing: dict | None, defaults: dict) -> Settings:
    """Command line > the existing study's stored settings > machine defaults; conflicts are errors."""
    given = {
        "n_trials": args.n_trials,
        "epochs": args.epochs,
        "widths": tuple(args.widths) if args.widths else None,
        "train_subset": args.train_subset,
        "batch_size": args.batch_size,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "sampler": args.sampler,
        "pruner": args.pruner,
        "space": space.describe() if space else None,
    }
    fallback = {
        "n_trials": defaults["n_trials"],
        **{k: defaults[k] for k in MACHINE_KEYS},
        "val_fraction": 0.1,
        "seed": 0,
        "sampler": "tpe",
        "pruner": "hyperband",
        "space": SearchSpace.default().describe(),
    }
    stored = dict(existing or {})
    if "widths" in stored:
        stored["widths"] = tuple(stored["widths"])
    values = {k: given[k] if given[k] is not None else stored.get(k, fallback[k]) for k in fallback}
    if not 0 < values["val_fraction"] < 1:
        raise HpoError(f"--val-fraction must be in (0, 1), got {values['val_fraction']}")
    differs = [k for k in (*MACHINE_KEYS, "val_fraction", "space") if k in stored and stored[k] != values[k]]
    if differs:
        detail = "; ".join(f"{k}: study has {stored[k]}, now {values[k]}" for k in differs)
        raise HpoError(
            f"study {args.study_name!r} exists with a different search ({detail}): "
            f"drop those options to continue it, or pass a new --study-name"
        )
    settings = Settings(**values)
    try:
        settings.base_config()
    except HpoError as err:
        raise HpoError(f"invalid search settings: {err}") from None
    return settings


def _create_or_load_study(storage, name: str, settings: Settings, existing: dict | None) -> optuna.Study:
    # Hosts starting at once: open_storage already retried the schema race, and load_if_exists turns a lost
    # race to create the study into loading it.
    if existing is not None:
        _check_direction(storage.get_study_directions(storage.get_study_id_from_name(name)), name)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=_make_sampler(settings, 0, 0),
        pruner=_make_pruner(settings),
    )
    _check_direction(study.directions, name)
    if not existing:
        study.set_metric_names([OBJECTIVE_NAME])
    return study


def _check_direction(directions: list[optuna.study.StudyDirection], name: str) -> None:
    if directions == [optuna.study.StudyDirection.MAXIMIZE]:
        return
    what = "minimizes its objective" if len(directions) == 1 else f"has {len(directions)} objectives"
    raise HpoError(f"study {name!r} exists but {what}; hpo maximizes {OBJECTIVE_NAME}: pass a new --study-name")


def _make_sampler(settings: Settings, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
    # Offset by worker and by the trials already there: workers don't draw the same points, and a resumed
    # run doesn't replay the random start-up points of the first run.
    seed = (settings.seed + 7919 * worker + n_existing) % 2**32  # the samplers' (numpy's) seed range
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if settings.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def _make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.epochs, reduction_factor=3)
    if settings.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if settings.pruner == "median":
        # Epochs are steps 1, 2, ...: a warm-up of 2 steps prunes from epoch 2 on (after 4 completed trials).
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


def _without_storage(argv: list[str]) -> list[str]:
    """``argv`` minus ``--storage URL`` / ``--storage=URL``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--storage":
            skip = True
        elif not arg.startswith("--storage="):
            out.append(arg)
    return out


def _device_count(device: torch.device) -> int:
    return torch.cuda.device_count() if device.type == "cuda" else 1


def _workers_for(args: argparse.Namespace, device: torch.device, settings: Settings, data_size: int, left: int) -> int:
    """Worker processes for ``left`` trials to run: ``_worker_count``'s, at most one per trial. With one trial or
    none left, one, and nothing is measured (on a GPU that would take a CUDA context and an autotuned step)."""
    if left <= 1:
        if _may_pack(args, device):
            print(f"{max(0, left)} trial(s) left to run: 1 worker process(es)", flush=True)
        return 1
    workers = _worker_count(args, device, settings, data_size)
    if workers > left:  # a process per trial at most: the others would start, then find nothing to do
        print(f"{left} trial(s) left to run: {left} worker process(es)", flush=True)
        return left
    return workers


def _may_pack(args: argparse.Namespace, device: torch.device) -> bool:
    """Whether ``_worker_count`` may give more than one worker process (told without measuring anything)."""
    if args.workers is not None:
        return args.workers > 1
    if args.trials_per_gpu is not None:
        return args.trials_per_gpu * _device_count(device) > 1
    return device.type == "cuda"


def _worker_count(args: argparse.Namespace, device: torch.device, settings: Settings, data_size: int) -> int:
    """Worker processes for this run: --workers as given, else --trials-per-gpu (or, on a GPU, the K that fits)
    times the devices. Prints the choice when it packs."""
    if args.workers is not None:
        return args.workers
    devices = _device_count(device)
    if args.trials_per_gpu is not None:
        k, why = args.trials_per_gpu, "--trials-per-gpu"
    elif device.type == "cuda":
        config = _largest_trial(settings)
        measuring = time.perf_counter()
        free = min(torch.cuda.mem_get_info(i)[0] for i in range(devices))
        k, why = choose_trials_per_gpu(free, measure_trial_peak(config, device), data_size)
        why = f"auto: {why}; measured in {time.perf_counter() - measuring:.1f} s"
    else:
        return 1  # each trial already uses every core
    where = f"per GPU x {devices} GPU(s)" if device.type == "cuda" else "on the CPU, cores split between them"
    print(f"packing: {k} concurrent trials {where} = {k * devices} worker processes ({why})", flush=True)
    return k * devices


def _largest_trial(settings: Settings) -> TrainConfig:
    """The base config with the space's fixed values, the largest batch size the space may sample, and
    trivial_augment when it may sample that: its augmentation needs the most memory (about 0.6 GiB per 8 192-image
    chunk, 3x the other policies')."""
    space = SearchSpace.from_dict(settings.space, source="stored search space")
    config = space.to_config(space.fixed, settings.base_config())

    def values(name: str) -> list:
        param = space.sampled.get(name)
        return list(param.choices) if isinstance(param, Choice) else [getattr(config, name)]

    heavy = "trivial_augment" if "trivial_augment" in values("augmentation") else config.augmentation
    return config.replace(batch_size=max(values("batch_size")), augmentation=heavy)


def _warn_on_copies(val_split: Split, train_split: Split) -> None:
    """One line when over 1 % of the validation images are copies of training images (a tiled set, say): then
    validation accuracy measures memorising, near 1.0 for any config that trains long enough, and cannot rank them."""
    copies = copies_of(val_split.images, train_split.images)
    if copies > 0.01 * len(val_split):
        print(
            f"warning: {copies} of {len(val_split)} validation images ({copies / len(val_split):.0%}) are exact copies "
            "of training images (a tiled or duplicated training set?): validation accuracy will overstate every "
            "trial and rank them poorly; the retrain's test accuracy is not affected",
            flush=True,
        )


class WorkerPool:
    """The worker processes this one starts (``--worker-id 1``, ``2``, …; this process is worker 0), the visible
    GPUs dealt out round-robin."""

    def __init__(self, argv: list[str], env: dict[str, str], device: torch.device) -> None:
        self.command = [sys.executable, "-m", "hpo.search", *_without_storage(argv)]
        self.env = env
        self.gpus = _visible_gpus() if device.type == "cuda" else []
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int) -> None:
        """Start ``count`` workers beside this process (on a CPU, all of them split its cores)."""
        for i in range(1, count + 1):
            worker_env = {**os.environ, **self.env, COUNT_ENV: str(count + 1), PARENT_ENV: str(os.getpid())}
            if len(self.gpus) > 1:
                worker_env["CUDA_VISIBLE_DEVICES"] = self.gpus[i % len(self.gpus)]  # this process has gpus[0]
            self.procs.append(subprocess.Popen([*self.command, "--worker-id", str(i)], env=worker_env))

    def gpus_used(self, workers: int) -> list[str]:
        """The GPUs that ``workers`` processes, this one included, run on (none on a CPU)."""
        return self.gpus[:workers]

    def interrupt(self, forward: bool) -> None:
        """This process stops early: wait for the workers to record their running trials and exit, after sending
        them SIGTERM if ``forward`` (not needed when a Ctrl-C at the terminal reached them as well)."""
        if forward:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
        for p in self.procs:
            p.wait()

    def wait(self) -> None:
        """Wait for the workers to finish their last trials; HpoError if any of them failed."""
        codes = [p.wait() for p in self.procs]
        if any(codes):
            raise HpoError(f"worker exit codes {codes}: see the lines above")


def _visible_gpus() -> list[str]:
    """The GPU ids this process may use (CUDA_VISIBLE_DEVICES when set, else all), as strings."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[: torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


def record_run(
    study: optuna.Study,
    started_at: datetime.datetime,
    seconds: float,
    devices: int,
    workers: int,
    gpu_utilisation: float | None,
    gpu_samples: int | None,
    timeout: float | None,
) -> dict[str, Any]:
    """Store this run's accounting (over the trials that started since ``started_at``) as the study's ``last_run``
    attribute, which the report shows, and return it. ``gpu_samples``: how many utilisation samples nvidia-smi
    gave (None when it did not run)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_start >= started_at]
    startups = [t.user_attrs["startup_seconds"] for t in trials if "startup_seconds" in t.user_attrs]
    run = {
        "search_seconds": round(seconds, 3),
        "devices": devices,
        "workers": workers,
        "trials": len(trials),
        "finished": sum(t.state in FINISHED for t in trials),
        "device_seconds": round(sum(t.user_attrs.get("device_seconds", 0.0) for t in trials), 3),
        "startup_seconds": min(startups) if startups else None,
        "gpu_utilisation": None if gpu_utilisation is None else round(gpu_utilisation, 1),
        "gpu_samples": gpu_samples,
        "timeout": timeout,
    }
    study.set_user_attr(RUN_ATTR, run)
    return run


def print_summary(study: optuna.Study, settings: Settings, seconds: float, timeout: float | None = None) -> None:
    """The run's summary; ``timeout``: the --timeout that ran out, if it did."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in FINISHED]
    if timeout is not None and len(finished) < settings.n_trials:
        print(
            f"\nsearch stopped: --timeout {timeout:g} s ran out with {len(finished)} of {settings.n_trials} trials "
            "finished; the same command continues the study (a trial cut short resumes from its checkpoint)"
        )
    epochs_run = sum(t.user_attrs.get("epochs_run", 0) for t in finished)
    full = len(finished) * settings.epochs
    print(
        f"\nstudy {study.study_name}: "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + f"; this run {seconds:.0f}s from the loaded data to the last trial's end"
    )
    if full and settings.pruner == "none":
        short = "" if epochs_run == full else f"; {full - epochs_run} not run after a trial's loss diverged"
        print(f"epochs run {epochs_run} of {full} (--pruner none: nothing pruned{short})")
    elif full:
        print(
            f"epochs run {epochs_run} of {full} without pruning: "
            f"pruning saved {full - epochs_run} ({1 - epochs_run / full:.0%})"
        )
    run = study.user_attrs.get(RUN_ATTR, {})
    if run.get("startup_seconds") is not None:
        print(f"start-up: {run['startup_seconds']:.1f}s from the command to the first trial's first step")
    if run.get("gpu_utilisation") is not None:
        print(f"mean GPU utilisation during the search: {run['gpu_utilisation']:.0f}%")
    try:
        best = study.best_trial
    except ValueError:
        print("no completed trial yet")
        return
    print(f"best trial {best.number}: {OBJECTIVE_NAME} {best.value:.4f}")
    for key, value in best.user_attrs.get("config", best.params).items():
        print(f"  {key}: {value}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
