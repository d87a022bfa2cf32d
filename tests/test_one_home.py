"""One helper per small concept (issue 45): each row's second form is gone from the tree, so a newcomer
finds the canonical one by searching. A row names the pattern of a hand-written copy and its one home."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

from fastflow.cli.common import show_notices
from fastflow.export.spec import INPUTS

ROOT = Path(__file__).resolve().parents[1]
#: (concept, regex of a copy, the one file allowed to hold it; None: a helper call replaced every copy)
ROWS = [
    ("stream seeds", r"\* 1_?000_?003", "fastflow/utils/seeding.py"),
    ("hashed seeds", r"from_bytes\(", "fastflow/utils/seeding.py"),
    ("headless matplotlib", r"matplotlib\.use\(", "fastflow/utils/images.py"),
    ("dtype names", r'"fp16":\s*torch\.float16', "fastflow/utils/dtypes.py"),
    ("PSNR", r"log10\(", "fastflow/utils/images.py"),
    ("solver names", r'"heun",\s*"rk2"', "fastflow/flow/solvers.py"),
    ("per-sample NFE, else the batch's", r"sample_nfe is not None", "fastflow/flow/solvers.py"),
    ("MeanFlow takes no CFG", r"guidance trained in", "fastflow/flow/sample.py"),
    ("can this path be written?", r"mkstemp\(", "fastflow/utils/io.py"),
    ("is this an OFTSR student?", r"not an OFTSR student", "fastflow/models/checkpoint.py"),
    ("2× resampling", r"avg_pool2d\(\w+, 2\)|scale_factor=2", "fastflow/models/layers.py"),
    ("a subclass sharing a module's state", r"__dict__\.update\(", "fastflow/fused/swap.py"),
    ("stepping a (mean) flow on a grid", r"grid\[i \+ 1\] - (self\.)?grid\[i\]\) \*", None),  # solvers.grid_jumps
    ("one optimiser step", r"clip_grad_norm_\(", "fastflow/train/step.py"),
    ("JSON file → typed error", r"json\.loads?\([^)]*read_(text|bytes)", None),  # utils.io.read_json
    ("options that only one solver takes", r'\{"rtol":[^}]*\} if', None),  # flow.solvers.options_for
]


def _sources() -> list[Path]:
    return [p for d in ("fastflow", "benchmarks", "kernels") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("concept,pattern,home", ROWS, ids=[r[0] for r in ROWS])
def test_one_home(concept: str, pattern: str, home: str | None) -> None:
    found = sorted(str(p.relative_to(ROOT)) for p in _sources() if re.search(pattern, p.read_text()))
    assert found == ([home] if home else []), f"{concept}: written in {found}; use {home or 'its helper (see the row)'}"


def test_library_notices_go_through_logging_and_the_cli_shows_them(capsys) -> None:
    """Library code never prints to stderr (a library user could not silence it): it logs under ``fastflow``;
    the CLI shows INFO and above as plain lines, and a level the user set on ``fastflow`` wins."""
    printing = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fastflow").rglob("*.py")
                      if "file=sys.stderr" in p.read_text() and p.parent.name != "cli" and p.name != "__main__.py")
    assert printing == []
    logger = logging.getLogger("fastflow")
    level, handlers = logger.level, list(logger.handlers)
    try:
        logger.setLevel(logging.NOTSET)
        show_notices()
        show_notices()  # once: no second handler
        logging.getLogger("fastflow.somewhere").info("a notice")
        assert capsys.readouterr().err == "a notice\n"
        logging.getLogger("fastflow.somewhere").warning("a warning")
        assert capsys.readouterr().err == "note: a warning\n"
        logger.setLevel(logging.ERROR)
        show_notices()
        logging.getLogger("fastflow.somewhere").warning("silenced")
        assert capsys.readouterr().err == ""
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_the_native_runner_knows_the_generator_kinds_python_writes() -> None:
    """``export/spec.py``'s kind → input names table is the C++ runner's (``kernels/runner/spec.cpp``): a kind or
    an input renamed on one side fails here, not as an artefact the runner refuses. The runner runs every kind
    but the bare velocity net (``--velocity``: PyTorch-side runtimes only)."""
    cpp = (ROOT / "kernels" / "runner" / "spec.cpp").read_text()
    table = {kind: tuple(re.findall(r'"(\w+)"', names))
             for kind, names in re.findall(r's\.kind == "(\w+)" && s\.inputs == Names\{([^}]*)\}', cpp)}
    assert table == {k: v for k, v in INPUTS.items() if k != "velocity"}
    assert 's.kind == "velocity"' not in cpp


def test_fastflow_modules_are_imported_at_the_top_outside_the_cli() -> None:
    """A function-local import of a fastflow module needs a reason: start-up time in the CLI's verbs
    (``fastflow/cli/__init__.py``) and the package root's lazy facade; elsewhere imports sit at the top."""
    local = []
    for path in (ROOT / "fastflow").rglob("*.py"):
        rel = path.relative_to(ROOT / "fastflow")
        if rel.parts[0] == "cli" or rel == Path("__init__.py"):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                local += [f"{rel}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)
                          and (n.module or "").startswith("fastflow")]
    assert local == []
