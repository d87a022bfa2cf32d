"""Stable-Diffusion-1.5-size text-to-image pipeline export on the CPU.

A random-weight SD-1.5 folder is built from the configs in ``fastflow/configs/sd15`` (UNet 860M,
VAE, CLIP ViT-L/14 text encoder; a stand-in tokenizer; nothing downloaded), a one-step velocity
student is saved on it, and ``fastflow-export --pipeline`` exports it at 512×512 (64×64 latents),
batch 1: ONNX for every component, ``.pt2`` for the text encoder and the VAE decoder, and ``.pt2``
for the UNet generator under a time limit (AOTInductor). Each phase runs in its own process; the
results record its wall time, peak RSS, artefact sizes, per-component build time, validation error
against eager PyTorch and CPU latency::

    python benchmarks/sd15_size_export.py --work /tmp/sd15 --out benchmarks/results/cpu-sd15-size-export.json

At real size this takes about an hour of CPU and up to ~20 GB of memory: run it on an idle
machine. ``--configs DIR`` runs it on other configs (``tests/test_sd15_benchmark.py`` rehearses it
on tiny ones). TensorRT is not run here (no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastflow.utils.io import read_json
from fastflow.utils.threads import cpu_name

ROOT = Path(__file__).resolve().parents[1]
# Runs a command in a child, then prints {"rc", "wall_s", "peak_rss_gb", "timed_out"}: the peak RSS
# of that one child (RUSAGE_CHILDREN of this fresh wrapper), also when the time limit killed it.
WRAPPER = """
import json, resource, subprocess, sys, time
limit, log, cmd = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
t0, timed_out = time.perf_counter(), False
with open(log, "w") as f:
    try:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit or None).returncode
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
print(json.dumps({"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "timed_out": timed_out,
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)}))
"""
BUILD = """
import json, sys
from pathlib import Path
from fastflow.models.checkpoint import save_model
from fastflow.models.diffusers_dir import random_sd_folder
from fastflow.models.prompts import write_prompt_table
from fastflow.models.sd import SDConfig, SDVelocity
work, configs = Path(sys.argv[1]), sys.argv[2]
folder = random_sd_folder(work / "sd", configs)
table = write_prompt_table(folder, ["a photograph of an astronaut riding a horse"], work / "prompts.safetensors")
student = SDVelocity(SDConfig(path=str(folder), prediction="velocity", prompts=str(table)))
(work / "ckpt").mkdir()
save_model(work / "ckpt", student)
from transformers import AutoModel
from fastflow.models.diffusers_dir import load_vae
count = lambda m: sum(p.numel() for p in m.parameters())
vae = load_vae(folder)
params = {"unet": count(student.unet), "text_encoder": count(AutoModel.from_pretrained(folder / "text_encoder")),
          "vae_decoder": count(vae.decoder) + count(vae.post_quant_conv)}
(work / "params.json").write_text(json.dumps(params))
"""


def measured(cmd: list[str], log: Path, limit_s: float = 0) -> dict[str, Any]:
    """``cmd`` in a child process: its exit, wall time, peak RSS; the log's last lines on failure."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, str(limit_s), str(log), *cmd], capture_output=True,
                         text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        res["log_tail"] = log.read_text(errors="replace").splitlines()[-8:]
    return res


def export(ckpt: Path, fmt: str, out: Path, components: str | None, iters: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "fastflow", "export", str(ckpt), "--format", fmt, "--pipeline", "-o", str(out),
           "--batch", "1", "--validate", "--atol", "1e-2", "--rtol", "1e-2", "--iters", str(iters),
           "--report", str(out) + ".json", "--device", "cpu", "--fused", "off", "--threads", str(threads)]
    return cmd + (["--components", components] if components else [])


def summary(report_file: Path) -> dict[str, Any]:
    """Per component: build time, file sizes, validation error, latency at batch 1."""
    if not report_file.is_file():
        return {}
    r = read_json(report_file)
    out: dict[str, Any] = {"build_seconds": r["build_seconds"], "file_bytes": r["file_bytes"]}
    for name, c in r["components"].items():
        v = r.get("validation", {}).get(name, {})
        out[name] = {"build_seconds": c["build_seconds"], "max_abs_err": v.get("max_abs_err"),
                     "mean_abs_err": v.get("mean_abs_err"), "latency_ms": r["latency_ms"].get(name)}
    if "chain" in r.get("validation", {}):
        out["chain_max_abs_err"] = r["validation"]["chain"]["max_abs_err"]
    return out


def _resolution(configs: Path) -> str:
    latent = read_json(configs / "unet.json")["sample_size"]
    scale = 2 ** (len(read_json(configs / "vae.json")["block_out_channels"]) - 1)
    return f"{latent * scale}x{latent * scale} ({latent}x{latent} latents)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="new working directory (GBs of artefacts)")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--configs", default=str(ROOT / "fastflow" / "configs" / "sd15"),
                   help="unet/vae/text_encoder/scheduler configs (default: SD-1.5's)")
    p.add_argument("--unet-pt2-minutes", type=float, default=30, help="time limit of the UNet's AOTInductor build")
    p.add_argument("--iters", type=int, default=3, help="timed calls per component")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads (default: all)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=False)
    import torch

    results: dict[str, Any] = {"device": f"cpu ({cpu_name()}, {args.threads} threads)", "torch": torch.__version__,
                               "configs": args.configs, "resolution": _resolution(Path(args.configs)), "batch": 1,
                               "cfg_scale": 1.0, "phases": {}}
    phases = [("folder_and_student", [sys.executable, "-c", BUILD, str(args.work), args.configs], 0),
              ("onnx_all", export(args.work / "ckpt", "onnx", args.work / "onnx", None, args.iters, args.threads), 0),
              ("pt2_text_encoder_vae", export(args.work / "ckpt", "pt2", args.work / "pt2",
                                              "text_encoder,vae_decoder", args.iters, args.threads), 0),
              ("pt2_generator", export(args.work / "ckpt", "pt2", args.work / "pt2-unet", "generator", args.iters,
                                       args.threads), args.unet_pt2_minutes * 60)]
    for name, cmd, limit in phases:
        print(f"[{name}] ...", flush=True)
        res = measured(cmd, args.work / f"{name}.log", limit)
        report = Path(cmd[cmd.index("-o") + 1] + ".json") if "-o" in cmd else None
        results["phases"][name] = {**res, **(summary(report) if report else {})}
        print(f"[{name}] {json.dumps(results['phases'][name])}", flush=True)
        if name == "folder_and_student":
            if res["rc"] != 0:
                break
            results["params"] = read_json(args.work / "params.json")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # after every phase: a cut run keeps what it measured
    return 0 if all(ph["rc"] == 0 for ph in results["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
