"""Decoding overlapped with extraction gives exactly the sequential results (transfer and
:meth:`Matcher.match`), bad images included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.errors import ImageError
from semcorr.features.dense_sift import DenseSIFT
from semcorr.io import load_image
from semcorr.pipeline import Matcher
from semcorr.transfer import TransferConfig, main

POINTS = [[20.0, 24.0], [50.0, 30.0], [36.0, 60.0]]


def _backbone() -> DenseSIFT:
    return DenseSIFT(image_size=96, stride=4, bin_sizes=(4, 8, 16)).eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One annotated source and 7 targets (random crops of one texture), the 4th unreadable."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(3)
    texture = np.array(Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8))
                       .resize((140, 140), Image.Resampling.BICUBIC))
    source = root / "source.png"
    Image.fromarray(texture[:88, :80]).save(source)
    targets = []
    for i in range(7):
        path = root / f"target{i}.png"
        if i == 3:
            path.write_bytes(b"not an image")
        else:
            dx, dy = rng.integers(0, 40, size=2)
            Image.fromarray(texture[dy:dy + 88 - i, dx:dx + 80 + i]).save(path)
        targets.append(path)
    coco = {
        "images": [{"id": 1, "file_name": "source.png", "width": 80, "height": 88}],
        "categories": [{"id": 1, "name": "thing", "keypoints": ["a", "b", "c"],
                        "skeleton": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [
            v for x, y in POINTS for v in (x, y, 2)]}],
    }
    annotations = root / "sources.json"
    annotations.write_text(json.dumps(coco))
    return {"root": root, "sources": annotations, "source": source, "targets": targets}


class _CountingSIFT(DenseSIFT):
    def __init__(self) -> None:
        super().__init__(image_size=96, stride=4, bin_sizes=(4, 8, 16))
        self.calls = 0

    def extract(self, images):  # type: ignore[override]
        self.calls += 1
        return super().extract(images)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("batch_size", [2, 3])
def test_transfer_overlap_equals_sequential(scene: dict, tmp_path: Path, batch_size: int
                                            ) -> None:
    outputs = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}" / "out.json"
        out.parent.mkdir()
        config = TransferConfig(batch_size=batch_size, workers=workers)
        main(scene["sources"], scene["targets"], out, _backbone(), config)
        outputs[workers] = (out.read_bytes(), _files(out.with_name("out.json.parts")))
    assert outputs[3] == outputs[0]  # the document and every part file, byte for byte
    document = json.loads(outputs[0][0])
    assert [im["file_name"] for im in document["images"]] == [
        str(p) for i, p in enumerate(scene["targets"]) if i != 3]
    assert [f["file_name"] for f in document["semcorr"]["failed"]] == [str(scene["targets"][3])]
    assert len(outputs[0][1]) == 1 + -(-7 // batch_size)  # job.json + one part per batch
    assert "batch_size" not in document["semcorr"]["config"]  # speed options are not output


def test_speed_options_do_not_block_a_resume(scene: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    main(scene["sources"], scene["targets"][:2], out, _backbone(),
         TransferConfig(batch_size=2, workers=0))
    first = out.read_bytes()
    counting = _CountingSIFT()
    main(scene["sources"], scene["targets"][:2], out, counting,
         TransferConfig(batch_size=None, workers=2, memory_budget=10**9))
    assert counting.calls == 0 and out.read_bytes() == first  # resumed: nothing done twice


def test_matcher_paths_decoded_ahead_equal_images(scene: dict) -> None:
    good = [p for i, p in enumerate(scene["targets"]) if i != 3]
    source = load_image(scene["source"])
    sequential = Matcher(_backbone(), batch_size=2, workers=0).match(
        source, [load_image(p) for p in good], POINTS)
    overlapped = Matcher(_backbone(), batch_size=2, workers=2).match(source, good, POINTS)
    assert len(overlapped) == len(sequential) == 6
    for a, b in zip(overlapped, sequential, strict=True):
        assert torch.equal(a.points, b.points) and torch.equal(a.scores, b.scores)


def test_matcher_decodes_in_threads_only_what_may_be_paths(scene: dict) -> None:
    matcher = Matcher(_backbone(), workers=3)
    image = torch.rand(3, 8, 8)
    assert matcher._decoders([image, image]) == 0  # nothing to decode: no pool
    assert matcher._decoders([image, scene["source"]]) == 3
    assert matcher._decoders(iter([image])) == 3  # a stream may yield paths


def test_matcher_names_a_bad_path(scene: dict) -> None:
    with pytest.raises(ImageError, match="target3.png"):
        Matcher(_backbone(), batch_size=2, workers=2).match(
            load_image(scene["source"]), scene["targets"], POINTS)
