"""The documentation's commands exist: every ``fastflow …`` / ``fastflow-export …`` line in a code block
of README.md and docs/*.md names a verb the CLI has and only flags that verb takes."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(text: str) -> list[str]:
    """Shell lines of the page's code blocks, continuation lines joined, comments dropped."""
    out, blocks, lang, lines = [], [], None, []
    for raw in text.splitlines():
        if raw.startswith("```"):
            if lang is None:
                lang, lines = raw[3:].strip(), []
            else:
                blocks += ["\n".join(lines)] if lang in ("", "bash", "sh", "shell") else []
                lang = None
        elif lang is not None:
            lines.append(raw)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if re.search(r"(^|\s|-m\s)fastflow(-export)?\s", line + " "):
                out.append(line)
    return out


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def _check(line: str) -> str | None:
    from fastflow.cli import export
    from fastflow.cli.main import build_parser

    try:
        words = shlex.split(line)
    except ValueError:
        return None  # a shell construct, not a command
    i = next(i for i, w in enumerate(words) if w in ("fastflow", "fastflow-export"))
    parser = export.build_parser() if words[i] == "fastflow-export" else build_parser()
    rest = words[i + 1:]
    while rest and rest[0] in _subparsers(parser):
        parser, rest = _subparsers(parser)[rest[0]], rest[1:]
    known = {s for a in parser._actions for s in a.option_strings}
    bad = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in known]
    if _subparsers(parser) and parser is not build_parser():
        return f"{line!r}: no verb"  # e.g. `fastflow bench` alone
    return f"{line!r}: {parser.prog} has no {', '.join(bad)}" if bad else None


def test_every_documented_command_has_its_flags() -> None:
    errors = [f"{page.name}: {e}" for page in PAGES for line in _commands(page.read_text())
              if (e := _check(line)) is not None]
    assert not errors, "\n".join(errors)
    assert sum(len(_commands(p.read_text())) for p in PAGES) > 40  # the check sees the pages' commands
