"""Shared fixtures: tiny CIFAR-format data made on the fly, and the real subset for integration tests."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def refusal(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a command's ``main(argv)`` as its CLI does (through ``run_cli``), in this process, and return the one
    line it printed on refusing: it must exit with code 2 and print exactly one line, no traceback."""
    from hpo.errors import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


DEFAULT_SUBSET = REPO.parent / "shared" / "data" / "cifar10-subset"


def write_cifar_batches(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """Write a CIFAR-10-format folder with random images under ``root`` and return ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return root


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    return write_cifar_batches(tmp_path / "cifar")


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    """The real CIFAR-10 subset. CI sets HPO_CIFAR10_SUBSET, so there a missing folder fails instead of skipping."""
    env = os.environ.get("HPO_CIFAR10_SUBSET")
    path = Path(env) if env else DEFAULT_SUBSET
    if not (path / "cifar-10-batches-py").is_dir():
        if env:
            pytest.fail(f"HPO_CIFAR10_SUBSET={env} has no cifar-10-batches-py folder")
        pytest.skip(f"real CIFAR-10 subset not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read-only data folders cache under XDG_CACHE_HOME; keep that out of the user's home during tests.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(autouse=True)
def _own_thread_count():
    # Code under test may set torch's process-wide thread count (a benchmark study run in-process sets 1); the next
    # test must not inherit it: numerics, and so a borderline divergence, can depend on it.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
