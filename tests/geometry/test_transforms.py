"""ResizePad: the pixel-centre convention kept through resize, pad and feature grid."""

from __future__ import annotations

import pytest
import torch

from semcorr.geometry import (
    ResizePad,
    flip_points,
    hflip_matrix,
    rot90_points,
    similarity_matrix,
    warp_image,
    warp_points,
)


@pytest.mark.parametrize(("width", "height", "size", "stride"),
                         [(640, 480, 256, 4), (300, 451, 840, 14), (97, 97, 64, 8)])
def test_round_trips(width: int, height: int, size: int, stride: int) -> None:
    t = ResizePad(width, height, size, stride)
    points = torch.rand(50, 2) * torch.tensor([width - 1.0, height - 1.0])
    assert torch.allclose(t.from_input(t.to_input(points)), points, atol=1e-4)
    assert torch.allclose(t.from_grid(t.to_grid(points)), points, atol=1e-4)


def test_known_values() -> None:
    t = ResizePad(400, 200, 200, 4)  # scale 0.5, content 200x100, padded 50 on top
    assert t.pad == (0, 50)
    corner = torch.tensor([[-0.5, -0.5]])  # top-left corner of the image
    assert torch.allclose(t.to_input(corner), torch.tensor([[-0.5, 49.5]]))
    # original pixels 0 and 1 merge into input pixel 0: their shared edge (0.5) is its centre
    assert torch.allclose(t.to_input(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.0, 50.0]]))
    # first cell covers input pixels 0..3: its centre is 1.5
    assert torch.allclose(t.to_grid(t.from_input(torch.tensor([[1.5, 1.5]]))),
                          torch.zeros(1, 2), atol=1e-6)


def test_apply_moves_content_where_points_go() -> None:
    width, height = 120, 80
    image = torch.zeros(1, 1, height, width)
    image[..., 30:34, 70:74] = 1.0  # a block centred at (71.5, 31.5)
    t = ResizePad(width, height, 96)
    out = t.apply(image)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    centroid = torch.stack([(out * xs).sum(), (out * ys).sum()]) / out.sum()
    expected = t.to_input(torch.tensor([71.5, 31.5]))
    assert (centroid - expected).abs().max() < 0.05


def test_valid_cells_cover_content_only() -> None:
    t = ResizePad(400, 200, 200, 4)  # rows 50..149 hold content
    mask = t.valid_cells()
    assert mask.shape == (50, 50)
    assert mask[12:38].all() and not mask[:12].any() and not mask[38:].any()


def test_flip_and_rot90_follow_the_pixels() -> None:
    image = torch.arange(12.0).view(3, 4)  # height 3, width 4
    points = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    values = image[points[:, 1].long(), points[:, 0].long()]
    flipped = flip_points(points, 4)
    assert torch.equal(image.flip(-1)[flipped[:, 1].long(), flipped[:, 0].long()], values)
    for k in range(4):
        turned = torch.rot90(image, k, dims=(-2, -1))
        q = rot90_points(points, 4, 3, k)
        assert torch.equal(turned[q[:, 1].long(), q[:, 0].long()], values), k


def test_warp_image_agrees_with_warp_points() -> None:
    width, height = 90, 60
    image = torch.zeros(1, height, width)
    image[:, 20:23, 40:43] = 1.0  # centre (41, 21)
    for matrix in (similarity_matrix(width, height, 15.0, 0.9, (3.0, -2.0)),
                   hflip_matrix(width) @ similarity_matrix(width, height, -10.0, 1.1)):
        out = warp_image(image, matrix, (width, height))[0]
        ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)),
                                indexing="ij")
        centroid = torch.stack([(out * xs).sum(), (out * ys).sum()]) / out.sum()
        expected = warp_points(torch.tensor([41.0, 21.0]), matrix)
        assert (centroid - expected).abs().max() < 0.1


def test_top_left_anchor_and_fill() -> None:
    """SAM's placement: content at the top-left, padding of a given per-channel value; points
    and valid cells follow the placement."""
    t = ResizePad(40, 20, 16, 4, anchor="top_left", fill=(0.25, 0.5, 0.75))
    assert t.resized == (16, 8) and t.pad == (0, 0)
    image = torch.rand(1, 3, 20, 40)
    out = t.apply(image)
    centred = ResizePad(40, 20, 16, 4).apply(image)
    torch.testing.assert_close(out[..., :8, :], centred[..., 4:12, :])
    assert torch.equal(out[0, :, 8:, :], torch.tensor([0.25, 0.5, 0.75]).view(3, 1, 1)
                       .expand(3, 8, 16))
    points = torch.tensor([[0.0, 0.0], [39.0, 19.0]])
    torch.testing.assert_close(t.from_input(t.to_input(points)), points)
    assert t.to_input(points)[0].tolist() == [-0.30000001192092896, -0.30000001192092896]
    assert t.valid_cells().nonzero()[:, 0].max() == 1  # rows 0-1 of 4 hold content
    with pytest.raises(ValueError, match="anchor"):
        ResizePad(40, 20, 16, 4, anchor="middle")
