"""The package's layering, checked by parsing every import (``ast``): a module may import from its
own sub-package or from a lower layer, never from its own layer's siblings or from above
(``../shared/DESIGN.md`` §2). Function-local imports count too: a lazy import still climbs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastflow"

#: bottom up; each entry is one layer
LAYERS = [
    ["errors", "__init__"],  # the package root: its version string and a lazy facade (see _facade)
    ["utils"],
    ["flow", "data"],
    ["models"],
    ["objectives", "fused"],
    ["train", "pairs", "metrics", "export"],
    ["bench", "recipes", "pipeline"],
    ["demo"],
    ["cli"],
    ["__main__"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
#: a module written as a string for a lazy import (``importlib``): it counts as an import
MODULE_STRING = re.compile(r"fastflow(\.\w+)+:\w+")


def _unit(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _facade(tree: ast.Module) -> set[ast.AST]:
    """The nodes of the package root's module ``__getattr__``: the public facade (``fastflow.FlowPipeline``)
    resolved on first access, after every layer has loaded — the one import allowed to reach up."""
    hooks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    return {sub for h in hooks for sub in ast.walk(h)}


def _imported_units(path: Path) -> list[tuple[int, str]]:
    out = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _facade(tree) if path == PKG / "__init__.py" else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "fastflow" else [
                f"fastflow.{a.name}" if (PKG / a.name).is_dir() or (PKG / f"{a.name}.py").is_file()
                else "fastflow.__init__" for a in node.names]  # a submodule, or a name of the root
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write fastflow.… in full")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            names = [node.value.split(":")[0]]  # a registry's "fastflow.x.y:Name", imported on use
        out += [(node.lineno, n.split(".")[1]) for n in names if n.startswith("fastflow.")]
    return out


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in PKG.rglob("*.py")}
    assert units <= set(RANK), f"add to LAYERS: {sorted(units - set(RANK))}"


def test_no_import_climbs_or_crosses_a_layer() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = _unit(path)
        for line, dst in _imported_units(path):
            if dst != src and RANK[dst] >= RANK[src]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {src} (layer {RANK[src]}) imports {dst} "
                           f"(layer {RANK[dst]})")
    assert not bad, "imports that climb:\n" + "\n".join(bad)


def test_objectives_state_their_contract_and_know_no_parallel_wrapper() -> None:
    """The loop and the previews ask an objective only what :class:`Objective` declares (no ``getattr`` on
    it), every registered objective has each member, and no objective imports ``torch.distributed``."""
    from fastflow.objectives import OBJECTIVES
    from fastflow.objectives.base import Objective

    members = [m for m in ("preview_steps", "model_times", "frozen", "sample_inputs", "preview", "bind", "__call__")
               if m in Objective.__dict__ or m in Objective.__annotations__]
    assert len(members) == 7
    assert all(hasattr(cls, m) or m in cls.__dataclass_fields__ for cls in OBJECTIVES.values() for m in members)
    probes = [f"{p.relative_to(PKG.parent)}" for p in (PKG / "train").glob("*.py")
              if re.search(r"getattr\(objective", p.read_text())]
    assert not probes, probes
    wrappers = [f"{p.relative_to(PKG.parent)}" for p in (PKG / "objectives").glob("*.py")
                if "torch.distributed" in p.read_text() or "activation_checkpointing" in p.read_text()]
    assert not wrappers, wrappers
