"""``python -m hpo.retrain``: retrain the winner (and the runner-up) on train + validation with k seeds and
evaluate on the test set, the first and only use of it.

From a study, the best completed trial is compared with the runner-up; from ``--config`` files, the config is
compared with ``--baseline`` if given. Results (per-seed test accuracy, mean, sd, 95 % CI, Welch's t-test) are
stored in the study as the ``retrain`` user attribute; the seed-0 weights of the winner (the candidate with the
higher mean test accuracy) are saved with its config under ``studies/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact

from hpo.config import RECIPE_LABEL, ConfigError, TrainConfig, load_config, read_yaml_or_json
from hpo.data import Cifar10, content_digest, load_cifar10
from hpo.errors import ArgumentParser, HpoError, output_file, run_cli, write_output
from hpo.export import ranked_trials, trial_config
from hpo.notes import artifact_store_for, set_retrain_section
from hpo.parallel import map_in_processes
from hpo.records import IS_RECIPE, RETRAIN_ATTR, SETTINGS_ATTR, defaults_verdict, diverged_text
from hpo.stats import summarize, welch
from hpo.storage import checked_study_name, default_storage_url, files_dir, load_existing_study
from hpo.train import cpu_cores, resolve_device, train


@dataclass(frozen=True)
class Candidate:
    label: str
    config: TrainConfig
    trial_number: int | None = None


def default_seeds(device: torch.device) -> int:
    """Seeds per retrained config. 5 on a CPU too: with 4, the default CPU search's +2.1-point gain over the
    recipe measured p = 0.052; the fifth seed costs ~40 s of the 10-minute budget (runs train 2 at a time)."""
    return 5


def retrain(
    candidates: list[Candidate],
    data: Cifar10,
    device: torch.device,
    n_seeds: int,
    weights_dir: Path | None = None,
    train_subset: int = 0,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train every candidate with seeds 0..n_seeds-1 on the whole training set; score each on the test set.
    With ``jobs`` > 1 (CPU only) that many runs train at once, in processes of one thread each.

    The winner is the candidate with the higher mean test accuracy (the first on a tie); its seed-0 weights go
    to ``weights_dir``."""
    runs = [
        (cand, cand.config.replace(seed=seed, train_subset=train_subset))
        for cand in candidates
        for seed in range(n_seeds)
    ]
    outcomes = _train_all([config for _, config in runs], data, device, jobs)
    results, first_models = [], []
    for i, cand in enumerate(candidates):
        accuracies, diverged = [], []
        for seed in range(n_seeds):
            config = runs[i * n_seeds + seed][1]
            acc, seconds, state, run_diverged = next(outcomes)
            accuracies.append(acc)
            if run_diverged:
                diverged.append(seed)
            note = " [diverged: loss became NaN/inf; scored on the model it left]" if run_diverged else ""
            print(f"retrain {cand.label}: seed {seed} test acc {acc:.4f} ({seconds:.1f}s){note}", flush=True)
            if seed == 0:
                first_models.append((state, config))
        summary = summarize(accuracies)
        print(summary_line(cand.label, str(summary)), flush=True)
        results.append(
            {
                "label": cand.label,
                "trial_number": cand.trial_number,
                "config": cand.config.to_dict(),
                "test_acc": accuracies,
                "diverged_seeds": diverged,
                "summary": summary.to_dict(),
                "text": str(summary),
            }
        )
    record: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "seeds": list(range(n_seeds)),
        "train_images": len(data.train.first(train_subset)),
        "data": content_digest(data),
        "test_images": len(data.test),
        "candidates": results,
        "weights": str(weights_dir / "model.pt") if weights_dir else None,
    }
    # The first candidate against each other one (best vs runner-up, vs the recipe), same seeds, same data.
    record["comparisons"] = []
    for other in results[1:]:
        comparison = welch(results[0]["test_acc"], other["test_acc"])
        verdict = comparison.verdict(results[0]["label"], other["label"])
        record["comparisons"].append({"against": other["label"], **comparison.to_dict(), "verdict": verdict})
        print(verdict_line(verdict), flush=True)
    if record["comparisons"]:
        record["comparison"] = {k: v for k, v in record["comparisons"][0].items() if k not in ("against", "verdict")}
        record["verdict"] = record["comparisons"][0]["verdict"]
    means = [r["summary"]["mean"] for r in results]
    winner = max(range(len(results)), key=lambda i: (-math.inf if math.isnan(means[i]) else means[i], -i))
    record["winner"] = results[winner]["label"]
    if weights_dir is not None:
        save_weights(weights_dir, *first_models[winner], candidates[winner])
        whose = record["winner"] if len(results) == 1 else f"the winner, {record['winner']},"
        print(f"retrain: seed-0 weights of {whose} in {weights_dir}", flush=True)
    return record


# Below this many training images x epochs per run, starting a process (~3 s of imports) costs more than it saves.
MIN_PARALLEL_WORK = 5000


def cpu_jobs(device: torch.device, candidates: list[Candidate], data: Cifar10, train_subset: int = 0) -> int:
    """Runs to train at once: one single-threaded process per core on a CPU (two one-thread runs on 2 cores train
    1.1-1.6x as many images per second as one two-thread run, whose small convolutions scale poorly); 1 on a GPU,
    and 1 for runs too small to pay for a process."""
    if device.type != "cpu" or not candidates:
        return 1
    work = len(data.train.first(train_subset)) * max(c.config.epochs for c in candidates)
    return cpu_cores() if work >= MIN_PARALLEL_WORK else 1


def _train_one(config: TrainConfig, data: Cifar10, device: torch.device, threads: int | None = None):
    """(test accuracy, training seconds, CPU weights of a seed-0 run else None, whether it diverged) of one run."""
    if threads:
        torch.set_num_threads(threads)
    result = train(config, data.train, data.test, device, evaluate_every_epoch=False)
    state = _cpu_state(result.model) if config.seed == 0 else None
    return result.val_acc, result.train_seconds, state, result.diverged


def _train_all(configs: list[TrainConfig], data: Cifar10, device: torch.device, jobs: int):
    """``_train_one`` of each config, yielded in order; ``jobs`` > 1 trains that many at once in processes."""
    if jobs <= 1 or len(configs) <= 1 or device.type != "cpu":
        for config in configs:
            yield _train_one(config, data, device)
        return
    yield from map_in_processes(_train_one, [(c, data, device, 1) for c in configs], min(jobs, len(configs)))


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_weights(folder: Path, state: dict[str, torch.Tensor], config: TrainConfig, cand: Candidate) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "model.pt")
    doc = {"config": config.to_dict(), "provenance": {"label": cand.label, "trial_number": cand.trial_number}}
    (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n")


def study_candidates(study: optuna.Study) -> list[Candidate]:
    """Best and runner-up, then the recipe at the search's size (the trainer's defaults: what a user starts from)
    unless one of the two is the recipe already."""
    ranked = ranked_trials(study)
    if not ranked:
        raise HpoError(f"study {study.study_name!r} has no completed trial to retrain yet: run python -m hpo.search")
    labels = ("best", "runner-up")
    recipe = study_recipe(study)
    candidates = []
    for label, t in zip(labels, ranked):
        config = trial_config(t)
        same = recipe is not None and config.replace(seed=0).matches(recipe)
        candidates.append(Candidate(f"{label} (trial {t.number}{IS_RECIPE if same else ''})", config, t.number))
    if recipe is not None and not any(c.label.endswith(f"{IS_RECIPE})") for c in candidates):
        candidates.append(Candidate(RECIPE_LABEL, recipe))
    return candidates


def summary_line(label: str, summary: str) -> str:
    return f"retrain {label}: test accuracy {summary}"


def verdict_line(verdict: str) -> str:
    return f"retrain verdict: {verdict}"


def study_recipe(study: optuna.Study) -> TrainConfig | None:
    """The recipe at the size the study searched at (epochs, widths, batch size, subset), from its settings."""
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    keys = ("epochs", "widths", "train_subset", "batch_size")
    if not all(k in settings for k in keys):
        return None  # a study made elsewhere (or by an older version): its size is unknown
    return TrainConfig.recipe(**{k: tuple(settings[k]) if k == "widths" else settings[k] for k in keys})


def retrain_study(
    study: optuna.Study,
    data: Cifar10,
    device: torch.device,
    n_seeds: int,
    folder: Path,
    jobs: int | None = None,
    reuse: bool = False,
) -> dict:
    """Retrain a study's best and runner-up, store the result in the study, save weights under ``folder``.
    With ``reuse``, a stored retrain of the same candidates, seeds, data and device type is returned instead."""
    weights = winner_folder(folder, study.study_name)
    candidates = study_candidates(study)
    stored = study.user_attrs.get(RETRAIN_ATTR)
    legacy = folder / f"{study.study_name}-best" / "model.pt"  # where versions before the -winner folder saved it
    if reuse and any(covers(stored, candidates, n_seeds, data, device, w) for w in (weights / "model.pt", legacy)):
        print(
            f"retrain: the study's retrain of {stored['date']} trained these configs with these seeds on this data: "
            "reused (python -m hpo.retrain trains them anew)",
            flush=True,
        )
        for c in stored["candidates"]:
            print(summary_line(c["label"], c["text"]), flush=True)
        for c in stored.get("comparisons", []):
            print(verdict_line(c["verdict"]), flush=True)
        return stored
    jobs = cpu_jobs(device, candidates, data) if jobs is None else jobs
    record = retrain(candidates, data, device, n_seeds, weights, jobs=jobs)
    store_result(study, record, folder)
    return record


def config_name(path: Path) -> str:
    """A config file's name in labels and in its weights folder: an exported file's study and trial (every study's
    report holds a ``best-config.json``, whose weights would otherwise share one folder), else the file's stem."""
    provenance = read_yaml_or_json(path, "config", ConfigError)
    provenance = provenance.get("provenance") if isinstance(provenance, dict) else None
    if not isinstance(provenance, dict) or not isinstance(provenance.get("trial_number"), int):
        return path.stem
    try:  # a winner's config.json names no study: its stem then
        return f"{checked_study_name(str(provenance['study_name']))}-trial{provenance['trial_number']}"
    except (KeyError, argparse.ArgumentTypeError):  # no study name, or one that could not name a folder
        return path.stem


def size_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """How two configs differ in what sets the model's size and training budget rather than its hyperparameters."""
    keys = ("widths", "stem_width", "epochs", "batch_size")  # not train_subset: the retrain sets it for both
    return [f"{k} ({getattr(a, k)} against {getattr(b, k)})" for k in keys if getattr(a, k) != getattr(b, k)]


def winner_folder(folder: Path, study_name: str) -> Path:
    """Where a study's retrain saves its winner's weights and config: the winner is the candidate with the highest
    mean test accuracy, which need not be the search's best trial (``best-config.json``)."""
    return folder / f"{study_name}-winner"


def covers(
    record: dict | None,
    candidates: list[Candidate],
    n_seeds: int,
    data: Cifar10,
    device: torch.device,
    weights_file: Path,
) -> bool:
    """Did this stored retrain train exactly ``candidates`` with seeds 0..n_seeds-1 on ``data`` (all of it), on this
    device type, and are its saved weights still in ``weights_file``?"""
    if not record or "data" not in record:
        return False  # none yet, or stored by a version that did not record the data
    stored = [(c["label"], c["trial_number"], c["config"]) for c in record["candidates"]]
    return (
        stored == [(c.label, c.trial_number, c.config.to_dict()) for c in candidates]
        and record["seeds"] == list(range(n_seeds))
        and record["train_images"] == len(data.train)
        and record["data"] == content_digest(data)
        and torch.device(record["device"]).type == device.type
        and record.get("weights") == str(weights_file)
        and weights_file.is_file()
    )


def store_result(study: optuna.Study, record: dict, folder: Path) -> None:
    """The retrain result into the study: user attribute, the note's Retrain section, the weights as an artifact."""
    study.set_user_attr(RETRAIN_ATTR, record)
    set_retrain_section(study, retrain_markdown(record))
    if record.get("weights") and Path(record["weights"]).is_file():
        store = artifact_store_for(study.study_name, folder)
        upload_artifact(artifact_store=store, file_path=record["weights"], study_or_trial=study)


def retrain_markdown(record: dict) -> str:
    lines = [
        "## Retrain",
        f"Trained on train + validation ({record['train_images']} images) with seeds {record['seeds']}, "
        f"scored on the test set ({record['test_images']} images), {record['device']}, {record['date']}:",
        "",
    ]
    lines += [f"- **{c['label']}**: test accuracy {c['text']}" for c in record["candidates"]]
    if diverged := diverged_text(record):
        lines += ["", diverged]
    comparisons = record.get("comparisons") or ([{"verdict": record["verdict"]}] if "verdict" in record else [])
    lines += [""] + [f"Verdict: {c['verdict']}." for c in comparisons]
    if answer := defaults_verdict(record):
        lines += ["", f"Did the search beat the defaults? {answer}"]
    if record.get("weights"):
        winner = record.get("winner", "the winner")
        lines += ["", f"Weights of the winner, {winner} (seed 0): `{record['weights']}` (also a study artifact)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m hpo.retrain",
        description="Retrain a study's best config, the runner-up and the recipe (or --config and --baseline) on "
        "train + validation with k seeds each, and score them on the test set.",
    )
    p.add_argument(
        "--study-name",
        type=checked_study_name,
        help="study to read the best trial from and store results in (default cifar10)",
    )
    p.add_argument("--storage", help="default: sqlite:///studies/<study-name>.db")
    p.add_argument("--config", type=Path, help="retrain this config (JSON/YAML, e.g. from hpo.export) instead")
    p.add_argument("--baseline", type=Path, help="with --config: compare against this config")
    p.add_argument("--seeds", type=int, help="runs per config (default 5)")
    p.add_argument("--epochs", type=int, help="override the configs' epochs")
    p.add_argument("--train-subset", type=int, default=0, help="train on at most this many images (default all)")
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default data/)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    p.add_argument("--output", type=Path, help="also write the result as JSON here")
    p.add_argument("--jobs", type=int, help="runs trained at once on a CPU (default: one per core)")
    args = p.parse_args(argv)

    if args.baseline and not args.config:
        raise HpoError("--baseline compares against --config: give both")
    for name, value, minimum in (
        ("seeds", args.seeds, 1),
        ("epochs", args.epochs, 1),
        ("train-subset", args.train_subset, 0),
        ("jobs", args.jobs, 1),
    ):
        if value is not None and value < minimum:
            raise HpoError(f"--{name} must be at least {minimum}, got {value}")
    if args.output:
        output_file(args.output, "--output")  # refused now, not after the runs
    device = resolve_device(args.device)
    n_seeds = args.seeds or default_seeds(device)
    study = None
    if args.study_name or not args.config:
        name = args.study_name or "cifar10"
        url = args.storage or default_storage_url(name)
        study = load_existing_study(name, url, writable=True)  # the result is stored in it: refuse now, not after
    if args.config:
        name = config_name(args.config)
        candidates = [Candidate(f"config {name}", load_config(args.config))]
        if args.baseline:
            candidates.append(Candidate(f"baseline {config_name(args.baseline)}", load_config(args.baseline)))
        weights = (files_dir(url) if study else Path("studies")) / f"{name}-retrain"
    else:
        candidates = study_candidates(study)
        weights = winner_folder(files_dir(url), study.study_name)
    if args.epochs is not None:
        candidates = [Candidate(c.label, c.config.replace(epochs=args.epochs), c.trial_number) for c in candidates]
    if args.baseline and (differ := size_differences(candidates[0].config, candidates[1].config)):
        print(
            f"note: --config and --baseline differ in {'; '.join(differ)}: the comparison is of more than "
            "hyperparameters (--epochs sets both; edit a file for the rest)",
            flush=True,
        )
    data = load_cifar10(args.data_dir)
    jobs = cpu_jobs(device, candidates, data, args.train_subset) if args.jobs is None else args.jobs
    record = retrain(candidates, data, device, n_seeds, weights, args.train_subset, jobs)
    if study is not None:
        store_result(study, record, files_dir(url))
        print(f"stored in study {study.study_name!r} (user attribute {RETRAIN_ATTR!r})")
    if args.output:
        write_output(args.output, json.dumps(record, indent=2) + "\n", "--output")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
