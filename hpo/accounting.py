"""What a search run costs: when its command started, and how busy its GPUs were while it searched.

- ``process_start_time``: the ``time.time()`` at which this process was started (imports included), so start-up
  is measured from the command, not from when Python got to our code.
- ``GpuUtilisation``: samples ``nvidia-smi``'s utilisation of the GPUs in use every ``SAMPLE_S`` seconds in the
  background (one long-running ``nvidia-smi -lms`` process, read by a thread) and gives their mean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

SAMPLE_S = 0.5
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")
_IMPORTED = time.time()


def process_start_time() -> float:
    """When this process started, as ``time.time()``; on systems without ``/proc``, when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class GpuUtilisation:
    """Mean GPU utilisation (percent, over all samples of all sampled GPUs) between ``start`` and ``stop``."""

    def __init__(self, command: list[str] | None = None, gpus: list[str] | None = None) -> None:
        """Sample ``gpus`` (CUDA_VISIBLE_DEVICES entries, or indices when it is unset; None: every GPU), or run
        ``command`` instead of nvidia-smi."""
        self.command = command or [*NVIDIA_SMI, f"--loop-ms={int(SAMPLE_S * 1000)}", *_id_option(gpus or [])]
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start sampling; False (and nothing started) when the sampler cannot run."""
        if shutil.which(self.command[0]) is None:
            return False
        try:
            self._proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError:
            return False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return True

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue  # "[N/A]" or a header: not a sample

    def stop(self) -> float | None:
        """Stop sampling; the mean utilisation, or None without samples (MIG devices report none: "[N/A]")."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


def _id_option(gpus: list[str]) -> list[str]:
    """``--id=…`` for ``gpus``, indices or UUIDs (nvidia-smi itself ignores CUDA_VISIBLE_DEVICES); none, so every
    GPU, without them or for any other form."""
    known = all(gpu.isdigit() or gpu.startswith(("GPU-", "MIG-")) for gpu in gpus)
    return [f"--id={','.join(gpus)}"] if gpus and known else []
