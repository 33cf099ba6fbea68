import json

import pytest

from hpo.config import ConfigError, TrainConfig, load_config


def test_defaults_are_valid_and_round_trip_through_json(tmp_path):
    config = TrainConfig()
    path = tmp_path / "cfg.json"
    path.write_text(config.to_json())
    assert load_config(path) == config


def test_yaml_and_exported_wrapper_are_accepted(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.1\nwidths: [16, 32, 32]\nscheduler: cosine\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.lr == 0.1 and config.widths == (16, 32, 32) and config.scheduler == "cosine"
    wrapped = {"config": config.to_dict(), "provenance": {"trial": 3}}
    (tmp_path / "e.json").write_text(json.dumps(wrapped))
    assert load_config(tmp_path / "e.json") == config


def test_int_is_accepted_where_float_expected():
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": 0}, "lr must be in"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"weight_decay": -1e-4}, "weight_decay must be in"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"warmup_fraction": 1.0}, "warmup_fraction must be in"),  # 1: onecycle would never decay
        ({"final_lr_fraction": 1.0}, "final_lr_fraction must be in"),
        ({"batch_size": 0}, "batch_size must be in"),
        ({"epochs": 0}, "epochs must be in"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 2**32}, "seed must be in \\[0, 4294967295\\], got 4294967296"),
        ({"augmentation": "mixup"}, "augmentation must be one of"),
        ({"scheduler": "plateau"}, "scheduler must be one of"),
        ({"widths": [64, 128]}, "widths must be three"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov needs momentum"),
        ({"train_subset": -5}, "train_subset must be"),
        ({"precision": "fp32"}, "precision must be one of bf16, fp16, got 'fp32'"),
    ],
)
def test_out_of_range_and_unknown_values_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **changes})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key"),
        ({"lr": "0.1"}, "lr must be of type float"),
        ({"lr": "1e-3"}, r"got '1e-3' \(YAML reads 1e-3 as text: write it with a decimal point, as 0.001\)"),
        ({"momentum": "0.9"}, r"momentum must be of type float, got '0.9'$"),  # quoted on purpose: no YAML hint
        ({1: 2, "lr": 0.1}, r"unknown key\(s\) 1; valid keys are"),
        ({"epochs": 2.5}, "epochs must be of type int"),
        ({"nesterov": "yes"}, "nesterov must be of type bool"),
        ({"widths": [64, "a", 3]}, "widths must be of type"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_wrong_keys_and_types_are_rejected(data, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


def test_unreadable_and_malformed_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{lr: ")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("binary.yaml", b"\x00\xff\xfe", "binary.yaml is not a text file (not UTF-8)"),
        ("bad.yaml", b"lr: [1, 2\n", "bad.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' at line"),
        ("indent.yml", b"lr: 1\n  momentum: 2\n", "indent.yml is not valid YAML: mapping values are not allowed here"),
        ("bad.json", b"{lr: ", "bad.json is not valid JSON: Expecting property name"),
        ("deep.json", b"[" * 100_000, "deep.json is nested too deeply to be a"),
        ("huge.json", b'{"seed": ' + b"9" * 5000 + b"}", "huge.json holds a value Python cannot read: Exceeds the"),
    ],
)
def test_config_and_space_files_that_do_not_parse_are_refused_in_one_line(tmp_path, name, content, message):
    from hpo.space import SearchSpace, SpaceError

    path = tmp_path / name
    path.write_bytes(content)
    for load, error, what in ((load_config, ConfigError, "config"), (SearchSpace.load, SpaceError, "space")):
        with pytest.raises(error) as err:
            load(path)
        assert f"{what} file {tmp_path}/{message}" in str(err.value) and "\n" not in str(err.value)


def test_a_file_read_as_json_is_reported_as_json_whatever_its_suffix(tmp_path):
    for name in ("bad.txt", "bad.cfg", "bad"):
        (tmp_path / name).write_text("{lr: ")
        with pytest.raises(ConfigError, match=f"{name} is not valid JSON"):
            load_config(tmp_path / name)
    (tmp_path / "bad.yml").write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yml is not valid YAML"):
        load_config(tmp_path / "bad.yml")
