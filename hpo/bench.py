"""Benchmark: our on-device pipeline against a conventional DataLoader + per-image transforms pipeline.

Both train the same model with the same config, seed, optimizer and schedule through ``hpo.train.train``;
only the source of batches differs. Also times each augmentation policy on its own.

    python -m hpo.bench --data-dir ../shared/data/cifar10-subset
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from hpo.augment import CIFAR_MEAN, CIFAR_STD, POLICIES, normalize
from hpo.config import TrainConfig
from hpo.data import Split, load_cifar10, train_val_split
from hpo.errors import ArgumentParser, run_cli
from hpo.train import BatchSource, resolve_device, train


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


def time_augmentations(data: Split, device: torch.device, batch_size: int, repeats: int = 3) -> dict[str, float]:
    """Images/s of each policy (augment + normalise) on device, plus a per-image TrivialAugmentWide loop."""
    x = data.images[: batch_size * 4].to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    rates = {}
    for name, policy in POLICIES.items():
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            for batch in x.split(batch_size):
                normalize(policy(batch, gen))
        _sync(device)
        rates[name] = repeats * len(x) / (time.perf_counter() - start)
    per_image = v2.TrivialAugmentWide()
    subset = x[:512]
    start = time.perf_counter()
    for img in subset:
        per_image(img)
    _sync(device)
    rates["trivial_augment (per-image loop)"] = len(subset) / (time.perf_counter() - start)
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m hpo.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--widths", type=int, nargs=3, default=None, help="default: 32 64 128 on CPU, 64 256 256 on GPU"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tile-to", type=int, default=0, help="repeat the training images up to this many")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for the baseline")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    widths = tuple(args.widths or ((64, 256, 256) if device.type == "cuda" else (32, 64, 128)))
    data = load_cifar10(args.data_dir)
    train_split, val_split = train_val_split(data.train)
    train_split = tile(train_split, args.tile_to)
    config = TrainConfig(
        batch_size=args.batch_size,
        epochs=args.epochs,
        widths=widths,
        augmentation="flip_translate",
        scheduler="onecycle",
    )
    print(
        f"device {device}, {len(train_split)} training images, {args.epochs} epochs, "
        f"widths {widths}, batch {args.batch_size}"
    )

    # Warm up kernels/allocators once so neither pipeline pays the first-call cost in its timing.
    train(config.replace(epochs=1, train_subset=2 * args.batch_size), train_split, val_split, device)
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

    print(f"\naugmentation alone, batch {args.batch_size} ({device}):")
    rates = time_augmentations(train_split, device, args.batch_size)
    for name, rate in rates.items():
        print(f"  {name:<36}{rate:>12.0f} img/s   {rate / rates['flip_translate']:.2f}x flip_translate")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
