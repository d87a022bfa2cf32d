"""Prompt tables: CLIP text embeddings of a prompt file, with the null (empty) prompt last, in one
safetensors file (``fastflow prompts``). Conditions index the table like class labels, so CFG, pair
shards and labels work for text exactly as for classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.models.diffusers_dir import check_sd_dir


def load_prompt_table(path: str | Path) -> tuple[Tensor, list[str]]:
    """``(embeddings [P + 1, L, D] with the null prompt last, prompts)`` of a prompt table."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            prompts = (f.metadata() or {}).get("prompts")
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:  # missing, truncated, foreign (a bad header: JSON)
        raise ConfigError(f"{path}: not a readable prompt table ({e.__class__.__name__}: {e})") from None
    emb = t.get("embeddings")
    if set(t) != {"embeddings", "null"} or emb.dim() != 3 or t["null"].shape != (1, *emb.shape[1:]):
        raise ConfigError(f"{path}: a prompt table holds embeddings [P, L, D] and null [1, L, D]")
    return torch.cat([t["embeddings"], t["null"]]).float(), json.loads(prompts) if prompts else []


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("prompt encoding needs transformers: pip install 'fastflow[diffusers]'") from None
    return transformers


def tokenize_prompts(path: str | Path, prompts: list[str]) -> Tensor:
    """Token ids ``[P, L]`` (int64) of ``prompts`` by the tokenizer in ``path/tokenizer`` (a diffusers
    folder, or a pipeline exported by ``fastflow-export --pipeline``), padded to its maximum length."""
    p = check_sd_dir(path, ("tokenizer",))
    tok = _transformers().AutoTokenizer.from_pretrained(p / "tokenizer", local_files_only=True)
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.long()


def load_text_encoder(path: str | Path) -> nn.Module:
    """The text encoder of a diffusers folder (``text_encoder/``, the class its config names)."""
    p = check_sd_dir(path, ("text_encoder",))
    return _transformers().AutoModel.from_pretrained(p / "text_encoder", local_files_only=True).eval()


@torch.no_grad()
def encode_prompts(path: str | Path, prompts: list[str], device: torch.device | str = "cpu",
                   batch_size: int = 64) -> Tensor:
    """Text embeddings ``[P, L, D]`` (the encoder's last hidden state) with the directory's tokenizer
    and text encoder."""
    p = check_sd_dir(path, ("tokenizer", "text_encoder"))
    enc = load_text_encoder(p).to(device)
    ids = tokenize_prompts(p, prompts)
    return torch.cat([enc(input_ids=ids[i:i + batch_size].to(device))[0].float().cpu()
                      for i in range(0, len(prompts), batch_size)])


def write_prompt_table(path: str | Path, prompts: list[str], out: str | Path,
                       device: torch.device | str = "cpu") -> Path:
    """Encode ``prompts`` and the empty (null) prompt into a safetensors prompt table."""
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ConfigError("no prompts given (one per line)")
    emb = encode_prompts(path, [*prompts, ""], device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb[:-1].contiguous(), "null": emb[-1:].contiguous()}, str(out),
              metadata={"prompts": json.dumps(prompts), "source": str(Path(path).expanduser())})
    return out
