"""ctest fixture: four tiny generator packages exported by ``fastflow-export --format pt2``
(unconditional, class-conditional, OFTSR super-resolution, MeanFlow two-time; batch 1..4), the
unconditional one also as int8 (``--quantize int8``, batch 2), the class-conditional one through the CPU
block kernel (``--fused cpu``, fp32 and ``--quantize int8``), a token-conditioned UNet's text pipeline
(``--pipeline``, its generator alone) with renamed and hostile ``pipeline.json`` copies, plus input files and broken
packages for the bad-input cases. Usage: ``make_fixtures.py OUTDIR``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fastflow.models import build_model, save_model

# A minimal UNet (one level, attention): each package compiles in ~20 s on one core.
TINY = dict(arch="unet", in_channels=1, resolution=8, channels=8, num_res_blocks=1, ch_mult=(1,),
            attn_resolutions=(8,), dropout=0.0)
KINDS = {"uncond": ({}, {}), "cond": ({"num_classes": 3}, {}),
         "sr": ({"cond_channels": 1}, {"objective_config": {"name": "oftsr", "sigma_p": 0.2}}),
         "meanflow": ({"times": 2, "t_scale": 1.0}, {"objective_config": {"name": "meanflow"}})}


HOSTILE_NPY = {  # header dicts numpy refuses (or reads otherwise than a naive parser)
    "hdr-broken": "{'descr': '<f4', 'fortran_order': False, 'shape': }",
    "hdr-extra-key": "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 8, 8), 'xshape': (2, 1, 8, 8), }",
    "hdr-repeated-key": "{'descr': '<f4', 'shape': (1, 1, 8, 8), 'fortran_order': False, 'shape': (2, 1, 8, 8), }",
    "hdr-shape-int": "{'descr': '<f4', 'fortran_order': False, 'shape': 512, }",
    "hdr-shape-lies": "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 8, 8), }",
}


def _npy(header: str, data: bytes) -> bytes:
    """A version-1 .npy file from a header dict text and raw data (no checks: fixtures that lie)."""
    text = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + data


MARKER = ".fastflow-fixtures"


def main(out: Path) -> None:
    if (out / MARKER).is_file():  # an earlier run's fixtures (this script made them): start afresh
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    procs = []
    for i, (name, (extra, meta)) in enumerate(KINDS.items()):
        torch.manual_seed(i)
        model = build_model({**TINY, **extra})
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)  # non-trivial outputs
        save_model(out / f"ckpt-{name}", model, model, meta=meta)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fastflow.cli.export", str(out / f"ckpt-{name}"), "--format", "pt2",
             "-o", str(out / f"{name}.pt2"), "--min-batch", "1", "--max-batch", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    procs.append(subprocess.Popen(  # torchao PT2E int8, calibrated on the generator's own noise
        [sys.executable, "-m", "fastflow.cli.export", str(out / "ckpt-uncond"), "--format", "pt2", "-o",
         str(out / "int8.pt2"), "--quantize", "int8", "--calibrate", "16", "--batch", "2", "--fused", "off",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    procs.append(subprocess.Popen(  # the class-conditional generator through the CPU block kernel
        [sys.executable, "-m", "fastflow.cli.export", str(out / "ckpt-cond"), "--format", "pt2", "-o",
         str(out / "cpuk.pt2"), "--fused", "cpu", "--min-batch", "1", "--max-batch", "4", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    procs.append(subprocess.Popen(  # the same as int8: --fused auto picks the int8 CPU block kernel (a small model)
        [sys.executable, "-m", "fastflow.cli.export", str(out / "ckpt-cond"), "--format", "pt2", "-o",
         str(out / "cpuk8.pt2"), "--quantize", "int8", "--min-batch", "1", "--max-batch", "4", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    torch.manual_seed(7)  # a token-conditioned UNet's text pipeline: its generator alone, with CFG inside
    model = build_model({**TINY, "context_dim": 4})
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(out / "ckpt-token", model, model)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "fastflow.cli.export", str(out / "ckpt-token"), "--format", "pt2", "--pipeline",
         "-o", str(out / "pipe"), "--context-length", "3", "--cfg", "1.5", "--min-batch", "1", "--max-batch", "2",
         "--iters", "0", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    failed = [(p.args, p.communicate()[0]) for p in procs if p.wait() != 0]
    for args, log in failed:
        print(" ".join(map(str, args)), "\n", log[-3000:], file=sys.stderr)
    if failed:
        sys.exit(1)
    g = torch.Generator().manual_seed(123)
    np.save(out / "lq.npy", (torch.rand(3, 1, 8, 8, generator=g) * 2 - 1).numpy())
    np.save(out / "noise.npy", torch.randn(2, 1, 8, 8, generator=g).numpy())
    np.save(out / "wrong-hw.npy", torch.randn(2, 1, 6, 6, generator=g).numpy())
    np.save(out / "nan.npy", np.full((2, 1, 8, 8), np.nan, dtype=np.float32))
    np.save(out / "int64.npy", np.zeros((2, 1, 8, 8), dtype=np.int64))
    good = (out / "noise.npy").read_bytes()
    for name, header in HOSTILE_NPY.items():  # the same 512 bytes of data behind a header that lies
        (out / f"{name}.npy").write_bytes(_npy(header, good[-2 * 64 * 4:]))
    (out / "trailing.npy").write_bytes(good + b"\0" * 8)
    data = (out / "uncond.pt2").read_bytes()
    (out / "truncated.pt2").write_bytes(data[: len(data) // 2])
    (out / "not-a-package.pt2").write_text("hello\n")
    _edit_metadata(out / "uncond.pt2", out / "lying-batch.pt2", {"fastflow.batch_max": "64"})
    for pct in (10, 30):  # the zip rewritten around a library cut to pct % (its CRC matches: the ELF check finds it)
        _rewrite(
            out / "uncond.pt2",
            out / f"cut-so-{pct}.pt2",
            lambda n, d, pct=pct: d[: len(d) * pct // 100] if n.endswith(".so") else d,
        )
    flipped = bytearray(data)
    with zipfile.ZipFile(out / "uncond.pt2") as z:
        so = next(i for i in z.infolist() if i.filename.endswith(".so"))
    flipped[so.header_offset + 30 + len(so.filename) + len(so.extra) + so.file_size // 2] ^= 0xFF
    (out / "flipped-so.pt2").write_bytes(bytes(flipped))
    _edit_metadata(out / "uncond.pt2", out / "lying-shape.pt2", {"fastflow.sample_shape": "1,16,16"})
    np.save(out / "emb.npy", torch.randn(2, 3, 4, generator=g).numpy())
    pipelines(out)


def pipelines(out: Path) -> None:
    """The token pipeline with its generator renamed (pipeline.json says where: the runner follows it),
    and copies whose pipeline.json lies, escapes or breaks."""
    manifest = json.loads((out / "pipe" / "pipeline.json").read_text())

    def variant(name: str, edit: Callable[[dict], object], file: str = "generator.pt2") -> None:
        d = out / name
        d.mkdir()
        shutil.copyfile(out / "pipe" / "generator.pt2", d / file)
        m = json.loads(json.dumps(manifest))
        text = edit(m)
        (d / "pipeline.json").write_text(text if isinstance(text, str) else json.dumps(m))

    variant("pipe-renamed", lambda m: m["components"]["generator"].update(file="g.pt2"), "g.pt2")
    variant("pipe-escape", lambda m: m["components"]["generator"].update(file="../uncond.pt2"))
    variant("pipe-onnx", lambda m: m.update(artefact_format="onnx"))
    variant("pipe-version", lambda m: m.update(version=2))
    variant("pipe-garbage", lambda m: '{"format": "fastflow-pipeline", "version": 1,')
    variant("pipe-deep", lambda m: "[" * 100000 + "]" * 100000)
    variant("pipe-missing-file", lambda m: m["components"]["generator"].update(file="gone.pt2"))
    variant("pipe-unknown-component", lambda m: (m["chain"].append("upscaler"),
                                                 m["components"].update(upscaler={"file": "generator.pt2"})))
    variant("pipe-no-manifest", lambda m: "")
    (out / "pipe-no-manifest" / "pipeline.json").unlink()
    variant("pipe-wrong-kind", lambda m: None)
    shutil.copyfile(out / "uncond.pt2", out / "pipe-wrong-kind" / "generator.pt2")


def _edit_metadata(src: Path, dst: Path, edits: dict[str, str]) -> None:
    """A copy of package ``src`` whose stored metadata says otherwise than its compiled code."""
    _rewrite(src, dst, lambda name, data: json.dumps({**json.loads(data), **edits}).encode()
             if name.endswith("_metadata.json") else data)


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """A copy of package ``src`` with every entry's bytes through ``edit(name, data)`` (CRCs recomputed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
