"""Train one config: ``train(config, train_data, eval_data, device, on_epoch) -> TrainResult``.

The trainer knows nothing about Optuna. A caller watches progress through ``on_epoch``, which gets an
``EpochStats`` after every evaluation and may return ``True`` to stop training (or raise).

The input pipeline keeps the whole split on the device as uint8, shuffles with ``randperm``, and augments and
normalises chunks of several batches at a time there: no DataLoader, no per-image work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from hpo.augment import alternating_flips, get_policy, normalize
from hpo.checkpoint import Checkpointer, history_to_dicts, load_checkpoint, restore_rng, rng_state
from hpo.config import TrainConfig, load_config
from hpo.data import Split, load_cifar10, train_val_split
from hpo.errors import ArgumentParser, HpoError, output_file, run_cli, write_output
from hpo.model import WHITEN_IMAGES, build_model, parameter_groups, whiten_stem
from hpo.schedule import build_scheduler

# Images per evaluation batch, by device type: on the CPU small batches stay in cache (2 threads, 932 images with
# test-time augmentation: 2.8 s at 128 against 3.7 s at 1024).
EVAL_BATCH = {"cpu": 128, "cuda": 1024}
LOOKAHEAD_EVERY = 5  # steps between lookahead pulls
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY  # the EMA's decay, times progress**3 (so it acts mostly at the end)
# Images augmented per call, by device type. An augmentation is a fixed sequence of batched kernels, so on a GPU
# their launches, not the pixels, set its speed at one batch per call (H200: trivial_augment 0.25 M img/s at
# 512 images per call, 2.1 M at 8192). On the CPU, chunks beyond about 1 000 images fall out of cache and run slower.
AUGMENT_CHUNK = {"cpu": 512, "cuda": 8192}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # TrainConfig.precision -> autocast dtype


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    val_acc: float
    val_loss: float
    train_loss: float
    elapsed: float  # seconds since training started, evaluation included
    lr: float  # learning rate at the end of the epoch
    tta_level: int = 0  # test-time augmentation used for val_acc / val_loss (the final epoch's, by the config)
    replayed: bool = False  # trained by an earlier attempt and restored from its checkpoint, not trained again


EpochCallback = Callable[[EpochStats], "bool | None"]
# epoch number -> batches of (normalised float images, labels) on the training device
BatchSource = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[EpochStats]
    val_acc: float  # accuracy on the evaluation split after the last epoch run
    val_loss: float
    epochs_run: int
    stopped_early: bool  # the callback asked to stop, or the loss diverged
    diverged: bool  # the training loss became NaN or infinite
    train_seconds: float  # wall time of the optimisation steps, evaluation excluded
    wall_seconds: float
    train_images: int  # size of the training split used (after train_subset)
    images_seen: int  # training images processed, over all epochs
    images_per_second: float
    device: str
    model: nn.Module = field(repr=False, compare=False)

    @property
    def best_val_acc(self) -> float:
        scored = [h.val_acc for h in self.history if not math.isnan(h.val_acc)]
        return max(scored, default=float("nan"))

    def summary(self) -> dict:
        """The result without the model, ready for JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        out["config"] = self.config.to_dict()
        out["history"] = [dataclasses.asdict(h) for h in self.history]
        out["best_val_acc"] = self.best_val_acc
        return out


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without a GPU, or for a GPU that is not visible, is a user
    error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise HpoError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HpoError(f"--device {name} was requested but no CUDA GPU is available: use --device cpu or auto")
    if name.startswith("cuda:"):
        index, count = name.removeprefix("cuda:"), torch.cuda.device_count()
        if not (index.isdecimal() and int(index) < count):
            valid = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise HpoError(f"--device {name}: no such GPU; {count} visible, so use {valid} (or cuda)")
    return torch.device(name)


def _for_device(table: dict[str, int], device: torch.device) -> int:
    """The device type's entry of a per-device table; accelerators other than CUDA take CUDA's."""
    return table.get(device.type, table["cuda"])


def augment_chunk(batch: int, device: torch.device) -> int:
    """Images augmented per call on ``device``: as many whole batches as fit in its AUGMENT_CHUNK, at least one."""
    return batch * max(1, _for_device(AUGMENT_CHUNK, device) // batch)


def eval_batch(device: torch.device) -> int:
    """Images per evaluation batch on ``device``."""
    return _for_device(EVAL_BATCH, device)


def device_batches(data: Split, config: TrainConfig, gen: torch.Generator, dtype: torch.dtype) -> BatchSource:
    """Shuffled, augmented, normalised batches drawn from a split that already lives on the device."""
    augment = get_policy(config.augmentation)
    n = len(data)
    batch = min(config.batch_size, n)
    device = data.images.device
    chunk = augment_chunk(batch, device)
    layout = torch.channels_last if _channels_last(config, device) else torch.contiguous_format
    # Drawn once, before any checkpoint restores the generator, so a resumed run flips as the original did.
    first_flips = torch.rand(n, device=device, generator=gen) < 0.5 if config.alternate_flip else None

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, device=device, generator=gen)
        flips = alternating_flips(first_flips, epoch) if first_flips is not None else None
        # Drop the ragged last batch: the order is reshuffled every epoch, so no image is left out for long.
        for idx in order[: n - n % batch].split(chunk):
            images = augment(data.images[idx], gen, None if flips is None else flips[idx])
            images = normalize(images, dtype).contiguous(memory_format=layout)
            yield from zip(images.split(batch), data.labels[idx].split(batch))

    return epoch_batches


def predict(model: nn.Module, x: torch.Tensor, tta_level: int = 0) -> torch.Tensor:
    """Logits for normalised images; with TTA, the weighted mean of the views' logits (airbench's weights):
    level 1 averages each image with its mirror; level 2 gives that 1/2 and 1/4 each to the same pair
    translated by one pixel up-left and down-right."""

    def view(v: torch.Tensor) -> torch.Tensor:
        return model(v).float()  # average in fp32: bf16 logits (autocast) keep only ~3 significant digits

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (view(v) + view(v.flip(-1))) if tta_level >= 1 else view(v)

    logits = mirrored(x)
    if tta_level >= 2:
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
        logits = 0.5 * logits + 0.25 * (mirrored(up_left) + mirrored(down_right))
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Split,
    device: torch.device,
    tta_level: int = 0,
    channels_last: bool = False,
    precision: str = "bf16",
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model on a split; one host sync at the end."""
    dtype = autocast_dtype(device, precision)
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = eval_batch(device)
    for start in range(0, len(data), batch):
        x = data.images[start : start + batch].to(device, non_blocking=True)
        y = data.labels[start : start + batch].to(device, non_blocking=True)
        with _autocast(device, dtype):
            logits = predict(model, normalize(x).contiguous(memory_format=layout), tta_level)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(1, len(data))
    return correct.item() / n, loss.item() / n


class Lookahead:
    """airbench's lookahead: every LOOKAHEAD_EVERY steps, move an EMA of the weights (and BatchNorm statistics)
    towards them and set the weights to it. The EMA's decay grows as progress**3, so early training is left
    alone and the last steps average over many. The final step is always a pull."""

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        # state_dict() tensors share storage with the live parameters and buffers, so these stay current.
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self.live]
        self.total_steps = total_steps

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based)."""
        if step % LOOKAHEAD_EVERY and step != self.total_steps:
            return
        decay = LOOKAHEAD_DECAY * (step / self.total_steps) ** 3
        torch._foreach_lerp_(self.ema, self.live, 1.0 - decay)
        torch._foreach_copy_(self.live, self.ema)

    def state_dict(self) -> list[torch.Tensor]:
        return self.ema

    def load_state_dict(self, ema: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.ema, ema)


def train(
    config: TrainConfig,
    train_data: Split,
    eval_data: Split,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
    batches: BatchSource | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: float = 0.0,
    on_first_step: Callable[[], None] | None = None,
    evaluate_every_epoch: bool = True,
) -> TrainResult:
    """Train ``config`` on ``train_data``, evaluating on ``eval_data`` after every epoch.

    ``batches`` replaces the on-device input pipeline (the benchmark passes a DataLoader through it).
    With ``checkpoint``, state is saved there after an epoch (after every one, or with ``checkpoint_every`` at most
    every that many seconds, at the last epoch, and when an exception or interrupt ends training), and a checkpoint
    already there for the same config is resumed from: its epochs are replayed to ``on_epoch`` and training
    continues after them. ``on_first_step`` is called once, when the first optimizer step has run.
    With ``evaluate_every_epoch=False`` only the last epoch (the configured last, or the one whose training loss
    diverged) is scored; the others report NaN accuracy and loss
    (the retrain scores the test set once: a 6-epoch CPU run of the default search's size took 7 % less time).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes never change within a run: let cuDNN pick its kernels
    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    train_data = train_data.first(config.train_subset).to(device)
    eval_data = eval_data.to(device)
    channels_last = _channels_last(config, device)
    if batches is None:
        batches = device_batches(train_data, config, gen, torch.float32)
    steps_per_epoch = max(1, len(train_data) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    dtype = autocast_dtype(device, config.precision)
    # fp16 gradients can underflow: scale the loss up and skip the steps whose gradients overflow. A disabled scaler
    # (bf16, fp32) passes everything through unchanged.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model = build_model(config, device, channels_last)
    if config.whiten:
        whiten_stem(model.stem, normalize(train_data.images[:WHITEN_IMAGES]))
    optimizer = torch.optim.SGD(
        parameter_groups(model, config),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=config.fast_step or None,
    )
    scheduler = build_scheduler(optimizer, config, total_steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    history: list[EpochStats] = []
    restored = load_checkpoint(checkpoint, config.to_dict()) if checkpoint is not None else None
    train_seconds, images_seen = 0.0, 0
    if restored is not None:
        model.load_state_dict(restored["model"])
        optimizer.load_state_dict(restored["optimizer"])
        scheduler.load_state_dict(restored["scheduler"])
        restore_rng(restored["rng"], gen, device)
        if restored.get("scaler"):  # empty when saved by a disabled scaler (bf16, or on the CPU)
            scaler.load_state_dict(restored["scaler"])
        train_seconds, images_seen = restored["train_seconds"], restored["images_seen"]
    lookahead = Lookahead(model, total_steps) if config.lookahead else None
    if lookahead is not None and restored is not None:
        lookahead.load_state_dict(restored["lookahead"])
    replay = [EpochStats(**h) for h in restored["history"]] if restored else []
    start = time.perf_counter() - (replay[-1].elapsed if replay else 0.0)
    saver = Checkpointer(checkpoint, checkpoint_every) if checkpoint is not None else None

    def state(stats: EpochStats) -> dict:
        return {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "lookahead": lookahead.state_dict() if lookahead is not None else None,
            "rng": rng_state(gen, device),
            "scaler": scaler.state_dict(),
            "history": history_to_dicts([*history, stats]),
            "train_seconds": train_seconds,
            "images_seen": images_seen,
        }

    stopped_early = diverged = False
    try:
        for epoch in range(1, config.epochs + 1):
            if epoch <= len(replay):
                # trained before a crash: replayed so the caller sees every epoch once
                stats = dataclasses.replace(replay[epoch - 1], replayed=True)
            else:
                # The whitening stem's bias trains only for the first epochs; then the stem is fixed.
                model.stem.bias.requires_grad_(not config.whiten or epoch <= config.whiten_bias_epochs)
                epoch_start = time.perf_counter()
                train_loss, n_seen = _train_epoch(
                    model,
                    batches(epoch),
                    steps_per_epoch,
                    optimizer,
                    scheduler,
                    loss_fn,
                    device,
                    lookahead,
                    scaler,
                    dtype,
                    on_first_step,
                )
                on_first_step = None
                train_seconds += time.perf_counter() - epoch_start
                images_seen += n_seen
                # Test-time augmentation scores the final model only; the epochs before feed the pruner, which
                # compares trials at the same epoch, so plain accuracy is enough there and 6x cheaper. A run scored
                # once is scored on the epoch it ends, also when the loss diverged: the model it leaves behind.
                final = epoch == config.epochs or (not evaluate_every_epoch and not math.isfinite(train_loss))
                tta_level = config.tta_level if final else 0
                if evaluate_every_epoch or final:
                    val_acc, val_loss = evaluate(model, eval_data, device, tta_level, channels_last, config.precision)
                else:
                    val_acc, val_loss = math.nan, math.nan
                lr = scheduler.get_last_lr()[-1]
                stats = EpochStats(epoch, val_acc, val_loss, train_loss, time.perf_counter() - start, lr, tta_level)
                if saver is not None:
                    saver.epoch_end(state(stats), final=epoch == config.epochs)
            history.append(stats)
            diverged = not math.isfinite(stats.train_loss)
            stop = on_epoch(stats) if on_epoch is not None else False
            if diverged or (stop and epoch < config.epochs):
                stopped_early = True
                break
    except BaseException:
        if saver is not None:
            saver.flush()  # the last finished epoch, so a retry resumes there
        raise

    last = history[-1]
    return TrainResult(
        config=config,
        history=history,
        val_acc=last.val_acc,
        val_loss=last.val_loss,
        epochs_run=len(history),
        stopped_early=stopped_early,
        diverged=diverged,
        train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - start,
        train_images=len(train_data),
        images_seen=images_seen,
        images_per_second=images_seen / train_seconds if train_seconds > 0 else 0.0,
        device=str(device),
        model=model,
    )


def _train_epoch(
    model, batches, steps, optimizer, scheduler, loss_fn, device, lookahead, scaler, dtype, on_first_step=None
) -> tuple[float, int]:
    """One pass over the batches; returns (mean training loss, images seen) with a single host sync
    (two when ``on_first_step`` is given: it is called once the first step has run on the device)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    n_seen = 0
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break  # keep the schedule exact even if a batch source yields more
        with _autocast(device, dtype):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # A fused optimizer takes the scaler's inverse scale and overflow flag as tensors: no host sync here.
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if lookahead is not None:
            lookahead.after_step(scheduler.last_epoch)  # the scheduler counts the steps taken so far
        loss_sum += loss.detach() * y.shape[0]  # stays on the device: no per-batch host sync
        n_seen += y.shape[0]
        if on_first_step is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            on_first_step()
            on_first_step = None
    return loss_sum.item() / max(1, n_seen), n_seen


def _channels_last(config: TrainConfig, device: torch.device) -> bool:
    # Channels-last lets cuDNN use its NHWC tensor-core kernels, and oneDNN its faster CPU ones (about 1.4x on
    # 2 cores); the pre-recipe step used it on CUDA only.
    return config.fast_step or device.type == "cuda"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype a config's ``precision`` autocasts to on ``device``; None on the CPU, which trains in fp32."""
    return None if device.type == "cpu" else AUTOCAST_DTYPES[precision]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    # Half precision on a GPU halves memory traffic; bf16 keeps fp32's range, fp16 needs the loss scaled.
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def parse_overrides(pairs: list[str]) -> dict:
    """``["lr=0.5", "widths=[32,64,64]"]`` -> dict, values parsed as YAML scalars/lists."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HpoError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer of over 4 300 digits
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise HpoError(f"--set {key.strip()}: the value is not a YAML scalar or list ({problem})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m hpo.train", description="Train one config on CIFAR-10.")
    parser.add_argument(
        "--config", type=Path, help="JSON/YAML config (or an exported file); default: airbench94's recipe"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (default: data)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share of the train set (default 0.1)"
    )
    parser.add_argument("--output", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.output:
        output_file(args.output, "--output")  # refused now, not after the training

    config = load_config(args.config) if args.config else TrainConfig()
    if args.set:
        config = TrainConfig.from_dict({**config.to_dict(), **parse_overrides(args.set)}, source="--set")
    device = resolve_device(args.device)
    data = load_cifar10(args.data_dir)
    train_split, val_split = train_val_split(data.train, args.val_fraction, seed=0)
    print(f"training on {len(train_split.first(config.train_subset))} images, validating on {len(val_split)}, {device}")

    def report(s: EpochStats) -> None:
        print(
            f"epoch {s.epoch:3d}  train loss {s.train_loss:.4f}  val loss {s.val_loss:.4f}  "
            f"val acc {s.val_acc:.4f}  lr {s.lr:.4g}  {s.elapsed:.1f}s",
            flush=True,
        )

    result = train(config, train_split, val_split, device, on_epoch=report)
    print(
        f"done: val acc {result.val_acc:.4f} (best {result.best_val_acc:.4f}) after {result.epochs_run} epochs, "
        f"{result.train_seconds:.1f}s training, {result.images_per_second:.0f} img/s"
        + ("  [diverged: loss became NaN/inf]" if result.diverged else "")
    )
    if args.output:
        write_output(args.output, json.dumps(result.summary(), indent=2), "--output")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
