"""Checked ``argparse`` types of the CLI's options: numbers in range and finite, comma lists, devices that exist.
A bad value is one line from :class:`~fastflow.cli.common.Parser` and exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch


def _at_least(kind: type, low: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number >= ``low`` (> with ``strict``), finite."""

    def parse(text: str) -> Any:
        value = _number(text, kind)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    return parse


positive_int = _at_least(int, 1)
nonneg_int = _at_least(int, 0)
positive_float = _at_least(float, 0, strict=True)
nonneg_float = _at_least(float, 0)


def finite_float(text: str) -> float:
    return _number(text, float)


def int_list(text: str) -> list[int]:
    """``1,2,4`` → ``[1, 2, 4]`` (each >= 1)."""
    try:
        return [positive_int(t) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"want a comma list of integers >= 1, got {text!r}") from None


def choice_list(*choices: str) -> Callable[[str], list[str]]:
    """A comma list of some of ``choices`` (no repeats)."""

    def parse(text: str) -> list[str]:
        items = text.split(",")
        bad = [i for i in items if i not in choices]
        if bad or len(set(items)) != len(items) or not items:
            raise argparse.ArgumentTypeError(f"want a comma list of {', '.join(choices)}; got {text!r}")
        return items

    return parse


def device_arg(text: str) -> torch.device:
    """A torch device that exists here: ``cpu``, ``cuda`` or ``cuda:N`` with a GPU present."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported (cpu, cuda, cuda:N)")
    return device


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value
