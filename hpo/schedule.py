"""Learning-rate schedules by name, all stepped once per batch over the whole run.

Stepping per batch means every schedule ends exactly at the epoch budget whatever the batch size,
and the schedulers are torch's own, so their state checkpoints with ``state_dict()``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from hpo.config import SCHEDULERS, TrainConfig

STEP_GAMMA = 0.1  # step: x0.1 after each third of the run
EXP_FINAL = 0.01  # exponential: ends at 1 % of the peak
ONECYCLE_START = 0.2  # onecycle: starts at 20 % of the peak, as airbench's triangle does


def build_scheduler(optimizer: Optimizer, config: TrainConfig, total_steps: int) -> sched.LRScheduler:
    total_steps = max(1, total_steps)
    name = config.scheduler
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda step: 1.0)
    if name == "step":
        return sched.StepLR(optimizer, step_size=max(1, math.ceil(total_steps / 3)), gamma=STEP_GAMMA)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
    if name == "onecycle":
        # airbench's triangle: linear warmup from ONECYCLE_START x peak, then linear decay to final_lr_fraction;
        # with no warm-up steps it starts at the peak. (torch's OneCycleLR never quite reaches the peak on short
        # runs and also cycles momentum.)
        warmup = round(config.warmup_fraction * total_steps)
        end = config.final_lr_fraction

        def triangle(step: int) -> float:
            if step < warmup:
                return ONECYCLE_START + (1 - ONECYCLE_START) * step / warmup
            left = max(0.0, (total_steps - step) / max(1, total_steps - warmup))
            return end + (1 - end) * left

        return sched.LambdaLR(optimizer, triangle)
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=EXP_FINAL ** (1 / total_steps))
    raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")
