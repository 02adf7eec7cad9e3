"""The output formats: the DAVIS palette, palette PNGs read back, COCO keypoints."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from semcorr.track.outputs import coco_keypoints, davis_palette, read_index_png, write_index_png


def test_davis_palette_known_colours() -> None:
    pal = davis_palette()
    assert pal[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                [0, 0, 128]]
    assert pal[8].tolist() == [64, 0, 0] and pal[255].tolist() == [224, 224, 192]


def test_index_png_round_trip_keeps_palette(tmp_path: Path) -> None:
    mask = torch.tensor([[0, 1, 2], [2, 1, 0]])
    pal = davis_palette()[::-1].copy()  # an unusual palette must survive
    write_index_png(tmp_path / "m.png", mask, pal)
    back, back_pal = read_index_png(tmp_path / "m.png")
    assert torch.equal(back, mask) and (back_pal == pal).all()
    Image.fromarray((mask.numpy() * 100).astype("uint8")).save(tmp_path / "grey.png")
    grey, _ = read_index_png(tmp_path / "grey.png")  # grey levels 0, 100, 200 → 0, 1, 2
    assert torch.equal(grey, mask)


def test_coco_keypoints_visibility_and_scores() -> None:
    points = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [-1.0, -1.0]]])
    scores = torch.tensor([[1.0, 1.0], [0.75, 0.0]])
    doc = coco_keypoints([Path("a.png"), Path("b.png")], [(10, 20), (10, 20)], points, scores,
                         ["nose", "tail"])
    second = doc["annotations"][1]
    assert second["keypoints"] == [5.0, 6.0, 2.0, -1.0, -1.0, 0.0]
    assert second["num_keypoints"] == 1 and second["scores"] == [0.75, 0.0]
    assert doc["images"][1] == {"id": 1, "file_name": "b.png", "height": 10, "width": 20}
    assert doc["categories"][0]["keypoints"] == ["nose", "tail"]
