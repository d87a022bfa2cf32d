"""Static check of the whole tree: pyflakes' rules (ruff ``F``) — undefined names, unused imports and
variables, redefinitions. A name error in a code path no other test reaches (a demo stage that runs
after minutes of training) fails here in a second."""

import subprocess
import sys

from helpers import ROOT


def test_no_pyflakes_errors() -> None:
    paths = [str(ROOT / p) for p in ("fastflow", "tests", "benchmarks", "conftest.py")]
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F", *paths],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
