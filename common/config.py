"""Dataclass configs: named presets, an optional YAML file, then command-line overrides (tyro).

Every method folder has one `config.py` with a dataclass and a dict of presets (`tiny` = CPU default, `paper` =
the paper's sizes). A run is configured in three layers, each overriding the last:

    python train.py --preset paper --config my.yaml --lr 3e-4 --model.depth 12

An unknown key or a value of the wrong type — in the YAML file or on the command line — stops with one error that
names the field. `to_dict` / `from_dict` turn a config into JSON-able data and back with the same strict checks,
which is how checkpoints store the config they were trained with.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import tyro
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key that does not exist or a value of the wrong type; the message names the field."""


def parse_config(presets: Mapping[str, T], args: Sequence[str] | None = None, default: str = "tiny",
                 description: str | None = None) -> T:
    """Build a config from a preset, an optional YAML file and CLI overrides (in that order)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=default)
    pre.add_argument("--config", type=Path, default=None)
    known, rest = pre.parse_known_args(args)
    if known.preset not in presets:
        raise ConfigError(f"unknown preset {known.preset!r}; choose one of {sorted(presets)}")
    cfg = copy.deepcopy(presets[known.preset])
    if known.config is not None:
        if not known.config.exists():
            raise FileNotFoundError(f"config file not found: {known.config}")
        overrides = yaml.safe_load(known.config.read_text()) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{known.config}: the top level must be a mapping of field names to values")
        cfg = merge(cfg, overrides)
    description = description or f"Preset {known.preset!r} (choose with --preset {{{','.join(presets)}}}); " \
                                 f"a YAML file of overrides with --config FILE."
    return tyro.cli(type(cfg), default=cfg, args=rest, description=description)


def merge(cfg: T, overrides: Mapping[str, Any], prefix: str = "") -> T:
    """A copy of dataclass `cfg` with `overrides` (a nested mapping) applied; unknown keys and wrong types raise."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {sorted(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = merge(current, value, prefix=f"{path}.")
        else:
            changes[key] = _check(value, hints[key], path)
    return dataclasses.replace(cfg, **changes)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-able nested dict of a dataclass config (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a config of type `cls` from `to_dict` output, with the same strict checks as `merge`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {key!r} for {cls.__name__}")
        tp = hints[key]
        kwargs[key] = from_dict(tp, value) if dataclasses.is_dataclass(tp) else _check(value, tp, key)
    return cls(**kwargs)


def _check(value: Any, tp: Any, path: str) -> Any:
    """Return `value` converted to type `tp` where that is lossless (int -> float, list -> tuple), else raise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"config key {path!r} expects {_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {path!r} must be one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {path!r} expects a sequence, got {type(value).__name__} {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"config key {path!r} expects {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_check(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value)
    if tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp in (str, bool) and isinstance(value, tp):
        return value
    elif tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    raise ConfigError(f"config key {path!r} expects {_name(tp)}, got {type(value).__name__} {value!r}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
