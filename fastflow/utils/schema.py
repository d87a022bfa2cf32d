"""Typed checking of configuration values against Python type hints.

One checker for every config section: the training loop's dataclasses, model configs, dataset
constructors (their ``__init__`` annotations) and objective options. A value of the wrong type
raises :class:`~fastflow.errors.ConfigError` naming the key, before anything is built or written.
YAML 1.1 reads ``2e-4`` as a string, so a float accepts a string that parses as a finite number.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from fastflow.errors import ConfigError


def _float(value: Any, key: str) -> float | None:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    if number is not None and not math.isfinite(number):
        raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
    return number


def _sequence(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        return None
    if typing.get_origin(tp) is list:
        return [coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        return None
    return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the type hint ``tp`` (and converted: int → float, list → tuple)."""
    origin = typing.get_origin(tp)
    out: Any = None
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return coerce(value, arm, key)
            except ConfigError:
                continue
    elif tp is bool:
        out = value if isinstance(value, bool) else None
    elif tp is int:
        out = value if isinstance(value, int) and not isinstance(value, bool) else None
    elif tp is float:
        out = _float(value, key)
    elif tp is str:
        out = value if isinstance(value, str) else None
    elif origin in (tuple, list):
        out = _sequence(value, tp, key)
    elif origin is dict or tp is dict:
        out = dict(value) if isinstance(value, dict) else None
    elif dataclasses.is_dataclass(tp):
        out = build(tp, value, key + ".") if isinstance(value, dict) else None
    if out is None:
        raise ConfigError(f"config key {key!r}: expected {_name(tp)}, got {value!r}")
    return out


def _name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def build(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """The dataclass ``cls`` from the mapping ``d``: unknown keys and wrong types refused."""
    if not isinstance(d, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or cls.__name__!r}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}; "
                          f"valid keys: {', '.join(sorted(prefix + f for f in fields))}")
    return cls(**{k: coerce(v, hints[k], prefix + k) for k, v in d.items()})


#: the largest channel count, width, resolution or class count a config may give: larger values are
#: typos, and would overflow the allocation of their weights
MAX_SIZE = 1 << 16


def check_sizes(config: Any, limits: dict[str, int], what: str) -> None:
    """Each named field of ``config`` (an int, or a tuple of ints) at most its limit."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if any(v > limit for v in (value if isinstance(value, tuple) else (value,))):
            raise ConfigError(f"invalid {what} config: {name} must be at most {limit}, got {value}")


def check_kwargs(fn: Callable[..., Any], spec: dict[str, Any], prefix: str, what: str) -> dict[str, Any]:
    """``spec`` as keyword arguments of ``fn``, checked against its signature and annotations."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    unknown = [k for k in spec if k not in params]
    if unknown:
        raise ConfigError(f"{what} has no option(s) {unknown}; it takes {list(params)}")
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
               and n not in spec]
    if missing:
        raise ConfigError(f"{what} needs {prefix}{missing[0]}")
    hints = typing.get_type_hints(fn)
    return {k: coerce(v, hints.get(k, Any), prefix + k) for k, v in spec.items()}


__all__ = ["MAX_SIZE", "build", "check_kwargs", "check_sizes", "coerce"]
