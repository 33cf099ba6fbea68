"""The search space: which hyperparameters a trial samples, over which ranges, and how they become a config.

Learning rate and weight decay are sampled in airbench's decoupled units, which keep the parameters nearly
independent of each other and of batch size and momentum (good for TPE):

- ``lr_decoupled`` is the step size per 1024 examples on a *summed* loss, with the momentum gain divided out;
- ``wd_decoupled`` is the weight decay per 1024 examples, decoupled from the learning rate.

``to_sgd`` converts them to plain PyTorch SGD values (mean loss, coupled weight decay) for ``TrainConfig``.
airbench94's tuned values (lr 11.5, wd 0.0153, momentum 0.85, batch 1024, label smoothing 0.2) lie inside the
default ranges; in SGD terms they are lr 1.5 and weight_decay 0.00133.

A space file (YAML or JSON) changes the defaults per parameter::

    lr_decoupled: {low: 1, high: 30}      # new range (log scale kept)
    momentum: 0.9                         # fix a value
    dropout: null                         # drop: not sampled, the base config's value is used
    augmentation: {choices: [flip, flip_translate]}
    label_smoothing: {low: 0.0, high: 0.3}   # turn on an optional extra
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo.config import ConfigError, TrainConfig, read_yaml_or_json
from hpo.errors import HpoError


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    choices: tuple


Param = Float | Choice

# Ranges and choices from one-change-at-a-time probes at the CPU search size (README, "Why these ranges"):
# airbench94's per-example lr is too low there (x3-x4 is +3 points; the recipe's square-root rule gives x2.83),
# its wd and momentum are at the optimum (wd reaches 0.15 only so that the recipe, whose decoupled wd grows with its
# lr as the batch shrinks, stays inside from batch 11 to 1024 and can warm-start the search),
# dropout, cutout and TrivialAugment cost accuracy, and only decaying schedules finish well.
DEFAULT_SPACE: dict[str, Param] = {
    "lr_decoupled": Float(8.0, 128.0, log=True),
    "wd_decoupled": Float(0.005, 0.15, log=True),
    "momentum": Float(0.7, 0.92),
    "dropout": Float(0.0, 0.1),
    "augmentation": Choice(("flip", "flip_translate")),
    "scheduler": Choice(("onecycle", "cosine")),
}
# Off unless a space file gives them a range or choices; then sampled like the others. The second group are the
# recipe's components (hpo.config), so a search can also decide whether each one pays at its budget.
OPTIONAL: dict[str, Param] = {
    "label_smoothing": Float(0.0, 0.3),
    "batch_size": Choice((256, 512, 1024)),
    "warmup_fraction": Float(0.0, 0.5),
    "whiten": Choice((True, False)),
    "bias_lr_scale": Float(1.0, 64.0, log=True),
    "logit_scale": Float(1 / 16, 1.0, log=True),
    "lookahead": Choice((True, False)),
    "alternate_flip": Choice((True, False)),
    "dirac_init": Choice((True, False)),
}
KNOWN = (*DEFAULT_SPACE, *OPTIONAL)
# Sampled in decoupled units and converted together into SGD's lr and weight decay (``to_config``).
COUPLED = ("lr_decoupled", "wd_decoupled", "momentum", "batch_size")


class SpaceError(HpoError):
    """The space file is unreadable or describes an invalid space."""


def to_sgd(lr_decoupled: float, wd_decoupled: float, momentum: float, batch_size: int) -> tuple[float, float]:
    """airbench's decoupled (lr, wd) -> (SGD lr on the mean loss, SGD coupled weight_decay)."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr = lr_decoupled * batch_size / kilostep
    return lr, wd_decoupled / lr_decoupled


def from_sgd(lr: float, weight_decay: float, momentum: float, batch_size: int) -> tuple[float, float]:
    """Inverse of ``to_sgd``."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr_decoupled = lr * kilostep / batch_size
    return lr_decoupled, weight_decay * lr_decoupled


@dataclass(frozen=True)
class SearchSpace:
    sampled: dict[str, Param]
    fixed: dict[str, Any]

    @classmethod
    def default(cls) -> SearchSpace:
        return cls(dict(DEFAULT_SPACE), {})

    @classmethod
    def load(cls, path: str | Path | None) -> SearchSpace:
        """The default space with a file's changes applied; ``None`` gives the default space."""
        if path is None:
            return cls.default()
        data = read_yaml_or_json(path, "space", SpaceError)
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "space") -> SearchSpace:
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: expected a mapping of parameter names, got {type(data).__name__}")
        unknown = sorted(map(str, set(data) - set(KNOWN)))  # str: YAML keys may be numbers, dates, ...
        if unknown:
            raise SpaceError(f"{source}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        sampled, fixed = dict(DEFAULT_SPACE), {}
        for name, spec in data.items():
            sampled.pop(name, None)
            if spec is None or spec is False:
                continue
            if isinstance(spec, dict):
                sampled[name] = _parse_param(name, spec, source)
            else:
                fixed[name] = spec
        space = cls(sampled, fixed)
        space.check(source)
        return space

    def check(self, source: str = "space") -> None:
        """Reject values no config can take, by building a config from each range end and each fixed value, and
        from every combination of the ends of the parameters that convert together into SGD's lr and weight decay
        (weight decay is wd / lr: a high wd with a low lr can leave its range when neither end does alone)."""

        def ends(param: Param) -> list[Any]:
            return [param.low, param.high] if isinstance(param, Float) else list(param.choices)

        probes = [dict(self.fixed)]
        for name, param in self.sampled.items():
            probes += [{**self.fixed, name: v} for v in ends(param)]
        coupled = [name for name in COUPLED if name in self.sampled]
        for corner in itertools.product(*(ends(self.sampled[name]) for name in coupled)):
            probes.append({**self.fixed, **dict(zip(coupled, corner))})
        for probe in probes:
            try:
                self.to_config(probe, TrainConfig())
            except (ConfigError, ZeroDivisionError, TypeError) as err:
                corner = [f"{name} {probe[name]!r}" for name in coupled if name in probe]
                at = f" (at {', '.join(corner)})" if len(corner) > 1 else ""
                raise SpaceError(f"{source}: {err}{at}") from None

    def suggest(self, trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
        values = {}
        for name, p in self.sampled.items():
            if isinstance(p, Float):
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
            else:
                values[name] = trial.suggest_categorical(name, list(p.choices))
        return self.to_config({**self.fixed, **values}, base)

    @staticmethod
    def to_config(values: dict[str, Any], base: TrainConfig) -> TrainConfig:
        """Space values (decoupled units) over a base config -> a validated config."""
        values = dict(values)
        batch_size = values.pop("batch_size", base.batch_size)
        momentum = values.pop("momentum", base.momentum)
        lr_d, wd_d = from_sgd(base.lr, base.weight_decay, base.momentum, base.batch_size)
        lr_d, wd_d = values.pop("lr_decoupled", lr_d), values.pop("wd_decoupled", wd_d)
        if not (isinstance(batch_size, int) and not isinstance(batch_size, bool)):
            raise ConfigError(f"batch_size must be of type int, got {batch_size!r}")
        if not _is_number(wd_d):
            raise ConfigError(f"wd_decoupled must be a number, got {wd_d!r}")
        if not (_is_number(lr_d) and lr_d > 0):
            raise ConfigError(f"lr_decoupled must be a number > 0, got {lr_d!r}")
        if not (_is_number(momentum) and momentum < 1):
            raise ConfigError(f"momentum must be a number < 1, got {momentum!r}")
        lr, wd = to_sgd(lr_d, wd_d, momentum, batch_size)
        changes = {**values, "lr": lr, "weight_decay": wd, "momentum": momentum, "batch_size": batch_size}
        return TrainConfig.from_dict({**base.to_dict(), **changes}, source="search space")

    def params_for(self, config: TrainConfig, source: str = "config") -> dict[str, Any]:
        """The sampled parameters (decoupled units) that reproduce ``config``'s values: what ``enqueue_trial``
        takes to run it as a trial. A value outside the space is refused."""
        lr_d, wd_d = from_sgd(config.lr, config.weight_decay, config.momentum, config.batch_size)
        decoupled = {"lr_decoupled": lr_d, "wd_decoupled": wd_d}
        params = {}
        for name, p in self.sampled.items():
            value = decoupled[name] if name in decoupled else getattr(config, name)
            if isinstance(p, Float) and not p.low * (1 - 1e-9) <= value <= p.high * (1 + 1e-9):
                raise SpaceError(
                    f"{source}: {name} {value:.4g} is outside the search space [{p.low:g}, {p.high:g}]: "
                    "widen it with --space, or leave this config out"
                )
            if isinstance(p, Choice) and value not in p.choices:
                raise SpaceError(
                    f"{source}: {name} {value!r} is not among the space's choices {list(p.choices)}: "
                    "widen it with --space, or leave this config out"
                )
            params[name] = min(max(value, p.low), p.high) if isinstance(p, Float) else value
        return params

    def describe(self) -> dict[str, Any]:
        """The space in space-file form (``from_dict(describe())`` gives it back); stored with the study."""
        out: dict[str, Any] = {name: None for name in DEFAULT_SPACE}
        for name, p in self.sampled.items():
            out[name] = {"choices": list(p.choices)} if isinstance(p, Choice) else dataclasses.asdict(p)
        out.update(self.fixed)
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_param(name: str, spec: dict[str, Any], source: str) -> Param:
    default = DEFAULT_SPACE.get(name) or OPTIONAL[name]
    if isinstance(default, Choice):
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SpaceError(f"{source}: {name} takes {{choices: [...]}} with at least one value, got {spec}")
        return Choice(tuple(spec["choices"]))
    extra = set(spec) - {"low", "high", "log"}
    if extra:
        raise SpaceError(f"{source}: {name} takes low, high and log, not {', '.join(sorted(extra))}")
    low, high = spec.get("low", default.low), spec.get("high", default.high)
    log = spec.get("log", default.log)
    if not all(_is_number(v) for v in (low, high)):
        raise SpaceError(f"{source}: {name} low/high must be numbers, got {low!r} and {high!r}")
    if not isinstance(log, bool):
        raise SpaceError(f"{source}: {name}.log must be true or false, got {log!r}")
    if not low < high:
        raise SpaceError(f"{source}: {name} needs low < high, got low={low} high={high}")
    if log and low <= 0:
        raise SpaceError(f"{source}: {name} is on a log scale, so low must be > 0 (got {low})")
    return Float(float(low), float(high), log)
