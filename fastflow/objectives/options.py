"""Objective options stated once: an objective's config keys are its dataclass fields made with
:func:`option` — the type a config gives, the valid range, how the value is built (a distance
name → the function) and the default, all on the field. :func:`read_options` checks a config
section against them (unknown keys, types through :mod:`fastflow.utils.schema`, ranges); the
objectives' registry (``objectives/__init__.py``) builds each objective from what it returns."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

from fastflow.errors import ConfigError
from fastflow.utils.schema import coerce


@dataclass(frozen=True)
class Option:
    """How one config key becomes a field's value."""

    type: Any  # the config value's type hint (None: the field's own annotation)
    valid: Callable[[Any], bool] | None = None  # range check on the coerced config value
    means: str = ""  # what valid means, for the error
    build: Callable[[Any], Any] | None = None  # config value → field value
    key: str | None = None  # the config key, when it is not the field's name
    required: bool = False


def option(default: Any = MISSING, *, factory: Any = MISSING, type: Any = None,  # noqa: A002
           valid: Callable[[Any], bool] | None = None, means: str = "", build: Callable[[Any], Any] | None = None,
           key: str | None = None, required: bool = False, compare: bool = True) -> Any:
    """A dataclass field that is also a config option (see :class:`Option`)."""
    return dataclasses.field(default=default, default_factory=factory, compare=compare,
                             metadata={"option": Option(type, valid, means, build, key, required)})


def options_of(cls: type) -> dict[str, tuple[dataclasses.Field, Option, Any]]:
    """``config key → (field, option, config type)`` of an objective class, less its
    ``hidden_options`` (inherited fields that mean nothing to it)."""
    hints = typing.get_type_hints(cls)
    hidden = getattr(cls, "hidden_options", ())
    out = {}
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("option")
        if opt is not None and f.name not in hidden:
            out[opt.key or f.name] = (f, opt, opt.type if opt.type is not None else hints[f.name])
    return out


def read_options(cls: type, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (an objective's config section, less ``name``) checked against ``cls``'s options:
    ``config key → coerced value``; unknown keys, wrong types, values out of range and what the
    class's ``checks`` (``(holds(options), message)`` pairs over every option) refuse are errors."""
    known = options_of(cls)
    unknown = set(spec) - set(known)
    if unknown:
        raise ConfigError(f"objective {name} has no option(s) {sorted(unknown)}; it takes {sorted(known)}")
    missing = [k for k, (_, opt, _) in known.items() if opt.required and k not in spec]
    if missing:
        raise ConfigError(f"objective {name} needs objective.{missing[0]} (a checkpoint or run directory)")
    out = {}
    for k, v in spec.items():
        _, opt, tp = known[k]
        value = coerce(v, tp, f"objective.{k}")
        if opt.valid is not None and not opt.valid(value):
            raise ConfigError(f"objective.{k} must be {opt.means}, got {value!r}")
        out[k] = value
    plain = {k: out.get(k, default_of(f)) for k, (f, _, _) in known.items()}
    for holds, message in getattr(cls, "checks", ()):
        if not holds(plain):
            raise ConfigError(message)
    return out


def teacher_option() -> Any:
    """``teacher``: a checkpoint or run directory in the config, loaded (frozen) by the registry."""
    return option(None, type=str, required=True)


def weights_option() -> Any:
    """``teacher_weights``: which weights of the teacher's checkpoint (the lineage records their digest)."""
    return option("ema", valid=lambda v: v in ("ema", "model"), means="ema or model", compare=False)


def field_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Checked config values (:func:`read_options`) as ``field name → value`` (built where the option says)."""
    known = options_of(cls)
    return {known[k][0].name: (known[k][1].build(v) if known[k][1].build else v) for k, v in values.items()}


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (None when it has none)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


__all__ = ["Option", "default_of", "field_values", "option", "options_of", "read_options", "teacher_option",
           "weights_option"]
