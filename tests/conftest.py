import json
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The digits classifier is trained once per test session into a private cache. Its fused
    # winners table is empty: fused=auto takes the documented defaults (off on the CPU) unless a
    # test says otherwise (tests/test_fused_switch.py checks the shipped table's choice).
    if "FASTFLOW_CACHE" not in os.environ:
        cache = tmp_path_factory.mktemp("ffcache")
        (cache / "fused-winners.json").write_text(json.dumps({"format": "fastflow-fused-winners", "version": 1,
                                                               "entries": []}))
        os.environ["FASTFLOW_CACHE"] = str(cache)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
