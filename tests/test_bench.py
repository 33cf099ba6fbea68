"""The benchmarks run end to end on tiny data and print the figures they promise."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from hpo.augment import POLICIES
from hpo.bench import ALL_OFF, ALL_ON, main, run_ablation
from hpo.config import COMPONENTS_OFF, TrainConfig
from hpo.data import load_cifar10, train_val_split
from tests.conftest import refusal

TINY_FLAGS = ["--widths", "8", "16", "16", "--batch-size", "16", "--device", "cpu"]


def test_pipeline_benchmark_compares_against_a_dataloader(tiny_data_dir, capsys):
    assert main(["--data-dir", str(tiny_data_dir), "--epochs", "1", "--workers", "0", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "hpo on-device batches" in out and "DataLoader + per-image (0 workers)" in out
    assert "speed-up (ours / DataLoader):" in out
    for policy in ("flip_translate", "TrivialAugmentWide, per-image loop", "flip_translate_cutout"):
        assert policy in out
    assert "vs flip_translate" in out


def test_augment_only_prints_each_policy_against_flip_translate(tiny_data_dir, capsys):
    assert main(["--augment-only", "--data-dir", str(tiny_data_dir), *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "hpo on-device batches" not in out  # no training runs
    header, *table, gains = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    # batch 16 on the CPU: one batch per call, then the trainer's chunk of 32 batches per call
    assert re.split(r"\s{2,}", header) == [
        "policy",
        "img/s, a batch per call",
        "vs flip_translate",
        "img/s, 512 per call (train)",
        "vs flip_translate",
    ]
    rows = {name: figures for name, *figures in (re.split(r"\s{2,}", line) for line in table)}
    loop = "torchvision TrivialAugmentWide, per-image loop"
    assert list(rows) == [*POLICIES, loop] and len(rows[loop]) == 2
    assert all(len(rows[name]) == 4 for name in POLICIES)
    assert rows["flip_translate"][1] == rows["flip_translate"][3] == "1.00x"
    for figures in rows.values():
        for rate, ratio in zip(figures[::2], figures[1::2]):
            assert float(rate) > 0 and float(ratio.removesuffix("x")) > 0
    assert re.fullmatch(
        r"a chunk per call against a batch per call: flip_translate [\d.]+x, trivial_augment [\d.]+x", gains
    )


def test_the_augmentation_table_times_exactly_the_images_it_names(tiny_data_dir, monkeypatch):
    import hpo.bench

    timed = []
    monkeypatch.setattr(hpo.bench, "POLICIES", {"flip_translate": lambda x, gen: timed.append(len(x)) or x})
    train = load_cifar10(tiny_data_dir, download=False).train  # 100 images
    for n_images in (40, 250):  # fewer than the split has, then tiled up
        timed.clear()
        hpo.bench.time_augmentations(train, torch.device("cpu"), per_call=16, n_images=n_images, repeats=1)
        assert sum(timed[1:]) == n_images  # after the untimed first call


def test_ablation_rows_turn_off_one_component_each_then_all(tiny_data_dir):
    data = load_cifar10(tiny_data_dir, download=False)
    base = TrainConfig.recipe(batch_size=16, epochs=1, widths=(8, 16, 16))
    table = run_ablation(base, data, torch.device("cpu"), seeds=2)
    rows = {row["row"]: row for row in table}
    assert list(rows) == [ALL_ON, *(f"without {name}" for name in COMPONENTS_OFF), ALL_OFF]
    assert rows[ALL_ON]["off"] == [] and rows[ALL_OFF]["off"] == list(COMPONENTS_OFF)
    assert all(row["test_acc"].n == 2 for row in table)
    assert rows[ALL_OFF]["speedup"] == pytest.approx(1.0)
    assert rows[ALL_ON]["speedup"] == pytest.approx(rows[ALL_OFF]["seconds"] / rows[ALL_ON]["seconds"])


def test_ablation_cli_prints_the_table(tiny_data_dir, capsys):
    args = ["--ablation", "--seeds", "2", "--epochs", "1", "--data-dir", str(tiny_data_dir), *TINY_FLAGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ablation on cpu: 100 training images, tested on 20; batch 16, 1 epochs, widths 8/16/16" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(COMPONENTS_OFF) + 2  # header, all on, one row per component, all off
    assert table[-1].startswith(f"| {ALL_OFF}") and "1.00x" in table[-1]


def test_ablation_ends_only_has_two_rows(tiny_data_dir, capsys):
    args = ["--ablation", "--ends-only", "--seeds", "2", "--epochs", "1", "--data-dir", str(tiny_data_dir)]
    assert main([*args, *TINY_FLAGS]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == [ALL_ON, ALL_OFF]


@pytest.mark.parametrize(
    "flag",
    [["--seeds", "0"], ["--epochs", "-1"], ["--tile-to", "-5"], ["--retrain-best", "-1"], ["--retrain-best", "2"]],
)
def test_bad_values_are_one_line_without_traceback(tiny_data_dir, flag, capsys):
    refusal(main, ["--ablation", "--data-dir", str(tiny_data_dir), *flag], capsys)


def test_variants_train_each_change_like_a_trial_and_compare_with_the_first(tiny_data_dir, tmp_path, capsys):
    variants = tmp_path / "v.yaml"
    variants.write_text("recipe: {}\nfaster: {lr_decoupled: 40.0, momentum: 0.8}\nno lookahead: {lookahead: false}\n")
    assert main(["--variants", str(variants), "--data-dir", str(tiny_data_dir), "--seeds", "2", *TINY_FLAGS]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["recipe", "faster", "no lookahead"]
    assert rows[0].split("|")[4:] == [" +0.0000 ", rows[0].split("|")[5], " 1.00x ", ""]
    assert all(len(r.split("|")[3].split()) == 2 for r in rows)  # one value per seed
    assert all(float(r.split("|")[5]) > 0 for r in rows)  # median seconds per run


def test_variants_use_the_space_units_over_the_base(tiny_data_dir, monkeypatch):
    import hpo.bench
    from hpo.space import to_sgd

    base = TrainConfig.recipe(batch_size=16, epochs=1, widths=(8, 16, 16))
    data = load_cifar10(tiny_data_dir, download=False)
    seen, real_train = [], hpo.bench.train

    def spy(config, *args, **kwargs):
        seen.append(config)
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(hpo.bench, "train", spy)
    hpo.bench.run_variants({"a": {}, "b": {"lr_decoupled": 40.0, "momentum": 0.8}}, base, data, torch.device("cpu"), 1)
    warm_ups, seen = seen[:2], seen[2:]
    assert [w.replace(train_subset=0) for w in warm_ups] == seen  # each variant once, short, before the timed runs
    assert {w.train_subset for w in warm_ups} == {2 * base.batch_size}
    assert seen[0].lr == pytest.approx(base.lr) and seen[0].momentum == base.momentum
    assert (seen[1].lr, seen[1].momentum) == (pytest.approx(to_sgd(40.0, 0.0153, 0.8, 16)[0]), 0.8)
    assert seen[1].epochs == 1 and seen[1].widths == (8, 16, 16)


def test_variants_on_test_train_on_the_whole_training_set_and_score_the_test_set(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    import hpo.bench

    data = load_cifar10(tiny_data_dir, download=False)
    seen, real_train = [], hpo.bench.train

    def spy(config, train_data, eval_data, *args, **kwargs):
        seen.append((len(train_data), len(eval_data)))
        return real_train(config, train_data, eval_data, *args, **kwargs)

    monkeypatch.setattr(hpo.bench, "train", spy)
    base = TrainConfig.recipe(batch_size=16, epochs=1, widths=(8, 16, 16))
    hpo.bench.run_variants({"a": {}}, base, data, torch.device("cpu"), 1)
    hpo.bench.run_variants({"a": {}}, base, data, torch.device("cpu"), 1, on_test=True)
    hpo.bench.run_variants({"a": {}}, base, data, torch.device("cpu"), 1, tile_to=250)  # tiled after the split
    n_val = len(train_val_split(data.train, 0.1, seed=0)[1])
    seen = seen[1::2]  # after each call's warm-up run
    assert seen == [(len(data.train) - n_val, n_val), (len(data.train), len(data.test)), (250, n_val)]
    capsys.readouterr()
    (tmp_path / "v.yaml").write_text("recipe: {}\n")
    args = ["--variants", str(tmp_path / "v.yaml"), "--test", "--data-dir", str(tiny_data_dir), "--seeds", "1"]
    assert main([*args, *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy on {len(data.test)}" in out and "| variant | test acc (mean ± 95 % CI) |" in out
    line = refusal(main, ["--ablation", "--test", "--data-dir", str(tiny_data_dir)], capsys)
    assert "--test is for --variants" in line


def test_a_bad_variants_file_is_one_line(tiny_data_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {}\nwrong: {lr_decoupled: -3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.bench", "--variants", str(bad), "--data-dir", str(tiny_data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "'wrong'" in proc.stderr


def test_a_variants_file_that_is_not_text_is_one_line(tmp_path, capsys):
    (tmp_path / "v.yaml").write_bytes(b"\x00\xff\xfe")
    line = refusal(main, ["--variants", str(tmp_path / "v.yaml"), "--data-dir", str(tmp_path)], capsys)
    assert "v.yaml is not a text file (not UTF-8)" in line
    (tmp_path / "v.json").write_text("{}")  # no variants at all
    line = refusal(main, ["--variants", str(tmp_path / "v.json"), "--data-dir", str(tmp_path)], capsys)
    assert "v.json: expected label: {parameter: value, ...} entries" in line


@pytest.mark.parametrize(
    "name",
    [
        "space-probes.yaml",
        "cpu-lr-probes.yaml",
        "cpu-lr-vs-search.yaml",
        "gpu-lr-probes.yaml",
        "cpu-recipe-probes.yaml",
        "gpu-precision-probes.yaml",
        "cpu-warmup-probes.yaml",
    ],
)
def test_the_shipped_probes_are_valid_variants(name):
    from pathlib import Path

    import yaml

    from hpo.search import CPU_DEFAULTS
    from hpo.space import SearchSpace

    probes = yaml.safe_load((Path(__file__).parents[1] / "examples" / name).read_text())
    size = {k: CPU_DEFAULTS[k] for k in ("epochs", "widths", "train_subset")}
    base = TrainConfig.recipe(**size, batch_size=128)  # measured at batch 128, which their commands pass
    configs = {label: SearchSpace.to_config(values, base) for label, values in probes.items()}
    assert len({c.to_json() for c in configs.values()}) == len(configs)
    reference = next(iter(configs.values()))  # the row the others are compared with
    if name == "space-probes.yaml":  # measured at airbench94's per-example lr, which every row pins
        per_example = TrainConfig().lr * base.batch_size / TrainConfig().batch_size
        assert reference.matches(base.replace(lr=per_example))
    else:
        assert reference.matches(base)
    if name == "cpu-lr-probes.yaml":  # the row the file says keeps batch 1024's SGD lr and wd per step
        (per_step,) = [c for label, c in configs.items() if "per step" in label]
        default = TrainConfig()
        assert per_step.lr == pytest.approx(default.lr) and per_step.weight_decay == pytest.approx(default.weight_decay)


def test_the_batch_probes_are_the_recipe_at_each_batch_one_of_them_the_cpu_default():
    from pathlib import Path

    import yaml

    from hpo.search import CPU_DEFAULTS
    from hpo.space import SearchSpace

    probes = yaml.safe_load((Path(__file__).parents[1] / "examples" / "cpu-batch-probes.yaml").read_text())
    size = {k: CPU_DEFAULTS[k] for k in ("epochs", "widths", "train_subset")}
    base = TrainConfig.recipe(**size, batch_size=CPU_DEFAULTS["batch_size"])
    configs = [SearchSpace.to_config(values, base) for values in probes.values()]
    assert sorted(c.batch_size for c in configs) == [32, 64, 128]
    assert any(config.matches(base) for config in configs)
    for config in configs:
        recipe = TrainConfig.recipe(**size, batch_size=config.batch_size)
        assert config.lr == pytest.approx(recipe.lr, rel=1e-5)
        assert config.weight_decay == pytest.approx(recipe.weight_decay, rel=1e-5)


def test_packing_benchmark_runs_the_search_with_each_k(tiny_data_dir, capsys):
    # One K end to end (several worker processes are the search tests' job), on tiled data.
    args = ["--packing", "--k", "1", "--n-trials", "2", "--epochs", "1", "--data-dir", str(tiny_data_dir)]
    assert main([*args, "--tile-to", "150", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "packing on cpu: K = 1 worker processes on the CPU, cores split between them" in out
    assert "--sampler random --pruner none --seed 0 --no-warm-start" in out
    (row,) = [r for r in (line.split("|") for line in out.splitlines() if line.startswith("|")) if r[1].strip() == "1"]
    assert row[2].strip() == "2" and row[5].strip() == "1.00x"


def test_packing_table_compares_trials_per_hour_with_the_first_k(capsys):
    from hpo.bench_packing import print_packing

    one, two = {"search_s": 80.0, "command_s": 100.0}, {"search_s": 50.0, "command_s": 60.0}
    print_packing([{"k": 1, "trials": 8, **one}, {"k": 2, "trials": 8, **two}])
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert [c.strip() for c in row[1:-1]] == ["2", "8", "50.0", "576", "1.60x", "60.0", "480", "1.67x"]


def test_tiled_data_is_a_cifar_folder_of_the_repeated_training_set(tiny_data_dir, tmp_path):
    from hpo.bench_packing import tiled_data_dir

    data = load_cifar10(tiny_data_dir, download=False)
    tiled = load_cifar10(tiled_data_dir(str(tiny_data_dir), 250, tmp_path), download=False)
    assert len(tiled.train) == 250 and torch.equal(tiled.train.images[100:200], data.train.images)
    assert torch.equal(tiled.train.labels[200:], data.train.labels[:50])
    assert torch.equal(tiled.test.images, data.test.images)
