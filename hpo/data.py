"""CIFAR-10 as uint8 tensors: download (checksummed), validate, cache, split.

An existing ``cifar-10-batches-py`` folder is validated by shape and labels rather than by torchvision's
md5 sums, so smaller or re-packed copies (such as the shared subset) load too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from hpo.errors import HpoError, missing_folders, remove_empty

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
CACHE_NAME = "hpo-cifar10-uint8.pt"
CACHE_VERSION = 1


class DataError(HpoError):
    """The dataset is missing, corrupted or malformed."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``(N, 3, 32, 32)`` and labels as int64 ``(N,)``, on any device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor | slice) -> Split:
        return Split(self.images[index], self.labels[index])

    def concat(self, other: Split) -> Split:
        return Split(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]))

    def first(self, n: int) -> Split:
        """The first ``n`` images (all of them when ``n`` is 0)."""
        return self if n <= 0 or n >= len(self) else self.take(slice(0, n))


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split


def load_cifar10(data_dir: str | Path = "data", *, download: bool = True) -> Cifar10:
    """Load CIFAR-10 from ``data_dir`` (the folder holding ``cifar-10-batches-py``), downloading it if missing.

    The decoded tensors are cached beside the data (or in ``~/.cache/hpo`` when that folder is read-only)
    so later loads take well under a second.
    """
    root = Path(data_dir).expanduser()
    folder = root / BATCHES_DIR
    if not folder.is_dir():
        _fetch(root, download)
    cache = _cache_path(folder)
    fingerprint = _fingerprint(folder)
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        return cached
    data = Cifar10(train=_read_batches(folder, TRAIN_FILES), test=_read_batches(folder, (TEST_FILE,)))
    _write_cache(cache, fingerprint, data)
    return data


def content_digest(data: Cifar10) -> str:
    """SHA-256 of both splits' images and labels: names the data a stored result was computed on."""
    digest = hashlib.sha256()
    for split in (data.train, data.test):
        for tensor in (split.images, split.labels):
            digest.update(tensor.cpu().contiguous().numpy())
    return digest.hexdigest()


def train_val_split(train: Split, val_fraction: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
    """A seeded random split of the training set; the search scores on the validation part only."""
    if not 0 < val_fraction < 1:
        raise HpoError(f"validation fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(len(train) * val_fraction))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.take(order[n_val:]), train.take(order[:n_val])


def copies_of(images: torch.Tensor, reference: torch.Tensor, samples: int = 256) -> int:
    """How many of ``images`` are exact pixel copies of an image in ``reference`` (uint8 batches, N x C x H x W),
    judged on ``samples`` fixed random pixel values per image (fast enough for start-up at 50 000 images)."""
    gen = torch.Generator().manual_seed(0)
    where = torch.randperm(images.shape[1:].numel(), generator=gen)[:samples]
    weights = torch.randint(-(2**62), 2**62, (len(where),), generator=gen)

    def keys(batch: torch.Tensor) -> torch.Tensor:
        # A random linear hash of the sampled values (int64 arithmetic wraps): a copy always has its original's key.
        return (batch.flatten(1)[:, where].long() * weights).sum(1)

    return int(torch.isin(keys(images), keys(reference)).sum()) if len(images) and len(reference) else 0


def _fetch(root: Path, download: bool) -> None:
    hint = (
        f"put {ARCHIVE} (or its extracted {BATCHES_DIR} folder) in {root}/, "
        "or pass --data-dir pointing at the folder that contains it"
    )
    if not download:
        raise DataError(f"CIFAR-10 not found in {root}: {hint}")
    from torchvision.datasets import CIFAR10

    made = missing_folders(root)  # the folders the download will create
    try:
        # torchvision verifies the archive's md5 and extracts it; an archive already in root is reused.
        CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        remove_empty(made)  # a folder the failed download left something in is kept
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"CIFAR-10 not found in {root} and the download failed ({reason}): {hint}") from None


def _read_batches(folder: Path, names: tuple[str, ...]) -> Split:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing: re-extract {ARCHIVE} into {folder.parent}")
        try:
            with path.open("rb") as f:
                entry = _BatchUnpickler(f, path).load()
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
            raise DataError(
                f"{path} is truncated or corrupted ({type(err).__name__}): re-extract {ARCHIVE} into {folder.parent}"
            ) from None
        x, y = _validate_batch(path, entry)
        images.append(x)
        labels.append(y)
    if not sum(len(x) for x in images):
        raise DataError(f"{', '.join(names)} in {folder} hold no images: re-extract {ARCHIVE} into {folder.parent}")
    return Split(torch.cat(images), torch.cat(labels))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds (numpy arrays, plain Python values) and nothing else: a pickle may
    name any function to call while loading, so a batch file that names another one is refused, not run."""

    ALLOWED = {
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")  # numpy 1 and numpy 2 pickles
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # _codecs: protocol 2's bytes

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the official batches are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(
                f"{self.path} names {module}.{name}, which no CIFAR-10 batch does: it was not loaded (a pickle can "
                f"run code); re-extract {ARCHIVE}"
            )
        return super().find_class(module, name)


def _validate_batch(path: Path, entry: object) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    fix = f"it is not a CIFAR-10 batch; re-extract {ARCHIVE}"
    if not isinstance(entry, dict) or "data" not in entry or not ({"labels", "fine_labels"} & entry.keys()):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels'; {fix}")
    data = np.asarray(entry["data"])
    raw_labels = entry.get("labels", entry.get("fine_labels"))
    labels = np.asarray(raw_labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: images must be uint8 rows of 3072 values, got {data.dtype} {data.shape}; {fix}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels; {fix}")
    if labels.size and labels.dtype.kind not in "iu":  # strings would crash below, floats be truncated
        raise DataError(f"{path}: labels must be integers 0..9, got {labels.dtype} values; {fix}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}; {fix}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the batch files: a cheap key that changes with the data."""
    parts = [str(folder.resolve())]
    for name in (*TRAIN_FILES, TEST_FILE):
        stat = (folder / name).stat() if (folder / name).exists() else None
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{name}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _cache_path(folder: Path) -> Path:
    if os.access(folder, os.W_OK):
        return folder / CACHE_NAME
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return home / f"{key}-{CACHE_NAME}"


def _read_cache(path: Path, fingerprint: str) -> Cifar10 | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        if blob["version"] != CACHE_VERSION or blob["fingerprint"] != fingerprint:
            return None
        return Cifar10(
            train=Split(blob["train_images"], blob["train_labels"]),
            test=Split(blob["test_images"], blob["test_labels"]),
        )
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt from the batch files
        return None


def _write_cache(path: Path, fingerprint: str, data: Cifar10) -> None:
    blob = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "train_images": data.train.images,
        "train_labels": data.train.labels,
        "test_images": data.test.images,
        "test_labels": data.test.labels,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash or a concurrent worker never sees half a cache file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation; an unwritable location only costs speed
