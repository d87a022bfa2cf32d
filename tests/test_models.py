"""UNet family: preset sizes, conditioning, shape errors, checkpoint save/load and its failures."""

import json

import pytest
import torch

from fastflow.errors import CheckpointError, ConfigError, ShapeError
from fastflow.flow import cfg_velocity
from fastflow.models import GroupNormAct, UNet, build_model, load_model, save_model
from fastflow.models.layers import Attention
from fastflow.models.presets import PAPER_PARAMS


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_preset_sizes_match_papers(name: str) -> None:
    with torch.device("meta"):
        m = build_model({"preset": name})
    assert abs(n_params(m) / PAPER_PARAMS[name] - 1) <= 0.05, n_params(m)


def test_digits_student_is_about_4x_smaller() -> None:
    ratio = n_params(build_model({"preset": "digits"})) / n_params(build_model({"preset": "digits-small"}))
    assert 3.0 < ratio < 5.0


def test_one_module_type_per_norm_and_attention() -> None:
    m = build_model({"preset": "tiny", "context_dim": 8})
    assert not any(isinstance(x, torch.nn.GroupNorm) for x in m.modules())
    assert sum(isinstance(x, GroupNormAct) for x in m.modules()) > 5
    assert not any(isinstance(x, torch.nn.MultiheadAttention) for x in m.modules())
    assert sum(isinstance(x, Attention) for x in m.modules()) >= 4  # self + cross, down/mid/up


def test_groupnorm_act_matches_torch() -> None:
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    gn = GroupNormAct(8, act=True).double()
    ref = torch.nn.GroupNorm(2, 8, eps=1e-6).double()
    torch.nn.init.normal_(gn.weight)
    ref.load_state_dict(gn.state_dict())
    assert torch.allclose(gn(x), torch.nn.functional.silu(ref(x)))
    s, b = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    assert torch.allclose(gn(x, s, b), torch.nn.functional.silu(ref(x) * (1 + s[..., None, None]) + b[..., None, None]))


@pytest.mark.parametrize("scale_shift", [False, True])
def test_forward_all_conditionings(scale_shift: bool) -> None:
    m = build_model({"preset": "tiny", "num_classes": 10, "context_dim": 6, "cond_channels": 3,
                     "scale_shift": scale_shift, "attn_head_dim": 4})
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    cond = {"label": torch.tensor([1, 2]), "tokens": torch.randn(2, 5, 6), "image": torch.randn(2, 3, 8, 8)}
    assert m(x, t, cond).shape == x.shape
    # the null condition keeps the image, replaces label and tokens
    null = m.null_cond(cond)
    assert torch.equal(null["label"], torch.tensor([10, 10])) and torch.equal(null["image"], cond["image"])
    # omitted label/tokens mean "unconditional" and equal the explicit null condition
    assert torch.allclose(m(x, t, {"image": cond["image"]}), m(x, t, null), atol=1e-6)


def test_cfg_batched_equals_two_calls() -> None:
    m = build_model({"preset": "tiny", "num_classes": 10}).eval()
    for p in m.parameters():  # make the output depend on the label
        torch.nn.init.normal_(p, std=0.2)
    x, t, c = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 4, 9])
    a = cfg_velocity(m, c, 2.0)(x, t)
    b = 2.0 * m(x, t, c) - 1.0 * m(x, t, None)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(m(x, t, c), m(x, t, None))


def test_shape_errors() -> None:
    m = build_model({"preset": "tiny", "num_classes": 10})
    with pytest.raises(ShapeError):
        m(torch.randn(2, 1, 8, 8), torch.rand(2))
    with pytest.raises(ShapeError):
        m(torch.randn(2, 3, 7, 7), torch.rand(2))
    with pytest.raises(ShapeError):
        m(torch.randn(2, 3, 8, 8), torch.rand(3))
    with pytest.raises(ShapeError):
        m(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([1.0, 2.0]))
    with pytest.raises(ShapeError):
        build_model({"preset": "tiny"})(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    with pytest.raises(ConfigError):
        build_model({"preset": "tiny", "channel": 3})
    with pytest.raises(ConfigError):
        build_model({"preset": "nope"})


def test_checkpoint_roundtrip(tmp_path) -> None:
    m = build_model({"preset": "tiny", "num_classes": 3})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_model(tmp_path, m, m)
    m2 = load_model(tmp_path)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert torch.equal(m.eval()(x, t), m2(x, t))
    assert isinstance(m2, UNet) and m2.config == m.config


def test_checkpoint_mismatch_and_corruption(tmp_path) -> None:
    save_model(tmp_path, build_model({"preset": "tiny"}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["channels"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path)

    save_model(tmp_path, build_model({"preset": "tiny"}).half())  # names and shapes fit, dtypes do not
    with pytest.raises(CheckpointError, match="is float16, the architecture holds float32"):
        load_model(tmp_path)

    save_model(tmp_path, build_model({"preset": "tiny"}))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path, weights="model")

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a fastflow checkpoint|neither a checkpoint"):
        load_model(tmp_path / "missing")


def test_mlp_model() -> None:
    m = build_model({"preset": "toy2d", "num_classes": 4})
    x = torch.randn(5, 2)
    assert m(x, torch.rand(5), torch.tensor([0, 1, 2, 3, 0])).shape == (5, 2)
    with pytest.raises(ShapeError):
        m(torch.randn(5, 3), torch.rand(5))


def test_groupnorm_act_half_precision_uses_fp32_statistics() -> None:
    x = (torch.randn(2, 8, 4, 4) * 50 + 300).half()  # large mean: fp16 E[x²] − E[x]² would fail
    gn = GroupNormAct(8, act=False)
    ref = torch.nn.functional.group_norm(x.double(), 2, eps=1e-6)
    out = gn(x)
    assert out.dtype == torch.float16 and (out.double() - ref).abs().max() < 5e-3
