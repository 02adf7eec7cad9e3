"""Points and masks ↔ soft labels, against hand-computed values of CRW's and DIFT's rules."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.errors import InputError
from semcorr.track import labels_to_mask, labels_to_points, mask_to_labels, points_to_labels


def test_points_to_labels_crw_gaussian() -> None:
    # pixel (24, 24) on a 64 x 64 image with an 8 x 8 grid is cell (x=3, y=3)
    maps = points_to_labels(torch.tensor([[24.0, 24.0]]), (64, 64), (8, 8), sigma=0.5)
    m = maps[0]
    assert m[3, 3] == 1.0
    assert m[3, 4].item() == pytest.approx(math.exp(-2))
    assert m[4, 4].item() == pytest.approx(math.exp(-4))
    assert m[3, 1].item() == pytest.approx(math.exp(-8))  # the 4-cell square starts at int(1.5)
    assert m[3, 5] == 0.0  # ... and ends before cell 5 (CRW's asymmetric 6*sigma+1 square)
    assert (m > 0).sum() == 16


def test_points_to_labels_edge_truncation_and_missing() -> None:
    # x = 0.7 cells: int(0.7 - 1.5) = 0 (truncation toward zero), so the peak lands on cell 2
    maps = points_to_labels(torch.tensor([[0.7, 3.0], [-1.0, -1.0], [100.0, 3.0]]),
                            (8, 8), (8, 8))
    assert maps[0, 3].argmax() == 2
    assert maps[1].sum() == 0 and maps[2].sum() == 0


def test_labels_to_points_top3_weighted() -> None:
    labels = torch.zeros(2, 4, 5)
    labels[0, 1, 2], labels[0, 1, 3], labels[0, 2, 2], labels[0, 0, 0] = 0.6, 0.3, 0.1, 0.05
    points, scores = labels_to_points(labels, (40, 50))  # 10 px per cell
    # x = (2*.6 + 3*.3 + 2*.1) / 1 = 2.3 cells, y = (1*.6 + 1*.3 + 2*.1) = 1.1 cells
    assert points[0].tolist() == pytest.approx([23.0, 11.0])
    assert scores[0].item() == pytest.approx(0.6)
    assert points[1].tolist() == [-1.0, -1.0] and scores[1] == 0


def test_mask_round_trip_and_errors() -> None:
    mask = torch.zeros(6, 8, dtype=torch.long)
    mask[1:3, 2:5], mask[4:, 6:] = 1, 2
    labels = mask_to_labels(mask, num_objects=2)
    assert labels.shape == (3, 6, 8) and labels.sum(0).eq(1).all()
    assert torch.equal(labels_to_mask(labels, (6, 8)), mask)
    small = mask_to_labels(mask, grid=(3, 4))  # PIL nearest samples rows 1,3,5 / cols 1,3,5,7
    assert small.argmax(0).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]]
    with pytest.raises(InputError, match="num_objects=1"):
        mask_to_labels(mask, num_objects=1)


def test_labels_to_mask_norm_mask() -> None:
    # DIFT min-max normalises each channel: a weak object channel can win over the background
    labels = torch.zeros(2, 2, 2)
    labels[0] = 0.9
    labels[0, 0, 0] = 0.8
    labels[1, 0, 0] = 0.3
    assert labels_to_mask(labels, (2, 2)).tolist() == [[1, 0], [0, 0]]


def test_labels_to_mask_without_normalisation() -> None:
    # the same labels as above: without DIFT's rescaling the background's 0.8 beats the 0.3
    labels = torch.zeros(2, 2, 2)
    labels[0] = 0.9
    labels[0, 0, 0] = 0.8
    labels[1, 0, 0] = 0.3
    assert labels_to_mask(labels, (2, 2), "none").tolist() == [[0, 0], [0, 0]]
    labels[1, 1, 1] = 0.95  # an object outweighing the background still wins
    assert labels_to_mask(labels, (2, 2), "none").tolist() == [[0, 0], [0, 1]]
    with pytest.raises(InputError, match="minmax, none"):
        labels_to_mask(labels, (2, 2), "softmax")


def test_chroma_on_grid_keeps_colour_without_brightness(tmp_path) -> None:
    """Grey cells give 0 whatever their brightness; a pure red cell gives (2/3, -1/3, -1/3);
    the padding of the square is 0."""
    import numpy as np
    from PIL import Image

    from semcorr.geometry import ResizePad
    from semcorr.track.run import chroma_on_grid

    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, :4] = 200  # grey
    image[:, 4:, 0] = 255  # red
    Image.fromarray(image).save(tmp_path / "frame.png")
    transform = ResizePad(8, 4, 8)  # an 8 x 4 frame on an 8 x 8 square, 2 rows of padding
    chroma = chroma_on_grid(tmp_path / "frame.png", transform, (4, 4))
    assert chroma.shape == (3, 4, 4)
    torch.testing.assert_close(chroma[:, 1:3, :2], torch.zeros(3, 2, 2), atol=1e-6, rtol=0)
    red = torch.tensor([2 / 3, -1 / 3, -1 / 3])[:, None, None].expand(3, 2, 2)
    torch.testing.assert_close(chroma[:, 1:3, 2:], red, atol=1e-6, rtol=0)
    assert chroma[:, [0, 3]].abs().max() == 0
