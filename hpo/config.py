"""The one training configuration: what a trial samples, what export writes and what retrain reads.

Optimizer values are in plain PyTorch terms: ``lr`` is the SGD learning rate applied to the *mean*
loss over a batch, ``weight_decay`` is ``torch.optim.SGD``'s (coupled) L2 coefficient.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import HpoError

AUGMENTATIONS = ("none", "flip", "flip_translate", "flip_translate_cutout", "trivial_augment")
SCHEDULERS = ("constant", "step", "cosine", "onecycle", "exponential")
HEAD_INITS = ("default", "small")  # PyTorch's Linear init, or N(0, 0.01) (the pre-recipe trainer's)
TTA_LEVELS = (0, 1, 2)
PRECISIONS = ("bf16", "fp16")
TTA_NAMES = {0: "none", 1: "mirror", 2: "mirror + 1-pixel translations"}
WHITEN_WIDTH = 24  # a 2x2 RGB patch has 12 dimensions; the whitening stem keeps each eigenvector and its negative
MAX_SEED = 2**32 - 1  # the range every seeded generator here (torch, numpy, Optuna's samplers) accepts

# airbench94's components, each with the values that turn it off (the pre-recipe trainer's behaviour):
# what the ablation benchmark switches, one at a time and all together.
COMPONENTS_OFF: dict[str, dict[str, Any]] = {
    "whiten": {"whiten": False},
    "batchnorm": {"bn_scale": True, "bias_lr_scale": 1.0, "bn_momentum": 0.1, "bn_eps": 1e-5},
    "logit_scale": {"logit_scale": 1.0, "head_init": "small"},
    "lookahead": {"lookahead": False},
    "tta": {"tta_level": 0},
    "alternate_flip": {"alternate_flip": False},
    "fast_step": {"fast_step": False},
    "dirac_init": {"dirac_init": False},
}

RECIPE_LABEL = "recipe (the defaults)"  # how the default config is named where it runs as a trial or is retrained


class ConfigError(HpoError):
    """A configuration value is missing, unknown, mistyped or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run.

    The defaults are airbench94's recipe (batch 1024, 10 epochs, widths 64/256/256); ``TrainConfig.recipe``
    gives the same recipe at another batch size, epochs and widths. Each of the recipe's components
    (whitening ... fast_step) is a switch, so an ablation can turn it off and a search can sample it.
    """

    # airbench94's decoupled lr 11.5 and wd 0.0153 per 1024 examples, in plain SGD terms at batch 1024.
    lr: float = 1.5
    momentum: float = 0.85
    weight_decay: float = 0.0153 / 11.5
    nesterov: bool = True
    dropout: float = 0.0
    label_smoothing: float = 0.2
    batch_size: int = 1024
    epochs: int = 10
    augmentation: str = "flip_translate"
    scheduler: str = "onecycle"
    # onecycle only: fraction of all steps spent warming up, and the lr at the end as a fraction of the peak.
    warmup_fraction: float = 0.23
    final_lr_fraction: float = 0.07
    widths: tuple[int, int, int] = (64, 256, 256)
    # Channels of the 2x2 stem conv; a whitening stem takes the top stem_width/2 eigenvectors (at most 12).
    stem_width: int = WHITEN_WIDTH
    seed: int = 0
    # Cap on training images (0 = all): lets a CPU search run on a slice of the data.
    train_subset: int = 0
    # The autocast dtype on a GPU: bf16 needs no loss scaling; fp16 (airbench94's) trains with dynamic loss scaling
    # (torch.amp.GradScaler). The CPU always trains in fp32.
    precision: str = "bf16"

    # --- airbench94's components (each one off gives the pre-recipe trainer's behaviour) ---
    # 1. The stem is a frozen 2x2 patch-whitening conv (training patches' covariance eigenvectors, and their
    #    negatives); only its bias trains, for this many epochs. Off: an ordinary trained conv.
    whiten: bool = True
    whiten_bias_epochs: int = 3
    # 2. BatchNorm without a learnable scale (the next conv can rescale), its biases at bias_lr_scale x the lr
    #    (with weight decay divided by the same, so their decay is unchanged), and airbench's BN statistics:
    #    bn_momentum is PyTorch's (weight of the new batch; airbench writes 0.6 for 0.4), a tiny eps.
    #    Off: bn_scale true, bias_lr_scale 1, bn_momentum 0.1, bn_eps 1e-5 (PyTorch's BatchNorm).
    bn_scale: bool = False
    bias_lr_scale: float = 64.0
    bn_momentum: float = 0.4
    bn_eps: float = 1e-12
    # 3. Logits multiplied by this (with PyTorch's Linear init), or a small init of the classifier ("small").
    logit_scale: float = 1 / 9
    head_init: str = "default"
    # 4. Lookahead: every 5 steps the weights are pulled into an EMA of themselves, harder as training ends.
    lookahead: bool = True
    # 5. Test-time augmentation of the final evaluation: 0 none, 1 mirror, 2 mirror + 1-pixel translations.
    tta_level: int = 2
    # 6. Flip each image on alternate epochs (a random half start flipped) instead of at random each epoch.
    alternate_flip: bool = True
    # 7. A fused SGD step and channels-last tensors on every device (off: foreach SGD, channels-last on CUDA).
    fast_step: bool = True
    # 8. Each 3x3 conv's first filters start as the identity (off: PyTorch's init for all of them).
    dirac_init: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a plain dict, rejecting unknown keys and wrong types with a clear message."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of hyperparameters, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))  # str: YAML keys may be numbers, dates, ...
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(known))}"
            )
        values = {k: _coerce(k, v, source) for k, v in data.items()}
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def with_batch_size(self, batch_size: int) -> TrainConfig:
        """The same training at another batch size: the lr scales with the square root of the batch ratio, the
        weight decay coefficient stays.

        Not airbench94's rule (the lr per example kept, so linear in the batch size): at the CPU size (batch 128,
        8 epochs, 4 660 images) that lr is too low by about √8, and √-scaling trains 4 points better (README,
        *Ablation*). At batch 1024 both rules give the recipe itself."""
        return self.replace(batch_size=batch_size, lr=self.lr * math.sqrt(batch_size / self.batch_size))

    def matches(self, other: TrainConfig, rel: float = 1e-9) -> bool:
        """Equal up to float rounding (a config that went through the search space's decoupled units and back)."""
        a, b = self.to_dict(), other.to_dict()
        return all(math.isclose(a[k], b[k], rel_tol=rel) if isinstance(a[k], float) else a[k] == b[k] for k in a)

    def without(self, *components: str) -> TrainConfig:
        """This config with the named COMPONENTS_OFF components turned off."""
        changes: dict[str, Any] = {}
        for name in components:
            changes.update(COMPONENTS_OFF[name])
        return self.replace(**changes)

    @classmethod
    def recipe(cls, **changes: Any) -> TrainConfig:
        """airbench94's recipe with ``changes``. A ``batch_size`` rescales the recipe's lr (``with_batch_size``);
        an ``lr`` among the changes is taken as it is."""
        batch_size = changes.pop("batch_size", cls().batch_size)
        return cls().with_batch_size(batch_size).replace(**changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def read_yaml_or_json(path: str | Path, what: str, error: type[HpoError]) -> Any:
    """A ``.yaml``/``.yml`` file parsed as YAML, any other as JSON; a file that cannot be read or parsed raises
    ``error`` with one line naming the ``what`` file and, for a syntax error, where it is."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"cannot read {what} file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{what} file {path} is not a text file (not UTF-8): give a YAML or JSON file") from None
    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        return yaml.safe_load(text) if is_yaml else json.loads(text)
    except RecursionError:
        raise error(f"{what} file {path} is nested too deeply to be a {what}") from None
    except json.JSONDecodeError as err:
        raise error(f"{what} file {path} is not valid JSON: {err} (YAML files must end in .yaml or .yml)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{what} file {path} is not valid YAML: {problem}{where}") from None
    except ValueError as err:  # e.g. an integer of over 4 300 digits
        raise error(f"{what} file {path} holds a value Python cannot read: {str(err).splitlines()[0]}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a config from JSON or YAML. Exported files wrap it as ``{"config": {...}, "provenance": {...}}``."""
    data = read_yaml_or_json(path, "config", ConfigError)
    if isinstance(data, dict) and "config" in data:
        data = data["config"]
    return TrainConfig.from_dict(data, source=str(path))


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Accept JSON's natural types (an int where a float is expected), reject everything else."""
    kind = _FIELD_TYPES[key]
    ok = {
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "tuple[int, int, int]": isinstance(value, (list, tuple))
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }.get(kind, True)
    if not ok:
        hint = ""
        if kind == "float" and isinstance(value, str) and "e" in value.lower() and _is_number(value):
            hint = f" (YAML reads {value} as text: write it with a decimal point, as {float(value)!r})"
        raise ConfigError(f"{source}: {key} must be of type {kind}, got {value!r}{hint}")
    return float(value) if kind == "float" else value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate(c: TrainConfig) -> None:
    for name in (
        "lr",
        "momentum",
        "weight_decay",
        "dropout",
        "label_smoothing",
        "warmup_fraction",
        "final_lr_fraction",
    ):
        value = getattr(c, name)
        _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number")
    _check(0 < c.lr <= 100, f"lr must be in (0, 100], got {c.lr}")
    _check(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    _check(0 <= c.weight_decay < 1, f"weight_decay must be in [0, 1), got {c.weight_decay}")
    _check(0 <= c.dropout < 1, f"dropout must be in [0, 1), got {c.dropout}")
    _check(0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    _check(0 <= c.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {c.warmup_fraction}")
    _check(0 <= c.final_lr_fraction < 1, f"final_lr_fraction must be in [0, 1), got {c.final_lr_fraction}")
    _check(1 <= c.batch_size <= 65536, f"batch_size must be in [1, 65536], got {c.batch_size}")
    _check(1 <= c.epochs <= 1000, f"epochs must be in [1, 1000], got {c.epochs}")
    _check(0 <= c.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {c.seed}")
    _check(c.train_subset >= 0, f"train_subset must be >= 0 (0 = all images), got {c.train_subset}")
    _check(
        c.augmentation in AUGMENTATIONS,
        f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {c.augmentation!r}",
    )
    _check(c.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    _check(c.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {c.scheduler!r}")
    _check(
        len(c.widths) == 3 and all(1 <= w <= 4096 for w in c.widths),
        f"widths must be three channel counts in [1, 4096], got {list(c.widths)}",
    )
    _check(1 <= c.stem_width <= 4096, f"stem_width must be in [1, 4096], got {c.stem_width}")
    _check(c.nesterov is False or c.momentum > 0, "nesterov needs momentum > 0; set nesterov to false")
    _check(
        not c.whiten or (c.stem_width % 2 == 0 and c.stem_width <= WHITEN_WIDTH),
        f"the whitening stem needs an even stem_width of at most {WHITEN_WIDTH} (eigenvectors and their negatives),"
        f" got {c.stem_width}: change stem_width or set whiten to false",
    )
    _check(c.whiten_bias_epochs >= 0, f"whiten_bias_epochs must be >= 0, got {c.whiten_bias_epochs}")
    for name in ("bias_lr_scale", "bn_momentum", "bn_eps", "logit_scale"):
        value = getattr(c, name)
        _check(math.isfinite(value), f"{name} must be a finite number")
    _check(0 < c.bias_lr_scale <= 1000, f"bias_lr_scale must be in (0, 1000], got {c.bias_lr_scale}")
    _check(0 < c.bn_momentum <= 1, f"bn_momentum must be in (0, 1], got {c.bn_momentum}")
    _check(0 < c.bn_eps <= 1, f"bn_eps must be in (0, 1], got {c.bn_eps}")
    _check(0 < c.logit_scale <= 10, f"logit_scale must be in (0, 10], got {c.logit_scale}")
    _check(c.head_init in HEAD_INITS, f"head_init must be one of {', '.join(HEAD_INITS)}, got {c.head_init!r}")
    _check(
        c.tta_level in TTA_LEVELS,
        f"tta_level must be 0 (none), 1 (mirror) or 2 (mirror + translate), got {c.tta_level}",
    )
