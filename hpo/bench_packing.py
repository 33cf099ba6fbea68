"""``python -m hpo.bench --packing``: trials per hour with K = 1, 2, ... concurrent trials per device.

For each K, a new study (in a temporary folder) runs the same settings through ``python -m hpo.search
--trials-per-gpu K``: random sampler with the same seed, no pruning, no warm start, so every K runs the same kind
and amount of work. Trials per hour are counted over the search (the first trial's start to the last trial's end,
from the study) and over the whole command (start-up included), each with its ratio to the first K.

On a GPU, K is trials per GPU; on a CPU, K worker processes of cores / K threads each.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from hpo.data import Split, load_cifar10
from hpo.errors import HpoError
from hpo.worker import FINISHED

DEFAULT_K = (1, 2, 3, 4)


def packing_settings(args, device: torch.device) -> list[str]:
    """The search options every K shares."""
    gpu = device.type == "cuda"
    widths = args.widths or ((64, 256, 256) if gpu else (32, 64, 128))
    subset = args.train_subset if args.train_subset is not None else (0 if gpu else 2000)
    return [
        *("--epochs", str(args.epochs or (10 if gpu else 2))),
        *("--widths", *map(str, widths)),
        *("--batch-size", str(args.batch_size or (512 if gpu else 128))),
        *("--train-subset", str(subset)),
        *("--n-trials", str(args.n_trials or (32 if gpu else 8))),
        *("--sampler", "random", "--pruner", "none", "--seed", "0", "--no-warm-start", "--no-retrain"),
        *("--heartbeat", "0", "--device", device.type),
    ]


def run_packed(k: int, data_dir: Path, options: list[str], folder: Path) -> dict:
    """One search with ``k`` trials per device; its trial count, search and command seconds."""
    url = f"sqlite:///{folder / f'k{k}.db'}"
    command = [sys.executable, "-m", "hpo.search", "--storage", url, "--data-dir", str(data_dir), *options]
    start = time.perf_counter()
    proc = subprocess.run([*command, "--trials-per-gpu", str(k)], capture_output=True, text=True, cwd=folder)
    command_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise HpoError(f"the search with K = {k} failed: {proc.stderr.strip().splitlines()[-1:]}")
    trials = optuna.load_study(study_name="cifar10", storage=url).get_trials(deepcopy=False, states=FINISHED)
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"k": k, "trials": len(trials), "search_s": span, "command_s": command_s}


def tiled_data_dir(data_dir: str, n: int, folder: Path) -> Path:
    """A CIFAR-10 folder in ``folder`` whose training set is ``data_dir``'s repeated up to ``n`` images."""
    data = load_cifar10(data_dir)
    reps = -(-n // len(data.train))
    images = data.train.images.repeat(reps, 1, 1, 1)[:n]
    labels = data.train.labels.repeat(reps)[:n]
    out = folder / "tiled" / "cifar-10-batches-py"
    out.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(n), 5), 1):
        _write_batch(out / f"data_batch_{i}", Split(images[part], labels[part]))
    _write_batch(out / "test_batch", data.test)
    return out.parent


def _write_batch(path: Path, split: Split) -> None:
    rows = split.images.reshape(len(split), -1).numpy()
    with open(path, "wb") as f:
        pickle.dump({"data": rows, "labels": split.labels.tolist()}, f)


def print_packing(rows: list[dict]) -> None:
    base = rows[0]
    print(f"| {'K':>2} | trials | search s | trials / h | vs K={base['k']} | command s | trials / h (command) | vs |")
    print("|---:|-------:|---------:|-----------:|-------:|----------:|---------------------:|---:|")
    for r in rows:
        rate, whole = 3600 * r["trials"] / r["search_s"], 3600 * r["trials"] / r["command_s"]
        base_rate, base_whole = 3600 * base["trials"] / base["search_s"], 3600 * base["trials"] / base["command_s"]
        print(
            f"| {r['k']:>2} | {r['trials']:>6} | {r['search_s']:>8.1f} | {rate:>10.0f} | {rate / base_rate:>5.2f}x "
            f"| {r['command_s']:>9.1f} | {whole:>20.0f} | {whole / base_whole:.2f}x |"
        )


def packing_benchmark(args, device: torch.device) -> list[dict]:
    ks = args.k or list(DEFAULT_K)
    options = packing_settings(args, device)
    with tempfile.TemporaryDirectory(prefix="hpo-packing-") as tmp:
        folder = Path(tmp)
        data_dir = tiled_data_dir(args.data_dir, args.tile_to, folder) if args.tile_to else Path(args.data_dir)
        data_dir = data_dir.resolve()
        what = "trials per GPU" if device.type == "cuda" else "worker processes on the CPU, cores split between them"
        print(f"packing on {device}: K = {', '.join(map(str, ks))} {what}; search options {' '.join(options)}")
        rows = []
        for k in ks:
            rows.append(run_packed(k, data_dir, options, folder))
            print(f"  K = {k}: {rows[-1]['trials']} trials in {rows[-1]['search_s']:.1f} s", flush=True)
    print()
    print_packing(rows)
    return rows
