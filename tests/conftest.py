import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The digits classifier is trained once per test session into a private cache.
    os.environ.setdefault("FASTFLOW_CACHE", str(tmp_path_factory.mktemp("ffcache")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
