"""How many trials share one GPU: K worker processes per GPU, K from free memory and a short measurement.

One small trial leaves most of an H100 idle (its kernels are short and the host-side Python between them is the
bottleneck), so several trials in separate processes keep it busy. ``choose_trials_per_gpu`` takes the numbers and
is pure; ``measure_trial_peak`` gets the per-trial peak from one short training run on the GPU.
"""

from __future__ import annotations

import torch

from hpo.config import TrainConfig
from hpo.data import Split
from hpo.train import augment_chunk, eval_batch, train

MAX_TRIALS_PER_GPU = 4
MEMORY_MARGIN = 1.5  # over the measured peak: cuDNN may pick kernels with larger workspaces later
CONTEXT_BYTES = 600 * 2**20  # a CUDA context and its caching allocator's slack, per process
USABLE_FRACTION = 0.9  # of the free memory: leave room for the parent's retrain and other users
GIB = 2**30


def choose_trials_per_gpu(
    free_bytes: int, peak_bytes: int, data_bytes: int, cap: int = MAX_TRIALS_PER_GPU
) -> tuple[int, str]:
    """(K, why): as many trials as fit in the free memory, each needing its measured peak with a margin, its own
    copy of the data and a CUDA context; at least 1 and at most ``cap``."""
    per_trial = peak_bytes * MEMORY_MARGIN + data_bytes + CONTEXT_BYTES
    fits = int(free_bytes * USABLE_FRACTION // per_trial)
    k = max(1, min(cap, fits))
    why = (
        f"{free_bytes / GIB:.1f} GiB free, {per_trial / GIB:.2f} GiB per trial (peak {peak_bytes / GIB:.2f} GiB x "
        f"{MEMORY_MARGIN} + data {data_bytes / GIB:.2f} + context {CONTEXT_BYTES / GIB:.2f}): {fits} fit"
        + (f", capped at {cap}" if fits > cap else "")
    )
    return k, why


def measure_trial_peak(config: TrainConfig, device: torch.device) -> int:
    """Peak GPU memory (bytes) of one short run of ``config``: one chunk of augmented training batches (as the
    trainer augments them) and one evaluation batch with its test-time augmentation, on random images."""
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(n) % 10)

    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    chunk = augment_chunk(config.batch_size, device)
    train(config.replace(epochs=1, train_subset=0), images(chunk), images(eval_batch(device)), device)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def data_bytes(*splits: Split) -> int:
    """Device memory a worker's copy of the splits takes."""
    return sum(s.images.nelement() * s.images.element_size() + s.labels.nelement() * 8 for s in splits)
