"""Training checkpoints at epoch boundaries: model, optimizer, scheduler, RNG states and history, written atomically.

A trial killed mid-way and retried picks up from its last saved epoch instead of from scratch. ``Checkpointer``
writes at most every ``every`` seconds (and at the last epoch); in between it keeps the latest epoch's state in
memory and writes it when training is interrupted, so a fast trial does not stall its device on a write per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable and belongs to the same config; else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint only means starting from scratch
        return None
    return state if isinstance(state, dict) and state.get("config") == config_dict else None


def rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def history_to_dicts(history: list) -> list[dict[str, Any]]:
    return [dataclasses.asdict(h) for h in history]


class Checkpointer:
    """Saves epoch-boundary states to ``path``: at once when ``every`` seconds have passed since the last write
    (0: every epoch) or ``final`` is set, else as an in-memory copy that ``flush`` writes (on an interrupt)."""

    def __init__(self, path: Path, every: float = 0.0) -> None:
        self.path, self.every = path, every
        self.last_write = time.monotonic()  # the first write waits ``every`` seconds too: most trials end sooner
        self.pending: dict[str, Any] | None = None
        self.writes = 0

    def epoch_end(self, state: dict[str, Any], final: bool = False) -> None:
        if final or time.monotonic() - self.last_write >= self.every:
            self._write(state)
        else:
            # A copy on the device: training goes on changing the live tensors in place.
            self.pending = copy.deepcopy(state)

    def flush(self) -> None:
        """Write the last epoch's state if it is only in memory (best effort: the caller is already failing)."""
        if self.pending is not None:
            with contextlib.suppress(Exception):
                self._write(self.pending)

    def _write(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state)
        self.pending, self.last_write = None, time.monotonic()
        self.writes += 1
