"""``fastflow bench codegen``: compile every kernel the fused ops can launch, for real NVIDIA
targets, on a machine without a GPU.

For each shape of the set (our presets' GroupNorm inputs at batch 1/16/128 and SD-1.5's GroupNorm
shapes, with SiLU and without — neither uses scale-shift GroupNorm —, attention at head dims
40/64/80/128/160, self and cross with 77 keys), the ops build their launches
on meta tensors (:class:`fastflow.fused.runtime.Launch`: the same arguments, so the same
specialisation as a real launch), and each kernel is compiled with every autotune config that can
be chosen for that shape on that arch (after the configs' pruning) — or with every config
(``--all-configs``) to see what the pruning removes. An arch's rows are cached under
``$FASTFLOW_CACHE/codegen`` keyed by everything they depend on (the sources of ``fastflow/fused``,
the shape set, this module, the triton and torch versions and the compile settings), so an
unchanged kernel is compiled once per machine, not once per run (``--no-cache`` recompiles).
Triton's bundled ``ptxas -v`` reports registers and spill bytes; shared memory comes from the
compiled kernel's metadata. A stand-in driver answers the one question compilation asks of a GPU: which target.

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the kernels).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastflow.bench.kernels import SD15_GN, unet_gn_shapes
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.fused.attention import bwd_launches, fwd_launch, head_dim_parts
from fastflow.fused.groupnorm import auto_split, bwd_launch, fwd_launches, split_count
from fastflow.fused.tuning import config_label, shared_limit
from fastflow.utils.cache import cache_dir
from fastflow.utils.dtypes import DTYPES
from fastflow.utils.io import atomic_write_json, read_json

#: arch → (GPU, SM count); shared memory limits are in :mod:`fastflow.fused.tuning`
ARCHS = {80: ("A100", 108), 90: ("H100", 132), 100: ("B200", 148)}
KERNEL_KEYS = {"fwd_kernel": "fwd", "bwd_dq_kernel": "dq", "bwd_dkdv_kernel": "dkdv"}
HEAD_DIMS = (40, 64, 80, 128, 160)
ATTN_LENGTHS = ((256, 256), (1024, 1024), (4096, 4096), (1024, 77), (4096, 77))
OPS = ("gn", "attn")

_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Row:
    op: str
    kernel: str
    variant: str  # head dim / GroupNorm flags and split
    dtype: str
    arch: int
    config: str
    chosen: bool  # survives the config pruning for this arch and shape
    warps: int
    stages: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    shared_limit: int
    wgmma_serialized: bool  # ptxas: "wgmma.mma_async instructions are serialized" (sm_90 register pressure)
    compile_s: float
    shapes: str  # the first shape that launched this compile

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def fits_shared(self) -> bool:
        return self.shared <= self.shared_limit


class _StandInDriver:
    """The active-driver surface Triton's compile path touches: the target, a device key (the
    arch, so each arch gets its own kernel cache) and a stream."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.arch = arch

    def get_current_target(self):  # noqa: ANN201
        return self.target

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def _target(arch: int) -> Iterator[None]:
    import triton
    from triton import knobs

    drv = triton.runtime.driver
    saved = (drv._active, knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile)  # no default on CPU
    drv.set_active(_StandInDriver(arch))
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v output: registers and spills
    knobs.compilation.always_compile = True  # an on-disk cache hit would print no log
    try:
        yield
    finally:
        drv.set_active(saved[0])
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved[1:]


def _launch_cases(dtype: torch.dtype, arch: int, ops: Sequence[str] = OPS) -> Iterator[tuple[str, str, str, Any]]:
    """``(op, variant, shape text, launch)`` for every launch of the shape set on ``arch``."""
    meta = torch.device("meta")
    _, sms = ARCHS[arch]
    gn_shapes = sorted(set(unet_gn_shapes()) | set(SD15_GN)) if "gn" in ops else []
    for n, c, h, w in gn_shapes:
        groups = math.gcd(32, c)
        x = torch.empty(n, c, h, w, device=meta, dtype=dtype)
        wb = torch.empty(c, device=meta, dtype=dtype)
        split = auto_split(n * groups, sms)
        nsplit = split_count(x, groups, split)
        stats = torch.empty(n, groups, device=meta)
        for silu in (True, False):  # what our presets and SD-1.5 launch (neither uses scale-shift)
            variant = f"silu={int(silu)} scale_shift=0 split={int(nsplit > 1)}"
            shape = f"{n}x{c}x{h}x{w} G{groups}"
            for launch in fwd_launches(x, torch.empty_like(x), wb, wb, None, None, stats, stats, groups, 1e-5, silu,
                                          split):
                yield "group_norm", variant, shape, launch
            parts = torch.empty(4, n, nsplit, c, device=meta)
            args = (x, x, torch.empty_like(x), wb, wb, None, None, stats, stats, parts, groups, silu, split)
            modes = [(True, True)] if nsplit == 1 else [(True, False), (False, True)]
            for reduce, apply in modes:
                yield "group_norm", variant, shape, bwd_launch(*args, reduce=reduce, apply=apply,
                                                                  ga=stats, gb=stats)
    for d in HEAD_DIMS if "attn" in ops else ():
        for lq, lk in ATTN_LENGTHS:
            if lk == 77 and d in (64, 128):
                continue  # SD cross-attention head dims are 40/80/160
            q = torch.empty(2, 8, lq, d, device=meta, dtype=dtype)
            k = torch.empty(2, 8, lk, d, device=meta, dtype=dtype)
            lse = torch.empty(2, 8, lq, device=meta)
            variant = f"head_dim={d} parts={'+'.join(str(p) for p in head_dim_parts(d) if p)}"
            shape = f"2x8x{lq}x{lk}x{d}"
            yield "attention", variant, shape, fwd_launch(q, k, k, torch.empty_like(q), lse, 0.1)
            for launch in bwd_launches(q, q, k, k, q, lse, lse, torch.empty_like(q), torch.empty_like(k),
                                          torch.empty_like(k), 0.1):
                yield "attention", variant, shape, launch


def _configs(kernel: Any, launch: Any, all_configs: bool) -> list[tuple[Any, bool]]:
    """``(config or None, chosen)`` for every config compiled for this launch."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [(None, True)]
    names = kernel.fn.arg_names
    chosen = kernel.configs
    if kernel.early_config_prune:
        chosen = kernel.early_config_prune(kernel.configs, dict(zip(names, launch.args, strict=False)), **launch.meta)
    return [(c, c in chosen) for c in kernel.configs] if all_configs else [(c, True) for c in chosen]


def _check_request(archs: Sequence[int], dtypes: Sequence[str], ops: Sequence[str]) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise MissingBackendError("fastflow bench codegen compiles for GPUs: unset TRITON_INTERPRET")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise MissingBackendError("fastflow bench codegen needs triton (pip install triton)") from None
    for a in archs:
        if a not in ARCHS:
            raise ConfigError(f"unknown arch {a}; choose from {', '.join(map(str, ARCHS))}")
    for o in ops:
        if o not in OPS:
            raise ConfigError(f"unknown op {o!r}; choose from {', '.join(OPS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise ConfigError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")


def cache_key(arch: int, dtypes: Sequence[str], all_configs: bool, ops: Sequence[str]) -> str:
    """What one arch's rows depend on: the kernel sources and tuning tables (``fastflow/fused``),
    the shape set and this module, the triton (and its ptxas) and torch versions, and the compile
    settings (fp32 matmul precision, Triton's FP-fusion knob, a ptxas override)."""
    import triton

    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted((pkg / "fused").iterdir()) + [pkg / "bench" / "codegen.py", pkg / "bench" / "kernels.py"]:
        if f.is_file() and f.suffix in (".py", ".json"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    settings = [arch, list(dtypes), all_configs, list(ops), triton.__version__, torch.__version__,
                torch.get_float32_matmul_precision(), os.environ.get("TRITON_DEFAULT_FP_FUSION", ""),
                os.environ.get("TRITON_PTXAS_PATH", "")]
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:32]


def _cached_rows(path: Path) -> list[Row] | None:
    try:
        return [Row(**r) for r in read_json(path)["rows"]]
    except (ConfigError, KeyError, TypeError):  # absent or unreadable: compile again
        return None


def compile_all(archs: Sequence[int], dtypes: Sequence[str], all_configs: bool = False,
                ops: Sequence[str] = OPS, progress: bool = True, cache: bool = True,
                cache_root: Path | None = None) -> list[Row]:
    """Compile every (kernel, config) of the shape set for each arch and dtype; one row each. With
    ``cache``, an arch whose :func:`cache_key` was compiled before into ``cache_root`` (default
    ``$FASTFLOW_CACHE/codegen``) is read back."""
    _check_request(archs, dtypes, ops)
    root = cache_root or cache_dir() / "codegen"
    rows: list[Row] = []
    for arch in archs:
        path = root / f"sm{arch}-{cache_key(arch, dtypes, all_configs, ops)}.json"
        got = _cached_rows(path) if cache else None
        if got is None:
            got = _compile_arch(arch, dtypes, all_configs, ops, progress)
            atomic_write_json(path, {"arch": arch, "dtypes": list(dtypes), "all_configs": all_configs,
                                     "ops": list(ops), "rows": [asdict(r) for r in got]})
        elif progress:
            print(f"sm_{arch}: {len(got)} compiles read from the cache {path} (unchanged kernels and triton; "
                  "--no-cache recompiles)")
        rows += got
    return rows


def _compile_arch(arch: int, dtypes: Sequence[str], all_configs: bool, ops: Sequence[str],
                  progress: bool) -> list[Row]:
    from tqdm import tqdm
    from triton.runtime.autotuner import Autotuner


    rows: list[Row] = []
    seen: dict[tuple[str, str], Row] = {}  # (kernel hash, config) → row: one compile per specialisation
    with _target(arch):
        for dname in dtypes:
            cases = list(_launch_cases(DTYPES[dname], arch, ops))
            for op, variant, shape, launch in tqdm(cases, desc=f"sm_{arch} {dname}", disable=not progress,
                                                   leave=False):
                fn = launch.kernel.fn if isinstance(launch.kernel, Autotuner) else launch.kernel
                for cfg, chosen in _configs(launch.kernel, launch, all_configs):
                    opts = {**launch.meta, **(cfg.all_kwargs() if cfg else {})}
                    log = io.StringIO()
                    t0 = time.perf_counter()
                    with contextlib.redirect_stdout(log):
                        compiled = fn.warmup(*launch.args, grid=(1,), **opts)
                    dt = time.perf_counter() - t0
                    label = config_label(cfg) if cfg else "-"
                    key = (compiled.hash, label)
                    if key in seen:  # same specialisation as an earlier shape: no new compile
                        seen[key].chosen |= chosen
                        continue
                    regs = _REGS.findall(log.getvalue())
                    spill = _SPILL.findall(log.getvalue())
                    if not regs:
                        raise RuntimeError(f"no ptxas log for {fn.__name__} {label} on sm_{arch}")
                    st, ss, sl = (int(v) for v in spill[-1]) if spill else (0, 0, 0)
                    md = compiled.metadata
                    row = Row(op, fn.__name__.lstrip("_"), variant, dname, arch, label, chosen, md.num_warps,
                              md.num_stages, int(regs[-1]), ss, sl, st, int(md.shared), shared_limit(arch),
                              "wgmma.mma_async instructions are serialized" in log.getvalue(), round(dt, 3), shape)
                    seen[key] = row
                    rows.append(row)
    return rows


def problems(rows: Sequence[Row]) -> list[str]:
    """What the codegen test fails on: a chosen fp16/bf16 config that spills on sm_80/sm_90, and a
    kernel variant with no chosen config that fits the arch's shared memory."""
    out = [f"{r.kernel} {r.variant} {r.dtype} sm_{r.arch} {r.config}: spills {r.spill_stores}/{r.spill_loads} bytes"
           for r in rows if r.chosen and r.spills and r.dtype in ("fp16", "bf16") and r.arch in (80, 90)]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.variant, r.dtype, r.arch), []).append(r)
    for (kernel, variant, dtype, arch), rs in groups.items():
        if not any(r.chosen and r.fits_shared for r in rs):
            out.append(f"{kernel} {variant} {dtype} sm_{arch}: no chosen config fits {rs[0].shared_limit} bytes "
                       "of shared memory")
    return out


def to_json(rows: Sequence[Row], arch: int) -> dict[str, Any]:
    """The committed ``codegen-sm{arch}.json``: rows of one arch, sorted, compile times left out
    (they vary by machine; everything else is deterministic for a given triton)."""
    import triton

    keep = sorted((r for r in rows if r.arch == arch), key=lambda r: (r.op, r.kernel, r.variant, r.dtype, r.config))
    return {"arch": f"sm_{arch}", "gpu": ARCHS[arch][0], "triton": triton.__version__,
            "shared_limit": keep[0].shared_limit if keep else None, "problems": problems(keep),
            "rows": [{k: v for k, v in asdict(r).items() if k not in ("compile_s", "shapes")} for r in keep]}


def spill_free_table(rows: Sequence[Row]) -> dict[str, Any]:
    """``fastflow/fused/spill_free.json`` from an ``--all-configs`` run over fp16 and bf16: per
    attention kernel, arch and head-dim tiles ``D0 + D1``, the configs with no spill and no shared
    memory overflow in every dtype and specialisation compiled."""
    import triton

    measured = {r.dtype for r in rows}
    if not {"fp16", "bf16"} <= measured:
        raise ConfigError("the spill-free table needs an --all-configs run over --dtype fp16,bf16")
    verdict: dict[tuple[str, int, int, str], bool] = {}
    for r in rows:
        if r.kernel not in KERNEL_KEYS or r.dtype == "fp32":
            continue
        head = sum(int(p) for p in re.search(r"parts=([\d+]+)", r.variant).group(1).split("+"))
        key = (KERNEL_KEYS[r.kernel], r.arch, head, r.config)
        verdict[key] = verdict.get(key, True) and not r.spills and r.fits_shared
    table: dict[str, Any] = {"triton": triton.__version__,
                             "made_by": "fastflow bench codegen --ops attn --all-configs --dtype fp16,bf16 --table"}
    for (kernel, arch, head, cfg), ok in sorted(verdict.items()):
        entry = table.setdefault(kernel, {}).setdefault(str(arch), {}).setdefault(str(head), [])
        if ok:
            entry.append(cfg)
    return table


def markdown_summary(docs: Sequence[dict[str, Any]]) -> str:
    """The README table from committed ``codegen-sm*.json``: per kernel, dtype and arch the configs
    that can be chosen, their largest register count, spill bytes and shared memory."""
    lines = ["| kernel | dtype | arch | variants | chosen configs | max registers | spill bytes (st/ld) "
             "| max shared memory / limit | wgmma serialized |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for doc in docs:
        for r in doc["rows"]:
            groups.setdefault((r["kernel"], r["dtype"], doc["arch"]), []).append({**r, "limit": doc["shared_limit"]})
    for (kernel, dtype, arch), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], int(kv[0][2][3:]))):
        chosen = [r for r in rs if r["chosen"]]
        if not chosen:
            continue
        lines.append(
            f"| `{kernel}` | {dtype} | {arch} | {len({r['variant'] for r in chosen})} "
            f"| {len({r['config'] for r in chosen})} | {max(r['registers'] for r in chosen)} "
            f"| {max(r['spill_stores'] for r in chosen)}/{max(r['spill_loads'] for r in chosen)} "
            f"| {max(r['shared'] for r in chosen) / 1024:.0f} / {rs[0]['limit'] / 1024:.0f} KiB "
            f"| {sum(bool(r.get('wgmma_serialized')) for r in chosen)} |")
    return "\n".join(lines)
