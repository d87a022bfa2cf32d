"""A text-to-image student as one artefact per component, as TensorRT's demoDiffusion deploys Stable
Diffusion: ``text_encoder`` (token ids → embeddings; the tokenizer's files copied beside it),
``generator`` (``z, emb → latent``: the Euler arithmetic and CFG inside, the batch doubled internally)
and ``vae_decoder`` (latent → image in [−1, 1]), plus ``pipeline.json`` naming each component's
file, inputs, outputs, shapes, dtypes, batch profile, the checkpoint's digest and the chain.

Chain: ``tokens → text_encoder → emb``; ``(z, emb) → generator → latent``; ``latent → vae_decoder →
image``. A fastflow token-conditioned UNet (pixel space, no text encoder of its own) exports its
generator alone. An ONNX component is one file when it fits in a protobuf (< 2 GiB), else (or with
``external_data``) its weights are in one ``NAME.data`` file beside it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ArtifactError, ConfigError
from fastflow.export.contract import check_artefact
from fastflow.export.formats import FORMATS, BuildOptions
from fastflow.export.generator import TextGenerator
from fastflow.export.options import ExportOptions, ExportResult
from fastflow.export.spec import GeneratorSpec
from fastflow.export.steps import kernel_model, latency, versions
from fastflow.export.validate import compare
from fastflow.models.diffusers_dir import check_sd_dir, decode_latents, load_vae
from fastflow.models.presets import sample_shape
from fastflow.models.prompts import load_text_encoder
from fastflow.utils.dtypes import DTYPES
from fastflow.utils.io import atomic_write_json, disk_errors, read_json, staged_dir
from fastflow.utils.threads import device_name

FORMAT, VERSION = "fastflow-pipeline", 1
OUTPUTS = {"text_encoder": "emb", "generator": "latent", "vae_decoder": "image"}
Inputs = Callable[[int], tuple[Tensor, ...]]


class TextEncoder(nn.Module):
    """``tokens [B, L] → emb [B, L, D]``: the text encoder's last hidden state (what the prompt table holds)."""

    input_names = ("tokens",)

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, tokens: Tensor) -> Tensor:
        return self.encoder(input_ids=tokens)[0]


class VAEDecoder(nn.Module):
    """``latent → image`` in [−1, 1] through the VAE (its scaling and shift factors inside)."""

    input_names = ("latent",)

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: Tensor) -> Tensor:
        return decode_latents(self.vae, latent)


@dataclass
class Component:
    name: str
    module: nn.Module
    spec: GeneratorSpec
    inputs_for: Inputs  # batch size → fixed-seed example inputs


def components(model: nn.Module, spec: GeneratorSpec, cfg_scale: float, context_length: int,
               seed: int = 0, names: tuple[str, ...] | None = None) -> list[Component]:
    """The pipeline's components for a text student (``SDVelocity`` with a prompt table, or a
    fastflow UNet with ``context_dim``); ``spec`` carries the batch range, dtype, steps, device, digest.
    ``names``: only these (e.g. re-export one component); an unavailable one is an error."""
    dtype, device, g = DTYPES[spec.dtype], torch.device(spec.device), torch.Generator().manual_seed(seed)
    sd = getattr(model, "table", None) is not None
    if sd:
        length, dim = model.table.shape[1:]
        path = Path(model.config.path).expanduser()
    else:
        length, dim = context_length, model.config.context_dim
    latent = tuple(int(s) for s in spec.sample_shape)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    out = [Component("generator", TextGenerator(model, spec.steps, cfg_scale),
                     replace(spec, kind="text_generator", cond_shape=(length, dim)),
                     lambda b: (rand(b, *latent), rand(b, length, dim)))]
    if sd:
        encoder = load_text_encoder(check_sd_dir(path, ("text_encoder", "tokenizer")))
        vocab = int(encoder.config.vocab_size)
        out.insert(0, Component("text_encoder", TextEncoder(encoder), replace(
            spec, kind="text_encoder", sample_shape=(length, dim), num_classes=vocab, cond_shape=(length,)),
            lambda b: (torch.randint(0, vocab, (b, length), generator=g).to(device),)))
        out.append(Component("vae_decoder", VAEDecoder(load_vae(path)), replace(spec, kind="vae_decoder"),
                             lambda b: (rand(b, *latent),)))
    missing = [n for n in names or () if n not in {c.name for c in out}]
    if missing:
        raise ConfigError(
            f"this student's pipeline has no {', '.join(missing)} (it has {', '.join(c.name for c in out)})"
        )
    out = [c for c in out if names is None or c.name in names]
    for c in out:
        c.module.to(device=device, dtype=dtype).eval()
    return out


def _io(c: Component, example: tuple[Tensor, ...]) -> dict[str, Any]:
    with torch.no_grad():
        y = c.module(*example)
    shape = lambda x: ["B", *x.shape[1:]]  # noqa: E731
    return {"inputs": [{"name": n, "shape": shape(x), "dtype": str(x.dtype).removeprefix("torch.")}
                       for n, x in zip(c.module.input_names, example, strict=True)],
            "outputs": [{"name": OUTPUTS[c.name], "shape": shape(y), "dtype": str(y.dtype).removeprefix("torch.")}]}


def export_pipeline(comps: list[Component], out: str | Path, fmt: str, options: BuildOptions,
                    source: Path | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Build every component into the new directory ``out`` (atomic: built beside it, renamed when
    complete), each checked against its contract (:mod:`~fastflow.export.contract`), copy the
    tokenizer, write ``pipeline.json``; return that manifest."""
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "artefact_format": fmt, **settings,
                                "chain": [c.name for c in comps], "components": {}}
    with staged_dir(out) as stage, disk_errors(out), torch.no_grad():
        for c in comps:
            example = c.inputs_for(c.spec.batch.opt)
            file, t0 = c.name + FORMATS[fmt].extension, time.perf_counter()
            FORMATS[fmt].build(c.module, example, c.spec, stage / file, replace(options, output_name=OUTPUTS[c.name]))
            io = _io(c, example)
            check_artefact(fmt, stage / file, c.spec, c.module.input_names[: len(example)], c.inputs_for,
                           tuple(io["outputs"][0]["shape"][1:]))
            manifest["components"][c.name] = {"file": file, "kind": c.spec.kind, **io,
                                              "batch": vars(c.spec.batch), "spec": c.spec.to_dict(),
                                              "build_seconds": round(time.perf_counter() - t0, 3)}
        if source is not None and "text_encoder" in manifest["components"]:
            shutil.copytree(source / "tokenizer", stage / "tokenizer")
            manifest["tokenizer"] = "tokenizer"
        atomic_write_json(stage / "pipeline.json", manifest)
    return manifest


def read_pipeline(directory: str | Path) -> dict[str, Any]:
    """``pipeline.json`` of an exported pipeline, checked: this format and a version we read, a
    known artefact format, and components named in ``chain`` whose files are plain names inside the
    directory (:class:`~fastflow.errors.ArtifactError` otherwise)."""
    path = Path(directory) / "pipeline.json"
    m = read_json(path, ArtifactError)
    version = m.get("version") if isinstance(m, dict) else None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(version, int) or \
            isinstance(version, bool) or not 1 <= version <= VERSION:
        raise ArtifactError(f"{path}: not a fastflow pipeline of version <= {VERSION}")
    comps, chain = m.get("components"), m.get("chain")
    if m.get("artefact_format") not in FORMATS or not isinstance(comps, dict) or not isinstance(chain, list) \
            or not chain or set(chain) != set(comps) or not set(comps) <= set(OUTPUTS):
        raise ArtifactError(f"{path}: malformed manifest (artefact_format, chain and components must agree)")
    for name, c in comps.items():
        file = c.get("file") if isinstance(c, dict) else None
        if not isinstance(file, str) or file != Path(file).name or file in ("", ".", "..") or "\0" in file:
            raise ArtifactError(f"{path}: component {name!r} must name a file inside the pipeline directory")
    return m


def load_pipeline(directory: str | Path, device: torch.device) -> dict[str, Callable[..., Tensor]]:
    """Each component of an exported pipeline as a checked runner, by name."""
    manifest = read_pipeline(directory)
    fmt = FORMATS[manifest["artefact_format"]]
    return {name: fmt.load(Path(directory) / c["file"], device) for name, c in manifest["components"].items()}


def chain(run: dict[str, Callable[..., Tensor]], z: Tensor, text: Tensor) -> Tensor:
    """The pipeline's output: ``text`` is token ids when a text encoder is present, else embeddings."""
    emb = run["text_encoder"](text) if "text_encoder" in run else text
    latent = run["generator"](z, emb)
    return run["vae_decoder"](latent) if "vae_decoder" in run else latent


def validate_pipeline(comps: list[Component], directory: str | Path, device: torch.device, atol: float,
                      rtol: float) -> dict[str, Any]:
    """Each component against eager PyTorch at the batch range's ends and optimum, then the chained
    pipeline on the same tokens and noise."""
    run = load_pipeline(directory, device)
    eager = {c.name: c.module for c in comps}
    report: dict[str, Any] = {}
    for c in comps:
        sizes = sorted({c.spec.batch.min, c.spec.batch.opt, c.spec.batch.max})
        report[c.name] = compare(c.module, run[c.name], [c.inputs_for(b) for b in sizes], atol, rtol)
    gen = next((c for c in comps if c.name == "generator"), None)
    if gen is not None:  # the chain of what was built (text_encoder's tokens, or embeddings)
        b = gen.spec.batch.opt
        z, text = gen.inputs_for(b)[0], comps[0].inputs_for(b)[-1]
        report["chain"] = compare(lambda z_, t_: chain(eager, z_, t_), lambda z_, t_: chain(run, z_, t_),
                                  [(z, text)], atol, rtol)
    report["passed"] = all(r["passed"] for r in report.values() if isinstance(r, dict))
    return report


def export_text_pipeline(src: Any, o: ExportOptions, say: Callable[[str], None]) -> ExportResult:
    """``export_checkpoint`` with ``pipeline``: one artefact per component of a text student
    (``src``: :class:`~fastflow.export.api.Source`), then validated and timed each as asked."""
    if src.kind != "token" and getattr(src.model, "table", None) is None:
        raise ConfigError(f"--pipeline exports text-conditioned students (a diffusers text model with a prompt table, "
                          f"or a token-conditioned UNet); this one is {src.kind}: export it without --pipeline")
    exported, fused = kernel_model(src.model, o, say)
    spec = GeneratorSpec(kind="generator", sample_shape=tuple(sample_shape(src.model)), batch=o.batch, dtype=o.dtype,
                         steps=o.steps, device=o.device.type, checkpoint_sha256=src.digest, fused=fused,
                         cfg_scale=o.cfg)
    comps = components(exported, spec, o.cfg, o.context_length, o.seed, o.components)
    source = Path(src.model.config.path).expanduser() if src.arch == "sd" else None
    t0 = time.perf_counter()
    options = BuildOptions(o.opset, o.opt_level, o.timing_cache, external_data=o.external_data)
    manifest = export_pipeline(comps, o.output, o.format, options, source,
                               {"checkpoint": src.checkpoint or None, "checkpoint_sha256": src.digest,
                                "steps": o.steps, "cfg_scale": o.cfg, "dtype": o.dtype,
                                "device": device_name(o.device), "fused": fused, "versions": versions()})
    sizes = {f.name: f.stat().st_size for f in sorted(o.output.iterdir()) if f.is_file()}
    report: dict[str, Any] = {**manifest, "build_seconds": time.perf_counter() - t0, "file_bytes": sizes}
    say(f"built {o.output}: {', '.join(manifest['chain'])} ({sum(sizes.values()) / 1e6:.2f} MB) "
        f"in {report['build_seconds']:.1f}s")
    main = next((c for c in comps if c.name == "generator"), comps[0])
    result = ExportResult(o.output, main.spec, report, manifest=manifest)
    if o.validate:
        report["validation"] = val = validate_pipeline(comps, o.output, o.device, o.atol, o.rtol)
        for name in [n for n in (*manifest["chain"], "chain") if n in val]:
            v = val[name]
            say(f"validation {name}: {'passed' if v['passed'] else 'FAILED'}, max abs "
                f"{v.get('max_abs_err', float('nan')):.3g}")
        result.passed = bool(val["passed"])
    runners = load_pipeline(o.output, o.device) if o.iters else {}
    report["latency_ms"] = {c.name: latency(runners[c.name], c.inputs_for(c.spec.batch.opt), o.device, o.iters, say,
                                            c.name) for c in comps if o.iters}
    return result
