"""Benchmarks of the trainer, figures printed as ratios against a baseline run in the same process.

Pipeline (default): our on-device pipeline against a conventional DataLoader + per-image transforms pipeline.
Both train the same model with the same config, seed, optimizer and schedule through ``hpo.train.train``;
only the source of batches differs. Also times each augmentation policy on its own (alone: ``--augment-only``).

Search (``--search``, in ``hpo.bench_search``): search strategies (sampler + pruner) compared on one epoch
budget over several study seeds.

Variants (``--variants FILE``): changes to the recipe, given as a space file fixes values, each trained like a
trial at the CPU search size (validation accuracy): the evidence behind the default search space.

Ablation (``--ablation``): airbench94's recipe with all its components, each one off in turn, and all off
(the pre-recipe trainer), k seeds each, trained on the whole training set and scored on the test set.

Packing (``--packing``, in ``hpo.bench_packing``): trials per hour of the same search with K = 1..4 concurrent
trials per device.

    python -m hpo.bench --data-dir ../shared/data/cifar10-subset
    python -m hpo.bench --ablation --data-dir ../shared/data/cifar10-subset
    python -m hpo.bench --search --data-dir ../shared/data/cifar10-subset
    python -m hpo.bench --variants examples/space-probes.yaml --data-dir ../shared/data/cifar10-subset
    python -m hpo.bench --augment-only --data-dir ../shared/data/cifar10-subset
    python -m hpo.bench --packing --data-dir ../shared/data/cifar10-subset --k 1 2
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from hpo.augment import CIFAR_MEAN, CIFAR_STD, POLICIES, normalize
from hpo.bench_packing import packing_benchmark
from hpo.bench_search import DEFAULT_STRATEGIES, search_benchmark
from hpo.config import COMPONENTS_OFF, TrainConfig, read_yaml_or_json
from hpo.data import Cifar10, Split, load_cifar10, train_val_split
from hpo.errors import ArgumentParser, HpoError, output_folder, run_cli
from hpo.search import CPU_DEFAULTS
from hpo.space import SearchSpace
from hpo.stats import summarize
from hpo.train import BatchSource, augment_chunk, resolve_device, train

ALL_ON = "all on (the recipe)"
ALL_OFF = "all off (pre-recipe trainer)"


class PerImageDataset(Dataset):
    """The textbook pipeline: one image at a time through torchvision transforms, on the CPU."""

    def __init__(self, data: Split, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = data.images, data.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def dataloader_batches(data: Split, config: TrainConfig, device: torch.device, workers: int) -> BatchSource:
    transform = v2.Compose(
        [
            v2.RandomCrop(32, padding=2, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=False),
            v2.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    loader = DataLoader(
        PerImageDataset(data, transform),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )

    def epoch_batches(epoch: int):
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return epoch_batches


def tile(data: Split, n: int) -> Split:
    """Repeat a small split up to ``n`` images, so throughput is measured at full-dataset scale."""
    if n <= len(data):
        return data
    reps = -(-n // len(data))
    return Split(data.images.repeat(reps, 1, 1, 1)[:n], data.labels.repeat(reps)[:n])


def time_augmentations(
    data: Split, device: torch.device, per_call: int, n_images: int, repeats: int = 5
) -> dict[str, float]:
    """Images/s of each policy (augment + normalise) on device, ``per_call`` images at a time.

    Each policy is run once untimed (first-call costs), then timed over ``n_images`` images ``repeats`` times, the
    policies taking turns so that a slow spell of the machine hits them alike; each keeps its fastest pass."""
    x = tile(data, n_images).images[:n_images].to(device)  # a larger split is not tiled, so cut here
    gen = torch.Generator(device=device).manual_seed(0)
    for policy in POLICIES.values():
        normalize(policy(x[:per_call], gen))
    best = dict.fromkeys(POLICIES, float("inf"))
    for _ in range(repeats):
        for name, policy in POLICIES.items():
            _sync(device)
            start = time.perf_counter()
            for part in x.split(per_call):
                normalize(policy(part, gen))
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(x) / seconds for name, seconds in best.items()}


def time_per_image_trivial(data: Split, device: torch.device, n_images: int = 512) -> float:
    """Images/s of torchvision's TrivialAugmentWide applied to one image at a time."""
    per_image = v2.TrivialAugmentWide()
    subset = data.images[:n_images].to(device)
    per_image(subset[0])
    start = time.perf_counter()
    for img in subset:
        per_image(img)
    _sync(device)
    return len(subset) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ablation_rows(ends_only: bool = False) -> dict[str, tuple[str, ...]]:
    """Row label -> components turned off."""
    rows = {ALL_ON: ()}
    if not ends_only:
        rows.update({f"without {name}": (name,) for name in COMPONENTS_OFF})
    rows[ALL_OFF] = tuple(COMPONENTS_OFF)
    return rows


def run_ablation(
    base: TrainConfig, data: Cifar10, device: torch.device, seeds: int, ends_only: bool = False
) -> list[dict]:
    """Train every ablation row with seeds 0..seeds-1 on ``data.train``, scored on ``data.test``.
    Seeds are the outer loop, so slow drift of the machine's speed spreads evenly over the rows."""
    rows = ablation_rows(ends_only)
    runs: dict[str, list] = {label: [] for label in rows}
    train(base.replace(epochs=1, train_subset=2 * base.batch_size), data.train, data.test, device)  # warm-up
    for seed in range(seeds):
        for label, off in rows.items():
            config = base.without(*off).replace(seed=seed)
            _sync(device)
            start = time.perf_counter()
            result = train(config, data.train, data.test, device)
            _sync(device)
            runs[label].append((result.val_acc, time.perf_counter() - start, result.images_per_second))
            print(f"  seed {seed}  {label:<30} test {result.val_acc:.4f}  {runs[label][-1][1]:6.1f} s", flush=True)
    baseline_seconds = sum(r[1] for r in runs[ALL_OFF]) / seeds
    table = []
    for label, off in rows.items():
        accs, secs, rates = zip(*runs[label])
        mean_s = sum(secs) / seeds
        table.append(
            {
                "row": label,
                "off": list(off),
                "test_acc": summarize(list(accs)),
                "seconds": mean_s,
                "speedup": baseline_seconds / mean_s,
                "images_per_second": sum(rates) / seeds,
            }
        )
    return table


def print_ablation(table: list[dict]) -> None:
    print(f"| {'configuration':<30} | {'test accuracy (mean ± 95 % CI)':<32} | s / run | vs all off | img/s |")
    print(f"|{'-' * 32}|{'-' * 34}|--------:|-----------:|------:|")
    for row in table:
        acc = row["test_acc"]
        text = f"{acc.mean_ci()} (sd {acc.std:.4f})" if acc.n > 1 else f"{acc.mean:.4f} (one run)"
        print(
            f"| {row['row']:<30} | {text:<32} | {row['seconds']:7.1f} | {row['speedup']:9.2f}x "
            f"| {row['images_per_second']:5.0f} |"
        )


def pipeline_benchmark(args, device: torch.device) -> None:
    widths = tuple(args.widths or ((64, 256, 256) if device.type == "cuda" else (32, 64, 128)))
    epochs, batch_size = args.epochs or 3, args.batch_size or 256
    data = load_cifar10(args.data_dir)
    train_split, val_split = train_val_split(data.train)
    train_split = tile(train_split, args.tile_to)
    config = TrainConfig.recipe(batch_size=batch_size, epochs=epochs, widths=widths)
    print(f"device {device}, {len(train_split)} training images, {epochs} epochs, widths {widths}, batch {batch_size}")

    # Warm up kernels/allocators once so neither pipeline pays the first-call cost in its timing.
    train(config.replace(epochs=1, train_subset=2 * batch_size), train_split, val_split, device)
    ours = train(config, train_split, val_split, device)
    baseline = train(
        config,
        train_split,
        val_split,
        device,
        batches=dataloader_batches(train_split, config, device, args.workers),
    )
    print(f"{'pipeline':<40}{'img/s':>10}{'train s':>10}{'val acc':>10}")
    for name, r in (
        ("hpo on-device batches", ours),
        (f"DataLoader + per-image ({args.workers} workers)", baseline),
    ):
        print(f"{name:<40}{r.images_per_second:>10.0f}{r.train_seconds:>10.1f}{r.val_acc:>10.4f}")
    print(f"speed-up (ours / DataLoader): {ours.images_per_second / baseline.images_per_second:.2f}x")

    print()
    augment_table(train_split, device, batch_size)


def augment_table(data: Split, device: torch.device, batch_size: int) -> None:
    """Print each policy's images/s and its ratio to flip_translate's, measured in this process, augmenting one
    batch per call and, as the trainer does, a chunk of batches per call."""
    chunk = augment_chunk(batch_size, device)
    n_images = max(8 * batch_size, 2 * chunk)
    print(f"augmentation alone (augment + normalise), {n_images} images, batch {batch_size}, {device}:")
    per_batch = time_augmentations(data, device, batch_size, n_images)
    per_chunk = time_augmentations(data, device, chunk, n_images)
    print(
        f"  {'policy':<48}{'img/s, a batch per call':>24}{'vs flip_translate':>19}"
        f"{f'img/s, {chunk} per call (train)':>31}{'vs flip_translate':>19}"
    )
    for name in POLICIES:
        print(
            f"  {name:<48}{per_batch[name]:>24.0f}{per_batch[name] / per_batch['flip_translate']:>18.2f}x"
            f"{per_chunk[name]:>31.0f}{per_chunk[name] / per_chunk['flip_translate']:>18.2f}x"
        )
    loop = time_per_image_trivial(data, device)
    loop_name = "torchvision TrivialAugmentWide, per-image loop"
    print(f"  {loop_name:<48}{loop:>24.0f}{loop / per_batch['flip_translate']:>18.2f}x")
    gains = {name: per_chunk[name] / per_batch[name] for name in ("flip_translate", "trivial_augment")}
    print("  a chunk per call against a batch per call: " + ", ".join(f"{k} {v:.2f}x" for k, v in gains.items()))


def augment_benchmark(args, device: torch.device) -> None:
    """``--augment-only``: the augmentation table without the training runs."""
    train_split, _ = train_val_split(load_cifar10(args.data_dir).train)
    augment_table(tile(train_split, args.tile_to), device, args.batch_size or 256)


def ablation_benchmark(args, device: torch.device) -> None:
    gpu = device.type == "cuda"
    widths = tuple(args.widths or ((64, 256, 256) if gpu else (32, 64, 128)))
    base = TrainConfig.recipe(
        batch_size=args.batch_size or (1024 if gpu else 128), epochs=args.epochs or (10 if gpu else 8), widths=widths
    )
    data = load_cifar10(args.data_dir)
    data = Cifar10(tile(data.train, args.tile_to), data.test)
    print(
        f"ablation on {device}: {len(data.train)} training images, tested on {len(data.test)}; batch "
        f"{base.batch_size}, {base.epochs} epochs, widths {'/'.join(map(str, widths))}, lr {base.lr:.4g}, "
        f"{args.seeds} seeds per row"
    )
    table = run_ablation(base, data, device, args.seeds, args.ends_only)
    print()
    print_ablation(table)


def run_variants(
    variants: dict[str, dict],
    base: TrainConfig,
    data: Cifar10,
    device: torch.device,
    seeds: int,
    on_test: bool = False,
    tile_to: int = 0,
) -> list[dict]:
    """Each variant (space values over ``base``, as a space file fixes them) trained like a trial: on the search's
    training split, scored on its validation split; ``on_test``: on the whole training set, scored on the test set
    (the ablation's protocol). Training images repeated up to ``tile_to`` after the split, so none is validated on.
    Seeds 0..seeds-1, seeds the outer loop. Each run is timed; each variant first trains one short warm-up run
    (on a GPU, cuDNN picks its kernels for each new dtype and shape on their first use)."""
    train_split, val_split = (data.train, data.test) if on_test else train_val_split(data.train, 0.1, seed=0)
    train_split = tile(train_split, tile_to)
    scored = "test" if on_test else "validation"
    print(
        f"training on {len(train_split.first(base.train_subset))} images, {scored} accuracy on {len(val_split)}",
        flush=True,
    )
    configs = {label: SearchSpace.to_config(values or {}, base) for label, values in variants.items()}
    for config in configs.values():
        train(config.replace(epochs=1, train_subset=2 * config.batch_size), train_split, val_split, device)
    accuracies: dict[str, list[float]] = {label: [] for label in configs}
    seconds: dict[str, list[float]] = {label: [] for label in configs}
    for seed in range(seeds):
        for label, config in configs.items():
            _sync(device)
            start = time.perf_counter()
            result = train(config.replace(seed=seed), train_split, val_split, device)
            _sync(device)
            accuracies[label].append(result.val_acc)
            seconds[label].append(time.perf_counter() - start)
            print(f"  seed {seed}  {label:<30} {scored} {result.val_acc:.4f}  {seconds[label][-1]:6.1f} s", flush=True)
    first = next(iter(configs))
    return [
        {
            "variant": label,
            "val_acc": summarize(accs),
            "runs": accs,
            "difference": summarize(accs).mean - summarize(accuracies[first]).mean,
            "seconds": statistics.median(seconds[label]),
            "speedup": statistics.median(seconds[first]) / statistics.median(seconds[label]),
        }
        for label, accs in accuracies.items()
    ]


def variants_benchmark(args, device: torch.device) -> None:
    path = Path(args.variants)
    variants = read_yaml_or_json(path, "variants", HpoError)
    if (
        not variants
        or not isinstance(variants, dict)
        or not all(isinstance(v, dict) or v is None for v in variants.values())
    ):
        raise HpoError(f"{path}: expected label: {{parameter: value, ...}} entries (space-file names)")
    cpu = CPU_DEFAULTS
    subset = args.train_subset
    if subset is None:
        subset = 0 if args.tile_to else cpu["train_subset"]  # tiled data is meant to be trained on whole
    base = TrainConfig.recipe(
        epochs=args.epochs or cpu["epochs"],
        widths=tuple(args.widths or cpu["widths"]),
        batch_size=args.batch_size or cpu["batch_size"],
        train_subset=subset,
    )
    for label, values in variants.items():
        try:
            SearchSpace.to_config(values or {}, base)
        except (HpoError, TypeError) as err:
            raise HpoError(f"{path}: variant {label!r}: {err}") from None
    protocol = (
        "trained on the training set, scored on the test set" if args.test else "like a trial, on the search's split"
    )
    print(
        f"variants on {device}: {len(variants)} x {args.seeds} seeds at widths {'/'.join(map(str, base.widths))}, "
        f"batch {base.batch_size}, {base.epochs} epochs, {protocol}",
        flush=True,
    )
    table = run_variants(
        variants, base, load_cifar10(args.data_dir), device, args.seeds, on_test=args.test, tile_to=args.tile_to
    )
    scored = "test acc" if args.test else "val acc"
    first = table[0]["variant"]
    print(f"\n| variant | {scored} (mean ± 95 % CI) | runs | vs {first} | s / run (median) | speed vs {first} |")
    print("|---|---|---|--:|--:|--:|")
    for row in table:
        acc = row["val_acc"]
        runs = " ".join(f"{a:.3f}" for a in row["runs"])
        print(
            f"| {row['variant']} | {acc} | {runs} | {row['difference']:+.4f} | {row['seconds']:.2f} "
            f"| {row['speedup']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m hpo.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ablation", action="store_true", help="the recipe's components, one off at a time")
    parser.add_argument("--search", action="store_true", help="search strategies on one epoch budget")
    parser.add_argument("--variants", metavar="FILE", help="changes to the recipe (YAML), each trained like a trial")
    parser.add_argument(
        "--augment-only", action="store_true", help="only time the augmentation policies (no training runs)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per ablation row / studies per strategy (3)")
    parser.add_argument("--ends-only", action="store_true", help="--ablation: only the all-on and all-off rows")
    parser.add_argument(
        "--test",
        action="store_true",
        help="--variants: train on all training images, score on the test set (as --ablation does), not as a trial",
    )
    parser.add_argument(
        "--epochs", type=int, help="default: 3 (pipeline); --ablation: 8 on CPU, 10 on GPU; --packing: 2 / 10"
    )
    parser.add_argument("--widths", type=int, nargs=3, help="default: 32 64 128 on CPU, 64 256 256 on GPU")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"default: 256 (pipeline); --ablation: 128 on CPU, 1024 on GPU; --variants: the CPU search's "
        f"({CPU_DEFAULTS['batch_size']}); "
        "--search: 128; --packing: 128 / 512",
    )
    parser.add_argument("--tile-to", type=int, default=0, help="repeat the training images up to this many")
    parser.add_argument(
        "--strategies", nargs="+", metavar="SAMPLER:PRUNER", help=f"--search: default {' '.join(DEFAULT_STRATEGIES)}"
    )
    parser.add_argument("--budget", type=int, help="--search: epochs per study (default 20 x --epochs)")
    parser.add_argument(
        "--train-subset",
        type=int,
        help="--search/--packing: training images per trial (default 2000); --search validates on the rest",
    )
    parser.add_argument("--warm-start", action="store_true", help="--search: every study starts with the recipe")
    parser.add_argument(
        "--retrain-best",
        type=int,
        default=0,
        metavar="K",
        help="--search: retrain each study's best trial with K fresh seeds and score it on the test set",
    )
    parser.add_argument(
        "--oracle",
        type=int,
        default=0,
        metavar="N",
        help="--search: rerun the N best configs on fresh seeds; the best, rerun, bounds the epochs any strategy "
        "needs to reach random search's best",
    )
    parser.add_argument(
        "--oracle-runs", type=int, default=32, metavar="K", help="--search --oracle: the oracle's fresh runs (32)"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="--search: replay the search's pruners on random search's full-length trials (accuracy and loss)",
    )
    parser.add_argument(
        "--replay-fresh",
        type=int,
        default=0,
        metavar="K",
        help="--search --replay: also train every config a replay chose on K new seeds, and score each replay by "
        "its choice's fresh mean (free of the luck that chose it)",
    )
    parser.add_argument(
        "--curves", metavar="FILE", help="--search: the studies of an earlier run (its search-bench-curves.csv)"
    )
    parser.add_argument(
        "--jobs", type=int, help="--search: studies at once (default: one per core on the CPU, 1 on a GPU)"
    )
    parser.add_argument("--out", default="reports", help="--search: folder for the curves CSV and the plot")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for the baseline")
    parser.add_argument("--packing", action="store_true", help="trials per hour with K concurrent trials per device")
    parser.add_argument("--k", type=int, nargs="+", help="--packing: trials per device to compare (default 1 2 3 4)")
    parser.add_argument("--n-trials", type=int, help="--packing: trials per K (default 8 on CPU, 32 on GPU)")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "batch_size", "budget", "jobs", "n_trials", "oracle_runs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HpoError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("tile_to", "workers", "train_subset", "retrain_best", "oracle", "replay_fresh"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise HpoError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.search + args.ablation + args.packing + args.augment_only + bool(args.variants) > 1:
        raise HpoError(
            "--search, --ablation, --packing, --variants and --augment-only are separate benchmarks: pass one"
        )
    for name in ("retrain_best", "oracle", "curves", "replay"):
        if getattr(args, name) and not args.search:
            flag = "--" + name.replace("_", "-")
            raise HpoError(f"{flag} is for --search: pass both, or leave {flag} out")
    if args.replay_fresh and not args.replay:
        raise HpoError("--replay-fresh is for --search --replay: pass all three, or leave --replay-fresh out")
    if args.test and not args.variants:
        raise HpoError("--test is for --variants: pass both, or leave --test out")
    if any(k < 1 for k in args.k or []):
        raise HpoError(f"--k values must be at least 1, got {args.k}")

    if args.search:
        output_folder(Path(args.out), "--out")  # refused now, not after the studies
    device = resolve_device(args.device)
    if args.packing:
        packing_benchmark(args, device)
    elif args.search:
        search_benchmark(args, device)
    elif args.variants:
        variants_benchmark(args, device)
    elif args.ablation:
        ablation_benchmark(args, device)
    elif args.augment_only:
        augment_benchmark(args, device)
    else:
        pipeline_benchmark(args, device)
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
