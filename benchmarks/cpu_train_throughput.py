"""Training and pair-generation throughput on the CPU per path, at each thread count: ``fastflow bench
train`` (the loop's own step: eager / bf16 / compiled / compiled+bf16) at the demo's presets and batch
128, and with ``--teacher`` the demo teacher's pairs/s (RK45 and Euler; eager / the CPU block kernel /
compiled), one process per thread count, merged into one JSON with the CPU model and ISA. Run on an
idle machine::

    python benchmarks/cpu_train_throughput.py --threads 1,2 --teacher demo_out/teacher-1rf \\
        --out benchmarks/results/cpu-train-throughput.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastflow.cli.argtypes import int_list, positive_int
from fastflow.utils.io import atomic_write_json, read_json
from fastflow.utils.threads import cpu_name

PRESETS = "digits,digits-small"


def run(threads: list[int], teacher: str | None, presets: str, batch: int, steps: int, pairs: int,
        paths: str, pair_paths: str) -> dict[str, Any]:
    """One ``fastflow bench train`` process per thread count; its rows tagged with the count."""
    merged: dict[str, Any] = {"cpu": cpu_name(), "rows": [], "pairs": [], "skipped": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in threads:
            out = Path(tmp) / f"t{n}.json"
            cmd = [sys.executable, "-m", "fastflow", "bench", "train", "--device", "cpu", "--threads", str(n),
                   "--presets", presets, "--batch", str(batch), "--steps", str(steps), "--paths", paths,
                   "--out", str(out)]
            if teacher:
                cmd += ["--teacher", teacher, "--pairs", str(pairs), "--pair-paths", pair_paths]
            subprocess.run(cmd, check=True)
            doc = read_json(out)
            merged.update(torch=doc["torch"], teacher=doc["teacher"])
            merged["skipped"] = doc["skipped"]
            merged["rows"] += [{**r, "threads": n} for r in doc["rows"]]
            merged["pairs"] += [{**r, "threads": n} for r in doc["pairs"]]
    merged["command"] = " ".join(["python", "benchmarks/cpu_train_throughput.py", *sys.argv[1:]])
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int_list, default="1,2")
    p.add_argument("--teacher", default=None, help="a teacher checkpoint or run (the demo's teacher-1rf)")
    p.add_argument("--presets", default=PRESETS)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--pairs", type=positive_int, default=500)
    p.add_argument("--paths", default="eager,bf16,compiled,compiled+bf16")
    p.add_argument("--pair-paths", default="eager,fused,compiled")
    p.add_argument("--out", default="cpu-train-throughput.json")
    args = p.parse_args()
    atomic_write_json(args.out, run(args.threads, args.teacher, args.presets, args.batch, args.steps, args.pairs,
                                    args.paths, args.pair_paths))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
