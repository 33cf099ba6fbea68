import re

import optuna
import pytest

from hpo.config import TrainConfig
from hpo.space import DEFAULT_SPACE, OPTIONAL, Choice, Float, SearchSpace, SpaceError, from_sgd, to_sgd

AIRBENCH = {"lr_decoupled": 11.5, "wd_decoupled": 0.0153, "momentum": 0.85, "label_smoothing": 0.2}


def contains(param, value):
    return param.low <= value <= param.high if isinstance(param, Float) else value in param.choices


def test_airbench94_values_convert_to_plain_sgd_and_back():
    lr, wd = to_sgd(11.5, 0.0153, 0.85, 1024)
    assert lr == pytest.approx(1.5, rel=1e-3) and wd == pytest.approx(0.00133, rel=1e-2)
    assert from_sgd(lr, wd, 0.85, 1024) == pytest.approx((11.5, 0.0153))


def test_default_ranges_contain_airbench94_and_our_default_config():
    space = {**DEFAULT_SPACE, **OPTIONAL}
    for name, value in AIRBENCH.items():
        assert contains(space[name], value), name
    assert contains(OPTIONAL["batch_size"], 1024)
    base = TrainConfig()
    lr_d, wd_d = from_sgd(base.lr, base.weight_decay, base.momentum, base.batch_size)
    assert contains(DEFAULT_SPACE["lr_decoupled"], lr_d) and contains(DEFAULT_SPACE["wd_decoupled"], wd_d)


@pytest.mark.parametrize("batch_size", [11, 16, 64, 128, 512, 1024])
def test_the_recipe_at_each_batch_size_is_inside_the_default_space(batch_size):
    """So the warm start can queue it at any batch size a user is likely to give (its decoupled lr and wd grow
    with the square root of 1024 / batch size)."""
    recipe = TrainConfig.recipe(batch_size=batch_size)
    params = SearchSpace.default().params_for(recipe, "the recipe")
    assert params["wd_decoupled"] == pytest.approx(0.0153 * (1024 / batch_size) ** 0.5)


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_every_optional_parameter_can_be_enabled_with_its_documented_range(name):
    param = OPTIONAL[name]  # the range the README's table gives
    spec = {"low": param.low, "high": param.high} if isinstance(param, Float) else {"choices": list(param.choices)}
    assert SearchSpace.from_dict({name: spec}).sampled[name] == param


def test_suggest_samples_every_default_parameter_and_converts_units():
    space = SearchSpace.default()
    trial = optuna.trial.FixedTrial(
        {
            "lr_decoupled": 11.5,
            "wd_decoupled": 0.0153,
            "momentum": 0.85,
            "dropout": 0.1,
            "augmentation": "flip",
            "scheduler": "cosine",
        }
    )
    config = space.suggest(trial, TrainConfig(batch_size=1024))
    assert config.lr == pytest.approx(1.5, rel=1e-3) and config.weight_decay == pytest.approx(0.00133, rel=1e-2)
    assert (config.momentum, config.dropout, config.augmentation, config.scheduler) == (0.85, 0.1, "flip", "cosine")


def test_sampled_configs_are_the_params_in_sgd_terms_and_stay_inside_the_ranges():
    space = SearchSpace.default()
    base = TrainConfig(batch_size=512, label_smoothing=0.1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    # The plain-SGD values the default decoupled ranges allow at this batch size and these momentum bounds.
    lr_d, wd_d, mom, drop = (DEFAULT_SPACE[k] for k in ("lr_decoupled", "wd_decoupled", "momentum", "dropout"))
    lr_low = to_sgd(lr_d.low, wd_d.low, mom.high, 512)[0]  # more momentum, smaller SGD step
    lr_high = to_sgd(lr_d.high, wd_d.low, mom.low, 512)[0]
    for _ in range(30):
        trial = study.ask()
        config = space.suggest(trial, base)
        p = trial.params
        lr, wd = to_sgd(p["lr_decoupled"], p["wd_decoupled"], p["momentum"], base.batch_size)
        assert (config.lr, config.weight_decay) == pytest.approx((lr, wd), rel=1e-12)
        assert (config.momentum, config.dropout) == (p["momentum"], p["dropout"])
        assert (config.augmentation, config.scheduler) == (p["augmentation"], p["scheduler"])
        assert (config.batch_size, config.label_smoothing, config.epochs) == (512, 0.1, base.epochs)  # not sampled
        assert mom.low <= config.momentum <= mom.high and drop.low <= config.dropout <= drop.high
        assert lr_low <= config.lr <= lr_high
        assert wd_d.low / lr_d.high <= config.weight_decay <= wd_d.high / lr_d.low
        study.tell(trial, 0.0)


def test_space_file_overrides_fixes_drops_and_enables(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr_decoupled: {low: 2, high: 20}\n"
        "momentum: 0.9\n"
        "dropout: null\n"
        "augmentation: {choices: [flip, flip_translate]}\n"
        "label_smoothing: {low: 0.0, high: 0.3}\n"
        "batch_size: {choices: [128, 256]}\n"
    )
    space = SearchSpace.load(path)
    assert space.sampled["lr_decoupled"] == Float(2.0, 20.0, log=True)
    assert space.fixed == {"momentum": 0.9}
    assert "dropout" not in space.sampled and "momentum" not in space.sampled
    assert space.sampled["augmentation"] == Choice(("flip", "flip_translate"))
    assert "label_smoothing" in space.sampled and "batch_size" in space.sampled
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    config = space.suggest(trial, TrainConfig(dropout=0.25))
    assert config.momentum == 0.9 and config.dropout == 0.25
    assert "momentum" not in trial.params and "dropout" not in trial.params
    assert config.batch_size in (128, 256)


def test_describe_round_trips():
    space = SearchSpace.from_dict({"momentum": 0.9, "dropout": None, "label_smoothing": {"low": 0, "high": 0.2}})
    again = SearchSpace.from_dict(space.describe())
    assert again == space


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: {low: 1, high: 2}\n", "unknown parameter"),
        ("lr_decoupled: {low: 5, high: 1}\n", "low < high"),
        ("wd_decoupled: {low: 0, high: 0.1}\n", "log scale"),
        ("lr_decoupled: {low: 1, hi: 2}\n", "takes low, high and log"),
        ("lr_decoupled: {low: a, high: 2}\n", "must be numbers"),
        ("augmentation: {choices: [flip, mixup]}\n", "augmentation must be one of"),
        ("scheduler: {choices: []}\n", "at least one value"),
        ("momentum: 1.5\n", "momentum must be a number < 1, got 1.5"),
        ("momentum: {low: 0.5, high: 1.5}\n", "momentum must be a number < 1, got 1.5"),
        ("lr_decoupled: {low: 0, high: 2, log: false}\n", "lr_decoupled must be a number > 0, got 0.0"),
        ("dropout: {low: 0.0, high: 1.5}\n", "dropout must be in"),
        (
            "lr_decoupled: {low: 0.02, high: 0.03}\nwd_decoupled: {low: 0.04, high: 0.05}\n",
            "weight_decay must be in [0, 1), got 2.0 (at lr_decoupled 0.02, wd_decoupled 0.04, momentum 0.7)",
        ),
        ('batch_size: {choices: ["256"]}\n', "batch_size must be of type int, got '256'"),
        ("batch_size: {choices: [null]}\n", "batch_size must be of type int, got None"),
        ("lr_decoupled: [1, 2\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("1: 2\n", "unknown parameter(s) 1; known: lr_decoupled"),
    ],
)
def test_invalid_space_files_are_rejected(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=re.escape(message)):
        SearchSpace.load(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="cannot read space file"):
        SearchSpace.load(tmp_path / "nope.yaml")


def test_learning_rate_and_weight_decay_are_sampled_on_a_log_scale():
    trial = optuna.create_study().ask()
    SearchSpace.default().suggest(trial, TrainConfig())
    assert trial.distributions["lr_decoupled"].log and trial.distributions["wd_decoupled"].log


def test_a_space_without_lr_keeps_the_decoupled_lr_while_momentum_is_sampled():
    # The space is in decoupled units: fixing lr_decoupled fixes the step size per unit gradient, so a sampled
    # momentum changes the plain SGD lr (lr_sgd = lr_decoupled x batch / (1024 x (1 + 1 / (1 - momentum)))).
    base = TrainConfig()
    config = SearchSpace.to_config({"momentum": 0.5}, base)
    assert config.momentum == 0.5 and config.lr != pytest.approx(base.lr)
    assert from_sgd(config.lr, config.weight_decay, 0.5, config.batch_size) == pytest.approx(
        from_sgd(base.lr, base.weight_decay, base.momentum, base.batch_size)
    )
