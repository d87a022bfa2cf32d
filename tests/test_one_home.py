"""One helper per small concept (issue 45): each row's second form is gone from the tree, so a newcomer
finds the canonical one by searching. A row names the pattern of a hand-written copy and its one home."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
    ("options that only one solver takes", r'\{"rtol":[^}]*\} if', None),
]


def _sources() -> list[Path]:
    return [p for d in ("fastflow", "benchmarks", "kernels") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("concept,pattern,home", ROWS, ids=[r[0] for r in ROWS])
def test_one_home(concept: str, pattern: str, home: str | None) -> None:
    found = sorted(str(p.relative_to(ROOT)) for p in _sources() if re.search(pattern, p.read_text()))
    assert found == ([home] if home else []), f"{concept}: written in {found}; use {home or 'flow.solvers.options_for'}"
