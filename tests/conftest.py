"""Shared fixtures: paths to ../shared, real photographs, --runslow."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def pf_willow_root() -> Path:
    return shared_path("pf-willow")


@pytest.fixture
def photo_paths() -> list[Path]:
    root = shared_path("r2d2")
    return [root / name for name in ("boat.png", "peppers.png", "brooklyn.png")]
