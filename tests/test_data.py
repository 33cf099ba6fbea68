import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo.data import CACHE_NAME, DataError, Split, copies_of, load_cifar10, train_val_split
from tests.conftest import write_cifar_batches


def test_loads_batches_as_uint8_tensors(tiny_data_dir):
    data = load_cifar10(tiny_data_dir, download=False)
    assert data.train.images.shape == (100, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (20, 3, 32, 32)
    assert data.train.labels.dtype == torch.int64 and int(data.train.labels.max()) < 10


def test_pixels_are_decoded_channel_planar(tmp_path):
    root = write_cifar_batches(tmp_path, per_batch=2)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0]
    image = load_cifar10(root, download=False).train.images[0]
    assert image[0, 0, 1] == raw[1] and image[1, 0, 0] == raw[1024] and image[2, 31, 31] == raw[3071]


def test_cache_round_trip_is_identical_and_used(tiny_data_dir):
    first = load_cifar10(tiny_data_dir, download=False)
    cache = tiny_data_dir / "cifar-10-batches-py" / CACHE_NAME
    assert cache.is_file()
    # Break a source file without touching its size/mtime fingerprint: only the cache can answer now.
    batch = tiny_data_dir / "cifar-10-batches-py" / "data_batch_1"
    stat = batch.stat()
    batch.write_bytes(b"x" * stat.st_size)
    import os

    os.utime(batch, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_cifar10(tiny_data_dir, download=False)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_changed_data_invalidates_the_cache(tiny_data_dir):
    load_cifar10(tiny_data_dir, download=False)
    time.sleep(0.01)
    write_cifar_batches(tiny_data_dir, per_batch=30, seed=1)
    assert len(load_cifar10(tiny_data_dir, download=False).test) == 30


def test_corrupt_cache_is_rebuilt(tiny_data_dir):
    load_cifar10(tiny_data_dir, download=False)
    (tiny_data_dir / "cifar-10-batches-py" / CACHE_NAME).write_bytes(b"garbage")
    assert len(load_cifar10(tiny_data_dir, download=False).train) == 100


def test_read_only_folder_caches_elsewhere(tiny_data_dir, tmp_path, monkeypatch):
    import hpo.data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # Tests run as root, for whom chmod does not bite: make the folder look read-only instead.
    monkeypatch.setattr(hpo.data.os, "access", lambda path, mode: False)
    first = load_cifar10(tiny_data_dir, download=False)
    assert not (tiny_data_dir / "cifar-10-batches-py" / CACHE_NAME).exists()
    cached = list((tmp_path / "xdg" / "hpo").glob(f"*{CACHE_NAME}"))
    assert len(cached) == 1
    assert torch.equal(load_cifar10(tiny_data_dir, download=False).train.images, first.train.images)


def test_missing_data_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nothing", download=False)


def test_missing_data_with_failing_download_says_where_to_put_it_and_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(url, download_root, **kwargs):
        Path(download_root).mkdir(parents=True, exist_ok=True)  # as torchvision's download does, before failing
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download failed.*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "new" / "nothing", download=True)
    assert list(tmp_path.iterdir()) == []  # the folders the failed download made are gone
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="download failed"):
        load_cifar10(tmp_path / "mine" / "nothing", download=True)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # a folder that was there before stays


def test_batches_without_images_are_refused(tmp_path):
    root = write_cifar_batches(tmp_path / "empty", per_batch=0)
    with pytest.raises(DataError, match="data_batch_1, .*, data_batch_5 in .* hold no images: re-extract"):
        load_cifar10(root, download=False)


class _Opens:
    """Unpickles as a call to ``open(path, "w")``: what a crafted batch file could do with os.system instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _NumpySave:
    """Unpickles as ``numpy.save(path, ...)``: a numpy function outside the allow-list, one that writes a file."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (np.save, (str(self.path), np.zeros(1)))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_batches_pickled_with_any_protocol_load(tiny_data_dir, protocol):
    folder = tiny_data_dir / "cifar-10-batches-py"
    for batch in folder.glob("*_batch*"):
        batch.write_bytes(pickle.dumps(pickle.loads(batch.read_bytes()), protocol=protocol))
    assert len(load_cifar10(tiny_data_dir, download=False).train) == 100


@pytest.mark.parametrize("payload", ["open", "numpy.save"])  # any function, numpy's included, but the allowed
def test_a_batch_that_names_a_function_to_run_is_refused_not_run(tiny_data_dir, tmp_path, payload):
    marker = tmp_path / "ran.npy"
    batch = tiny_data_dir / "cifar-10-batches-py" / "data_batch_2"
    entry = pickle.loads(batch.read_bytes())
    entry["batch_label"] = _Opens(marker) if payload == "open" else _NumpySave(marker)
    batch.write_bytes(pickle.dumps(entry))
    names = "io.open" if payload == "open" else "numpy.*save"
    with pytest.raises(DataError, match=f"data_batch_2 names {names}, which no CIFAR-10 batch does"):
        load_cifar10(tiny_data_dir, download=False)
    assert not marker.exists()


def test_truncated_batch_is_reported(tiny_data_dir):
    batch = tiny_data_dir / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupted"):
        load_cifar10(tiny_data_dir, download=False)


def test_missing_batch_is_reported(tiny_data_dir):
    (tiny_data_dir / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        load_cifar10(tiny_data_dir, download=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, "uint8 rows of 3072"),
        ({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}, "uint8 rows of 3072"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}, "4 images but 3 labels"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, "labels must be in 0..9"),
        ({"pixels": np.zeros((4, 3072), np.uint8)}, "expected a dict"),
    ],
)
def test_wrong_shapes_or_labels_are_reported(tiny_data_dir, entry, message):
    with open(tiny_data_dir / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(DataError, match=message):
        load_cifar10(tiny_data_dir, download=False)


def test_split_is_deterministic_disjoint_and_complete(tiny_data_dir):
    train = load_cifar10(tiny_data_dir, download=False).train
    a_train, a_val = train_val_split(train, 0.1, seed=5)
    b_train, b_val = train_val_split(train, 0.1, seed=5)
    assert len(a_val) == 10 and len(a_train) == 90
    assert torch.equal(a_val.images, b_val.images)
    _, c_val = train_val_split(train, 0.1, seed=6)
    assert not torch.equal(a_val.images, c_val.images)
    key = lambda s: {bytes(img.numpy()) for img in s.images}  # noqa: E731
    assert key(a_train).isdisjoint(key(a_val)) and len(key(a_train) | key(a_val)) == len(key(train))


def test_copies_of_counts_the_images_that_repeat_a_reference_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=gen)
    others = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=gen)
    reference = torch.cat([others, images[5:25], images[:3] + 1])  # 20 copies; 3 images with every pixel changed
    assert copies_of(images, reference) == 20
    assert copies_of(images, others) == 0
    assert copies_of(images[:0], reference) == 0 and copies_of(images, reference[:0]) == 0
    tiled = Split(images.repeat(3, 1, 1, 1), torch.zeros(150, dtype=torch.long))
    train, val = train_val_split(tiled, 0.2)
    assert copies_of(val.images, train.images) == len(val)  # a tiled set's validation split repeats its training


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, -1, 2, 3], "labels must be in 0..9, found -1..3"),
        (["a", "b", "c", "d"], "labels must be integers 0..9, got <U1 values"),  # numpy crashed on these
        ([0.0, 1.5, 2.0, 3.0], "labels must be integers 0..9, got float64 values"),  # these were truncated
    ],
)
def test_labels_that_are_no_class_numbers_are_refused(tiny_data_dir, labels, message):
    with open(tiny_data_dir / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": labels}, f)
    with pytest.raises(DataError, match=message):
        load_cifar10(tiny_data_dir, download=False)
