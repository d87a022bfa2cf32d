"""``fastflow train | sample | pairs | prompts | eval | sr | bench latency|kernels | demo``.

Bad input → one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastflow.cli.common import (Parser, add_threads, choice_list, default_device, device_arg, finite_float,
                                 int_list, nonneg_int, positive_float, positive_int, run_cli)
from fastflow.errors import ConfigError, FastflowError
from fastflow.models.checkpoint import resolve_checkpoint
from fastflow.models.presets import sample_shape, viewable

#: A PNG grid of more samples is unreadable (and huge): ask for .npz instead.
MAX_GRID = 4096


def _load(args: argparse.Namespace) -> tuple[torch.device, Path, torch.nn.Module]:
    """``--device``, the resolved checkpoint of ``ckpt`` and its model (``--weights``)."""
    from fastflow.models.checkpoint import load_model

    ckpt = resolve_checkpoint(args.ckpt)
    return args.device, ckpt, load_model(ckpt, weights=args.weights, device=args.device)


def cmd_train(args: argparse.Namespace) -> int:
    from fastflow.train import load_config, train

    cfg = load_config(args.config, args.overrides)
    run = train(cfg, resume=args.resume)
    print(f"run directory: {run}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from fastflow.flow.sample import generate
    from fastflow.utils.images import save_samples
    from fastflow.utils.io import atomic_savez, check_fits_in_memory, check_writable

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ConfigError(f"--out must end in .png or .npz, got {args.out!r}")
    if out.suffix == ".png" and args.n > MAX_GRID:
        raise ConfigError(f"--n {args.n}: a PNG grid holds at most {MAX_GRID} samples; write .npz for more")
    if args.prompt_emb is not None and args.label is not None:
        raise ConfigError("give --label or --prompt-emb, not both")
    check_writable(out)
    device, _, model = _load(args)
    cfg, shape = model.config, sample_shape(model)
    check_fits_in_memory(args.n * math.prod(shape) * 4, f"--n {args.n} samples of shape {list(shape)}")
    cond = None
    if args.prompt_emb is not None:
        cond = {"tokens": _prompt_embedding(args.prompt_emb).to(device)}
    elif args.label is not None:
        if not cfg.num_classes:
            raise ConfigError("--label given but the model is not class-conditional")
        if not 0 <= args.label < cfg.num_classes:
            raise ConfigError(f"--label must be in [0, {cfg.num_classes})")
        cond = torch.full((args.n,), args.label, dtype=torch.long)
    elif cfg.num_classes:
        cond = torch.arange(args.n) % cfg.num_classes
    if args.cfg != 1.0 and cond is None:
        raise ConfigError(f"--cfg {args.cfg}: guidance needs a conditional model (this one is unconditional)")
    kwargs: dict = {"rtol": args.rtol, "atol": args.atol} if args.solver == "rk45" else {}
    if args.solver == "rk2":
        kwargs["r"] = args.r
    g = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n, *shape, generator=g)  # the same noise for any --batch-size
    xs, nfe = [], 0
    t0 = time.perf_counter()
    for i in tqdm(range(0, args.n, args.batch_size), desc="sample", disable=args.n <= args.batch_size,
                  unit="batch"):
        zi = z[i:i + args.batch_size].to(device)
        if isinstance(cond, dict):
            ci = {"tokens": cond["tokens"].expand(len(zi), -1, -1)}
        else:
            ci = None if cond is None else cond[i:i + args.batch_size].to(device)
        res = generate(model, zi, args.solver, args.steps, cond=ci, cfg_scale=args.cfg, **kwargs)
        xs.append(res.x.float().cpu())
        nfe = max(nfe, res.nfe)
    wall = time.perf_counter() - t0
    x = torch.cat(xs)
    if out.suffix == ".npz":  # raw samples (latents for latent models)
        atomic_savez(out, x=x.numpy(), nfe=np.asarray(nfe),
                     **({"label": cond.numpy()} if isinstance(cond, torch.Tensor) else {}))
    else:
        save_samples(viewable(model, x.to(device)), out, title=f"{args.solver} NFE {nfe}")
    print(f"wrote {out}: {args.n} samples, solver={args.solver}, NFE={nfe}, "
          f"wall={wall:.3f}s ({wall / args.n * 1e3:.2f} ms/sample)")
    return 0


def _prompt_embedding(path: str) -> torch.Tensor:
    """One text embedding ``[1, L, D]`` from a safetensors file (its only tensor, or ``embedding``)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--prompt-emb {path}: not a readable safetensors file ({e})") from None
    emb = tensors.get("embedding", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if emb is None or emb.dim() not in (2, 3) or (emb.dim() == 3 and len(emb) != 1):
        raise ConfigError(f"--prompt-emb {path}: want one tensor [L, D] or [1, L, D] (or key 'embedding')")
    return emb.float().reshape(1, *emb.shape[-2:])


def cmd_prompts(args: argparse.Namespace) -> int:
    from fastflow.models.sd import write_prompt_table
    from fastflow.utils.io import check_writable

    check_writable(args.out)
    try:
        prompts = Path(args.prompts).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {args.prompts}: {e.strerror}") from None
    out = write_prompt_table(args.sd, prompts, args.out, device=args.device)
    print(f"wrote {out}: {len([p for p in prompts if p.strip()])} prompts + the null prompt")
    return 0


def _sd_teacher(args: argparse.Namespace, device: torch.device):  # noqa: ANN202
    from fastflow.models.sd import SDConfig, SDVelocity
    from fastflow.pairs import FlowTeacher
    from fastflow.utils.io import file_digest

    if not args.prompts:
        raise ConfigError("--sd needs --prompts TABLE (made by `fastflow prompts`)")
    model = SDVelocity(SDConfig(path=args.sd, prompts=args.prompts, prediction=args.prediction)).to(device).eval()
    source = {"sd": str(Path(args.sd).expanduser().resolve()), "prediction": model.config.prediction,
              "prompts_sha256": file_digest(args.prompts)}
    return FlowTeacher(model=model, source=source, solver=args.solver,
                       steps=args.steps if args.solver != "rk45" else None, rtol=args.rtol, atol=args.atol,
                       cfg_scale=args.cfg)


def cmd_pairs(args: argparse.Namespace) -> int:
    from fastflow.pairs import FlowTeacher, generate_pairs
    from fastflow.utils.distributed import init_distributed
    from fastflow.utils.io import writable_dir

    info = init_distributed()
    device = args.device or info.device
    if (args.ckpt is None) == (args.sd is None):
        raise ConfigError("give a teacher checkpoint or --sd DIR (exactly one)")
    writable_dir(args.out)
    if args.sd is not None:
        teacher = _sd_teacher(args, device)
    else:
        teacher = FlowTeacher.from_checkpoint(resolve_checkpoint(args.ckpt), device=device,
                                              weights=args.weights, solver=args.solver,
                                              steps=args.steps if args.solver != "rk45" else None,
                                              rtol=args.rtol, atol=args.atol, cfg_scale=args.cfg)
        if args.cfg != 1.0 and not teacher.num_classes:
            raise ConfigError(f"--cfg {args.cfg}: guidance needs a conditional teacher (this one is unconditional)")
    t0 = time.perf_counter()
    manifest = generate_pairs(teacher, args.out, args.count, sample_shape(teacher.model),
                              shard_size=args.shard_size, seed=args.seed, batch_size=args.batch_size, device=device,
                              dtype=args.dtype, info=info, progress=not args.quiet)
    if info.main:
        wall = time.perf_counter() - t0
        print(f"wrote {manifest['count']} pairs in {len(manifest['shards'])} shards to {args.out}: "
              f"mean NFE {manifest['mean_nfe']:.1f}, {wall:.1f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fastflow.metrics.evaluate import SEED_METRICS, evaluate_seeds
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    steps = None if args.solver in ("rk45", "one_step") else args.steps
    out = check_writable(args.json) if args.json else None  # before loading anything
    device, ckpt, model = _load(args)
    if getattr(model.config, "cond_channels", 0):
        return _eval_sr(args, ckpt, model, device)
    out = out or check_writable(ckpt / f"eval-{args.solver}{steps or ''}.json")
    res = evaluate_seeds(model, range(args.seed, args.seed + args.seeds), solver=args.solver, steps=steps, n=args.n,
                         features=args.features, ref=args.ref, device=device)
    res["checkpoint"] = str(ckpt)
    cols = [c for c in ("solver", "steps", *SEED_METRICS, "params", "gflops_per_sample", "latency_ms_b1") if c in res]
    print(format_table([res], cols))
    atomic_write_json(out, res)
    print(f"wrote {out}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    import platform

    from fastflow.bench.latency import latency_suite, save_plot, speedup_check
    from fastflow.models import build_model, load_model
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    device = args.device
    for path, suffix in ((args.out, ".json"), (args.png, ".png")):
        if Path(path).suffix.lower() != suffix:
            raise ConfigError(f"{path!r}: want a {suffix} file")
        check_writable(path)

    def get(ckpt: str | None, preset: str) -> torch.nn.Module:
        if ckpt:
            return load_model(resolve_checkpoint(ckpt), device=device)
        torch.manual_seed(0)
        return build_model({"preset": preset}).to(device).eval()  # random weights: latency only

    student, teacher = get(args.student, args.student_preset), get(args.teacher, args.teacher_preset)
    shape = sample_shape(student)
    if sample_shape(teacher) != shape:
        raise ConfigError(f"student and teacher sample shapes differ: {shape} vs {sample_shape(teacher)}")
    z = torch.randn(args.batch, *shape, device=device)
    backends = args.backends
    rows = latency_suite(student, teacher, z, backends, euler_ns=args.euler,
                         iters=args.iters, rk45=not args.no_rk45, runner=args.runner)
    for r in rows:
        r["speedup_vs_one_step"] = r["p50_ms"] / next(
            x["p50_ms"] for x in rows if x["backend"] == r["backend"] and x["model"] == "student"
            and x["solver"] == "euler")
    print(format_table(rows, ["model", "backend", "solver", "nfe", "p50_ms", "p90_ms", "speedup_vs_one_step"]))
    print(format_table([r for r in rows if r["backend"] in ("eager", "aoti", "native") and r["model"] == "student"
                        and r["solver"] == "euler"], ["backend", "p50_ms", "p90_ms", "p99_ms"]))
    check_backend = next((b for b in backends if b != "native"), None)  # native times the student only
    check = speedup_check(rows, check_backend) if check_backend else []
    if check:
        print()
        print(f"one-step speedup over teacher Euler-N vs N x (per-call cost ratio), backend {check_backend}:")
        print(format_table(check, ["N", "measured_speedup", "predicted_speedup", "rel_error", "flops_ratio"]))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    atomic_write_json(args.out, {"device": dev_name, "batch": args.batch, "torch": torch.__version__,
                                 "student": args.student or args.student_preset,
                                 "teacher": args.teacher or args.teacher_preset,
                                 "rows": rows, "speedup_check": check})
    save_plot(rows, args.png)
    print(f"wrote {args.out}, {args.png}")
    return 0


def _sr_meta(ckpt: Path) -> tuple[dict, dict]:
    from fastflow.models.checkpoint import read_config

    meta = read_config(ckpt).get("meta", {})
    return meta.get("data_config", {}) or {}, meta.get("objective_config", {}) or {}


def _eval_sr(args: argparse.Namespace, ckpt: Path, model: torch.nn.Module, device: torch.device) -> int:
    """τ sweep of an OFTSR student (PSNR, SSIM, HF-energy ratio), with the teacher's result."""
    from fastflow.data import build_dataset
    from fastflow.flow.sr import DEFAULT_SIGMA_P
    from fastflow.metrics.sr_eval import save_sweep_plot, tau_sweep
    from fastflow.models.checkpoint import load_model
    from fastflow.utils.images import save_grid
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    out = check_writable(args.json or ckpt / "eval-sr.json")
    data_cfg, obj_cfg = _sr_meta(ckpt)
    if data_cfg.get("name") != "sr":
        raise ConfigError(f"{ckpt}: an image-conditioned model without SR training metadata")
    if obj_cfg.get("name") != "oftsr":
        raise ConfigError(f"{ckpt} is an SR teacher; evaluate the OFTSR student distilled from it")
    data = build_dataset(data_cfg)
    b = data.get(torch.arange(min(args.n, len(data))))
    teacher = load_model(obj_cfg["teacher"], device=device)
    taus = [float(t) for t in args.taus.split(",")]
    rows, samples = tau_sweep(model, b.x.to(device), b.image.to(device), float(obj_cfg.get("sigma_p", DEFAULT_SIGMA_P)),
                              taus, teacher=teacher)
    print(format_table(rows, ["method", "tau", "NFE", "psnr", "ssim", "hf_ratio"]))
    atomic_write_json(out, {"checkpoint": str(ckpt), "rows": rows})
    save_sweep_plot(rows, str(out.with_suffix(".png")))
    strip = torch.cat([x[:8].cpu() for x in samples.values()])
    save_grid(strip, out.with_name(out.stem + "-samples.png"), nrow=8, upscale=4)
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_name(out.stem + '-samples.png')} "
          f"(rows: {', '.join(samples)})")
    return 0


def cmd_sr(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from fastflow.data.folder import decode_image
    from fastflow.data.npz import NpzDataset
    from fastflow.flow.sr import DEFAULT_SIGMA_P, sr_one_step
    from fastflow.utils.images import save_grid
    from fastflow.utils.io import check_writable

    if Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got {args.out!r}")
    if not 0.0 <= args.tau <= 1.0:
        raise ConfigError("--tau must be in [0, 1]")
    check_writable(args.out)
    device, ckpt, model = _load(args)
    data_cfg, obj_cfg = _sr_meta(ckpt)
    if obj_cfg.get("name") != "oftsr":
        raise ConfigError(f"{ckpt} is not an OFTSR student (objective {obj_cfg.get('name')!r})")
    scale = int(data_cfg.get("scale", 4))
    if args.scale is not None and args.scale != scale:
        raise ConfigError(f"--scale {args.scale}: this student was trained for ×{scale}")
    c, res = model.config.in_channels, model.config.resolution
    src = Path(args.input)
    if src.suffix == ".npz":  # checked there: real, finite, non-empty, images in [-1, 1] or uint8
        ds = NpzDataset(str(src))
        y = ds.get(torch.arange(len(ds))).x
    else:  # an image file, taken as it is: never resized or turned grey behind the user's back
        rgb = torch.from_numpy(decode_image(src, 3).copy()).permute(2, 0, 1)
        if c == 1 and not (rgb == rgb[:1]).all():
            raise ConfigError(f"{src} is a colour image; this student takes grey images (convert it first)")
        y = rgb[:c][None].float() / 127.5 - 1.0
    if y.dim() != 4 or y.shape[1] != c or y.shape[-1] * scale != res or y.shape[-2] * scale != res:
        raise ConfigError(f"input must be low-resolution [N, {c}, {res // scale}, {res // scale}] for this model "
                          f"(×{scale} to {res}×{res}), got {list(y.shape)}")
    lq = F.interpolate(y, scale_factor=scale, mode="bicubic", align_corners=False).to(device)
    noise = torch.randn(lq.shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    with torch.no_grad():
        x = sr_one_step(model, lq, args.tau, float(obj_cfg.get("sigma_p", DEFAULT_SIGMA_P)), noise)
    if not torch.isfinite(x).all():
        raise FastflowError("the student produced NaN or Inf values; no image written")
    save_grid(x, args.out, upscale=max(1, 128 // res))
    print(f"wrote {args.out}: {len(x)} image(s) ×{scale}, tau={args.tau}, NFE=1")
    return 0


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    from fastflow.bench.kernels import kernel_suite
    from fastflow.fused.runtime import TRITON, interpreting
    from fastflow.utils.io import atomic_write_json
    from fastflow.utils.table import format_table

    if not TRITON:
        raise ConfigError("fastflow bench kernels needs triton: pip install triton")
    device = args.device
    if device.type != "cuda" and not (args.quick and interpreting()):
        raise ConfigError("fastflow bench kernels needs a CUDA GPU (on CPU only --quick under TRITON_INTERPRET=1, "
                          "which checks the plumbing, not the speed)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    res = kernel_suite(device, dtype, tuple(args.ops), quick=args.quick, backward=args.backward)
    if res["group_norm"]:
        print(format_table(res["group_norm"], ["shape", "fused_ms", "eager_ms", "fused_GBps", "copy_GBps",
                                               "fraction_of_copy_bw", "fraction_of_bound", "speedup_vs_eager"]))
    if res["attention"]:
        print(format_table(res["attention"], ["shape", "fused_ms", "best_sdpa_ms", "fused_TFLOPs",
                                              "fraction_of_bound", "ratio_vs_best_sdpa"]))
    print(f"device ceilings (measured): copy {res['ceilings']['copy_GBps']:.0f} GB/s, "
          f"matmul {res['ceilings']['matmul_TFLOPs']:.1f} TFLOP/s")
    for k, v in res["summary"].items():
        print(f"{k}: {v}")
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


def cmd_bench_codegen(args: argparse.Namespace) -> int:
    import json

    from fastflow.bench.codegen import compile_all, markdown_summary, problems, spill_free_table, to_json
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    if args.from_json:  # no compiling: the README table from committed results
        try:
            docs = [json.loads(Path(f).read_text()) for f in args.from_json.split(",")]
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--from-json: {e}") from None
        print(markdown_summary(docs))
        return 0

    try:
        archs = [int(a) for a in args.arch.split(",")]
    except ValueError:
        raise ConfigError(f"--arch takes a comma list of 80, 90, 100; got {args.arch!r}") from None
    if args.json:
        for a in archs:
            check_writable(args.json.format(arch=a))
    if args.tf32:  # fp32 attention then takes TF32 tensor cores, as at run time under this setting
        torch.set_float32_matmul_precision("high")
    rows = compile_all(archs, args.dtype, all_configs=args.all_configs, ops=args.ops, cache=not args.no_cache)
    cols = ["kernel", "variant", "dtype", "arch", "config", "chosen", "registers", "spill_stores", "spill_loads",
            "shared", "wgmma_serialized", "compile_s"]
    print(format_table([{c: getattr(r, c) for c in cols} for r in rows], cols))
    found = problems(rows)
    if args.table:
        atomic_write_json(args.table, spill_free_table(rows))
        print(f"wrote {args.table}")
    for a in archs:
        if args.json:
            atomic_write_json(args.json.format(arch=a), to_json(rows, a))
            print(f"wrote {args.json.format(arch=a)}")
    print(f"{len(rows)} compiles; {sum(r.chosen for r in rows)} chosen configs; "
          f"{sum(r.chosen and r.spills for r in rows)} of them spill")
    for p in found:
        print(f"PROBLEM: {p}")
    return 1 if found else 0


def cmd_bench_threads(args: argparse.Namespace) -> int:
    import platform

    from fastflow.bench.threads import thread_sweep
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table
    from fastflow.utils.threads import available_cores, default_threads

    check_writable(args.out)
    sweep = args.sweep or list(range(1, available_cores() + 1))
    rows = thread_sweep(sweep, steps=args.steps)
    print(format_table(rows, ["threads", "neighbour", "step_ms_p50", "step_ms_p90", "slowdown_vs_idle"]))
    atomic_write_json(args.out, {"device": f"cpu ({platform.machine()}, {available_cores()} cores available)",
                                 "torch": torch.__version__, "workload": "demo teacher training step "
                                 "(configs/digits.yaml, batch 128)", "default_threads": default_threads(),
                                 "rows": rows})
    print(f"default threads here: {default_threads()}; wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fastflow import demo
    from fastflow.utils.io import writable_dir

    out, seeds = writable_dir(args.out), list(range(args.seeds))
    runs = [(not args.skip_main, out, demo.run_demo, demo.run_seeds),
            (args.conditional, out / "conditional", demo.run_conditional, demo.run_conditional_seeds),
            (args.sr, out / "sr", demo.run_sr, demo.run_sr_seeds)]
    for wanted, where, once, per_seed in runs:
        if wanted and len(seeds) > 1:
            per_seed(where, seeds, scale=args.scale)
        elif wanted:
            once(where, scale=args.scale)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fastflow.bench.latency import BACKENDS

    p = Parser(prog="fastflow", description="One-step generators from rectified flows.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML config file (e.g. configs/digits.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    s.add_argument("--solver", default="euler", choices=["one_step", "euler", "heun", "rk2", "rk45"])
    s.add_argument("--steps", type=positive_int, default=16, help="steps for euler/heun/rk2")
    s.add_argument("--r", type=positive_float, default=0.5, help="rk2 intermediate point in (0, 1]")
    s.add_argument("--rtol", type=positive_float, default=1e-5)
    s.add_argument("--atol", type=positive_float, default=1e-5)
    s.add_argument("--n", type=positive_int, default=64, help="number of samples")
    s.add_argument("--batch-size", type=positive_int, default=256, help="samples per model call")
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
    s.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale α")
    s.add_argument("--prompt-emb", default=None,
                   help="text embedding (.safetensors, [L, D]) for token-conditioned models")
    s.add_argument("--weights", default="ema", choices=["ema", "model"])
    s.add_argument("--device", type=device_arg, default=default_device())
    s.add_argument("--out", default="samples.png", help="grid.png or samples.npz")
    s.set_defaults(fn=cmd_sample)

    q = sub.add_parser("pairs", help="generate teacher pairs (z, T(z)) as resumable shards")
    q.add_argument("ckpt", nargs="?", default=None, help="teacher checkpoint directory (or run directory)")
    q.add_argument("--sd", default=None, help="instead: a local Stable-Diffusion-style diffusers directory")
    q.add_argument("--prompts", default=None, help="with --sd: prompt table from `fastflow prompts`")
    q.add_argument("--prediction", default=None, choices=["epsilon", "v_prediction", "sample"],
                   help="with --sd: override the scheduler's prediction type")
    q.add_argument("--out", required=True, help="output directory for shards + manifest.json")
    q.add_argument("--count", type=positive_int, required=True, help="number of pairs")
    q.add_argument("--shard-size", type=positive_int, default=1000)
    q.add_argument("--batch-size", type=positive_int, default=256, help="teacher batch size")
    q.add_argument("--solver", default="rk45", choices=["euler", "heun", "rk2", "rk45"])
    q.add_argument("--steps", type=positive_int, default=100, help="steps for euler/heun/rk2")
    q.add_argument("--rtol", type=positive_float, default=1e-5)
    q.add_argument("--atol", type=positive_float, default=1e-5)
    q.add_argument("--cfg", type=finite_float, default=1.0, help="CFG scale of a conditional teacher")
    q.add_argument("--seed", type=nonneg_int, default=0)
    q.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    q.add_argument("--weights", default="ema", choices=["ema", "model"])
    q.add_argument("--device", type=device_arg, default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(fn=cmd_pairs)

    pr = sub.add_parser("prompts", help="encode a prompt file (one per line) into a prompt table for SD teachers")
    pr.add_argument("sd", help="local Stable-Diffusion-style diffusers directory (tokenizer/, text_encoder/)")
    pr.add_argument("prompts", help="text file, one prompt per line")
    pr.add_argument("--out", required=True, help="output .safetensors")
    pr.add_argument("--device", type=device_arg, default=default_device())
    pr.set_defaults(fn=cmd_prompts)

    e = sub.add_parser("eval", help="quality, straightness, params, FLOPs, NFE and latency of a checkpoint")
    e.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    e.add_argument("--solver", default="one_step", choices=["one_step", "euler", "heun", "rk2", "rk45"])
    e.add_argument("--steps", type=positive_int, default=1)
    e.add_argument("--n", type=positive_int, default=1000, help="samples for the quality metrics")
    e.add_argument("--seed", type=nonneg_int, default=0)
    e.add_argument("--seeds", type=positive_int, default=1,
                   help="repeat with noise seeds SEED … SEED+N−1: metrics as mean with their sd (KEY_sd)")
    e.add_argument("--features", default="auto", choices=["auto", "digits", "inception", "none"])
    e.add_argument("--ref", default=None, help="reference .npz (mu/sigma or images x) for Inception FD")
    e.add_argument("--weights", default="ema", choices=["ema", "model"])
    e.add_argument("--device", type=device_arg, default=default_device())
    e.add_argument("--json", default=None, help="output JSON (default: CKPT/eval-SOLVER.json)")
    e.add_argument("--taus", default="0.01,0.25,0.5,0.75,0.99", help="OFTSR students: knob values to sweep")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("sr", help="one-step super-resolution with an OFTSR student")
    r.add_argument("ckpt", help="OFTSR student checkpoint (or run directory)")
    r.add_argument("--input", required=True, help="low-resolution image (png/jpg) or .npz with x [N, C, h, w]")
    r.add_argument("--tau", type=finite_float, default=0.5, help="fidelity (0) ↔ realism (1) knob")
    r.add_argument("--scale", type=int, default=None, help="the student's trained scale (checked when given)")
    r.add_argument("--seed", type=nonneg_int, default=0)
    r.add_argument("--weights", default="ema", choices=["ema", "model"])
    r.add_argument("--device", type=device_arg, default=default_device())
    r.add_argument("--out", default="sr.png")
    r.set_defaults(fn=cmd_sr)

    b = sub.add_parser("bench", help="benchmarks (latency of one-step students vs teachers)")
    bsub = b.add_subparsers(dest="bench", required=True)
    bl = bsub.add_parser("latency", help="one-step student vs teacher at Euler N, Heun, RK45, per backend")
    bl.add_argument("--student", default=None, help="student checkpoint (default: random --student-preset)")
    bl.add_argument("--teacher", default=None, help="teacher checkpoint (default: random --teacher-preset)")
    bl.add_argument("--student-preset", default="digits-small")
    bl.add_argument("--teacher-preset", default="digits")
    bl.add_argument("--batch", type=positive_int, default=1)
    bl.add_argument("--backends", type=choice_list(*BACKENDS), default="eager",
                    help="comma list of eager, compiled, cudagraph, onnxruntime, aoti, native")
    bl.add_argument("--euler", type=int_list, default="1,2,4,8,16,32,64", help="teacher Euler step counts")
    bl.add_argument("--runner", default=None, help="fastflow-run binary for the native backend "
                    "(default: build/kernels/fastflow-run from `make native`, else PATH)")
    bl.add_argument("--no-rk45", action="store_true")
    bl.add_argument("--iters", type=positive_int, default=20)
    bl.add_argument("--device", type=device_arg, default=default_device())
    bl.add_argument("--out", default="latency.json")
    bl.add_argument("--png", default="latency_vs_nfe.png")
    bl.set_defaults(fn=cmd_bench_latency)

    bk = bsub.add_parser("kernels", help="fused GroupNorm+SiLU and attention vs eager, compiled and SDPA (GPU)")
    bk.add_argument("--ops", type=choice_list("gn", "attn"), default="gn,attn", help="comma list of gn, attn")
    bk.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    bk.add_argument("--backward", action="store_true", help="time attention forward + backward")
    bk.add_argument("--quick", action="store_true", help="tiny shape set (plumbing check)")
    bk.add_argument("--device", type=device_arg, default=default_device())
    bk.add_argument("--out", default="kernels.json")
    bk.set_defaults(fn=cmd_bench_kernels)

    bc = bsub.add_parser("codegen", help="compile every fused kernel × config for sm_80/90/100 (no GPU needed): "
                         "registers, spills, shared memory")
    bc.add_argument("--arch", default="80,90", help="comma list of 80, 90, 100")
    bc.add_argument("--dtype", type=choice_list("fp16", "bf16", "fp32"), default="fp16,bf16",
                    help="comma list of fp16, bf16, fp32")
    bc.add_argument("--ops", type=choice_list("gn", "attn"), default="gn,attn", help="comma list of gn, attn")
    bc.add_argument("--all-configs", action="store_true", help="also compile the configs the pruning removes")
    bc.add_argument("--no-cache", action="store_true", help="compile even when $FASTFLOW_CACHE/codegen holds the "
                    "rows of unchanged kernel sources, triton and settings")
    bc.add_argument("--json", default=None, help="write one JSON per arch, e.g. codegen-sm{arch}.json")
    bc.add_argument("--tf32", action="store_true", help="compile fp32 attention for TF32 tensor cores "
                    "(torch.set_float32_matmul_precision('high')), not IEEE")
    bc.add_argument("--from-json", default=None, help="comma list of codegen JSONs: print the README summary "
                    "table from them instead of compiling")
    bc.add_argument("--table", default=None, help="with --all-configs: write the spill-free config table "
                    "(fastflow/fused/spill_free.json)")
    bc.set_defaults(fn=cmd_bench_codegen)

    bt = bsub.add_parser("threads", help="a demo training step at each CPU thread count, idle and next to a "
                         "busy core (the measurement behind the --threads default)")
    bt.add_argument("--sweep", type=int_list, default=None, help="thread counts (default: 1 … available cores)")
    bt.add_argument("--steps", type=positive_int, default=20, help="timed steps per setting")
    bt.add_argument("--out", default="threads.json")
    bt.set_defaults(fn=cmd_bench_threads)

    d = sub.add_parser("demo", help="the embedded SlimFlow pipeline on digits (CPU, ~20 minutes on 2 cores)")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply every training budget and the pair count (e.g. 4 for a longer run)")
    d.add_argument("--conditional", action="store_true",
                   help="also run InstaFlow on class-conditioned digits with CFG (~25 more minutes on one CPU thread)")
    d.add_argument("--sr", action="store_true",
                   help="also run OFTSR ×4 on photographs (scikit-image's; τ sweep on held-out ones; ~7 more minutes "
                        "on one CPU thread)")
    d.add_argument("--seeds", type=positive_int, default=1,
                   help="run each pipeline (SlimFlow, --conditional, --sr) with seeds 0 … N−1 (each in "
                        "its OUT/…/seed-S) and report mean ± sd")
    d.add_argument("--skip-main", action="store_true", help="skip the SlimFlow run (with --conditional / --sr)")
    d.set_defaults(fn=cmd_demo)
    for verb in (t, s, q, pr, e, r, bl, bk, bc, bt, d):
        add_threads(verb)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("fastflow", args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
