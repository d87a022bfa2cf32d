"""``fastflow.FlowPipeline``: from a checkpoint to images in one call, for unconditional, class,
token/SD and OFTSR students, equal to what ``generate`` (and ``fastflow sample``) produce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastflow import FlowPipeline
from fastflow.errors import ConfigError
from fastflow.flow import generate
from fastflow.models import build_model, save_model

UNET = {"arch": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "num_res_blocks": 1, "ch_mult": (1,),
        "attn_resolutions": (), "dropout": 0.0}


def _ckpt(tmp_path, name: str, meta: dict | None = None, **extra):
    torch.manual_seed(0)
    m = build_model({**UNET, **extra})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(tmp_path / name, m, m, meta=meta)
    return tmp_path / name, m.eval()


def test_unconditional_and_class_students(tmp_path) -> None:
    path, m = _ckpt(tmp_path, "u")
    pipe = FlowPipeline.from_pretrained(path, fused="off")
    out = pipe(n=3, steps=1, seed=5, output_type="pt")
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = (generate(m, z, "one_step").x.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(out.images, want) and None
    assert out.nfe == 1 and pipe(n=2, steps=4).nfe == 4
    pil = pipe(n=2).images
    assert len(pil) == 2 and pil[0].size == (8, 8)
    assert pipe(n=2, output_type="np").images.shape == (2, 8, 8, 1)
    path, m = _ckpt(tmp_path, "c", num_classes=3)
    pipe = FlowPipeline.from_pretrained(path, fused="off")
    a, b = pipe(n=2, label=1, output_type="pt").images, pipe(n=2, label=[1, 1], output_type="pt").images
    torch.testing.assert_close(a, b)
    for bad, word in (({"label": 3}, "in \\[0, 3\\)"), ({"prompt": "a cat"}, "text-conditioned"),
                      ({"output_type": "gif"}, "output_type"), ({"n": 0}, "n >= 1"), ({"image": 1}, "OFTSR")):
        with pytest.raises(ConfigError, match=word):
            pipe(**bad)


def test_token_unet_takes_an_embedding(tmp_path) -> None:
    path, m = _ckpt(tmp_path, "t", context_dim=4)
    pipe = FlowPipeline.from_pretrained(path, fused="off")
    emb = torch.randn(5, 4)
    out = pipe(n=2, prompt=emb, cfg=1.5, output_type="latent")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = generate(m, z, "one_step", cond={"tokens": emb[None].expand(2, -1, -1)}, cfg_scale=1.5).x
    torch.testing.assert_close(out.images, want)
    with pytest.raises(ConfigError, match="SD student"):
        pipe(n=1, prompt="a cat")


def test_sd_student_takes_text_and_table_indices(tmp_path) -> None:
    pytest.importorskip("diffusers")
    from helpers import tiny_sd_student

    ckpt, _ = tiny_sd_student(tmp_path)
    pipe = FlowPipeline.from_pretrained(ckpt, fused="off")
    by_text = pipe(n=2, prompt="a red dog", output_type="pt").images
    by_index = pipe(n=2, prompt=1, output_type="pt").images  # "a red dog" is row 1 of the table
    assert by_text.shape[:2] == (2, 3) and torch.isfinite(by_text).all()
    torch.testing.assert_close(by_text, by_index, atol=1e-4, rtol=1e-4)


def test_oftsr_student_super_resolves_an_image(tmp_path) -> None:
    from PIL import Image

    from fastflow.metrics.sr_eval import super_resolve
    from fastflow.models.checkpoint import read_record

    path, m = _ckpt(tmp_path, "sr", meta={"objective_config": {"name": "oftsr", "sigma_p": 0.2},
                                          "data_config": {"name": "sr", "scale": 2}}, cond_channels=1)
    pipe = FlowPipeline.from_pretrained(path, fused="off")
    lr = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)
    out = pipe(image=lr, tau=0.3, output_type="pt")
    y = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 127.5 - 1)[None, None]
    want = (super_resolve(read_record(path), m, y, 0.3, 0).clamp(-1, 1) + 1) / 2
    assert out.images.shape == (1, 1, 8, 8) and out.nfe == 1
    torch.testing.assert_close(out.images, want)
    with pytest.raises(ConfigError, match="tau"):
        pipe(image=lr, tau=2.0)


def test_hostile_call_arguments_are_one_typed_line(tmp_path) -> None:
    """Any mix of n, steps, label, prompt, cfg, tau and output_type: images, or one FastflowError line."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fastflow.errors import FastflowError

    path, _ = _ckpt(tmp_path, "c", num_classes=3)
    pipe = FlowPipeline.from_pretrained(path, fused="off")
    junk = st.one_of(st.none(), st.integers(-3, 5), st.lists(st.integers(-1, 3), max_size=4), st.text(max_size=3),
                     st.floats(allow_nan=True))

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(n=st.integers(-1, 3), steps=st.integers(-1, 3), label=junk, prompt=junk, cfg=st.floats(0, 3),
           output_type=st.sampled_from(["pil", "np", "pt", "latent", "gif", ""]), solver=st.sampled_from(
               [None, "euler", "heun", "rk45", "one_step", "magic"]))
    def prop(n, steps, label, prompt, cfg, output_type, solver) -> None:
        try:
            out = pipe(n=n, steps=steps, label=label, prompt=prompt, cfg=cfg, output_type=output_type, solver=solver)
        except FastflowError as e:
            assert "\n" not in str(e)
            return
        assert len(out.images) == n

    prop()
