import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from hpo.augment import (
    CIFAR_MEAN,
    CIFAR_STD,
    POLICIES,
    TRIVIAL_BINS,
    TRIVIAL_OPS,
    alternating_flips,
    apply_trivial,
    cutout,
    flip,
    normalize,
    sample_trivial,
    translate,
    trivial_augment,
    trivial_magnitudes,
    trivial_space,
)
from hpo.config import AUGMENTATIONS


def batch(n=64, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_policy_keeps_shape_and_dtype(name):
    x = batch()
    out = POLICIES[name](x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_none_is_identity():
    x = batch()
    assert torch.equal(POLICIES["none"](x, torch.Generator()), x)


def test_flip_mirrors_some_images_and_not_others():
    x = batch()
    out = flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_translate_uses_different_offsets_per_image():
    x = batch()
    out = translate(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    offsets = []
    for i in range(len(x)):
        match = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert match, "every output must be a 32x32 window of the padded image"
        offsets.append(match[0])
    assert len(set(offsets)) > 5
    assert any(o != (2, 2) for o in offsets)


def test_translate_offsets_cover_minus_pad_to_plus_pad():
    x = torch.zeros(400, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 16, 16] = 255  # one bright pixel: where it lands is the offset
    where = translate(x, torch.Generator().manual_seed(0), pad=2)[:, 0].flatten(1).argmax(1)
    assert set((where // 32).tolist()) == set(range(14, 19)) and set((where % 32).tolist()) == set(range(14, 19))


@pytest.mark.parametrize("size", [8, 7])
def test_cutout_fills_one_square_per_image_with_the_mean(size):
    x = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    out = cutout(x, torch.Generator().manual_seed(0), size=size)
    changed = (out != x).any(1)  # (N, H, W)
    counts = changed.flatten(1).sum(1)
    assert (counts > 0).all() and counts.max() == size * size  # size x size where the border does not clip it
    assert len({tuple(c.nonzero()[0].tolist()) for c in changed}) > 5  # squares sit in different places
    for square in changed:  # one filled rectangle (a square clipped at the border) per image
        rows, cols = square.any(1).nonzero().flatten(), square.any(0).nonzero().flatten()
        assert square[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert len(rows) == rows[-1] - rows[0] + 1 and len(cols) == cols[-1] - cols[0] + 1
    for c in range(3):
        assert out[:, c][changed].unique().tolist() == [round(CIFAR_MEAN[c])]
    assert (out[:, :, ~changed.any(0)] == 0).all()


def test_policies_are_reproducible_with_the_same_seeds():
    x = batch()
    for name in AUGMENTATIONS:
        a = POLICIES[name](x, torch.Generator().manual_seed(3))
        torch.manual_seed(1)  # the global RNG plays no part: every draw comes from the generator
        b = POLICIES[name](x, torch.Generator().manual_seed(3))
        assert torch.equal(a, b), name


def test_normalize_standardises_channels():
    x = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    x[:, :, :2] = 255
    out = normalize(x)
    assert out.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(out[:, c, 2:], torch.tensor(-CIFAR_MEAN[c] / CIFAR_STD[c]))
        assert torch.allclose(out[:, c, :2], torch.tensor((255 - CIFAR_MEAN[c]) / CIFAR_STD[c]))


def test_alternating_flips_invert_every_other_epoch():
    first = torch.tensor([True, False, False, True])
    assert torch.equal(alternating_flips(first, 1), first) and torch.equal(alternating_flips(first, 3), first)
    assert torch.equal(alternating_flips(first, 2), ~first) and torch.equal(alternating_flips(first, 4), ~first)


def test_policy_flips_exactly_the_masked_images():
    x = batch(8)
    mask = torch.tensor([True, False] * 4)
    out = POLICIES["flip"](x, torch.Generator().manual_seed(0), mask)
    for o, i, m in zip(out, x, mask):
        assert torch.equal(o, i.flip(-1) if m else i)


# TrivialAugmentWide: the batched version against torchvision's.

TV_SPACE = v2.TrivialAugmentWide._AUGMENTATION_SPACE


def test_trivial_space_is_torchvisions():
    assert tuple(TV_SPACE) == TRIVIAL_OPS
    ours = trivial_space()
    for name, (magnitudes_fn, signed) in TV_SPACE.items():
        theirs = magnitudes_fn(TRIVIAL_BINS, 32, 32)
        bins, our_signed = ours[name]
        assert our_signed == signed, name
        assert (bins is None) == (theirs is None), name
        if theirs is not None:
            assert torch.equal(bins, theirs), name


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampled_ops_and_magnitudes_follow_torchvisions_distribution():
    n = 28_000
    op, level, negative = sample_trivial(n, torch.Generator().manual_seed(0))
    magnitude = trivial_magnitudes(op, level, negative)
    # Ops uniform over the 14 (chi-square, 13 degrees of freedom: 34.5 is the 0.1 % critical value).
    assert chi_square(torch.bincount(op, minlength=len(TRIVIAL_OPS)).double()) < 34.5
    for i, (name, (magnitudes_fn, signed)) in enumerate(TV_SPACE.items()):
        mine = op == i
        bins = magnitudes_fn(TRIVIAL_BINS, 32, 32)
        drawn = magnitude[mine]
        if bins is None:
            assert (drawn == 0).all() and not negative[mine].any(), name
            continue
        # The same values as torchvision's: float(bin), and its negative for signed ops (which is all of them).
        allowed = {float(b) for b in bins} | ({-float(b) for b in bins} if signed else set())
        assert set(drawn.tolist()) <= allowed, name
        nonzero = {abs(v) for v in allowed if v != 0}
        assert {abs(v) for v in drawn.tolist() if v != 0} == nonzero, name
        # Bins uniform (30 degrees of freedom: 59.7 at 0.1 %), signs a fair coin for signed ops only.
        assert chi_square(torch.bincount(level[mine], minlength=TRIVIAL_BINS).double()) < 59.7, name
        share = negative[mine].double().mean().item()
        if signed:
            assert abs(share - 0.5) < 4 * math.sqrt(0.25 / mine.sum().item()), name
        else:
            assert share == 0, name


def torchvision_op(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """What TrivialAugmentWide does to one uint8 image for (op, magnitude), through v2.functional's public ops
    with the arguments of TrivialAugmentWide._apply_image_or_video_transform (nearest, fill None = 0)."""
    nearest = InterpolationMode.NEAREST
    shear = math.degrees(math.atan(magnitude))
    if name == "Identity":
        return img
    if name in ("ShearX", "ShearY"):
        shears = [shear, 0.0] if name == "ShearX" else [0.0, shear]
        return TF.affine(
            img, angle=0.0, translate=[0, 0], scale=1.0, shear=shears, interpolation=nearest, center=[0, 0]
        )
    if name in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
    if name == "Rotate":
        return TF.rotate(img, angle=magnitude, interpolation=nearest)
    if name == "Brightness":
        return TF.adjust_brightness(img, brightness_factor=1.0 + magnitude)
    if name == "Color":
        return TF.adjust_saturation(img, saturation_factor=1.0 + magnitude)
    if name == "Contrast":
        return TF.adjust_contrast(img, contrast_factor=1.0 + magnitude)
    if name == "Sharpness":
        return TF.adjust_sharpness(img, sharpness_factor=1.0 + magnitude)
    if name == "Posterize":
        return TF.posterize(img, bits=int(magnitude))
    if name == "Solarize":
        return TF.solarize(img, threshold=255.0 * magnitude)
    if name == "AutoContrast":
        return TF.autocontrast(img)
    assert name == "Equalize"
    return TF.equalize(img)


def test_reference_is_what_trivial_augment_wide_does():
    """Our torchvision_op reference against the transform itself, for a few ops and magnitudes."""
    ta = v2.TrivialAugmentWide()
    img = batch(1)[0]
    for name, magnitude in [
        ("ShearY", -0.33),
        ("TranslateX", 5.33),
        ("Rotate", 90.0),
        ("Color", 0.2),
        ("Solarize", 0.5),
    ]:
        expected = ta._apply_image_or_video_transform(
            img, name, magnitude, interpolation=ta.interpolation, fill=ta._fill
        )
        assert torch.equal(torchvision_op(img, name, magnitude), expected), name


def sample_images():
    """Random noise, smooth gradients, grey images (gray == pixel), low-contrast and constant images, and one of
    pixels whose grey value depends on torchvision's fused multiply-adds."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    ramp = torch.linspace(0, 1, 32)
    gradient = torch.stack(
        [(ramp[None, :] * ramp[:, None] * 255 * (0.3 + 0.7 * k / 3)).expand(3, 32, 32) for k in range(4)]
    )
    gradient[:, 1] = gradient[:, 1].flip(-1)
    gray = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=g).expand(-1, 3, -1, -1)
    low = torch.randint(100, 108, (2, 3, 32, 32), dtype=torch.uint8, generator=g)
    constant = torch.tensor([0, 77, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 32, 32)
    fused = torch.tensor(FMA_SENSITIVE, dtype=torch.uint8).T.repeat(1, 49)[:, :1024].reshape(1, 3, 32, 32)
    return torch.cat([noise, gradient.round().to(torch.uint8), gray, low, constant, fused])


# All 21 (r, g, b) whose torchvision grey value (float32 multiply-adds, fused on the CPU) floors differently from
# r * 0.2989 + g * 0.587 + b * 0.114 computed unfused: they catch a Color / Contrast that skips the fusing.
FMA_SENSITIVE = [
    (20, 152, 7), (250, 117, 14), (140, 236, 23), (110, 111, 26), (250, 55, 35), (220, 222, 52), (250, 17, 64),
    (40, 252, 80), (140, 160, 81), (250, 247, 99), (250, 171, 157), (170, 61, 170), (240, 222, 175), (230, 225, 177),
    (250, 133, 186), (140, 252, 195), (250, 47, 199), (190, 175, 206), (250, 95, 215), (250, 9, 228), (40, 244, 244),
]  # fmt: skip


@pytest.mark.parametrize("name", TRIVIAL_OPS)
def test_each_op_matches_torchvision_exactly(name):
    """Every (image, bin, sign) of one op in a single batched call, each output equal to torchvision's functional
    op on that image. Geometric ops too: their source pixels are looked up from torchvision's own sampling grid, so
    no pixel may differ (the tolerance is zero for every op)."""
    images = sample_images()
    i = TRIVIAL_OPS.index(name)
    draws = [(level, neg) for level in (0, 1, 7, 15, 20, 29, 30) for neg in (False, True)]
    x = images.repeat(len(draws), 1, 1, 1)
    level = torch.tensor([lv for lv, _ in draws]).repeat_interleave(len(images))
    negative = torch.tensor([neg for _, neg in draws]).repeat_interleave(len(images))
    op = torch.full_like(level, i)
    _, signed = TV_SPACE[name]
    if TV_SPACE[name][0](TRIVIAL_BINS, 32, 32) is None:
        level.zero_()
    if not signed:
        negative.zero_()
    out = apply_trivial(x, op, level, negative)
    magnitude = trivial_magnitudes(op, level, negative)
    for j in range(len(x)):
        expected = torchvision_op(x[j], name, float(magnitude[j]))
        assert torch.equal(out[j], expected), (name, float(magnitude[j]), j % len(images))


def test_trivial_augment_is_sample_then_apply():
    x = batch(128)
    out = trivial_augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(out, apply_trivial(x, *sample_trivial(len(x), torch.Generator().manual_seed(7))))


def test_trivial_ops_are_drawn_per_image():
    op, level, _ = sample_trivial(1024, torch.Generator().manual_seed(1))
    assert len(set(op.tolist())) == len(TRIVIAL_OPS)
    # Every group of 16 images sees many ops (expected 9.7 distinct), not one op per group.
    distinct = [len(set(group.tolist())) for group in op.split(16)]
    assert sum(distinct) / len(distinct) > 8
    # Neighbouring images agree on their op about as often as chance (1/14 = 0.071; 6 sd is 0.05).
    assert (op[1:] == op[:-1]).double().mean() < 0.12
    # And neither op nor bin of one image predicts the next one's (correlation within 4 sd of 0: 0.125).
    for v in (op, level):
        v = v.double()
        assert abs(torch.corrcoef(torch.stack([v[1:], v[:-1]]))[0, 1]) < 0.125


def test_the_same_image_comes_out_many_ways_in_one_batch():
    x = batch(1).expand(256, -1, -1, -1).contiguous()
    out = trivial_augment(x, torch.Generator().manual_seed(2))
    assert len({o.numpy().tobytes() for o in out}) > 128


def test_trivial_augment_follows_the_generator():
    x = batch(64)
    a = trivial_augment(x, torch.Generator().manual_seed(3))
    torch.manual_seed(11)  # the global RNG plays no part
    b = trivial_augment(x, torch.Generator().manual_seed(3))
    c = trivial_augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.uint8
