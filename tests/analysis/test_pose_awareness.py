"""Global pose-awareness test: summaries by hand, and left/right made from real photographs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from semcorr.analysis import confusion_table, pose_awareness, read_pose_folder
from semcorr.analysis.pose_awareness import pose_distances, summarize_predictions
from semcorr.errors import InputError
from semcorr.features import create_backbone

sys.path.insert(0, str(Path(__file__).parents[1] / "viz"))
from mirror_backbone import MirrorBackbone  # noqa: E402


def make_left_right(root: Path, photo: Path) -> tuple[Path, Path]:
    """Templates: the photo ("left") and its mirror image ("right"); queries: two crops of the
    photo and their mirror images."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    crops = [image.crop((0, 0, int(0.8 * w), int(0.8 * h))), image.crop((w // 5, h // 10, w, h))]
    for pose, mirror in (("left", False), ("right", True)):
        fix = ImageOps.mirror if mirror else (lambda im: im)
        (root / "templates" / pose).mkdir(parents=True)
        (root / "images" / pose).mkdir(parents=True)
        fix(image).save(root / "templates" / pose / "template.png")
        for i, crop in enumerate(crops):
            fix(crop).save(root / "images" / pose / f"query{i}.png")
    return root / "templates", root / "images"


def _shared(*parts: str) -> Path:
    """A path under ../shared/data (conftest's rule), or skip when it is absent."""
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / Path(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside the repository)")
    return path


@pytest.fixture(scope="module")
def left_right(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    photo = _shared("r2d2", "boat.png")
    return make_left_right(tmp_path_factory.mktemp("poses"), photo)


class TestSummary:
    def test_known_answer(self) -> None:
        truth = ["front", "front", "back", "left", "right", "right"]
        pred = ["front", "back", "back", "right", "right", "right"]
        s = summarize_predictions(truth, pred, ["front", "back", "left", "right"])
        assert s["accuracy"] == pytest.approx(4 / 6)
        assert s["per_pose"] == {"front": 0.5, "back": 1.0, "left": 0.0, "right": 1.0}
        assert s["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2]]
        assert s["chance"] == 0.25

    def test_pose_without_queries(self) -> None:
        s = summarize_predictions(["a"], ["a"], ["a", "b"])
        assert s["per_pose"]["b"] is None

    def test_distance_matrix_shape_and_self(self) -> None:
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(3, 8, 6, 6, generator=g)
        masks = torch.ones(3, 6, 6, dtype=torch.bool)
        d = pose_distances((feats, masks), (feats[:2], masks[:2]), size=6)
        assert d.shape == (3, 2)
        assert d[0, 0] < 1e-3 and d[1, 1] < 1e-3  # an image is at distance 0 from itself
        assert d[0, 1] > 0.1


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_pose_folder(tmp_path / "missing")
    (tmp_path / "empty" / "left").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        read_pose_folder(tmp_path / "empty")


def test_default_backbone_separates_left_right(left_right: tuple[Path, Path]) -> None:
    """Measured (fixed crops, no randomness), identical with 1 and 2 torch threads: the true
    pose's distance is 0.24-0.27 and the wrong one's 0.38-0.43 for every query (ratio >= 1.57),
    so accuracy 1.0 does not hang on a near-tie."""
    templates, images = left_right
    summary = pose_awareness(
        create_backbone("dense-sift").eval(), read_pose_folder(templates),
        read_pose_folder(images), size=32,
    )
    assert summary["accuracy"] == 1.0, confusion_table(summary)
    assert summary["confusion"] == [[2, 0], [0, 2]]
    assert summary["verdict"] == "separates the poses"


def test_flip_equivariant_features_cannot_tell(left_right: tuple[Path, Path]) -> None:
    """Features that are exactly flip-equivariant hold the same set of vectors for an image and
    its mirror image, so the distance cannot tell left from right: the report must say so."""
    templates, images = left_right
    summary = pose_awareness(MirrorBackbone().eval(), read_pose_folder(templates),
                             read_pose_folder(images), size=32)
    distances = [p["distances"] for p in summary["predictions"]]
    assert all(abs(d["left"] - d["right"]) < 1e-4 for d in distances), distances
    assert summary["accuracy"] <= 0.5
    assert "NOT" in summary["verdict"]
    assert "NOT separate" in confusion_table(summary)


def test_unknown_query_pose(left_right: tuple[Path, Path], tmp_path: Path) -> None:
    templates, _ = left_right
    (tmp_path / "up").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "up" / "a.png")
    with pytest.raises(InputError, match="no template"):
        pose_awareness(MirrorBackbone(), read_pose_folder(templates), read_pose_folder(tmp_path))


@pytest.mark.slow  # imports transformers: ~10 s on a loaded 2-core machine
def test_runs_with_another_registered_backbone(
    left_right: tuple[Path, Path], tmp_path: Path
) -> None:
    """A tiny random DINOv2 saved in the official format and loaded by the registry."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "features"))
    from tiny_models import save_tiny_dinov2

    weights = save_tiny_dinov2(tmp_path / "tiny", layers=1)
    backbone = create_backbone("dinov2_vits14", weights=str(weights), num_patches=16).eval()
    templates, images = left_right
    summary = pose_awareness(backbone, read_pose_folder(templates), read_pose_folder(images),
                             size=16)
    assert summary["backbone"] == "dinov2_vits14"
    assert sum(map(sum, summary["confusion"])) == 4 and 0 <= summary["accuracy"] <= 1
    json.dumps(summary)  # the report is JSON-serialisable
