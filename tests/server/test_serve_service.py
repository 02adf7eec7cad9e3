"""The service: cached pair features give the same answers as :class:`Matcher`, cheaply."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.errors import InputError
from semcorr.geometry import ResizePad
from semcorr.pipeline import Matcher
from semcorr.samples import load_samples
from semcorr.server.service import CorrespondenceService, similarity_to_image
from semcorr.server.uploads import UnknownImageError

SOURCE, TURNED, MIRRORED = "sample-0", "sample-1", "sample-2"


def _errors(found: torch.Tensor, target_index: int) -> torch.Tensor:
    return (found - load_samples().target_points[target_index]).norm(dim=-1)


class TestMatch:
    def test_same_answer_as_matcher(self, small_service: CorrespondenceService) -> None:
        service = small_service
        points = torch.tensor(service.sample_points)
        got = service.match(SOURCE, MIRRORED, points.tolist())
        pair = service.set_pair(SOURCE, MIRRORED)
        matcher = Matcher(service.matcher.backbone, refine="window", pose_align=True,
                          pose_grid=16)
        want = matcher.match(pair.source, [service.store.get(MIRRORED).image], points)[0]
        assert got.pose == want.pose
        torch.testing.assert_close(got.points, want.points, atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)
        assert got.pose_distances == pytest.approx(want.pose_distances, abs=1e-5)

    def test_known_transform(self, service: CorrespondenceService) -> None:
        turned = _errors(service.match(SOURCE, TURNED, service.sample_points).points, 0)
        mirrored = _errors(service.match(SOURCE, MIRRORED, service.sample_points).points, 1)
        # dense-sift on the samples: about 1-6 px (measured 2.7 mean on each).
        assert float(turned.mean()) < 4.5 and float(turned.max()) < 8
        assert float(mirrored.mean()) < 4.5 and float(mirrored.max()) < 8

    def test_pose_toggle(self, service: CorrespondenceService) -> None:
        aligned = service.match(SOURCE, MIRRORED, service.sample_points, pose_align=True)
        plain = service.match(SOURCE, MIRRORED, service.sample_points, pose_align=False)
        assert (aligned.pose, plain.pose) == ("hflip", "identity")
        assert float(_errors(aligned.points, 1).mean()) < float(_errors(plain.points, 1).mean())

    def test_refine_rules(self, service: CorrespondenceService) -> None:
        pair = service.set_pair(SOURCE, TURNED)
        argmax = service.match(SOURCE, TURNED, service.sample_points, refine="argmax")
        window = service.match(SOURCE, TURNED, service.sample_points, refine="window")
        cells = pair.transform.to_grid(argmax.points)
        torch.testing.assert_close(cells, cells.round(), atol=1e-3, rtol=0)  # on cell centres
        assert not torch.allclose(argmax.points, window.points)
        moved = (pair.transform.to_grid(window.points) - cells).abs().max()
        assert float(moved) <= 3.0  # the window's radius, in cells
        torch.testing.assert_close(argmax.scores, window.scores)  # confidence = best similarity

    def test_empty_points(self, service: CorrespondenceService) -> None:
        result = service.match(SOURCE, TURNED, [])
        assert result.points.shape == (0, 2) and result.scores.shape == (0,)

    @pytest.mark.parametrize(
        ("points", "message"),
        [
            ([[451.0, 10.0]], r"point 0 \(451, 10\) is outside the 451x300"),
            ([[10.0, -0.6]], "outside"),
            ([[float("nan"), 1.0]], "finite"),
            ([[1.0, 1.0]] * 300, "300 points is over the limit"),
            ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], r"\[x, y\] pairs"),
            ([[1.0, 2.0], [3.0]], r"\[x, y\] number pairs"),
        ],
    )
    def test_bad_points(self, service: CorrespondenceService, points: list, message: str) -> None:
        with pytest.raises(InputError, match=message):
            service.match(SOURCE, TURNED, points)

    def test_unknown_rule_and_id(self, service: CorrespondenceService) -> None:
        with pytest.raises(InputError, match="unknown refinement rule 'best'"):
            service.match(SOURCE, TURNED, [[1.0, 1.0]], refine="best")
        with pytest.raises(UnknownImageError, match="'nope'"):
            service.match(SOURCE, "nope", [[1.0, 1.0]])


class TestHeatmap:
    def test_peak_at_the_match(self, service: CorrespondenceService) -> None:
        point = service.sample_points[0]
        png = service.heatmap(SOURCE, TURNED, *point)
        heat = np.asarray(Image.open(io.BytesIO(png)))
        assert heat.shape == (300, 451, 4)
        ys, xs = np.nonzero(heat[..., 3] >= heat[..., 3].max() - 1)
        peak = torch.tensor([xs.mean(), ys.mean()], dtype=torch.float32)
        found = service.match(SOURCE, TURNED, [point], refine="argmax").points[0]
        assert float((peak - found).norm()) < 8.0  # one feature cell is 7 px here

    def test_similarity_to_image_known_answer(self) -> None:
        transform = ResizePad(451, 300, 256, 4)
        grid = torch.zeros(1, 1, 64, 64)
        grid[0, 0, 30, 20] = 1.0  # row 30, column 20
        image = similarity_to_image(grid, transform)
        assert image.shape == (1, 1, 300, 451)
        flat = int(image[0, 0].flatten().argmax())
        peak = torch.tensor([flat % 451, flat // 451], dtype=torch.float32)
        expected = transform.from_grid(torch.tensor([20.0, 30.0]))
        assert float((peak - expected).norm()) <= 1.0
        constant = similarity_to_image(torch.full((2, 1, 64, 64), 0.25), transform)
        torch.testing.assert_close(constant, torch.full_like(constant, 0.25))


def test_eviction_drops_cached_pairs(small_service: CorrespondenceService) -> None:
    service = small_service
    def upload(seed: int) -> str:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.rand(24, 32, 3, generator=generator).mul(255).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return service.add_upload(buffer.getvalue(), f"noise{seed}.png").id

    first = upload(0)
    service.set_pair(first, SOURCE)
    assert any(first in key for key in service._pairs)
    for seed in range(1, service.limits.max_images + 1):
        upload(seed)
    assert first not in service.store
    assert not any(first in key for key in service._pairs)
    assert first not in service._sources
    with pytest.raises(UnknownImageError):
        service.match(first, SOURCE, [[1.0, 1.0]])
