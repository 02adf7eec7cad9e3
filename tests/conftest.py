"""Shared fixtures: paths to ../shared, real photographs, one thread, --runslow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared_data import shared_path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)




@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (restored after): its numbers then do not depend on the
    machine's thread count, and small convolutions do not spin threads on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pf_willow_root() -> Path:
    return shared_path("pf-willow")


@pytest.fixture
def photo_paths() -> list[Path]:
    root = shared_path("r2d2")
    return [root / name for name in ("boat.png", "peppers.png", "brooklyn.png")]
