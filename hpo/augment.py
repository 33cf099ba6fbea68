"""Batch augmentation on the training device: whole uint8 batches in, uint8 batches out.

Each image gets its own random flip, offset and cutout square from one vectorised call per batch,
so there is no per-image Python work and no DataLoader in the hot path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hpo.config import AUGMENTATIONS

PAD = 2  # airbench translates by up to 2 pixels; 4 (the classic value) hurts at short budgets
CUTOUT = 12
# TrivialAugmentWide picks one op per call; giving each group of this many images its own call keeps
# per-image variety high while costing ~1/GROUP of a per-image loop.
TRIVIAL_GROUP = 16
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)


def flip(x: torch.Tensor, gen: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror the images where ``mask`` (one bool per image) is true; a random half when it is not given."""
    if mask is None:
        mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def alternating_flips(first: torch.Tensor, epoch: int) -> torch.Tensor:
    """Flip masks that alternate per image: ``first`` (one bool per image) in odd epochs, its inverse in even
    ones, so every image is seen both ways in any two consecutive epochs (airbench's flip)."""
    return first if epoch % 2 == 1 else ~first


def translate(x: torch.Tensor, gen: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Random 32x32 crop of each reflect-padded image, with its own offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def cutout(x: torch.Tensor, gen: torch.Generator, size: int = CUTOUT) -> torch.Tensor:
    """Fill one random size x size square per image (clipped at the border) with the dataset mean."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n,), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_y = (ys[None, :] - cy[:, None]).abs() <= size // 2
    in_x = (xs[None, :] - cx[:, None]).abs() <= size // 2
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    fill = _channel_constant(CIFAR_MEAN, x.device, torch.float32).round().to(x.dtype)
    return torch.where(mask, fill, x)


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """torchvision's TrivialAugmentWide on groups of TRIVIAL_GROUP images."""
    from torchvision.transforms import v2

    op = v2.TrivialAugmentWide()
    # torchvision draws its op and magnitude from the global CPU RNG, which train() seeds and checkpoints;
    # reading a seed from the generator instead would cost a host sync per batch on the GPU.
    return torch.cat([op(group) for group in x.split(TRIVIAL_GROUP)])


@dataclass(frozen=True)
class Policy:
    """Which augmentations run, in this order: TrivialAugmentWide, flip, translate, cutout."""

    trivial: bool = False
    flip: bool = False
    translate: bool = False
    cutout: bool = False

    def __call__(self, x: torch.Tensor, gen: torch.Generator, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a uint8 batch; ``flip_mask`` says which images to mirror (default: a random half)."""
        if self.trivial:
            x = trivial_augment(x)
        if self.flip:
            x = flip(x, gen, flip_mask)
        if self.translate:
            x = translate(x, gen)
        if self.cutout:
            x = cutout(x, gen)
        return x


POLICIES: dict[str, Policy] = {
    "none": Policy(),
    "flip": Policy(flip=True),
    "flip_translate": Policy(flip=True, translate=True),
    "flip_translate_cutout": Policy(flip=True, translate=True, cutout=True),
    "trivial_augment": Policy(trivial=True, flip=True, translate=True),
}
assert tuple(POLICIES) == AUGMENTATIONS, "config.AUGMENTATIONS and augment.POLICIES must list the same names"


def get_policy(name: str) -> Policy:
    return POLICIES[name]


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images to standardised floats, on whatever device they are on."""
    mean = _channel_constant(CIFAR_MEAN, x.device, dtype)
    std = _channel_constant(CIFAR_STD, x.device, dtype)
    return (x.to(dtype) - mean) / std


@functools.cache
def _channel_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (1, C, 1, 1) constant, made once per device: no host-to-device copy per batch."""
    return torch.tensor(values, device=device, dtype=dtype)[None, :, None, None]
