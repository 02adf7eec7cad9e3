"""``semcorr match --backbone dinov2_vitb14 --weights DIR`` end to end with a tiny model."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from semcorr.cli.main import main  # noqa: E402


def _tiny_models():  # tests/features/tiny_models.py, without making tests a package
    path = Path(__file__).resolve().parents[1] / "features" / "tiny_models.py"
    spec = importlib.util.spec_from_file_location("semcorr_tests_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the tiny model (restored after); see tiny_models.one_thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli_dinov2")
    weights = _tiny_models().save_tiny_dinov2(root / "dinov2_tiny", layers=1)
    rng = np.random.default_rng(0)
    source = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(source).save(root / "a.png")
    Image.fromarray(source[:, ::-1].copy()).save(root / "b.png")
    Image.fromarray(source).save(root / "same.png")
    return weights, root / "a.png", root / "b.png"


def test_match_with_tiny_dinov2(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    weights, source, target = pair
    out = tmp_path / "out"
    status = main([
        "match", str(source), str(target), "--points", "10,20;100,45",
        "--backbone", "dinov2_vitb14", "--weights", str(weights), "--out", str(out),
        "--device", "cpu",
    ])
    assert status == 0
    result = json.loads((out / "matches.json").read_text())
    assert result["backbone"] == "dinov2_vitb14"
    points = np.asarray(result["targets"][0]["points"])
    assert points.shape == (2, 2)
    assert np.all(points >= -0.5) and np.all(points[:, 0] <= 119.5) and np.all(points[:, 1] <= 89.5)
    scores = np.asarray(result["targets"][0]["scores"])
    assert np.all(scores <= 1.0 + 1e-5) and np.all(scores >= -1.0 - 1e-5)
    assert len(list(out.glob("match_*.png"))) == 1


def test_self_match_finds_the_same_pixels(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Matching an image to a copy of itself puts points at feature-cell centres back in place:
    their descriptors are exactly their own cell's token (cosine 1), so this checks every frame
    conversion (original → 840 px input → 60² grid → original) on the real CLI path."""
    from semcorr.geometry import ResizePad

    weights, source, _ = pair
    out = tmp_path / "self"
    cells = torch.tensor([[5.0, 10.0], [40.0, 30.0], [55.0, 50.0]])  # (x, y) grid, on content
    points = ResizePad(120, 90, 840, 14).from_grid(cells).tolist()
    status = main([
        "match", str(source), str(source.with_name("same.png")),
        "--points", ";".join(f"{x},{y}" for x, y in points),
        "--backbone", "dinov2_vitb14", "--weights", str(weights), "--out", str(out),
        "--device", "cpu", "--refine", "argmax",
    ])
    assert status == 0
    found = np.asarray(json.loads((out / "matches.json").read_text())["targets"][0]["points"])
    assert np.abs(found - np.asarray(points)).max() < 1e-3


def test_match_missing_weights_is_one_line(pair: tuple[Path, Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, source, target = pair
    status = main([
        "match", str(source), str(target), "--points", "10,20",
        "--backbone", "dinov2_vitb14", "--weights", str(tmp_path / "absent"),
        "--out", str(tmp_path / "out"),
    ])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("semcorr: error: ") and "absent" in err
    assert "Traceback" not in err
