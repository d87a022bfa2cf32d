"""Code generation for real GPUs, checked without one (``fastflow bench codegen``).

Every fused kernel × config that can be chosen for our shape set compiles for sm_80 and sm_90 with
Triton's bundled ptxas; no fp16/bf16 config that can be chosen spills registers; every kernel has a
chosen config within the arch's shared memory; the committed ``benchmarks/results/codegen-sm*.json``
are what the command prints here (same Triton). Runs in subprocesses without ``TRITON_INTERPRET``
(which conftest sets on CPU), one arch per core. The command caches an arch's rows by the kernel
sources, triton and settings: an unchanged tree compiles once per machine (tested below). The
default suite compiles GroupNorm's kernels (~1 min cold); with attention's (~8 min cold per arch)
the check is in the ``slow`` set (``make test-all``): run it for every kernel change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
from helpers import USER_CACHE

from fastflow.fused.tuning import attention_pruner, attention_smem, shared_limit, spill_free

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _codegen(arch: int, out: Path, ops: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.Popen([sys.executable, "-m", "fastflow", "bench", "codegen", "--arch", str(arch), "--ops", ops,
                             "--dtype", "fp16,bf16", "--json", str(out / "codegen-sm{arch}.json"),
                             "--cache-dir", str(USER_CACHE / "codegen")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


#: op → its kernels (and what its rows must cover)
KERNELS = {"gn": ("group_norm", ("apply_kernel", "bwd_kernel", "stats_kernel")),
           "attn": ("attention", ("fwd_kernel", "bwd_dq_kernel", "bwd_dkdv_kernel"))}


@pytest.mark.timeout(2700)  # a cold cache on a slow, busy machine: ~10 min per arch measured, 2 archs on 2 cores
@pytest.mark.parametrize("ops", [
    "gn",  # ~1 min cold: the default suite
    pytest.param("gn,attn", marks=pytest.mark.slow),  # ~8 min cold per arch (attention's head dims × configs)
])
def test_every_choosable_kernel_config_compiles_spill_free_for_sm80_and_sm90(tmp_path, ops) -> None:
    procs = {arch: _codegen(arch, tmp_path, ops) for arch in (80, 90)}
    want_ops = {KERNELS[o][0] for o in ops.split(",")}
    for arch, proc in procs.items():
        log = proc.communicate(timeout=2600)[0]
        assert proc.returncode == 0, f"sm_{arch}:\n{log[-5000:]}"  # exit 1 lists every PROBLEM line
        got = json.loads((tmp_path / f"codegen-sm{arch}.json").read_text())
        assert got["problems"] == [] and got["rows"]
        rows = got["rows"]
        for o in ops.split(","):
            for kernel in KERNELS[o][1]:
                assert any(r["kernel"] == kernel for r in rows), f"{kernel} was not compiled for sm_{arch}"
        if "attn" in ops:
            for d in (40, 64, 80, 128, 160):
                assert any(f"head_dim={d} " in r["variant"] for r in rows)
        assert all(r["chosen"] for r in rows)  # without --all-configs only choosable configs compile
        assert not any(r["spill_stores"] or r["spill_loads"] for r in rows)
        committed = json.loads((RESULTS / f"codegen-sm{arch}.json").read_text())
        assert committed["triton"] == triton.__version__, (
            f"benchmarks/results/codegen-sm{arch}.json is from triton {committed['triton']}, this is "
            f"{triton.__version__} (the torch pin's): regenerate it with `fastflow bench codegen --arch {arch} "
            f"--dtype fp16,bf16 --json benchmarks/results/codegen-sm{arch}.json`")
        want = [r for r in committed["rows"] if r["dtype"] in ("fp16", "bf16") and r["op"] in want_ops]
        assert rows == want, f"sm_{arch}: benchmarks/results/codegen-sm{arch}.json is stale; regenerate it"


def test_shared_memory_estimate_and_pruning_rules() -> None:
    """The estimate of a config's shared memory (never below Triton's, checked by the codegen
    bench) and the pruner: configs over the arch's limit or not in the spill-free table go."""
    big = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2)
    assert attention_smem("dkdv", big, 160, 2) > shared_limit(80) and attention_smem(
        "dkdv", big, 160, 2
    ) < shared_limit(90)
    assert shared_limit(86) == shared_limit(89) < shared_limit(80) < shared_limit(90) == shared_limit(100)
    assert spill_free("dkdv", 90, 160) is not None and spill_free("dkdv", 89, 160) == spill_free("dkdv", 80, 160)
    assert spill_free("fwd", 90, 96) == spill_free("fwd", 90, 128)  # next larger measured head dim
    assert spill_free("fwd", 75, 64) is None  # no measurement below sm_80


def test_pruner_keeps_a_config_and_respects_the_table(monkeypatch) -> None:
    from fastflow.fused import tuning

    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in ((128, 64, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2))]
    q = torch.empty(1, dtype=torch.float16)
    for arch in (80, 90, 100):
        monkeypatch.setattr(tuning, "current_arch", lambda arch=arch: arch)
        for head in ((128, 32), (64, 16), (64, 0)):
            kept = attention_pruner("dkdv")(configs, {"Q": q}, BLOCK_D0=head[0], BLOCK_D1=head[1])
            assert kept
            allowed = spill_free("dkdv", arch, sum(head))
            assert all(tuning.config_label(c) in allowed for c in kept) or len(kept) == 1
    monkeypatch.setattr(tuning, "current_arch", lambda: 80)
    kept = attention_pruner("dkdv")(configs, {"Q": torch.empty(1)}, BLOCK_D0=128, BLOCK_D1=32)  # fp32: smem only
    assert kept and all(attention_smem("dkdv", c, 160, 4) <= shared_limit(80) for c in kept)
    assert len(kept) < len(configs)  # 128×64 at head dim 160 in fp32 needs more than sm_80's 163 KB


def test_codegen_rows_are_cached_by_kernel_source_triton_and_settings(tmp_path, monkeypatch) -> None:
    from fastflow.bench import codegen

    monkeypatch.setenv("FASTFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(codegen, "_check_request", lambda *a: None)  # the interpreter is on in tests
    compiled = []
    row = codegen.Row("attention", "fwd_kernel", "head_dim=64 parts=64", "fp16", 90, "64x64 w4 s2", True, 4, 2,
                      128, 0, 0, 0, 32768, 232448, False, 1.5, "2x8x256x256x64")

    def fake_compile(arch, dtypes, all_configs, ops, progress):
        compiled.append(arch)
        return [row]

    monkeypatch.setattr(codegen, "_compile_arch", fake_compile)
    key = codegen.cache_key(90, ["fp16"], False, ["attn"])
    assert key == codegen.cache_key(90, ["fp16"], False, ["attn"])  # deterministic
    assert len({key, codegen.cache_key(80, ["fp16"], False, ["attn"]), codegen.cache_key(90, ["bf16"], False, ["attn"]),
                codegen.cache_key(90, ["fp16"], True, ["attn"])}) == 4
    assert codegen.compile_all([90], ["fp16"], ops=["attn"], progress=False) == [row]
    assert codegen.compile_all([90], ["fp16"], ops=["attn"], progress=False) == [row] and compiled == [90]
    codegen.compile_all([90], ["fp16"], ops=["attn"], progress=False, cache=False)
    assert compiled == [90, 90]
    monkeypatch.setattr(triton, "__version__", "0.0-other")  # another triton: another key, compiled again
    codegen.compile_all([90], ["fp16"], ops=["attn"], progress=False)
    assert compiled == [90, 90, 90]
    (cached,) = [
        p for p in (tmp_path / "codegen").iterdir() if codegen.cache_key(90, ["fp16"], False, ["attn"]) in p.name
    ]
    cached.write_text("{not json")  # a damaged entry is compiled again, never trusted
    codegen.compile_all([90], ["fp16"], ops=["attn"], progress=False)
    assert compiled == [90, 90, 90, 90]
