"""Static check of the whole tree with the rules ``pyproject.toml`` selects (ruff ``F``: undefined names,
unused imports and variables; ``I``: import order; ``B``: bugbear's likely bugs, zips that silently truncate,
closures that capture a loop variable; ``E501``: lines of at most 120 characters). A name error in a code path no
other test reaches (a demo stage that runs after minutes of training) fails here in a second."""

import subprocess
import sys

from helpers import ROOT


def test_the_tree_is_lint_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
