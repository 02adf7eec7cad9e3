"""PF-WILLOW loader: a tiny copy in the original layout, and the real benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest
import scipy.io
import torch

from semcorr.data import create_dataset
from semcorr.errors import InputError


def test_all_ordered_pairs(willow_root: Path) -> None:
    ds = create_dataset("pf-willow", willow_root)
    assert len(ds) == 3 * 2 + 2 * 1
    assert ds.protocol == {"normalisation": "keypoints", "average": "categories"}
    ids = [ds[i].pair_id for i in range(len(ds))]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "car(G)/img_000-img_001"
    assert len(ds.image_paths()) == 5


def test_points_are_zero_based_and_reference_is_keypoint_extent(willow_root: Path) -> None:
    sample = create_dataset("pf-willow", willow_root)[0]
    raw = scipy.io.loadmat(str(willow_root / "car(G)" / "img_001.mat"))["pts_coord"]
    expected = torch.tensor(raw.T, dtype=torch.float32) - 1
    assert torch.allclose(sample.target_points, expected)
    extent = (expected.max(0).values - expected.min(0).values).max()
    assert sample.pck_reference == pytest.approx(float(extent))
    assert sample.visible.all() and sample.source_size == (48, 40)


def test_missing_mat_is_named(willow_root: Path) -> None:
    (willow_root / "duck(S)" / "img_001.mat").unlink()
    with pytest.raises(InputError, match=r"img_001\.mat: missing keypoint file"):
        create_dataset("pf-willow", willow_root)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no class folders"):
        create_dataset("pf-willow", tmp_path)


def test_real_pf_willow(pf_willow_root: Path) -> None:
    ds = create_dataset("pf-willow", pf_willow_root)
    assert len(ds) == 900
    assert len(ds.image_paths()) == 100
    categories = {ds[i].category for i in range(0, 900, 90)}
    assert len(categories) == 10
    sample = ds[0]
    assert sample.source_path.name == "Cars_006a.png"
    # pts_coord of Cars_006a starts at (47.9353, 98.1586) in MATLAB's 1-based frame
    assert sample.source_points[0].tolist() == pytest.approx([46.9353, 97.1586], abs=1e-3)


@pytest.mark.parametrize(("split", "classes", "pairs"), [
    ("dev", {"car(G)"}, 6), ("heldout", {"duck(S)"}, 2), ("all", {"car(G)", "duck(S)"}, 8),
    ("test", {"car(G)", "duck(S)"}, 8),
])
def test_declared_splits(willow_root: Path, split: str, classes: set[str], pairs: int) -> None:
    ds = create_dataset("pf-willow", willow_root, split=split)
    assert len(ds) == pairs and ds.split == split
    assert {ds[i].category for i in range(len(ds))} == classes


def test_unknown_split_and_category_outside_the_split(willow_root: Path) -> None:
    with pytest.raises(InputError, match="split must be one of test, all, dev, heldout, not 'x'"):
        create_dataset("pf-willow", willow_root, split="x")
    with pytest.raises(InputError, match=r"duck\(S\): missing class folder \(or not in the 'dev'"):
        create_dataset("pf-willow", willow_root, split="dev", category="duck(S)")


def test_real_pf_willow_development_split(pf_willow_root: Path) -> None:
    """docs/protocol.md: 3 development classes (270 pairs), 7 held-out (630), disjoint."""
    dev = create_dataset("pf-willow", pf_willow_root, split="dev")
    heldout = create_dataset("pf-willow", pf_willow_root, split="heldout")
    dev_classes = {dev[i].category for i in range(0, len(dev), 90)}
    held_classes = {heldout[i].category for i in range(0, len(heldout), 90)}
    assert (len(dev), len(heldout)) == (270, 630)
    assert dev_classes == {"car(G)", "motorbike(G)", "winebottle(M)"}
    assert held_classes == {"car(M)", "car(S)", "duck(S)", "motorbike(M)", "motorbike(S)",
                            "winebottle(wC)", "winebottle(woC)"}
