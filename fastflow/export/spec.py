"""The contract of an exported generator: which inputs it takes, of which shape, batch range and
dtype. It is stored with every artefact (string metadata inside a ``.pt2``, the sidecar JSON of a
TensorRT engine), read back by every loader (Python and ``fastflow-run``), and checked before
every call, so that a wrong input is a :class:`~fastflow.errors.ShapeError`, never a silent
wrong result or a corrupted heap.

Inputs by generator kind (``B`` = batch, ``S`` = sample shape, e.g. ``(1, 16, 16)``):

- ``generator``: ``z [B, *S]`` in the artefact's dtype;
- ``conditional``: ``z [B, *S]`` and ``cond [B]`` int64 class labels in ``[0, num_classes)``;
- ``sr`` (OFTSR student): ``lq [B, *S]``, ``noise [B, *S]``, ``tau [B]`` float32 in ``[0, 1]``;
- ``velocity`` (the velocity field alone, for a sampler of one's own): ``x [B, *S]``, ``t [B]`` float32.

Components of a text-to-image pipeline (``fastflow-export --pipeline``; ``(L,)`` and ``(L, D)`` are ``cond_shape``):

- ``text_encoder``: ``tokens [B, L]`` int64 ids in ``[0, num_classes)`` (the vocabulary) → ``[B, L, D]``;
- ``text_generator``: ``z [B, *S]`` and ``emb [B, L, D]`` text embeddings → latent ``[B, *S]``;
- ``vae_decoder``: ``latent [B, *S]`` → image ``[B, 3, H, W]`` in ``[−1, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from fastflow.errors import ArtifactError, ShapeError
from fastflow.utils.dtypes import DTYPES

INPUTS = {"generator": ("z",), "conditional": ("z", "cond"), "sr": ("lq", "noise", "tau"), "velocity": ("x", "t"),
          "text_encoder": ("tokens",), "text_generator": ("z", "emb"), "vae_decoder": ("latent",)}
PREFIX = "fastflow."
VERSION = 1
#: what an artefact runs for the fused ops: ``off`` (PyTorch's reference decomposition), ``op``
#: (calls the registered fastflow ops), ``triton`` (Triton kernels compiled in), ``cpu`` (the CPU block kernel)
FUSED = ("off", "op", "triton", "cpu")


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ShapeError(f"need 1 <= min <= opt <= max batch, got {self.min}/{self.opt}/{self.max}")

    @property
    def dynamic(self) -> bool:
        return self.min != self.max


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str  # one of INPUTS
    sample_shape: tuple[int, ...]
    batch: BatchRange
    dtype: str = "fp32"
    steps: int = 1
    num_classes: int = 0  # label classes; a text encoder's vocabulary size
    device: str = "cpu"
    checkpoint_sha256: str = ""
    cond_shape: tuple[int, ...] = ()  # per-sample shape of tokens (L,) or text embeddings (L, D)
    fused: str = "off"  # one of FUSED
    prepack: bool = False  # weights frozen and prepacked for oneDNN (int8 packages always)
    quantize: str = ""  # "" or "int8"
    calibration_samples: int = 0  # int8: inputs the ranges were calibrated on
    backend: str = ""  # "" or "tensorrt" (engines inside a .pt2)
    sigma_p: float = 0.0  # sr: noise of OFTSR's start state
    cfg_scale: float = 1.0  # text_generator: classifier-free guidance inside

    def __post_init__(self) -> None:
        if self.kind not in INPUTS:
            raise ArtifactError(f"unknown generator kind {self.kind!r} (expected {', '.join(INPUTS)})")
        if self.dtype not in DTYPES:
            raise ArtifactError(f"unknown dtype {self.dtype!r} (expected {', '.join(DTYPES)})")
        if self.kind in ("conditional", "text_encoder") and self.num_classes < 1:
            raise ArtifactError(f"a {self.kind} needs num_classes >= 1 (classes or vocabulary)")
        if not self.sample_shape or min(self.sample_shape) < 1 or (self.cond_shape and min(self.cond_shape) < 1):
            raise ArtifactError(f"sample and condition shapes hold sizes >= 1, got {self.sample_shape} and "
                                f"{self.cond_shape}")
        if self.steps < 1 or self.num_classes < 0 or self.device not in ("cpu", "cuda"):
            raise ArtifactError(f"need steps >= 1, num_classes >= 0 and device cpu or cuda; got {self.steps}, "
                                f"{self.num_classes}, {self.device!r}")
        want = {"text_encoder": 1, "text_generator": 2}.get(self.kind, 0)
        if len(self.cond_shape) != want:
            raise ArtifactError(f"a {self.kind} has a {want}-D cond_shape, got {self.cond_shape}")
        if self.fused not in FUSED or self.quantize not in ("", "int8") or self.backend not in ("", "tensorrt") \
                or self.calibration_samples < 0 or not 0 <= self.sigma_p < 1:
            raise ArtifactError(f"need fused in {FUSED}, quantize '' or int8, backend '' or tensorrt, "
                                f"calibration_samples >= 0 and sigma_p in [0, 1); got {self.fused!r}, "
                                f"{self.quantize!r}, {self.backend!r}, {self.calibration_samples}, {self.sigma_p}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return INPUTS[self.kind]

    def to_metadata(self) -> dict[str, str]:
        """Flat string metadata (AOTInductor stores ``dict[str, str]``; C++ reads it back)."""
        meta = {"version": str(VERSION), "kind": self.kind, "inputs": ",".join(self.inputs),
                "sample_shape": ",".join(map(str, self.sample_shape)), "batch_min": str(self.batch.min),
                "batch_opt": str(self.batch.opt), "batch_max": str(self.batch.max), "dtype": self.dtype,
                "steps": str(self.steps), "num_classes": str(self.num_classes), "device": self.device,
                "checkpoint_sha256": self.checkpoint_sha256, "fused": self.fused}
        optional = {"cond_shape": ",".join(map(str, self.cond_shape)), "prepack": "on" if self.prepack else "",
                    "quantize": self.quantize, "calibration_samples": str(self.calibration_samples or ""),
                    "backend": self.backend, "sigma_p": repr(self.sigma_p) if self.kind == "sr" else "",
                    "cfg_scale": repr(self.cfg_scale) if self.cfg_scale != 1.0 else ""}
        meta.update({k: v for k, v in optional.items() if v})
        return {PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "artefact") -> GeneratorSpec | None:
        """The spec stored in ``meta``, or None when it holds no fastflow keys (an older artefact)."""
        own = {k[len(PREFIX):]: v for k, v in meta.items() if k.startswith(PREFIX)}
        if not own:
            return None
        try:
            if int(own.pop("version")) > VERSION:
                raise ArtifactError(f"{source}: made by a newer fastflow (metadata version "
                                    f"{meta[PREFIX + 'version']} > {VERSION})")
            own.pop("inputs", None)  # derived from kind
            cond = own.get("cond_shape", "")
            return cls(kind=own["kind"], sample_shape=tuple(int(s) for s in own["sample_shape"].split(",")),
                       batch=BatchRange(int(own["batch_min"]), int(own["batch_opt"]), int(own["batch_max"])),
                       dtype=own["dtype"], steps=int(own["steps"]), num_classes=int(own["num_classes"]),
                       device=own["device"], checkpoint_sha256=own["checkpoint_sha256"],
                       cond_shape=tuple(int(c) for c in cond.split(",")) if cond else (),
                       fused=own.get("fused", "off"), prepack=own.get("prepack") == "on",
                       quantize=own.get("quantize", ""), calibration_samples=int(own.get("calibration_samples", 0)),
                       backend=own.get("backend", ""), sigma_p=float(own.get("sigma_p", 0.0)),
                       cfg_scale=float(own.get("cfg_scale", 1.0)))
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"{source}: malformed fastflow metadata ({type(e).__name__}: {e})") from None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    def check(self, *inputs: Tensor) -> None:
        """Raise :class:`ShapeError` unless ``inputs`` are exactly what the artefact takes.

        Label values are checked on CPU tensors only (a device tensor would need a host sync)."""
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"the artefact takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), "
                             f"got {len(inputs)}")
        b = inputs[0].shape[0] if inputs[0].dim() else -1
        if not self.batch.min <= b <= self.batch.max:
            raise ShapeError(f"batch {b} is outside the artefact's range {self.batch.min}..{self.batch.max}")
        for name, x in zip(self.inputs, inputs, strict=False):
            if name in ("cond", "tau", "t"):
                want, dtype = (b,), torch.int64 if name == "cond" else torch.float32
            elif name in ("tokens", "emb"):
                want, dtype = (b, *self.cond_shape), torch.int64 if name == "tokens" else DTYPES[self.dtype]
            else:
                want, dtype = (b, *self.sample_shape), DTYPES[self.dtype]
            if tuple(x.shape) != want:
                raise ShapeError(f"{name} has shape {tuple(x.shape)}, the artefact takes {want}")
            if x.dtype != dtype:
                raise ShapeError(f"{name} has dtype {x.dtype}, the artefact takes {dtype}")
            if name in ("cond", "tokens") and x.device.type == "cpu" and x.numel() and (
                    int(x.min()) < 0 or int(x.max()) >= self.num_classes):
                raise ShapeError(f"{'labels' if name == 'cond' else 'token ids'} must lie in [0, {self.num_classes}), "
                                 f"got {int(x.min())}..{int(x.max())}")
