"""The SD path end to end at toy size, as ``docs/instaflow-sd.md`` tells a user to walk it: the
``<!-- tiny-sd walk -->`` code block is read from the page and every line run (``fastflow …`` in
process, ``fastflow-run`` as the built binary). ``make test`` runs it up to the ``.pt2`` pipeline
export; the whole block (three AOTInductor compiles, the runner) is ``slow``."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- tiny-sd walk -->"


def walk() -> list[str]:
    """The block's lines, in order."""
    text = (ROOT / "docs" / "instaflow-sd.md").read_text()
    assert text.count(MARK) == 1, f"docs/instaflow-sd.md has no single {MARK} block"
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def run_line(line: str, cwd: Path) -> None:
    """One documented line, as a shell would run it in ``cwd`` (the block uses no other shell features)."""
    from fastflow.cli.main import main

    words = shlex.split(line)
    if words[0] == "printf":
        out = words[words.index(">") + 1]
        (cwd / out).write_text(words[1].encode().decode("unicode_escape"))
    elif words[0] in ("fastflow", "fastflow-export"):
        args = words[1:] if words[0] == "fastflow" else ["export", *words[1:]]
        assert main(args) == 0, line
    elif words[0] == "fastflow-run":
        runner = shutil.which("fastflow-run") or str(ROOT / "build" / "kernels" / "fastflow-run")
        if not Path(runner).is_file():
            pytest.skip("fastflow-run is not built (make native)")
        res = subprocess.run([runner, *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    else:
        raise AssertionError(f"the walk has a line this test cannot run: {line}")


def _walk(tmp: Path, monkeypatch, lines: list[str]) -> Path:
    monkeypatch.chdir(tmp)
    for line in lines:
        run_line(line, tmp)
    return tmp


def test_tiny_sd_walk_up_to_export(tmp_path, monkeypatch) -> None:
    """Prompts → CFG pairs → 2-RF → pairs from the 2-RF → one-step distillation → samples →
    diffusers folder (its own round-trip check): each step leaves what the next one reads."""
    lines = walk()
    cut = next(i for i, line in enumerate(lines) if line.startswith("fastflow-export"))
    d = _walk(tmp_path, monkeypatch, lines[:cut])
    assert (d / "runs" / "instaflow-2rf" / "checkpoints").is_dir()
    assert (d / "runs" / "instaflow-one-step" / "samples").is_dir()
    assert (d / "one-step.png").is_file() and (d / "sd-diffusers" / "model_index.json").is_file()


@pytest.mark.slow  # ~3 min: the .pt2 pipeline's three AOTInductor compiles
def test_tiny_sd_walk_whole(tmp_path, monkeypatch) -> None:
    """The whole block, through ``fastflow-run t2i``: images for each prompt, and its PNG grid."""
    d = _walk(tmp_path, monkeypatch, walk())
    images = np.load(d / "images.npy")
    assert images.shape == (3, 3, 8, 8) and np.isfinite(images).all()
    assert (d / "images.png").is_file()
