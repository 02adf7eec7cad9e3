"""Official code the fidelity tests import at run time, from ../shared/reference or, for
repositories not copied there, from their fetched git mirror (never copied into this repository).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shared_data import SHARED

#: Where fetched repositories' git directories live (``owner+name/repo``).
MIRRORS = Path("/work/.mirror")


def official_text(repo: str, path: str) -> str:
    """The text of ``path`` in the GitHub repository ``repo`` (``owner/name``), from
    ``../shared/reference/owner+name`` or the fetched mirror; skip the test, saying why, when
    neither is present (for scripts that run at import and so cannot be imported as they are)."""
    folder = repo.replace("/", "+")
    source = SHARED / "reference" / folder / path
    if source.is_file():
        return source.read_text()
    mirror = MIRRORS / folder / "repo"
    if not mirror.is_dir():
        pytest.skip(f"{repo}'s code is absent (neither ../shared/reference/{folder} nor a "
                    f"fetched mirror of {repo})")
    return subprocess.run(["git", "--git-dir", str(mirror), "show", f"HEAD:{path}"],
                          capture_output=True, text=True, check=True).stdout


def official_module(repo: str, path: str, scratch: Path) -> ModuleType:
    """Import ``path`` of the GitHub repository ``repo`` (``owner/name``): from
    ``../shared/reference/owner+name`` when it is there, else read from the fetched mirror into
    ``scratch``; skip the test, saying why, when neither is present."""
    folder = repo.replace("/", "+")
    source = SHARED / "reference" / folder / path
    if not source.is_file():
        source = scratch / f"{folder}_{Path(path).name}"
        source.write_text(official_text(repo, path))
    name = f"official_{folder}_{Path(path).stem}".replace("-", "_").replace("+", "_")
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
