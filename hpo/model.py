"""An airbench94-style CIFAR-10 convnet: a tiny stem, three conv groups, max-pool head, dropout, linear."""

from __future__ import annotations

import torch
from torch import nn

from hpo.config import TrainConfig


class ConvGroup(nn.Sequential):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early keeps the second conv cheap."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding="same", bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding="same", bias=False),
            nn.BatchNorm2d(c_out),
            nn.GELU(),
        )


class Net(nn.Sequential):
    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 256, 256),
        stem_width: int = 24,
        dropout: float = 0.0,
        num_classes: int = 10,
    ) -> None:
        w1, w2, w3 = widths
        super().__init__(
            # A 2x2 stem (32 -> 31 px) as in airbench: almost free, and it lifts the channel count early.
            nn.Conv2d(3, stem_width, 2, bias=True),
            nn.GELU(),
            ConvGroup(stem_width, w1),
            ConvGroup(w1, w2),
            ConvGroup(w2, w3),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(w3, num_classes, bias=False),
        )
        # airbench scales the logits down (1/9) so the large learning rates that suit the BN'd convs
        # do not blow up the un-normalised classifier; a smaller init does the same job here.
        nn.init.normal_(self[-1].weight, std=0.01)


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> Net:
    model = Net(config.widths, config.stem_width, config.dropout)
    model = model.to(device)
    if torch.device(device).type == "cuda":
        # channels_last lets cuDNN use its fastest (NHWC tensor-core) kernels.
        model = model.to(memory_format=torch.channels_last)
    return model
