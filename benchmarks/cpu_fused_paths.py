"""What ``--fused cpu`` buys on the CPU: pair generation with the demo's teacher (RK45 and Euler 16,
``fastflow pairs``) and one-step sampling of the FGD student (``fastflow sample``/``eval``), each
with ``--fused off`` and ``--fused cpu`` through the same library calls the verbs make, at one
thread; pairs/s and samples/s, and how far the CPU kernel's outputs lie from eager's at the same noise.

    python benchmarks/cpu_fused_paths.py --out benchmarks/results/cpu-fused-paths.json

Without ``--teacher``/``--student`` it trains the demo's two architectures (``configs/digits.yaml``
teacher, ``digits-small`` student) for ``--train-steps`` steps first: speed depends on the
architecture, not on how long it trained (the JSON records which). The rows feed
``fastflow bench winners --switch-table`` (the table ``fused=auto`` reads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: (verb, solver, steps, items, batch) of each timed case
CASES = (("pairs", "rk45", None, 256, 256), ("pairs", "euler", 16, 256, 256), ("sample", "one_step", 1, 1024, 256),
         ("sample", "one_step", 1, 64, 1))


def _train(out: Path, preset_args: list[str], steps: int) -> Path:
    from fastflow.train import train
    from fastflow.train.config import load_config

    cfg = load_config(
        Path(__file__).parents[1] / "fastflow" / "configs" / "digits.yaml",
        [f"out_dir={out}", f"train.steps={steps}", f"train.ckpt_every={steps}", "train.sample_every=0", *preset_args],
    )
    return train(cfg)


def _pairs(ckpt: Path, fused: str, solver: str, steps: int | None, count: int, batch: int,
           work: Path) -> tuple[float, torch.Tensor, int]:
    from fastflow.data.pairs import PairDataset
    from fastflow.fused import apply
    from fastflow.models.presets import sample_shape
    from fastflow.pairs import FlowTeacher, generate_pairs

    teacher = FlowTeacher.from_checkpoint(ckpt, solver=solver, steps=steps)
    apply(teacher.model, fused, "cpu")
    out = work / f"pairs-{solver}-{fused}"
    t0 = time.perf_counter()
    generate_pairs(teacher, out, count, sample_shape(teacher.model), batch_size=batch, progress=False)
    seconds = time.perf_counter() - t0
    data = PairDataset(str(out))
    x = data.get(torch.arange(len(data))).x
    return seconds, x, sum(p.numel() for p in teacher.model.parameters())


def _sample(ckpt: Path, fused: str, count: int, batch: int) -> tuple[float, torch.Tensor, int]:
    from fastflow.flow import generate
    from fastflow.fused import apply
    from fastflow.models import load_model
    from fastflow.models.presets import sample_shape

    model = load_model(ckpt)
    params = sum(p.numel() for p in model.parameters())
    apply(model, fused, "cpu")
    z = torch.randn(count, *sample_shape(model), generator=torch.Generator().manual_seed(0))
    generate(model, z[:batch], "one_step", 1)  # warm-up
    t0 = time.perf_counter()
    x = torch.cat([generate(model, z[i:i + batch], "one_step", 1).x for i in range(0, count, batch)])
    return time.perf_counter() - t0, x, params


def rk45_own_error(ckpt: Path, n: int = 64) -> dict[str, float]:
    """How far RK45 at the pairs' tolerance (1e-5) lies from a 1e-7 solve, and how far it moves when
    the noise moves by one part in 10⁷ (eager both): the scale the CPU kernel's RK45 pairs are judged
    on (adaptive steps turn a 1e-7 difference in v into different accepted steps)."""
    from fastflow.flow import generate
    from fastflow.models import load_model

    m = load_model(ckpt)
    z = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = generate(m, z, "rk45", None, rtol=1e-5, atol=1e-5).x
    tight = generate(m, z, "rk45", None, rtol=1e-7, atol=1e-7).x
    nudged = generate(m, z * (1 + 1e-7), "rk45", None, rtol=1e-5, atol=1e-5).x
    return {"rk45_1e-5_vs_1e-7": float((ref - tight).abs().max()),
            "rk45_noise_nudged_1e-7": float((ref - nudged).abs().max())}


def measure(teacher: Path, student: Path, work: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from fastflow.fused.auto import size_class

    rows, agreement = [], {}
    for verb, solver, steps, count, batch in CASES:
        outs = {}
        for fused in ("off", "cpu"):
            if verb == "pairs":
                seconds, outs[fused], params = _pairs(teacher, fused, solver, steps, count, batch, work)
            else:
                seconds, outs[fused], params = _sample(student, fused, count, batch)
            rows.append({"verb": verb, "model": "teacher" if verb == "pairs" else "FGD student", "params": params,
                         "device_kind": "cpu", "size": size_class(params), "solver": solver, "steps": steps,
                         "batch": batch, "fused": fused, "items": count, "seconds": seconds,
                         "items_per_s": count / seconds, "ms_per_item": 1e3 * seconds / count})
            print(f"{verb} {solver}{steps or ''} batch {batch} fused={fused}: {count / seconds:.1f}/s", flush=True)
        agreement[f"{verb}-{solver}{steps or ''}-b{batch}"] = float((outs["cpu"] - outs["off"]).abs().max())
    return rows, agreement


def main(argv: list[str] | None = None) -> int:
    from fastflow.utils.io import atomic_write_json
    from fastflow.utils.threads import device_name

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=None, help="the demo's teacher (checkpoint or run directory)")
    p.add_argument("--student", default=None, help="the demo's FGD student (checkpoint or run directory)")
    p.add_argument("--train-steps", type=int, default=50, help="without --teacher/--student: steps each is trained")
    p.add_argument("--out", default="cpu-fused-paths.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fastflow-fused-paths-"))
    teacher = Path(args.teacher) if args.teacher else _train(work / "teacher", [], args.train_steps)
    student = Path(args.student) if args.student else _train(work / "student", ["model.preset=digits-small"],
                                                             args.train_steps)
    rows, agreement = measure(teacher, student, work)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    doc = {"bench": "fused-paths", "device": device_name(torch.device("cpu")), "threads": 1, "torch": torch.__version__,
           "commit": commit or None, "command": " ".join(sys.argv),
           "models": {"teacher": str(args.teacher or f"configs/digits.yaml trained {args.train_steps} steps"),
                      "student": str(args.student or f"digits-small trained {args.train_steps} steps")},
           "rows": rows, "max_abs_cpu_vs_off": agreement, "eager_rk45_sensitivity": rk45_own_error(teacher)}
    atomic_write_json(args.out, doc)
    print(json.dumps(agreement))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
