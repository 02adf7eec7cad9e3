"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from willow_translations import write_translated_willow


@pytest.fixture
def translated_willow(tmp_path: Path) -> Path:
    return write_translated_willow(tmp_path / "willow")
