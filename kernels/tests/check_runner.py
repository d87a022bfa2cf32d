"""One ctest case of ``fastflow-run``: ``check_runner.py RUNNER FIXTURES CASE`` (``--list``: the cases).

Good cases compare the runner's ``.npy`` with Python's AOTInductor loader on the same package and
inputs (bit for bit, both on one thread) and with the eager PyTorch generator (1e-5; the int8 package:
a relative RMS error under ``INT8_REL_RMS``). Bad cases
expect exit 2 and exactly one line on stderr (no abort, no signal)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastflow.export.formats import load_pt2
from fastflow.export.generator import Generator, SRGenerator
from fastflow.models import load_model
from fastflow.utils.images import display_upscale, save_grid

GOOD = {  # case: (package, runner args); the Python inputs are rebuilt from the args
    "uncond-batch1": ("uncond", ["--seed", "3", "--batch", "1"]),
    "uncond-batchmax": ("uncond", ["--seed", "4", "--batch", "4", "--png", "{tmp}/grid.png"]),
    "uncond-input": ("uncond", ["--input", "{fx}/noise.npy"]),
    "cond-label": ("cond", ["--seed", "5", "--batch", "3", "--label", "2"]),
    "cond-default-labels": ("cond", ["--seed", "6", "--batch", "4"]),
    "sr-tau": ("sr", ["--seed", "7", "--lq", "{fx}/lq.npy", "--tau", "0.3"]),
    "timing": ("uncond", ["--batch", "2", "--iters", "5", "--warmup", "1", "--timing-json", "{tmp}/t.json"]),
    "meanflow-one-step": ("meanflow", ["--seed", "8", "--batch", "3"]),  # x1 = z + u(z, 0, 1) in the package
    "int8": ("int8", ["--seed", "9", "--batch", "2"]),  # the uncond generator through oneDNN's int8 kernels
    "cpuk-batch1": ("cpuk", ["--seed", "10", "--batch", "1", "--label", "1"]),  # cond, CPU block kernel
    "cpuk-batch3": ("cpuk", ["--seed", "11", "--batch", "3"]),
    "cpuk8-batch1": ("cpuk8", ["--seed", "12", "--batch", "1", "--label", "2"]),  # the int8 CPU block kernel
    "cpuk8-batch4": ("cpuk8", ["--seed", "13", "--batch", "4"]),
}
#: the package each kind runs and the checkpoint it was exported from
CKPT = {"int8": "uncond", "cpuk": "cond", "cpuk8": "cond"}
#: the stated error of the int8 package against the fp32 eager generator: relative RMS error
INT8_REL_RMS = 0.05
BAD = {  # case: (package, runner args, a word the message must contain)
    "bad-batch": ("uncond.pt2", ["--batch", "5"], "range"),
    "bad-hw": ("uncond.pt2", ["--input", "{fx}/wrong-hw.npy"], "shape"),
    "bad-nan-input": ("uncond.pt2", ["--input", "{fx}/nan.npy"], "NaN"),
    "bad-label": ("cond.pt2", ["--label", "3"], "out of range"),
    "bad-label-on-uncond": ("uncond.pt2", ["--label", "1"], "label"),
    "bad-sr-without-lq": ("sr.pt2", [], "--lq"),
    "bad-truncated": ("truncated.pt2", [], "package"),
    "bad-not-a-package": ("not-a-package.pt2", [], "package"),
    "bad-missing-file": ("does-not-exist.pt2", [], "not found"),
    "bad-device": ("uncond.pt2", ["--device", "cuda"], "cpu"),
    "bad-option": ("uncond.pt2", ["--bogus", "1"], "unknown option"),
    "bad-tau": ("sr.pt2", ["--lq", "{fx}/lq.npy", "--tau", "1.5"], "tau"),
    "bad-threads": ("uncond.pt2", ["--threads", "100000"], "cores this process may use"),
    "bad-npy-broken": ("uncond.pt2", ["--input", "{fx}/hdr-broken.npy"], "malformed .npy header"),
    "bad-npy-extra-key": ("uncond.pt2", ["--input", "{fx}/hdr-extra-key.npy"], "unknown key"),
    "bad-npy-repeated-key": ("uncond.pt2", ["--input", "{fx}/hdr-repeated-key.npy"], "repeated key"),
    "bad-npy-shape-int": ("uncond.pt2", ["--input", "{fx}/hdr-shape-int.npy"], "malformed .npy header"),
    "bad-npy-shape-lies": ("uncond.pt2", ["--input", "{fx}/hdr-shape-lies.npy"], "header describes"),
    "bad-npy-trailing": ("uncond.pt2", ["--input", "{fx}/trailing.npy"], "header describes"),
    "bad-npy-int64": ("uncond.pt2", ["--input", "{fx}/int64.npy"], "float16/32/64"),
    "bad-out-is-package": ("uncond.pt2", ["--out", "{fx}/uncond.pt2"], "would overwrite an input"),
    "bad-out-no-dir": ("uncond.pt2", ["--out", "{tmp}/nowhere/o.npy"], "no directory"),
    "bad-outputs-collide": ("uncond.pt2", ["--png", "{tmp}/out.npy"], "different files"),
    "bad-outputs-collide-spelling": ("uncond.pt2", ["--png", "{tmp}//./out.npy"], "different files"),
    "bad-timing-json-without-iters": ("uncond.pt2", ["--timing-json", "{tmp}/t.json"], "--iters"),
    "bad-cut-so-10": ("cut-so-10.pt2", [], "cut short"),
    "bad-cut-so-30": ("cut-so-30.pt2", [], "cut short"),
    "bad-cut-so-info": ("cut-so-30.pt2", ["--info"], "cut short"),
    "bad-flipped-so": ("flipped-so.pt2", [], "CRC-32"),
    "bad-meta-batch": ("lying-batch.pt2", ["--batch", "8"], "its compiled code refused"),
    "bad-meta-shape": ("lying-shape.pt2", [], "its compiled code refused"),
    "bad-pipe-escape": ("pipe-escape", ["--emb", "{fx}/emb.npy"], "must name a file inside"),
    "bad-pipe-onnx": ("pipe-onnx", ["--emb", "{fx}/emb.npy"], "runs .pt2 pipelines"),
    "bad-pipe-version": ("pipe-version", ["--emb", "{fx}/emb.npy"], "version <= 1"),
    "bad-pipe-garbage": ("pipe-garbage", ["--emb", "{fx}/emb.npy"], "malformed JSON"),
    "bad-pipe-deep": ("pipe-deep", ["--emb", "{fx}/emb.npy"], "nesting deeper"),
    "bad-pipe-missing-file": ("pipe-missing-file", ["--emb", "{fx}/emb.npy"], "which is missing"),
    "bad-pipe-unknown-component": ("pipe-unknown-component", ["--emb", "{fx}/emb.npy"], "unknown or repeated"),
    "bad-pipe-no-manifest": ("pipe-no-manifest", ["--emb", "{fx}/emb.npy"], "no pipeline.json"),
    "bad-pipe-wrong-kind": ("pipe-wrong-kind", ["--emb", "{fx}/emb.npy"], "not a text_generator"),
}
SKIP = 77  # ctest's SKIP_RETURN_CODE


def full_disk(runner: str, fx: Path, tmp: Path) -> None:
    """Outputs into a full disk (a 64 KiB tmpfs, as root): exit 2 with one line, the earlier good
    .npy/.png/timing files untouched, no partial or temporary file left."""
    import os

    disk = tmp / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        print("skipped: mounting a small tmpfs needs root")
        sys.exit(SKIP)
    try:
        old = {name: f"old {name}".encode() for name in ("o.npy", "g.png", "t.json")}
        for name, data in old.items():
            (disk / name).write_bytes(data)
        try:  # fill what is left
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        for flag, name in (("--out", "o.npy"), ("--png", "g.png"), ("--timing-json", "t.json")):
            extra = [] if flag == "--out" else ["--out", str(tmp / "elsewhere.npy")]
            if flag == "--timing-json":
                extra += ["--iters", "1", "--warmup", "0"]
            res = subprocess.run([runner, str(fx / "uncond.pt2"), *extra, flag, str(disk / name)],
                                 capture_output=True, text=True, timeout=120)
            lines = res.stderr.splitlines()
            assert res.returncode == 2 and len(lines) == 1 and "No space left" in lines[0], (flag, res.stderr)
        assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == old, list(disk.iterdir())
        print("full disk: exit 2, earlier outputs intact, nothing partial left")
    finally:
        subprocess.run(["umount", str(disk)])


def fill(args: list[str], fx: Path, tmp: Path) -> list[str]:
    return [a.format(fx=fx, tmp=tmp) for a in args]


def arg(args: list[str], flag: str, default: str | None = None) -> str | None:
    return args[args.index(flag) + 1] if flag in args else default


def python_inputs(kind: str, args: list[str], fx: Path) -> tuple[torch.Tensor, ...]:
    """The inputs fastflow-run builds, built the documented Python way."""
    shape = (1, 8, 8)
    if arg(args, "--input"):
        z = torch.from_numpy(np.load(arg(args, "--input")))
    else:
        b = len(np.load(arg(args, "--lq"))) if kind == "sr" else int(arg(args, "--batch", "1"))
        torch.manual_seed(int(arg(args, "--seed", "0")))
        z = torch.randn(b, *shape)
    b = z.shape[0]
    if kind == "sr":
        return torch.from_numpy(np.load(arg(args, "--lq"))), z, torch.full((b,), float(arg(args, "--tau")))
    if CKPT.get(kind, kind) == "cond":
        label = arg(args, "--label")
        return z, (torch.full((b,), int(label)) if label else torch.arange(b) % 3)
    return (z,)


def good(runner: str, fx: Path, case: str, tmp: Path) -> None:
    kind, args = GOOD[case]
    args = fill(args, fx, tmp)
    res = subprocess.run([runner, str(fx / f"{kind}.pt2"), "--out", str(tmp / "out.npy"), *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr}"
    got = torch.from_numpy(np.load(tmp / "out.npy"))
    inputs = python_inputs(kind, args, fx)
    torch.set_num_threads(1)  # the runner's default: same reduction order, same bits
    aoti = load_pt2(fx / f"{kind}.pt2", torch.device("cpu"))(*inputs)
    assert torch.equal(got, aoti), f"C++ != Python AOTI: max |Δ| {float((got - aoti).abs().max()):.3g}"
    model = load_model(fx / f"ckpt-{CKPT.get(kind, kind)}")
    gen = SRGenerator(model, 0.2) if kind == "sr" else Generator(model, 1)
    with torch.no_grad():
        eager = gen(*inputs)
    if kind in ("int8", "cpuk8"):
        int8_package(fx / f"{kind}.pt2", got - inputs[0], eager - inputs[0])
    else:
        if kind == "cpuk":
            cpuk_package(fx / "cpuk.pt2")
        err = float((got - eager).abs().max())
        assert err <= 1e-5, f"C++ vs eager max |Δ| {err:.3g} > 1e-5"
        print(f"{case}: C++ == Python AOTI bit for bit, eager max |Δ| {err:.2g}, shape {tuple(got.shape)}")
    if "--png" in args:  # the grid is the one fastflow.utils.images.save_grid makes, enlarged the same way
        save_grid(got, tmp / "py.png", upscale=display_upscale(got.shape[-1]))
        a, b = np.asarray(Image.open(tmp / "grid.png")), np.asarray(Image.open(tmp / "py.png"))
        assert a.shape == b.shape and (a == b).all(), "PNG grid differs from save_grid's"
    if "--timing-json" in args:
        t = json.loads((tmp / "t.json").read_text())
        assert t["calls"] == 5 and 0 < t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"], t
        assert "p50" in res.stdout and "p99" in res.stdout, res.stdout


def int8_package(package: Path, got: torch.Tensor, eager: torch.Tensor) -> None:
    """The int8 package runs oneDNN's int8 convolutions (not fake quantization in fp32), says it is
    int8 in its metadata, and its step ``x1 − z`` stays within :data:`INT8_REL_RMS` of the fp32
    generator's (the step, not ``x1``: the noise passed through would hide the network's error)."""
    from fastflow.export.formats import read_pt2_spec

    spec = read_pt2_spec(package)
    with zipfile.ZipFile(package) as zf:
        code = "".join(zf.read(n).decode(errors="replace") for n in zf.namelist() if n.endswith("wrapper.cpp"))
    assert spec.quantize == "int8" and spec.fused == ("cpu" if package.stem == "cpuk8" else "off"), spec
    # cpuk8, exported with the default --fused auto (a small model): the int8 CPU block kernel for every ResBlock
    # convolution, no calibration
    if spec.fused == "cpu":
        assert "aoti_torch_cpu_conv_block_q8(" in code and "aoti_torch_cpu_convolution(" not in code
        assert not spec.prepack and not spec.calibration_samples, spec
    else:
        assert spec.prepack and "qconv" in code, "no int8 convolution in the package's wrapper"  # frozen: packed
    rel = float((got - eager).pow(2).mean().sqrt() / eager.pow(2).mean().sqrt())
    assert 0 < rel < INT8_REL_RMS, f"int8 vs fp32 relative RMS error {rel:.3g} (want 0 < it < {INT8_REL_RMS})"
    print(f"{package.stem}: C++ == Python AOTI bit for bit, step's relative RMS error vs fp32 eager {rel:.3g}")


def cpuk_package(package: Path) -> None:
    """The ``--fused cpu`` package says so and calls the kernel's C shim directly, every 3×3 and
    1×1 convolution of the UNet through it (no ATen convolution left)."""
    from fastflow.export.formats import read_pt2_spec

    assert read_pt2_spec(package).fused == "cpu"
    with zipfile.ZipFile(package) as zf:
        code = "".join(zf.read(n).decode(errors="replace") for n in zf.namelist() if n.endswith("wrapper.cpp"))
    assert "aoti_torch_cpu_conv_block(" in code and "aoti_torch_cpu_convolution(" not in code
    assert "aoti_torch_proxy_executor_call_function" not in code  # the C shim, not a boxed call


def pipeline(runner: str, fx: Path, tmp: Path) -> None:
    """A pipeline whose generator file is renamed: the runner finds it through pipeline.json and
    chains what Python's loader chains, bit for bit."""
    from fastflow.export.pipeline import chain, load_pipeline

    res = subprocess.run([runner, str(fx / "pipe-renamed"), "--emb", str(fx / "emb.npy"), "--seed", "3", "--out",
                          str(tmp / "out.npy")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr}"
    got = torch.from_numpy(np.load(tmp / "out.npy"))
    torch.set_num_threads(1)
    torch.manual_seed(3)
    z = torch.randn(2, 1, 8, 8)
    want = chain(load_pipeline(fx / "pipe-renamed", torch.device("cpu")), z, torch.from_numpy(np.load(fx / "emb.npy")))
    assert torch.equal(got, want), f"C++ != Python chain: max |Δ| {float((got - want).abs().max()):.3g}"
    print(f"pipeline-renamed: C++ == Python chain bit for bit, shape {tuple(got.shape)}")


def bad(runner: str, fx: Path, case: str, tmp: Path) -> None:
    pkg, args, word = BAD[case]
    res = subprocess.run([runner, str(fx / pkg), "--out", str(tmp / "out.npy"), *fill(args, fx, tmp)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, f"exit {res.returncode} (want 2; negative = killed by a signal): {res.stderr}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastflow-run: error:"), f"stderr: {res.stderr!r}"
    assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert not (tmp / "out.npy").exists(), "an output was written despite the error"
    if word in ("cut short", "CRC-32"):  # the Python loader makes the same package checks
        from fastflow.errors import ArtifactError

        try:
            load_pt2(fx / pkg, torch.device("cpu"))
            raise AssertionError("load_pt2 loaded a damaged package")
        except ArtifactError as e:
            assert word in str(e), str(e)
    print(f"{case}: exit 2, {lines[0]}")


def main() -> None:
    if sys.argv[1:] == ["--list"]:  # the ctest cases (CMake reads them at configure time)
        print(";".join([*GOOD, *BAD, "full-disk", "pipeline-renamed", "version"]))
        return
    runner, fx, case = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    with tempfile.TemporaryDirectory() as tmp:
        if case == "full-disk":
            full_disk(runner, fx, Path(tmp))
        elif case == "pipeline-renamed":
            pipeline(runner, fx, Path(tmp))
        elif case == "version":  # fastflow's version and the libtorch the runner links
            import fastflow

            res = subprocess.run([runner, "--version"], capture_output=True, text=True, timeout=60)
            want = f"fastflow-run {fastflow.__version__} (libtorch {torch.__version__.split('+')[0]})"
            assert res.returncode == 0 and res.stdout.strip() == want, (res.stdout, want)
            print(res.stdout.strip())
        else:
            (good if case in GOOD else bad)(runner, fx, case, Path(tmp))


if __name__ == "__main__":
    main()
