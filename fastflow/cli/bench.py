"""``fastflow bench latency | kernels | codegen | threads``: the benchmarks behind the README's
numbers; each writes JSON (and PNG where a plot helps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fastflow.cli.argtypes import choice_list, device_arg, int_list, nonneg_int, positive_int
from fastflow.cli.common import add_threads, default_device
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.models.checkpoint import resolve_checkpoint
from fastflow.models.presets import sample_shape
from fastflow.utils.dtypes import DTYPES
from fastflow.utils.io import read_json
from fastflow.utils.threads import device_name


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fastflow.bench.latency import BACKENDS
    from fastflow.bench.train_step import PAIR_PATHS, PATHS
    from fastflow.bench.train_step import PRESETS as TRAIN_PRESETS
    from fastflow.models.presets import PRESETS

    bench = sub.add_parser(
        "bench", help="benchmarks: latency, fused kernels, training steps, code generation, winners, CPU threads"
    )
    verbs = bench.add_subparsers(dest="bench", required=True)
    lat = verbs.add_parser("latency", help="one-step student vs teacher at Euler N, Heun, RK45, per backend")
    lat.add_argument("--student", default=None, help="student checkpoint (default: random --student-preset)")
    lat.add_argument("--teacher", default=None, help="teacher checkpoint (default: random --teacher-preset)")
    lat.add_argument("--student-preset", default="digits-small", help="preset of a random-weight student")
    lat.add_argument("--teacher-preset", default="digits", help="preset of a random-weight teacher")
    lat.add_argument("--batch", type=positive_int, default=1, help="samples per call")
    lat.add_argument("--backends", type=choice_list(*BACKENDS), default="eager",
                     help=f"comma list of {', '.join(BACKENDS)}; fused*: the same with the Triton-fused "
                     "GroupNorm/attention swapped in (CUDA with Triton; skipped with a note elsewhere)")
    lat.add_argument("--euler", type=int_list, default="1,2,4,8,16,32,64", help="teacher Euler step counts")
    lat.add_argument("--runner", default=None, help="fastflow-run binary for the native backend "
                     "(default: build/kernels/fastflow-run from `make native`, else PATH)")
    lat.add_argument("--no-rk45", action="store_true", help="skip the teacher's adaptive RK45 row")
    lat.add_argument("--iters", type=positive_int, default=20, help="timed calls per row")
    lat.add_argument("--png", default="latency_vs_nfe.png", help="output plot")
    _device_out(lat, "latency.json", run_latency)

    kern = verbs.add_parser("kernels", help="fused GroupNorm+SiLU and attention vs eager, compiled and SDPA (GPU)")
    kern.add_argument("--ops", type=choice_list("gn", "attn"), default="gn,attn", help="comma list of gn, attn")
    kern.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="input dtype")
    kern.add_argument("--backward", action="store_true", help="time attention forward + backward")
    kern.add_argument("--quick", action="store_true", help="tiny shape set (plumbing check)")
    _device_out(kern, "kernels.json", run_kernels)

    code = verbs.add_parser("codegen", help="compile every fused kernel × config for sm_80/90/100 (no GPU needed): "
                            "registers, spills, shared memory")
    code.add_argument("--arch", default="80,90", help="comma list of 80, 90, 100")
    code.add_argument("--dtype", type=choice_list(*DTYPES), default="fp16,bf16",
                      help="comma list of fp16, bf16, fp32")
    code.add_argument("--ops", type=choice_list("gn", "attn"), default="gn,attn", help="comma list of gn, attn")
    code.add_argument("--all-configs", action="store_true", help="also compile the configs the pruning removes")
    code.add_argument("--no-cache", action="store_true", help="compile even when the cache holds the rows of "
                      "unchanged kernel sources, triton and settings")
    code.add_argument("--cache-dir", type=Path, default=None, help="where compiled rows are cached "
                      "(default: $FASTFLOW_CACHE/codegen, ~/.cache/fastflow/codegen)")
    code.add_argument("--json", default=None, help="write one JSON per arch, e.g. codegen-sm{arch}.json")
    code.add_argument("--tf32", action="store_true", help="compile fp32 attention for TF32 tensor cores "
                      "(torch.set_float32_matmul_precision('high')), not IEEE")
    code.add_argument("--from-json", default=None, help="comma list of codegen JSONs: print the README summary "
                      "table from them instead of compiling")
    code.add_argument("--table", default=None, help="with --all-configs: write the spill-free config table "
                      "(fastflow/fused/spill_free.json)")
    code.set_defaults(fn=run_codegen)

    trn = verbs.add_parser("train", help="time and peak memory of one training step: eager, bf16, compiled, "
                           "compiled+bf16, fused, fused+compiled (fused needs CUDA with Triton, bf16 a device that "
                           "runs it natively); with --teacher, pairs/s of pair generation")
    trn.add_argument("--presets", type=choice_list(*PRESETS), default=",".join(TRAIN_PRESETS),
                     help="comma list of model presets")
    trn.add_argument(
        "--paths", type=choice_list(*PATHS), default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}"
    )
    trn.add_argument("--batch", type=positive_int, default=32, help="training batch size")
    trn.add_argument("--steps", type=positive_int, default=10, help="timed steps per row (after --warmup)")
    trn.add_argument("--warmup", type=nonneg_int, default=3, help="untimed steps first (compilation happens here)")
    trn.add_argument("--teacher", default=None, help="a teacher checkpoint or run: also time pair generation from it "
                     "(CPU) per solver and path (eager, fused, compiled)")
    trn.add_argument("--pairs", type=positive_int, default=500, help="with --teacher: noises per solver")
    trn.add_argument("--solvers", type=choice_list("rk45", "euler"), default="rk45,euler",
                     help="with --teacher: rk45 (rtol = atol = 1e-3, as the demo) and/or euler (16 steps)")
    trn.add_argument("--pair-paths", type=choice_list(*PAIR_PATHS), default=",".join(PAIR_PATHS),
                     help="with --teacher: eager, fused (the inference kernels fused=auto takes: the CPU block "
                          "kernel on a CPU) and/or compiled")
    _device_out(trn, "train_step.json", run_train)

    win = verbs.add_parser("winners", help="the fastest path per case from kernels/train/latency JSONs "
                           "(what fused=auto is to be set from)")
    win.add_argument("json", nargs="+", help="JSON files written by fastflow bench kernels, train or latency")
    win.add_argument("--out", default="winners.json", help="output JSON")
    win.add_argument(
        "--switch-table",
        nargs="?",
        const="cache",
        default=None,
        metavar="PATH",
        help="also write the table fused=auto reads, from fused-paths rows (benchmarks/cpu_fused_paths.py): "
        "to PATH, or without PATH to the user cache ($FASTFLOW_CACHE/fused-winners.json), which "
        "wins over the table shipped with fastflow",
    )
    win.set_defaults(fn=run_winners)

    thr = verbs.add_parser("threads", help="a demo training step at each CPU thread count, idle and next to a "
                           "busy core (the measurement behind the --threads default)")
    thr.add_argument("--sweep", type=int_list, default=None, help="thread counts (default: 1 … available cores)")
    thr.add_argument("--steps", type=positive_int, default=20, help="timed steps per setting")
    thr.add_argument("--out", default="threads.json", help="output JSON")
    thr.set_defaults(fn=run_threads)
    mem = verbs.add_parser("memory", help="per-rank training memory, DDP vs FSDP2 at N ranks, with and without "
                           "activation checkpointing (states computed on the meta device, activations measured)")
    mem.add_argument("model", help="a model preset, or a diffusers denoiser config JSON "
                                   "(e.g. fastflow/configs/sd15/unet.json)")
    mem.add_argument("--ranks", type=int_list, default=[1, 2, 8], help="comma list of world sizes")
    mem.add_argument("--micro-batch", type=positive_int, default=1, help="samples per rank and micro-batch")
    mem.add_argument("--measure-res", type=positive_int, default=16, help="resolution of the measured step")
    mem.add_argument("--out", default="memory.json", help="output JSON")
    mem.set_defaults(fn=run_memory)
    for verb in (lat, kern, code, trn, win, thr, mem):
        add_threads(verb)


def _runnable(names: list[str], device: torch.device, needs_kernels: Any, what: str) -> list[str]:
    """The ``names`` that can run on ``device``: the fused ones need a kernel device (say so once)."""
    from fastflow.fused.switch import runnable

    kept, why = runnable(names, device, needs_kernels)
    if why:
        print(f"note: skipping {', '.join(n for n in names if n not in kept)}: {why}")
    if not kept:
        raise MissingBackendError(f"no {what} left to time on this machine")
    return kept


def _device_out(p: argparse.ArgumentParser, out: str, fn: Any) -> None:
    """``--device`` and ``--out`` of a timing verb, and the function it runs."""
    p.add_argument("--device", type=device_arg, default=default_device(), help="cpu, cuda or cuda:N")
    p.add_argument("--out", default=out, help="output JSON")
    p.set_defaults(fn=fn)


def run_train(args: argparse.Namespace) -> int:
    from fastflow.bench.train_step import check_paths, pairs_suite, runnable_amp, train_step_suite
    from fastflow.models.checkpoint import resolve_checkpoint
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    check_writable(args.out)
    check_paths(args.paths)
    paths = _runnable(args.paths, args.device, lambda p: p.startswith("fused"), "path")
    paths, why = runnable_amp(paths, args.device)
    if why:
        print(f"note: bf16 paths skipped: {why}")
    teacher = resolve_checkpoint(args.teacher) if args.teacher else None
    rows = train_step_suite(args.presets, args.batch, args.device, paths, steps=args.steps, warmup=args.warmup)
    print(format_table(rows, ["preset", "path", "batch", "step_p50_ms", "samples_per_s", "peak_mem_mb",
                              "rel_diff"]))
    pairs = pairs_suite(str(teacher), args.pairs, args.solvers, args.pair_paths) if teacher else []
    if pairs:
        print(format_table(pairs, ["solver", "path", "n", "pairs_per_cpu_s", "mean_nfe", "max_abs_diff"]))
    atomic_write_json(args.out, {"device": device_name(args.device), "torch": torch.__version__,
                                 "threads": torch.get_num_threads(), "rows": rows, "pairs": pairs,
                                 "teacher": str(teacher) if teacher else None,
                                 "skipped": sorted(set(args.paths) - set(paths))})
    print(f"wrote {args.out}")
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fastflow.bench.memory import memory_table
    from fastflow.utils.io import atomic_write_json, check_distinct, check_writable
    from fastflow.utils.table import format_table

    check_distinct({"--out": args.out}, {"MODEL": args.model})
    check_writable(args.out)
    plan, rows = memory_table(args.model, args.ranks, args.micro_batch, args.measure_res)
    print(f"{plan.name}: {plan.params / 1e6:.1f}M parameters at {plan.resolution}², activations measured at "
          f"{plan.measured_at}² (fp32, per sample: {plan.act_bytes / 1e9:.2f} GB, checkpointed "
          f"{plan.act_ckpt_bytes / 1e9:.2f} GB)")
    print(format_table(rows, ["parallel", "ranks", "precision", "activation_checkpointing", "params_gb", "grads_gb",
                              "adam_gb", "ema_gb", "buffers_gb", "activations_gb", "total_gb"]))
    atomic_write_json(args.out, {"plan": asdict(plan), "torch": torch.__version__, "rows": rows})
    print(f"wrote {args.out}")
    return 0


def run_winners(args: argparse.Namespace) -> int:
    from fastflow.bench.winners import switch_table, winners
    from fastflow.fused.auto import user_table
    from fastflow.utils.io import atomic_write_json, check_distinct, check_writable
    from fastflow.utils.table import format_table

    table_path = str(user_table()) if args.switch_table == "cache" else args.switch_table
    check_distinct({"--out": args.out, "--switch-table": table_path},
                   {f"--json[{i}]": p for i, p in enumerate(args.json)})
    check_writable(args.out)
    if table_path:
        check_writable(table_path)
    cases = winners(args.json)
    table = switch_table(cases, args.json) if table_path else None
    print(format_table([{**c, "case": " ".join(str(c[k]) for k in c if k not in ("bench", "times_ms", "winner",
                                                                               "margin_over_next"))}
                        for c in cases], ["bench", "case", "winner", "margin_over_next"]))
    atomic_write_json(args.out, {"sources": args.json, "cases": cases})
    print(f"wrote {args.out}")
    if table is not None:
        atomic_write_json(table_path, table)
        for e in table["entries"]:
            print(f"fused=auto on {e['device']}, {e['size']} models: {e['path']}")
        print(f"wrote {table_path}")
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from fastflow.bench.latency import latency_suite, save_plot, speedup_check, split_backend
    from fastflow.models import build_model, load_model
    from fastflow.utils.io import atomic_write_json, check_distinct, check_writable
    from fastflow.utils.table import format_table

    device = args.device
    check_distinct({"--out": args.out, "--png": args.png}, {})
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
    backends = _runnable(args.backends, device, lambda b: split_backend(b)[0] == "triton", "backend")
    rows = latency_suite(student, teacher, z, backends, euler_ns=args.euler,
                         iters=args.iters, rk45=not args.no_rk45, runner=args.runner)
    for r in rows:  # this row's p50 in one-step-student p50s of its backend: the one-step student's speed-up over it
        r["one_step_speedup"] = r["p50_ms"] / next(
            x["p50_ms"] for x in rows if x["backend"] == r["backend"] and x["model"] == "student"
            and x["solver"] == "euler")
    print(format_table(rows, ["model", "backend", "solver", "nfe", "p50_ms", "p90_ms", "one_step_speedup"]))
    print(format_table([r for r in rows if r["backend"] in ("eager", "aoti", "native") and r["model"] == "student"
                        and r["solver"] == "euler"], ["backend", "p50_ms", "p90_ms", "p99_ms"]))
    check_backend = next((b for b in backends if b != "native"), None)  # native times the student only
    check = speedup_check(rows, check_backend) if check_backend else []
    if check:
        print()
        print(f"one-step speedup over teacher Euler-N vs N x (per-call cost ratio), backend {check_backend}:")
        print(format_table(check, ["N", "measured_speedup", "predicted_speedup", "rel_error", "flops_ratio"]))
    atomic_write_json(args.out, {"device": device_name(device), "batch": args.batch, "torch": torch.__version__,
                                 "student": args.student or args.student_preset,
                                 "teacher": args.teacher or args.teacher_preset,
                                 "rows": rows, "speedup_check": check})
    save_plot(rows, args.png)
    print(f"wrote {args.out}, {args.png}")
    return 0


def run_kernels(args: argparse.Namespace) -> int:
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
    dtype = DTYPES[args.dtype]
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


def run_codegen(args: argparse.Namespace) -> int:

    from fastflow.bench.codegen import compile_all, markdown_summary, problems, spill_free_table, to_json
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    if args.from_json:  # no compiling: the README table from committed results
        docs = [read_json(f) for f in args.from_json.split(",")]
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
    rows = compile_all(archs, args.dtype, all_configs=args.all_configs, ops=args.ops, cache=not args.no_cache,
                       cache_root=args.cache_dir)
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


def run_threads(args: argparse.Namespace) -> int:
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
