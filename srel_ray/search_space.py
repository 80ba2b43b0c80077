"""The search space of ``srel-ray tune``: ``tune.space`` maps config fields to specs, checked in full before any
trial starts; one trial's values are applied to the base config to give that trial's config.

    recover.iterations: {grid: [500, 1000, 2000]}   every value once (search: grid or random)
    evaluate.temperature: {uniform: [1, 8]}          a float between the bounds (random, optuna)
    recover.lr: {loguniform: [0.05, 0.5]}            a float drawn log-uniformly, bounds > 0 (random, optuna)
    recover.bn_weight: {choice: [0.01, 0.1, 1.0]}    one of the values (random, optuna)
    relabel.epochs: {randint: [50, 300]}             an int between the bounds, both included (random, optuna)

The nested form (``recover: {iterations: {grid: [...]}}``, which ``--set tune.space.recover.iterations=...``
produces) means the same. Only recover, relabel and evaluate fields can be tuned: the data, and the teacher made
from them, are shared by every trial of a search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from typing import Any

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.errors import ConfigError

TUNABLE_SECTIONS = ("recover", "relabel", "evaluate")
NOT_TUNABLE = {"evaluate.baselines", "evaluate.eval_interval"}  # unused by trials: tuning them wastes trials
LISTS = ("grid", "choice")
RANGES = ("uniform", "loguniform", "randint")
KINDS = LISTS + RANGES


@dataclass(frozen=True)
class Param:
    name: str  # section.key
    kind: str  # one of KINDS
    values: tuple  # grid/choice: the values; ranges: (low, high)


def tunable_fields() -> list[str]:
    hints = typing.get_type_hints(Config)
    return sorted(f"{section}.{f.name}" for section in TUNABLE_SECTIONS for f in dataclasses.fields(hints[section])
                  if f"{section}.{f.name}" not in NOT_TUNABLE)


def parse_space(cfg: Config) -> list[Param]:
    """Every parameter of ``cfg.tune.space``, or a ConfigError naming the first problem."""
    flat = _flatten(cfg.tune.space)
    if not flat:
        raise ConfigError("tune.space is empty: give at least one parameter, e.g. "
                          "{recover.iterations: {grid: [500, 1000]}}")
    params = [_parse(cfg, name, spec) for name, spec in flat.items()]
    for p in params:
        if cfg.tune.search == "grid" and p.kind != "grid":
            raise ConfigError(f"tune.space.{p.name}: search 'grid' enumerates values, so every parameter needs "
                              f"{{grid: [...]}}, got {p.kind}; or use tune.search random or optuna")
        if cfg.tune.search == "optuna" and p.kind == "grid":
            raise ConfigError(f"tune.space.{p.name}: Optuna samples values and cannot enumerate a grid; "
                              "use {choice: [...]} or a range (uniform, loguniform, randint)")
        if cfg.tune.search == "optuna" and p.kind == "choice" and not all(_scalar(v) for v in p.values):
            raise ConfigError(f"tune.space.{p.name}: Optuna choices must be numbers, strings or booleans, "
                              f"got {list(p.values)}")
    epochs = max_epochs(cfg, params)
    if cfg.tune.asha and cfg.tune.grace_period > epochs:
        raise ConfigError(f"tune.grace_period={cfg.tune.grace_period} exceeds the student's {epochs} epochs "
                          "(evaluate.epochs): ASHA could never stop a trial; lower it or set tune.asha=false")
    return params


def apply_params(base: Config, values: dict[str, Any]) -> Config:
    """The config of one trial: ``base`` with ``values`` (section.key -> value) set, validated."""
    raw = to_dict(base)
    for name, value in values.items():
        section, key = name.split(".", 1)
        raw[section][key] = value
    return from_dict(raw).validate()


def corner_configs(cfg: Config, params: list[Param]) -> list[Config]:
    """The base config and, for each parameter alone, one config per listed value or range end: what the search
    checks its inputs against (RDED's candidate pool, per-class statistics) before any trial starts."""
    return [cfg, *(apply_params(cfg, {p.name: v}) for p in params for v in p.values)]


def max_epochs(cfg: Config, params: list[Param]) -> int:
    """The most student epochs any trial can run (ASHA's max_t)."""
    for p in params:
        if p.name == "evaluate.epochs":
            return int(max(p.values))
    return cfg.evaluate.epochs


def config_key(d: dict) -> str:
    """A short stable name for a config (sub)dict: equal content, equal key."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- parsing


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def _flatten(space: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if not prefix and "." not in key and isinstance(value, dict) and not _is_spec(value):
            flat.update(_flatten(value, name + "."))  # the nested form: section -> key -> spec
        elif name in flat:
            raise ConfigError(f"tune.space.{name} is given twice (flat and nested)")
        else:
            flat[name] = value
    return flat


def _parse(cfg: Config, name: str, spec: Any) -> Param:
    section = name.split(".", 1)[0]
    if name not in tunable_fields():
        if section in ("data", "teacher"):
            reason = f"cannot be tuned: the {section} is shared by every trial of a search"
        elif section in ("resources", "tracking", "tune", "seed") or name in NOT_TUNABLE:
            reason = "cannot be tuned: it does not change what a trial computes"
        else:
            reason = "is not a config field"
        raise ConfigError(f"tune.space: {name!r} {reason}; tunable fields: {', '.join(tunable_fields())}")
    if not _is_spec(spec):
        raise ConfigError(f"tune.space.{name} must be a mapping with one of {', '.join(KINDS)}, e.g. "
                          f"{{grid: [500, 1000]}} or {{uniform: [1, 8]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"tune.space.{name}.{kind} must be a non-empty list, got {values!r}")
    if kind in RANGES:
        _check_range(name, kind, values, _field_type(name))
    for value in values:  # every listed value, and both ends of a range, must make a valid config
        try:
            apply_params(cfg, {name: value})
        except ConfigError as e:
            raise ConfigError(f"tune.space.{name}: value {value!r} is invalid: {e}") from None
    return Param(name, kind, tuple(values))


def _check_range(name: str, kind: str, values: list, hint: Any) -> None:
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"tune.space.{name}.{kind} must be [low, high], two numbers; got {values!r}")
    low, high = values
    if not low < high:
        raise ConfigError(f"tune.space.{name}.{kind} needs low < high, got {values!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"tune.space.{name}.loguniform needs low > 0, got {values!r}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"tune.space.{name}.randint needs two ints, got {values!r}")
    if hint is int and kind != "randint":
        raise ConfigError(f"tune.space.{name} is an int field: use grid, choice or randint, not {kind}")
    if hint not in (int, float):
        raise ConfigError(f"tune.space.{name} is not a number field: use grid or choice, not {kind}")


def _field_type(name: str) -> Any:
    section, key = name.split(".", 1)
    return typing.get_type_hints(typing.get_type_hints(Config)[section])[key]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
