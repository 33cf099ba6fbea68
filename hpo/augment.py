"""Batch augmentation on the training device: whole uint8 batches in, uint8 batches out.

Each image gets its own random flip, offset, cutout square and TrivialAugmentWide op and magnitude from one
vectorised call per batch, so there is no per-image Python work and no DataLoader in the hot path; every random draw
comes from the ``torch.Generator`` passed in, which train() seeds and checkpoints.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hpo.config import AUGMENTATIONS

PAD = 2  # airbench translates by up to 2 pixels; 4 (the classic value) hurts at short budgets
CUTOUT = 12
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
    from_top = ys[None, :] - (cy[:, None] - size // 2)  # the square's rows are from_top 0 .. size-1
    from_left = xs[None, :] - (cx[:, None] - size // 2)
    in_y = (from_top >= 0) & (from_top < size)
    in_x = (from_left >= 0) & (from_left < size)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]  # (N, 1, H, W)
    # x - (x - fill) * mask in wrapping uint8 arithmetic is fill inside the square and x outside: about twice as
    # fast as torch.where with a broadcast fill, on the CPU.
    return x - (x - _cutout_fill(x.device, x.dtype)) * mask


@functools.cache
def _cutout_fill(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _channel_constant(CIFAR_MEAN, device, torch.float32).round().to(dtype)


# TrivialAugmentWide's augmentation space, in torchvision's order (``TrivialAugmentWide._AUGMENTATION_SPACE``):
# name -> (31 magnitude bins or None, whether the magnitude gets a random sign).
TRIVIAL_BINS = 31
TRIVIAL_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)


def trivial_space(bins: int = TRIVIAL_BINS) -> dict[str, tuple[torch.Tensor | None, bool]]:
    """Each op's magnitude bins (computed as torchvision computes them, in float32) and whether it is signed."""
    wide = torch.linspace(0.0, 0.99, bins)
    return {
        "Identity": (None, False),
        "ShearX": (wide, True),
        "ShearY": (wide, True),
        "TranslateX": (torch.linspace(0.0, 32.0, bins), True),
        "TranslateY": (torch.linspace(0.0, 32.0, bins), True),
        "Rotate": (torch.linspace(0.0, 135.0, bins), True),
        "Brightness": (wide, True),
        "Color": (wide, True),
        "Contrast": (wide, True),
        "Sharpness": (wide, True),
        "Posterize": ((8 - (torch.arange(bins) / ((bins - 1) / 6))).round().int(), False),
        "Solarize": (torch.linspace(1.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def sample_trivial(
    n: int, gen: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's own draw, as TrivialAugmentWide draws for one image: an op (uniform over TRIVIAL_OPS), a
    magnitude bin (uniform over TRIVIAL_BINS) and, for signed ops, a sign (negative with probability 1/2).
    Returns (op, bin, negative), one entry per image, on ``device``; bin and sign are 0 where the op has none."""
    op = torch.randint(0, len(TRIVIAL_OPS), (n,), device=device, generator=gen)
    level = torch.randint(0, TRIVIAL_BINS, (n,), device=device, generator=gen)
    negative = torch.rand(n, device=device, generator=gen) <= 0.5
    table = _trivial_tables(torch.device(device))
    return op, level * table.has_bins[op], negative & table.signed[op]


def trivial_magnitudes(op: torch.Tensor, level: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The signed magnitude (float64) of each draw of sample_trivial, 0 for ops without one."""
    return _trivial_tables(op.device).magnitude[op, level, negative.long()]


def trivial_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torchvision's TrivialAugmentWide (31 bins, nearest, fill 0) with its own op and magnitude per image.

    Every op runs on the whole batch as an identity for the images that did not draw it, so one call is a fixed
    sequence of batched kernels: no per-image Python, no host sync, every random draw from ``gen``.
    Geometric ops: one gather per batch from a table of source pixels per (op, bin, sign), built once by running
    torchvision's own affine/rotate on an image of pixel indices. Brightness, Posterize, Solarize, Contrast,
    AutoContrast and Equalize map each (image, channel) through a 256-entry lookup table; Color and Sharpness
    blend each pixel with its grey value / 3x3 blur. The float arithmetic is torchvision's, fused multiply-adds
    included (emulated in float64), so on the CPU every op matches torchvision's functional op exactly.
    """
    return apply_trivial(x, *sample_trivial(x.shape[0], gen, x.device))


def apply_trivial(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Apply each image's draw (op index into TRIVIAL_OPS, magnitude bin, sign; as sample_trivial returns them)."""
    n, c, h, w = x.shape
    table = _trivial_tables(x.device)
    k = (op * TRIVIAL_BINS + level) * 2 + negative.long()  # (n,) index into the per-draw tables
    flat = x.reshape(n, c, h * w)

    # Geometric ops: source pixel per output pixel (0 = outside the image, filled with 0).
    src = table.source(h, w)[k]  # (n, h*w)
    padded = torch.cat([flat.new_zeros(n, c, 1), flat], dim=2)
    flat = padded.gather(2, src[:, None, :].expand(n, c, h * w))

    img, index = flat.view(n, c, h, w), flat.long()
    gray = _grayscale(img)  # (n, 1, h, w) uint8

    # Pointwise ops as a 256-entry lookup table per (image, channel): the fixed tables of Brightness, Posterize and
    # Solarize (identity for the other ops) replaced by the image's own for Contrast, AutoContrast and Equalize.
    values = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = table.lut[k][:, None, :].expand(n, c, 256)
    mean = gray.sum((1, 2, 3), dtype=torch.float32).double()[:, None, None] / (h * w)
    contrast = mean * table.alpha[k][:, None, None].double() + (values * table.ratio[k][:, None, None]).float()
    lut = torch.where(_drew(op, "Contrast")[:, None, None], _to_uint8(contrast.float()), lut)
    lut = torch.where(_drew(op, "AutoContrast")[:, None, None], _autocontrast_lut(flat), lut)
    lut = torch.where(_drew(op, "Equalize")[:, None, None], _equalize_lut(flat, index), lut)

    # Color and Sharpness depend on a second value per pixel, its grey value / 3x3 blur: their results come from
    # a (degenerate, value) -> result table per draw, an identity table for the other ops. The per-(image, channel)
    # tables (identity for Color and Sharpness) go first: two lookups per pixel apply every colour op.
    is_color, is_sharp = _drew(op, "Color"), _drew(op, "Sharpness")
    degenerate = gray * is_color[:, None, None, None] + _sharpness_blur(img) * is_sharp[:, None, None, None]
    pointwise = lut.gather(2, index)
    pair = degenerate.view(n, c, h * w).int().mul_(256).add_(pointwise).add_(table.pair_offset[k][:, None, None])
    return table.pairs.index_select(0, pair.view(-1)).view(n, c, h, w)  # int32 indices: half the traffic of take


def _drew(op: torch.Tensor, name: str) -> torch.Tensor:
    """One bool per image: did it draw op ``name``?"""
    return op == TRIVIAL_OPS.index(name)


def _to_uint8(v: torch.Tensor) -> torch.Tensor:
    """torchvision's float -> uint8: clamp to [0, 255], then truncate."""
    return v.clamp(0, 255).to(torch.uint8)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale of a uint8 batch, floored to uint8: float32 products and fused multiply-adds
    (``r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)``), emulated exactly in float64."""
    red, green, blue = _GRAY_WEIGHTS
    gray = img[:, 0].float().mul_(red).double()
    gray = img[:, 1].double().mul_(green).add_(gray).float().double()
    gray = img[:, 2].double().mul_(blue).add_(gray).float()
    return gray.to(torch.uint8)[:, None]


def _sharpness_blur(img: torch.Tensor) -> torch.Tensor:
    """adjust_sharpness's degenerate image of a uint8 batch: the [[1,1,1],[1,5,1],[1,1,1]]/13 blur, rounded, on
    interior pixels; border pixels keep their value. The integer sum / 13 is never within 1/26 of .5, so it rounds
    as torchvision's float32 convolution does."""
    x = img.to(torch.int16)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * x[:, :, 1:-1, 1:-1]
    blurred = img.clone()
    # round(total / 13) == floor((total + 6.5) / 13): the float32 error is far below the 1/26 margin, and the
    # uint8 assignment floors.
    blurred[:, :, 1:-1, 1:-1] = total.float().add_(6.5).mul_(1 / 13)
    return blurred


def _autocontrast_lut(flat: torch.Tensor) -> torch.Tensor:
    """autocontrast as a (n, c, 256) table: (v - min) / ((max - min) / 255) per channel; constant channels kept."""
    lo = flat.amin(2, keepdim=True).float()
    hi = flat.amax(2, keepdim=True).float()
    same = hi == lo
    scale = torch.where(same, 1.0, (hi - lo) * (1.0 / 255))
    lo = torch.where(same, 0.0, lo)
    values = torch.arange(256, device=flat.device, dtype=torch.float32)
    return _to_uint8((values - lo) / scale)


def _equalize_lut(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """torchvision's (PIL's) equalize as a (n, c, 256) table from each channel's histogram (``index`` is
    ``flat``, the uint8 pixels as (n, c, h*w), in int64)."""
    hist = torch.zeros(*index.shape[:2], 256, dtype=torch.int32, device=index.device)
    hist.scatter_add_(2, index, torch.ones_like(index, dtype=torch.int32))
    last = flat.amax(2, keepdim=True).long()  # the last non-empty bin
    step = (index.shape[2] - hist.gather(2, last)).div(255, rounding_mode="floor")
    # lut[v] = (pixels below v + step // 2) // step, clamped (lut[0] is 0)
    below = hist.cumsum(2, dtype=torch.int32).sub_(hist)
    lut = below.add_(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(max=255).to(torch.uint8)
    identity = torch.arange(256, device=index.device, dtype=torch.uint8)
    return torch.where(step != 0, lut, identity)


# torchvision's grey weights rounded to float32, as torch rounds a Python scalar multiplying a float32 tensor.
_GRAY_WEIGHTS = tuple(torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float32).tolist())


@dataclass(frozen=True)
class _TrivialTables:
    """Per-draw constants, indexed by op / (op, bin, sign) or k = (op * TRIVIAL_BINS + bin) * 2 + negative."""

    device: torch.device
    has_bins: torch.Tensor  # (ops,) long: 1 where the op has magnitude bins
    signed: torch.Tensor  # (ops,) bool
    magnitude: torch.Tensor  # (ops, bins, 2) float64
    ratio: torch.Tensor  # (k,) float32: 1 + magnitude for Brightness/Color/Contrast/Sharpness, else 1
    alpha: torch.Tensor  # (k,) float32: 1 - ratio
    lut: torch.Tensor  # (k, 256) uint8: Brightness/Posterize/Solarize's value map, identity for other ops
    pairs: torch.Tensor  # (tables * 65536,) uint8: Color/Sharpness result by (degenerate, value); 0 = identity
    pair_offset: torch.Tensor  # (k,) int32: where each draw's table starts in ``pairs``

    def source(self, h: int, w: int) -> torch.Tensor:
        """(k, h*w) long: 1 + the source pixel of each output pixel under the draw's geometric op, 0 for fill."""
        return _trivial_sources(h, w, self.device)


@functools.cache
def _trivial_tables(device: torch.device) -> _TrivialTables:
    from torchvision.transforms.v2 import functional as TF

    space = trivial_space()
    magnitude = torch.zeros(len(TRIVIAL_OPS), TRIVIAL_BINS, 2, dtype=torch.float64)
    for i, (bins, signed) in enumerate(space.values()):
        if bins is not None:
            magnitude[i, :, 0] = bins.double()
            magnitude[i, :, 1] = -bins.double() if signed else bins.double()
    ratio, alpha = torch.ones(magnitude.numel()), torch.zeros(magnitude.numel())
    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, 16, 16)
    luts = []
    for k, m in enumerate(magnitude.flatten().tolist()):
        name = TRIVIAL_OPS[k // (2 * TRIVIAL_BINS)]
        if name in ("Brightness", "Color", "Contrast", "Sharpness"):
            ratio[k], alpha[k] = 1.0 + m, 1.0 - (1.0 + m)
        if name == "Brightness":
            v = TF.adjust_brightness(values, brightness_factor=1.0 + m)
        elif name == "Posterize":
            v = TF.posterize(values, bits=int(m))
        elif name == "Solarize":
            v = TF.solarize(values, threshold=255.0 * m)
        else:
            v = values
        luts.append(v[0].flatten())
    # Color: blend(x, gray, r) = fma(gray, 1 - r, x * r); Sharpness: fma(blur - x, 1 - r, x).
    degenerate, value = torch.meshgrid(torch.arange(256.0).double(), torch.arange(256.0).double(), indexing="ij")
    pairs, pair_offset = [value], torch.zeros(magnitude.numel(), dtype=torch.long)
    for k in range(magnitude.numel()):
        name = TRIVIAL_OPS[k // (2 * TRIVIAL_BINS)]
        r, a = ratio[k].double(), alpha[k].double()
        if name == "Color":
            pairs.append(degenerate * a + (value * r).float().double())
        elif name == "Sharpness":
            pairs.append((degenerate - value) * a + value)
        else:
            continue
        pair_offset[k] = (len(pairs) - 1) * 256 * 256
    return _TrivialTables(
        device=device,
        has_bins=torch.tensor([bins is not None for bins, _ in space.values()], device=device).long(),
        signed=torch.tensor([signed for _, signed in space.values()], device=device),
        magnitude=magnitude.to(device),
        ratio=ratio.to(device),
        alpha=alpha.to(device),
        lut=torch.stack(luts).to(device),
        pairs=_to_uint8(torch.stack(pairs).float()).flatten().to(device),
        pair_offset=pair_offset.int().to(device),
    )


@functools.cache
def _trivial_sources(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Run torchvision's affine/rotate, with TrivialAugmentWide's arguments, on a float image whose pixels hold
    1 + their own index: what comes out at each pixel is the source pixel torchvision samples (0 = fill)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    coords = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w)
    nearest = InterpolationMode.NEAREST
    magnitude = _trivial_tables(torch.device("cpu")).magnitude
    sources = []
    for k, m in enumerate(magnitude.flatten().tolist()):
        name = TRIVIAL_OPS[k // (2 * TRIVIAL_BINS)]
        if name in ("ShearX", "ShearY"):
            shear = math.degrees(math.atan(m))
            out = TF.affine(
                coords,
                angle=0.0,
                translate=[0, 0],
                scale=1.0,
                shear=[shear, 0.0] if name == "ShearX" else [0.0, shear],
                interpolation=nearest,
                center=[0, 0],
            )
        elif name in ("TranslateX", "TranslateY"):
            shift = [int(m), 0] if name == "TranslateX" else [0, int(m)]
            out = TF.affine(coords, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
        elif name == "Rotate":
            out = TF.rotate(coords, angle=m, interpolation=nearest)
        else:
            out = coords
        sources.append(out.flatten())
    return torch.stack(sources).round().long().to(device)


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
            x = trivial_augment(x, gen)
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
