import json
import math
import subprocess
import sys

import pytest
import torch

import hpo.train
from hpo.augment import get_policy
from hpo.config import COMPONENTS_OFF, TrainConfig
from hpo.data import Split, load_cifar10, train_val_split
from hpo.model import build_model
from hpo.train import (
    AUGMENT_CHUNK,
    EVAL_BATCH,
    augment_chunk,
    device_batches,
    eval_batch,
    evaluate,
    resolve_device,
    train,
)

TINY = dict(widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=2)


@pytest.fixture
def splits(tiny_data_dir):
    return train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)


def test_result_has_history_and_throughput(splits):
    result = train(TrainConfig(**TINY), *splits)
    assert result.epochs_run == 2 and len(result.history) == 2
    assert [h.epoch for h in result.history] == [1, 2]
    assert result.val_acc == result.history[-1].val_acc
    assert (result.val_acc * len(splits[1])) == pytest.approx(round(result.val_acc * len(splits[1])))  # k / n
    assert result.images_seen == 2 * (len(splits[0]) // 16) * 16 and result.images_per_second > 0
    assert result.history[1].elapsed >= result.history[0].elapsed
    json.dumps(result.summary())


def test_same_config_and_seed_reproduce_exactly_on_cpu(splits):
    config = TrainConfig(**TINY, augmentation="flip_translate_cutout", dropout=0.3)
    a, b = train(config, *splits), train(config, *splits)
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = train(config.replace(seed=1), *splits)
    assert [h.val_loss for h in a.history] != [h.val_loss for h in c.history]


def test_trivial_augment_runs_reproduce_too(splits):
    config = TrainConfig(**TINY, augmentation="trivial_augment")
    a, b = train(config, *splits), train(config, *splits)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]


def test_chunks_are_whole_batches_and_at_least_one():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert augment_chunk(128, cpu) == 512 and augment_chunk(100, cpu) == 500 and augment_chunk(1024, cpu) == 1024
    assert augment_chunk(512, cuda) == 8192 and augment_chunk(1000, cuda) == 8000


def test_an_epoch_augments_a_chunk_of_batches_per_call(monkeypatch):
    # 57 images, batch 10: 5 whole batches an epoch (the ragged 7 dropped), augmented as chunks of 20, 20, 10.
    calls = []

    def counting_policy(name):
        policy = get_policy(name)
        return lambda x, gen, mask=None: calls.append(len(x)) or policy(x, gen, mask)

    monkeypatch.setitem(AUGMENT_CHUNK, "cpu", 25)
    monkeypatch.setattr(hpo.train, "get_policy", counting_policy)
    data = Split(torch.randint(0, 256, (57, 3, 32, 32), dtype=torch.uint8), torch.arange(57))
    batches = device_batches(data, TrainConfig(batch_size=10), torch.Generator().manual_seed(0), torch.float32)
    for epoch in (1, 2):
        calls.clear()
        labels = [y for _, y in batches(epoch)]
        assert calls == [20, 20, 10]
        assert [len(y) for y in labels] == [10] * 5
        assert len(set(torch.cat(labels).tolist())) == 50  # each image at most once an epoch


def test_callback_sees_every_epoch_and_can_stop(splits):

    seen = []

    def stop_after_two(stats):
        seen.append((stats.epoch, stats.val_acc, stats.val_loss, stats.elapsed))
        return stats.epoch == 2

    result = train(TrainConfig(**{**TINY, "epochs": 5}), *splits, on_epoch=stop_after_two)
    assert [s[0] for s in seen] == [1, 2]
    assert result.epochs_run == 2 and result.stopped_early


def test_scoring_only_the_last_epoch_trains_the_same_model_and_evaluates_once(splits, monkeypatch):
    config = TrainConfig(**{**TINY, "epochs": 3})
    every = train(config, *splits)
    evaluations = []
    evaluate = hpo.train.evaluate
    monkeypatch.setattr(hpo.train, "evaluate", lambda *a, **k: evaluations.append(a[3]) or evaluate(*a, **k))
    last = train(config, *splits, evaluate_every_epoch=False)
    assert evaluations == [config.tta_level]  # once, after the last epoch, with the config's TTA
    assert [math.isnan(h.val_acc) and math.isnan(h.val_loss) for h in last.history] == [True, True, False]
    assert (last.val_acc, last.val_loss) == (every.val_acc, every.val_loss)
    assert last.best_val_acc == last.val_acc
    assert all(torch.equal(p, q) for p, q in zip(every.model.state_dict().values(), last.model.state_dict().values()))


def test_evaluation_runs_in_batches_sized_for_the_device_with_the_same_scores(monkeypatch):
    assert eval_batch(torch.device("cpu")) == 128 and eval_batch(torch.device("cuda")) == 1024
    data = Split(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300) % 10)
    model = build_model(TrainConfig(**TINY))
    sizes = []
    model.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    batched = evaluate(model, data, torch.device("cpu"))
    assert sizes == [128, 128, 44]
    monkeypatch.setitem(EVAL_BATCH, "cpu", 1024)
    whole = evaluate(model, data, torch.device("cpu"))
    assert batched[0] == whole[0] and batched[1] == pytest.approx(whole[1], rel=1e-5)


def test_callback_exception_propagates(splits):
    class Stop(Exception):
        pass

    def boom(stats):
        raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(**TINY), *splits, on_epoch=boom)


def test_divergence_stops_training_early(splits):
    # The recipe's net shrugs off lr 100 (scale-free BatchNorm, scaled logits); the plain one blows up.
    config = TrainConfig(**{**TINY, "epochs": 4, "lr": 100.0, "scheduler": "constant", "weight_decay": 0.0})
    result = train(config.replace(momentum=0.99).without(*COMPONENTS_OFF), *splits)  # 0.9: borderline, flaky
    assert result.diverged and result.stopped_early and result.epochs_run < 4


def test_a_run_scored_once_is_scored_on_the_epoch_it_diverged(splits):
    # The retrain scores only the last epoch; a run that diverges before it must still get a score, not NaN.
    config = TrainConfig(**{**TINY, "epochs": 4, "lr": 100.0, "scheduler": "constant", "weight_decay": 0.0})
    result = train(config.replace(momentum=0.99).without(*COMPONENTS_OFF), *splits, evaluate_every_epoch=False)
    assert result.diverged and result.epochs_run < 4
    assert 0 <= result.val_acc <= 1 and [math.isnan(s.val_acc) for s in result.history][-1] is False
    assert all(math.isnan(s.val_acc) for s in result.history[:-1])


def test_train_subset_limits_images(splits):
    assert len(splits[0]) > 32
    result = train(TrainConfig(**{**TINY, "epochs": 2, "train_subset": 32}), *splits)
    assert result.train_images == 32 and result.images_seen == 2 * 32


def test_cuda_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from hpo.errors import HpoError

    with pytest.raises(HpoError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_a_gpu_index_that_is_not_visible_is_a_user_error(monkeypatch):
    from hpo.errors import HpoError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(HpoError, match=r"^--device cuda:5: no such GPU; 1 visible, so use cuda:0 \(or cuda\)$"):
        resolve_device("cuda:5")
    with pytest.raises(HpoError, match="^--device cuda:x: no such GPU; 1 visible"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    with pytest.raises(HpoError, match=r"8 visible, so use cuda:0 to cuda:7 \(or cuda\)$"):
        resolve_device("cuda:8")
    assert resolve_device("cuda:7") == torch.device("cuda:7") and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(HpoError, match="^--device cuda:: no such GPU"):
        resolve_device("cuda:")
    with pytest.raises(HpoError, match="^--device cuda:²: no such GPU"):  # a digit to isdigit(), not to int()
        resolve_device("cuda:²")


def test_cli_trains_a_config_file(tiny_data_dir, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(TrainConfig(**TINY).to_json())
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo.train",
            "--config",
            str(cfg),
            "--data-dir",
            str(tiny_data_dir),
            "--device",
            "cpu",
            "--set",
            "epochs=1",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1" in proc.stdout and "done: val acc" in proc.stdout
    assert json.loads(out.read_text())["epochs_run"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "scheduler=plateau"], "scheduler must be one of"),
        (["--device", "tpu"], "unknown device"),
        (["--config", "/nonexistent.json"], "cannot read config file"),
        (["--set", "lr=[1,"], "--set lr: the value is not a YAML scalar or list (expected the node content"),
        (["--set", "seed=" + "9" * 5000], "--set seed: the value is not a YAML scalar or list (Exceeds the limit"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(tiny_data_dir, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.train", "--data-dir", str(tiny_data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_missing_data_offline(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.train", "--data-dir", str(tmp_path / "none"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **__import__("os").environ,
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        },
    )
    assert proc.returncode == 2 and "cifar-10-python.tar.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_resume_matches_an_uninterrupted_run(splits, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 4}, augmentation="flip_translate_cutout", dropout=0.2)
    straight = train(config, *splits)

    class Crash(Exception):
        pass

    def crash_after_two(stats):
        if stats.epoch == 2:
            raise Crash

    ckpt = tmp_path / "trial.pt"
    with pytest.raises(Crash):
        train(config, *splits, checkpoint=ckpt, on_epoch=crash_after_two)
    assert ckpt.is_file()
    seen = []
    resumed = train(config, *splits, checkpoint=ckpt, on_epoch=lambda s: seen.append(s.epoch))
    assert seen == [1, 2, 3, 4]  # restored epochs are replayed, then training goes on
    assert [h.replayed for h in resumed.history] == [True, True, False, False]  # what the accounting leaves out
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in straight.history]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_config_is_ignored(splits, tmp_path):
    from hpo.checkpoint import load_checkpoint

    ckpt = tmp_path / "trial.pt"
    first = train(TrainConfig(**TINY), *splits, checkpoint=ckpt)
    other = TrainConfig(**TINY).replace(lr=0.05)
    second = train(other, *splits, checkpoint=ckpt)
    # Trained from scratch (a replay would repeat the first run's losses) and the checkpoint now is the new run's.
    assert [h.val_loss for h in second.history] != [h.val_loss for h in first.history]
    assert load_checkpoint(ckpt, other.to_dict()) is not None


def test_time_based_checkpoints_write_the_last_epoch_and_on_an_exception_only(splits, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 4})
    straight = train(config, *splits)

    class Crash(Exception):
        pass

    ckpt, on_disk = tmp_path / "trial.pt", []

    def crash_after_two(stats):
        on_disk.append(ckpt.exists())
        if stats.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        train(config, *splits, checkpoint=ckpt, checkpoint_every=3600, on_epoch=crash_after_two)
    assert on_disk == [False, False]  # within the interval: no write at an epoch's end
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 2  # the exception wrote the last epoch's state
    seen = []
    resumed = train(config, *splits, checkpoint=ckpt, checkpoint_every=3600, on_epoch=lambda s: seen.append(s.epoch))
    assert seen == [1, 2, 3, 4] and [h.val_loss for h in resumed.history] == [h.val_loss for h in straight.history]
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 4  # the last epoch is always written


def _random_split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return Split(images, torch.randint(0, 10, (n,), generator=gen))


def test_lookahead_and_schedule_count_global_steps_and_drop_a_ragged_last_batch(monkeypatch):
    # 90 images at batch 16: 5 full steps per epoch (the last 10 images are dropped), 10 in all.
    steps = []
    after_step = hpo.train.Lookahead.after_step
    spy = lambda self, step: steps.append(step) or after_step(self, step)  # noqa: E731
    monkeypatch.setattr(hpo.train.Lookahead, "after_step", spy)
    config = TrainConfig(**TINY)
    result = train(config, _random_split(90, 0), _random_split(20, 1))
    assert steps == list(range(1, 11))  # not 1..5 twice: the EMA's decay grows with the step over the whole run
    assert result.history[-1].lr == pytest.approx(config.lr * config.final_lr_fraction)  # the schedule ends on time


def test_label_smoothing_reaches_the_loss():
    data, held_out = _random_split(32, 0), _random_split(16, 1)
    plain = train(TrainConfig(**TINY, label_smoothing=0.0), data, held_out)
    smoothed = train(TrainConfig(**TINY, label_smoothing=0.2), data, held_out)
    assert plain.history[0].train_loss != smoothed.history[0].train_loss


def test_resume_restores_the_lookahead_average_when_an_epoch_does_not_end_on_a_pull(tmp_path):
    # 80 images at batch 32: 2 steps per epoch, so the epoch ends between two lookahead pulls (every 5 steps).
    config = TrainConfig(**{**TINY, "batch_size": 32, "epochs": 4})
    data, held_out = _random_split(80, 0), _random_split(20, 1)
    straight = train(config, data, held_out)

    def crash(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, held_out, checkpoint=tmp_path / "c.pt", on_epoch=crash)
    resumed = train(config, data, held_out, checkpoint=tmp_path / "c.pt")
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_flush_after_a_write_does_not_put_back_an_older_epoch(tmp_path, monkeypatch):
    import hpo.checkpoint
    from hpo.checkpoint import Checkpointer

    clock = [0.0]
    monkeypatch.setattr(hpo.checkpoint.time, "monotonic", lambda: clock[0])
    path = tmp_path / "trial.pt"
    saver = Checkpointer(path, every=10)
    clock[0] = 1
    saver.epoch_end({"epoch": 1})  # within the interval: kept in memory
    assert not path.exists()
    clock[0] = 11
    saver.epoch_end({"epoch": 2})  # the interval has passed: written
    saver.flush()  # as when the next epoch raises before its end
    assert torch.load(path, weights_only=True)["epoch"] == 2 and saver.writes == 1


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(tmp_path, monkeypatch):
    import hpo.checkpoint
    from hpo.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "trial.pt"
    save_checkpoint(path, {"epoch": 1, "config": {}})

    def half_then_full_disk(state, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hpo.checkpoint.torch, "save", half_then_full_disk)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2, "config": {}})
    assert load_checkpoint(path, {}) == {"epoch": 1, "config": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["trial.pt"]  # no temporary file left either
    monkeypatch.undo()
    torch.save([1, 2], path)  # readable, but not a checkpoint: start from scratch instead of failing the trial
    assert load_checkpoint(path, {}) is None


def test_precision_picks_the_gpus_autocast_dtype_and_leaves_the_cpu_in_fp32(splits):
    from hpo.train import autocast_dtype

    cuda = torch.device("cuda")
    assert autocast_dtype(cuda, "bf16") is torch.bfloat16 and autocast_dtype(cuda, "fp16") is torch.float16
    assert autocast_dtype(torch.device("cpu"), "fp16") is None
    bf16, fp16 = (train(TrainConfig(**TINY, precision=p), *splits) for p in ("bf16", "fp16"))
    assert [h.val_loss for h in bf16.history] == [h.val_loss for h in fp16.history]  # the CPU trains in fp32


@pytest.fixture
def fp16_on_the_cpu(monkeypatch):
    """fp16 autocast with a loss scaler on the CPU, as precision fp16 trains on a GPU (CPU autocast takes fp16).
    The scale grows after every step instead of every 2000, so a tiny run overflows and backs off; returns the
    scale after each step."""
    monkeypatch.setattr(hpo.train, "autocast_dtype", lambda device, precision: hpo.train.AUTOCAST_DTYPES[precision])
    init, update, scales = torch.amp.GradScaler.__init__, torch.amp.GradScaler.update, []
    monkeypatch.setattr(torch.amp.GradScaler, "__init__", lambda self, *a, **k: init(self, *a, growth_interval=1, **k))
    monkeypatch.setattr(torch.amp.GradScaler, "update", lambda self: update(self) or scales.append(self.get_scale()))
    return scales


def test_fp16_trains_through_a_loss_scaler(splits, fp16_on_the_cpu):
    config = TrainConfig(**TINY, precision="fp16")
    result = train(config, *splits)
    steps = result.epochs_run * (len(splits[0]) // config.batch_size)
    assert len(fp16_on_the_cpu) == steps  # every step went through the scaler
    assert fp16_on_the_cpu[0] == 2.0**17 and max(fp16_on_the_cpu) > 2.0**17  # it grew
    assert result.history[-1].val_acc > 0 and math.isfinite(result.history[-1].train_loss)
    bf16 = train(config.replace(precision="bf16"), *splits)
    assert [h.train_loss for h in bf16.history] != [h.train_loss for h in result.history]  # it autocast to fp16


def test_fp16_resume_restores_the_loss_scale(splits, tmp_path, fp16_on_the_cpu):
    config = TrainConfig(**{**TINY, "epochs": 4}, precision="fp16")
    straight = train(config, *splits)
    fp16_on_the_cpu.clear()

    def crash(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, *splits, checkpoint=tmp_path / "c.pt", on_epoch=crash)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["scaler"]["scale"] == fp16_on_the_cpu[-1]
    resumed = train(config, *splits, checkpoint=tmp_path / "c.pt")
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in straight.history]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
