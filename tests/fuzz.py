"""Hostile values for property-based tests (hypothesis), and the property every surface keeps: a
call ends in success or one line and exit 2 through the CLI's error boundary — never another
exception (a traceback), a signal, or a changed file outside its output."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fastflow.cli.common import run_cli

#: the bounded runs of ``make test``: the same examples every run (CI never meets a new one by chance);
#: ``FASTFLOW_FUZZ=N`` draws N fresh examples per test instead (what the ``slow`` variants do with thousands)
BOUNDED = settings(deadline=None, derandomize="FASTFLOW_FUZZ" not in os.environ,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


def examples(n: int) -> settings:
    """``n`` examples (``FASTFLOW_FUZZ`` overrides), deterministic unless ``FASTFLOW_FUZZ`` is set."""
    return settings(BOUNDED, max_examples=int(os.environ.get("FASTFLOW_FUZZ", n)))


#: YAML texts a parser must refuse in one line (unhashable keys, deep nesting, tags, aliases)
HOSTILE_YAML = ["? [a, b]: 1", "{[1]: 2}", "[" * 5000, "{a: " * 3000, "!!python/object/apply:os.system [ls]",
                "&a [*a, *a]", "a: &x [1]\nb: *x", "\0", "\udcff", "- - - -", "'", "\t", ":", "1e400", "-.inf",
                ".nan", "0x7fffffffffffffff", "9223372036854775808", "1e-320", "-0.0", "2e-4", "true", "null"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=12), st.sampled_from(["", "..", "/", "a\0b", "-1", "[", "auto", "on"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=12)


def yaml_text(value: Any) -> str:
    """An override's right-hand side: a hostile value as YAML flow text."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).removesuffix("\n...\n").strip()


override_texts = st.one_of(values.map(yaml_text), st.sampled_from(HOSTILE_YAML))


def schema_keys(cls: type, prefix: str) -> list[str]:
    """Every key of a config dataclass, nested sections spelled ``a.b``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += schema_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def cli_outcome(fn: Callable[[], Any], capsys: Any) -> int:
    """Run ``fn`` behind the CLI's error boundary: 0, or 2 with exactly one line on stderr; anything
    else (another exception) propagates and fails the test."""
    capsys.readouterr()
    code = run_cli("fastflow", lambda _: (fn(), 0)[1], argparse.Namespace())
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith(("note:", "fused"))]
    assert code in (0, 2), code
    assert (code == 0) == (not err) and len(err) <= 1, err
    return code
