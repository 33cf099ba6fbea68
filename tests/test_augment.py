import pytest
import torch

from hpo.augment import CIFAR_MEAN, CIFAR_STD, POLICIES, alternating_flips, cutout, flip, normalize, translate
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


def test_cutout_fills_one_square_per_image_with_the_mean():
    x = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    out = cutout(x, torch.Generator().manual_seed(0), size=8)
    changed = (out != x).any(1)  # (N, H, W)
    counts = changed.flatten(1).sum(1)
    assert (counts > 0).all() and (counts <= 9 * 9).all()
    assert len({tuple(c.nonzero()[0].tolist()) for c in changed}) > 5  # squares sit in different places
    assert out[:, 0][changed].unique().tolist() == [round(CIFAR_MEAN[0])]


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
