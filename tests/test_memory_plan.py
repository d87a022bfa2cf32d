"""``fastflow bench memory``: the per-rank memory plan's arithmetic, and SD-1.5's UNet counted on
the meta device."""

from __future__ import annotations

import pytest

from fastflow.cli.main import main
from fastflow.models.presets import build_model
from tests.helpers import ROOT


def test_memory_plan(tmp_path) -> None:
    from fastflow.bench.memory import memory_table, parameter_counts

    p, rows = memory_table("tiny", [1, 2, 8], micro_batch=4, measure_res=8)
    assert p.params == sum(q.numel() for q in build_model({"preset": "tiny"}).parameters())
    assert 0 < p.act_ckpt_bytes < p.act_bytes
    ddp = {r["ranks"]: r for r in rows if r["parallel"] == "ddp" and r["activation_checkpointing"] == "none"}
    fsdp = {r["ranks"]: r for r in rows if r["parallel"] == "fsdp2" and r["activation_checkpointing"] == "none"
            and r["precision"] == "fp32"}
    assert fsdp[8]["adam_gb"] == pytest.approx(ddp[8]["adam_gb"] / 8) and ddp[1]["params_gb"] == ddp[8]["params_gb"]
    assert all(r["total_gb"] == pytest.approx(sum(v for k, v in r.items() if k.endswith("_gb") and k != "total_gb"))
               for r in rows)
    sd = parameter_counts(str(ROOT / "fastflow" / "configs" / "sd15" / "unet.json"))
    assert sd[0] == 859_520_964 and sd[1] < sd[0] / 4  # SD-1.5's UNet, counted on the meta device
    assert main(["bench", "memory", "tiny", "--ranks", "1,2", "--measure-res", "8",
                 "--out", str(tmp_path / "m.json")]) == 0
