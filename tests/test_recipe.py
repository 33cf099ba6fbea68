"""airbench94's components in the trainer: each does what it should, and its switch changes nothing else."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hpo.augment import normalize
from hpo.config import COMPONENTS_OFF, ConfigError, TrainConfig
from hpo.data import Split, load_cifar10, train_val_split
from hpo.model import Scale, build_model, parameter_groups, patches, whiten_stem
from hpo.train import LOOKAHEAD_DECAY, Lookahead, device_batches, predict, train

TINY = dict(widths=(8, 16, 16), batch_size=16, epochs=2)


@pytest.fixture
def splits(tiny_data_dir):
    return train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)


def smooth_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Normalised float images whose neighbouring pixels and channels correlate, as in real photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 32, 32, generator=g)
    x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1)  # spatial correlation
    mix = torch.tensor([[1.0], [0.9], [0.7]])  # channel correlation
    return (mix[None, :, :, None] * x + 0.1 * torch.randn(n, 3, 32, 32, generator=g)) * 3


# --- config -------------------------------------------------------------------------------------------------


def test_defaults_are_airbench94s_recipe():
    c = TrainConfig()
    assert (c.batch_size, c.epochs, c.widths, c.momentum, c.label_smoothing) == (1024, 10, (64, 256, 256), 0.85, 0.2)
    assert c.lr == pytest.approx(1.5) and c.weight_decay == pytest.approx(0.00133, rel=1e-2)
    assert c.whiten and not c.bn_scale and c.lookahead and c.alternate_flip and c.fast_step and c.dirac_init
    assert (c.tta_level, c.bias_lr_scale, c.bn_momentum, c.logit_scale) == (2, 64.0, 0.4, pytest.approx(1 / 9))


def test_recipe_at_another_batch_size_scales_the_lr_by_the_square_root_of_the_batch_ratio():
    c = TrainConfig.recipe(batch_size=128, epochs=8, widths=(32, 64, 128))
    assert c.lr == pytest.approx(1.5 / 8**0.5) and c.weight_decay == TrainConfig().weight_decay
    assert TrainConfig.recipe(batch_size=512).lr == pytest.approx(1.5 / 2**0.5)
    assert TrainConfig.recipe(batch_size=128, lr=0.3).lr == 0.3  # an explicit lr is kept
    assert c.with_batch_size(1024).lr == pytest.approx(1.5)


def test_without_turns_off_exactly_the_named_components():
    base = TrainConfig()
    for name, off in COMPONENTS_OFF.items():
        changed = {k for k, v in base.without(name).to_dict().items() if v != base.to_dict()[k]}
        assert changed == set(off), name
    everything = base.without(*COMPONENTS_OFF)
    assert not everything.whiten and everything.bn_scale and everything.tta_level == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stem_width": 26}, "even stem_width of at most 24"),
        ({"stem_width": 7}, "even stem_width"),
        ({"whiten_bias_epochs": -1}, "whiten_bias_epochs must be"),
        ({"bias_lr_scale": 0}, "bias_lr_scale must be in"),
        ({"bn_momentum": 1.5}, "bn_momentum must be in"),
        ({"bn_eps": 0}, "bn_eps must be in"),
        ({"logit_scale": float("inf")}, "logit_scale must be a finite number"),
        ({"head_init": "xavier"}, "head_init must be one of"),
        ({"tta_level": 3}, "tta_level must be 0"),
        ({"final_lr_fraction": 1.0}, "final_lr_fraction must be in"),
        ({"lookahead": "yes"}, "lookahead must be of type bool"),
    ],
)
def test_component_fields_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **changes})
    assert TrainConfig(stem_width=30, whiten=False).stem_width == 30  # any width once the stem is not whitening


# --- 1. whitening -------------------------------------------------------------------------------------------


def test_whitened_patches_have_identity_covariance():
    images = smooth_images()
    stem = build_model(TrainConfig(**TINY)).stem
    whiten_stem(stem, images)
    rows = patches(images)
    out = rows @ stem.weight.reshape(stem.out_channels, -1).T  # the stem's outputs without its bias
    half = stem.out_channels // 2
    cov = out[:, :half].T @ out[:, :half] / len(out)
    assert torch.allclose(cov, torch.eye(half), atol=0.02), cov.diagonal()
    assert torch.equal(stem.weight[half:], -stem.weight[:half])  # the second half are the negatives
    assert torch.equal(stem.bias, torch.zeros_like(stem.bias))
    # the raw patches are far from white, so the test is not passing by accident
    raw = rows.T @ rows / len(rows)
    assert not torch.allclose(raw, torch.eye(len(raw)), atol=0.5)


def test_a_narrow_whitening_stem_keeps_the_directions_of_largest_variance():
    # 8 filters keep 4 of a 2x2x3 patch's 12 directions: they must be the 4 of largest variance.
    images = smooth_images()
    stem = build_model(TrainConfig(**{**TINY, "stem_width": 8})).stem
    whiten_stem(stem, images)
    rows = patches(images)
    filters = stem.weight.reshape(8, -1)[:4]
    captured = ((rows @ (filters / filters.norm(dim=1, keepdim=True)).T) ** 2).mean(0)  # variance along each
    largest = torch.linalg.eigvalsh(rows.T @ rows / len(rows)).flip(0)[:4]
    assert torch.allclose(captured.sort(descending=True).values, largest, rtol=1e-3)


def test_whitening_stem_is_frozen_and_its_bias_trains_only_for_the_first_epochs(splits, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 3}, whiten_bias_epochs=1)
    ckpt = tmp_path / "run.pt"
    stems = []  # the checkpoint is written before on_epoch is called, so it holds that epoch's weights

    def watch(stats):
        state = torch.load(ckpt, weights_only=False)["model"]
        stems.append((state["0.weight"], state["0.bias"]))

    result = train(config, *splits, on_epoch=watch, checkpoint=ckpt)
    (w1, b1), (w2, b2), (w3, b3) = stems
    assert not torch.equal(b1, torch.zeros_like(b1))  # the bias trained in epoch 1 (it starts at zero)
    assert torch.equal(b2, b1) and torch.equal(b3, b1)  # and was frozen after it
    fresh = build_model(config).stem
    whiten_stem(fresh, normalize(splits[0].images))
    for w in (w1, w2, w3, result.model.stem.weight):
        assert torch.equal(w, fresh.weight)  # the whitening of the training images, never trained


# --- 2. BatchNorm, 3. logits, 8. dirac ------------------------------------------------------------------------


def test_batchnorm_has_no_learnable_scale_and_its_biases_a_larger_lr():
    config = TrainConfig(**TINY)
    model = build_model(config)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all(m.eps == 1e-12 and m.momentum == 0.4 for m in norms)
    fast, rest = parameter_groups(model, config)
    assert {id(p) for p in fast["params"]} == {id(m.bias) for m in norms}
    assert fast["lr"] == config.lr * 64 and fast["weight_decay"] * fast["lr"] == pytest.approx(
        config.weight_decay * config.lr
    )
    assert all(p is not model.stem.weight for p in rest["params"])  # frozen whitening weights are not optimised


def test_logits_are_scaled_down_and_dirac_init_makes_identity_filters():
    config = TrainConfig(**TINY)
    model = build_model(config)
    assert isinstance(model[-1], Scale) and model[-1].factor == pytest.approx(1 / 9)
    conv = model[2][0]  # first conv of the first group: 24 -> 8 channels
    centre = conv.weight[:, :, 1, 1]
    assert torch.equal(centre[:, :8], torch.eye(8)) and conv.weight[:, :, 0, 0].abs().sum() == 0


# --- 4. lookahead -------------------------------------------------------------------------------------------


def test_lookahead_update_rule_on_a_toy_model():
    total = 12
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    lookahead = Lookahead(model, total_steps=total)
    weight, ema = 0.0, 0.0  # the rule by hand
    for step in range(1, total + 1):
        with torch.no_grad():
            model.weight.add_(1.0)  # an optimizer step
        weight += 1.0
        lookahead.after_step(step)
        if step % 5 == 0 or step == total:  # every 5 steps, and always at the last
            decay = LOOKAHEAD_DECAY * (step / total) ** 3
            ema = decay * ema + (1 - decay) * weight
            weight = ema
        assert model.weight.item() == pytest.approx(weight), step
    assert weight < total  # the pulls held the weights back: the rule did something


# --- 5. test-time augmentation ------------------------------------------------------------------------------


def test_tta_is_the_weighted_mean_of_the_views_logits():
    torch.manual_seed(0)
    model = build_model(TrainConfig(**TINY)).eval()
    x = smooth_images(4)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = {
        "plain": x,
        "up_left": padded[..., :32, :32],
        "down_right": padded[..., 2:, 2:],
    }
    with torch.no_grad():
        logits = {k: (model(v), model(v.flip(-1))) for k, v in views.items()}
        mirror = (logits["plain"][0] + logits["plain"][1]) / 2
        shifted = sum(a + b for a, b in (logits["up_left"], logits["down_right"])) / 4
        assert torch.allclose(predict(model, x, 0), logits["plain"][0])
        assert torch.allclose(predict(model, x, 1), mirror, atol=1e-6)
        assert torch.allclose(predict(model, x, 2), 0.5 * mirror + 0.5 * shifted, atol=1e-6)
        assert not torch.allclose(predict(model, x, 2), mirror, atol=1e-6)


def test_tta_scores_only_the_final_epoch_and_changes_nothing_else(splits):
    config = TrainConfig(**{**TINY, "epochs": 3})
    with_tta, without = train(config, *splits), train(config.without("tta"), *splits)
    assert [h.tta_level for h in with_tta.history] == [0, 0, 2]
    assert [h.tta_level for h in without.history] == [0, 0, 0]
    for a, b in zip(with_tta.history[:2], without.history[:2]):
        assert (a.val_acc, a.val_loss, a.train_loss) == (b.val_acc, b.val_loss, b.train_loss)
    assert with_tta.history[2].train_loss == without.history[2].train_loss  # same training
    assert with_tta.val_loss != without.val_loss  # a different evaluation of the same weights


# --- 6. alternating flip ------------------------------------------------------------------------------------


def distinct_split(n: int = 12) -> Split:
    """Images that differ from each other and from their own mirror image; the label is the image's index."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(images, torch.arange(n))


def flips_per_epoch(config: TrainConfig, data: Split, epochs: int) -> list[list[bool]]:
    """For each epoch, whether each image (by index) came out mirrored."""
    batches = device_batches(data, config, torch.Generator().manual_seed(config.seed), torch.float32)
    seen = []
    for epoch in range(1, epochs + 1):
        flipped = [False] * len(data)
        for x, y in batches(epoch):
            for image, label in zip(x, y):
                original = normalize(data.images[label : label + 1])[0]
                assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
                flipped[label] = torch.equal(image, original.flip(-1))
        seen.append(flipped)
    return seen


def test_alternating_flip_flips_every_image_exactly_every_other_epoch():
    data = distinct_split()
    config = TrainConfig(batch_size=len(data), augmentation="flip")
    seen = flips_per_epoch(config, data, epochs=6)
    for i in range(len(data)):
        pattern = [epoch[i] for epoch in seen]
        assert all(a != b for a, b in zip(pattern, pattern[1:])), (i, pattern)
    assert 0 < sum(seen[0]) < len(data)  # a random half starts flipped


def test_random_flip_when_alternating_is_off():
    data = distinct_split(64)
    config = TrainConfig(batch_size=len(data), augmentation="flip").without("alternate_flip")
    seen = flips_per_epoch(config, data, epochs=2)
    repeats = sum(a == b for a, b in zip(seen[0], seen[1]))
    assert 10 < repeats < 54  # independent draws: about half the images keep their orientation


# --- 7. fast step, and what each switch leaves alone ----------------------------------------------------------


def test_fast_step_is_channels_last_and_fused(splits):
    fast = train(TrainConfig(**{**TINY, "epochs": 1}), *splits)
    slow = train(TrainConfig(**{**TINY, "epochs": 1}).without("fast_step"), *splits)
    conv = fast.model[2][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert slow.model[2][0].weight.is_contiguous()
    # the same computation: the layout and the fused kernel change the float rounding, not the result
    assert fast.history[0].train_loss == pytest.approx(slow.history[0].train_loss, rel=1e-3)


@pytest.mark.parametrize("component", sorted(COMPONENTS_OFF))
def test_each_switch_changes_its_part_of_the_model_and_nothing_else(component):
    torch.manual_seed(0)
    on = build_model(TrainConfig(**TINY))
    torch.manual_seed(0)
    off = build_model(TrainConfig(**TINY).without(component))
    described = {name: (tuple(p.shape), p.requires_grad) for name, p in on.named_parameters()}
    described_off = {name: (tuple(p.shape), p.requires_grad) for name, p in off.named_parameters()}
    changed = {name for name in described if described[name] != described_off[name]}
    norms = {f"{n}.weight" for n, m in on.named_modules() if isinstance(m, nn.BatchNorm2d)}
    expected = {"whiten": {"0.weight"}, "batchnorm": norms}.get(component, set())
    assert changed == expected
    same_values = {n for n, p in on.state_dict().items() if torch.equal(p, off.state_dict()[n])}
    different_values = set(on.state_dict()) - same_values
    expected_values = {
        "logit_scale": {"8.weight"},  # the head's init; the Scale factor is checked below
        "dirac_init": {n for n, p in on.state_dict().items() if p.dim() == 4 and n != "0.weight"},
    }.get(component, set())
    assert different_values == expected_values
    assert (on[-1].factor == off[-1].factor) == (component != "logit_scale")


@pytest.mark.integration
def test_default_recipe_learns_on_the_real_subset_in_8_epochs(subset_dir):
    data = load_cifar10(subset_dir, download=False)
    config = TrainConfig.recipe(batch_size=128, epochs=8, widths=(32, 64, 128))
    result = train(config, data.train, data.test)
    assert result.val_acc >= 0.65, [h.val_acc for h in result.history]


def test_component_fields_reach_the_exported_dict():
    exported = TrainConfig().to_dict()
    for field in dataclasses.fields(TrainConfig):
        assert field.name in exported
    assert TrainConfig.from_dict(TrainConfig().without(*COMPONENTS_OFF).to_dict()) == TrainConfig().without(
        *COMPONENTS_OFF
    )


def test_report_says_which_test_time_augmentation_scored(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from hpo.report import write_report

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    config = TrainConfig(**TINY)
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=0.5,
            params={"lr_decoupled": 1.0},
            distributions={"lr_decoupled": FloatDistribution(0.5, 32, log=True)},
            user_attrs={"config": config.to_dict(), "epochs_run": 2},
        )
    )
    summary = {"n": 2, "mean": 0.5, "std": 0.01, "ci_low": 0.4, "ci_high": 0.6}
    candidates = [
        {"label": "best", "config": config.to_dict(), "test_acc": [0.5, 0.5], "summary": summary},
        {"label": "plain", "config": config.without("tta").to_dict(), "test_acc": [0.5, 0.5], "summary": summary},
    ]
    record = {"date": "d", "device": "cpu", "seeds": [0, 1], "train_images": 1, "test_images": 1}
    study.set_user_attr("retrain", {**record, "candidates": candidates})
    text = write_report(study, tmp_path / "report")
    assert "(test-time augmentation: mirror + 1-pixel translations)" in text
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| best") or line.startswith("| plain")
    }
    assert rows["best"].rstrip(" |").endswith("mirror + 1-pixel translations")
    assert rows["plain"].rstrip(" |").endswith("none")
