"""semcorr's R2D2 pair generators against naver/r2d2's released ones, on the same images and
random state.

Every transform draws its random numbers in the released order from the same kind of stream
(numpy's ``RandomState`` for scales, noise, jitter and crop windows; Python's ``random`` for
tilts), so the comparison is exact for all of them: identical image bytes, identical
homographies and flows (``nan`` at the same places). No transform needed the two-sample
fallback. The official code runs through :mod:`r2d2_official` (torchvision stubbed, see there).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcorr.train.r2d2.pair_crop import official_pair
from semcorr.train.r2d2.released_pairs import synthetic_pair
from semcorr.train.r2d2.transforms import (
    PairRandom,
    color_jitter,
    compose,
    pixel_noise,
    random_scale,
    random_tilt,
)
from shared_data import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from r2d2_official import official_modules  # noqa: E402

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0)


@pytest.fixture(scope="module")
def official():
    with official_modules() as modules:
        yield modules


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A small real photograph (a 200 x 150 corner of boat.png): the transforms rescale it."""
    return Image.open(shared_path("r2d2", "boat.png")).convert("RGB").crop((100, 80, 300, 230))


def _seed_global(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the released code draws from the global streams)


def _persp(matrix: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in (matrix / matrix[2, 2]).ravel()[:8])


def _same_image(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b), f"{int((a != b).sum())} values differ"


@pytest.mark.parametrize("seed", range(6))
def test_random_scale(official, photo: Image.Image, seed: int) -> None:
    _seed_global(seed)
    theirs = official.transforms.RandomScale(256, 1024, can_upscale=True)(
        dict(img=photo, persp=IDENTITY))
    image, homography = random_scale(photo, PairRandom.from_seed(seed))
    _same_image(theirs["img"], image)
    # the released chain keeps homographies composed from float32-rounded factors
    assert _persp(compose(homography, np.eye(3))) == theirs["persp"]
    assert 256 <= min(image.size) <= 1024


@pytest.mark.parametrize("seed", range(6))
def test_random_tilt(official, photo: Image.Image, seed: int) -> None:
    _seed_global(seed)
    theirs = official.transforms.RandomTilting(0.5)(dict(img=photo, persp=IDENTITY))
    image, homography = random_tilt(photo, PairRandom.from_seed(seed))
    _same_image(theirs["img"], image)
    assert _persp(compose(homography, np.eye(3))) == theirs["persp"]
    assert not np.allclose(homography, np.eye(3))


@pytest.mark.parametrize("seed", range(4))
def test_pixel_noise(official, photo: Image.Image, seed: int) -> None:
    _seed_global(seed)
    theirs = official.transforms.PixelNoise(25)(dict(img=photo, persp=IDENTITY))
    image = pixel_noise(photo, PairRandom.from_seed(seed))
    _same_image(theirs["img"], image)
    assert theirs["persp"] == IDENTITY
    change = np.asarray(image, np.float64) - np.asarray(photo, np.float64)
    assert 4 < np.abs(change).mean() < 8  # ~ 25/4 away from the clipping


@pytest.mark.parametrize("seed", range(6))
def test_color_jitter(official, photo: Image.Image, seed: int) -> None:
    _seed_global(seed)
    theirs = official.transforms.ColorJitter(0.2, 0.2, 0.2, 0.1)(dict(img=photo, persp=IDENTITY))
    image = color_jitter(photo, PairRandom.from_seed(seed))
    _same_image(theirs["img"], image)
    assert not np.array_equal(np.asarray(image), np.asarray(photo))


def _official_loader(official, folder: Path, names: list[str]):
    dataset = official.pair_dataset.SyntheticPairDataset(
        official.imgfolder.ImgFolder(str(folder), imgs=names),
        "RandomScale(256,1024,can_upscale=True)", "RandomTilting(0.5), PixelNoise(25)")
    return official.dataloader.PairLoader(
        dataset, scale="RandomScale(256,1024,can_upscale=True)",
        distort="ColorJitter(0.2,0.2,0.2,0.1)", crop="RandomCrop(192)", norm=lambda a: a,
        idx_as_rng_seed=True)


def _same_sample(theirs: dict, ours: dict) -> None:
    _same_image(theirs["img1"], ours["image1"])
    _same_image(theirs["img2"], ours["image2"])
    _same_image(theirs["mask"], ours["mask"])
    a, b = theirs["aflow"], ours["aflow"]
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)])


def test_synthetic_pairs_through_the_loader(official, photo: Image.Image,
                                            tmp_path: Path) -> None:
    """W and A sources: the whole chain (scale, tilt, noise, rescale, jitter, window search,
    crop) gives the released sample, item by item with the item index as seed."""
    photos = [photo, Image.open(shared_path("r2d2", "peppers.png")).convert("RGB").resize(
        (180, 240)), Image.open(shared_path("r2d2", "brooklyn.png")).convert("RGB").crop(
        (500, 300, 800, 500))]
    names = [f"{k}.png" for k in range(len(photos))]
    for name, image in zip(names, photos, strict=True):
        image.save(tmp_path / name)
    loader = _official_loader(official, tmp_path, names)
    valid_share = []
    for index, name in enumerate(names):
        theirs = loader[index]  # seeded with the index
        image = Image.open(tmp_path / name).convert("RGB")
        rng = PairRandom.from_seed(index)
        raw = synthetic_pair(image, rng)
        ours = official_pair(raw.image1, raw.image2, raw.aflow, raw.mask, rng)
        _same_sample(theirs, ours)
        assert ours["image1"].shape == ours["image2"].shape == (192, 192, 3)
        valid_share.append(float(np.isfinite(ours["aflow"][0]).mean()))
    assert min(valid_share) == 1.0  # synthetic flow is defined everywhere (no mask)


@pytest.fixture
def wasf_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture layout at ./data: the released Aachen classes only read the default root."""
    from r2d2_fixtures import write_wasf

    root = write_wasf(tmp_path / "data", shared_path("r2d2"))
    monkeypatch.chdir(tmp_path)
    return root


def test_style_transfer_pairs_through_the_loader(official, wasf_in_cwd: Path) -> None:
    """S source: the day image and its rendering, the rendering rescaled, tilted and noised,
    then the loader's stage: the released sample exactly."""
    from semcorr.data.r2d2_training import style_transfer_pairs
    from semcorr.train.r2d2.released_pairs import transformed_pair

    pairs = official.aachen.AachenPairs_StyleTransferDayNight()
    loader = official.dataloader.PairLoader(
        official.pair_dataset.TransformedPairs(
            pairs, "RandomScale(256,1024,can_upscale=True), RandomTilting(0.5), PixelNoise(25)"),
        scale="RandomScale(256,1024,can_upscale=True)", distort="ColorJitter(0.2,0.2,0.2,0.1)",
        crop="RandomCrop(192)", norm=lambda a: a, idx_as_rng_seed=True)
    ours_by_name = {night.name: (day, night) for day, night in style_transfer_pairs(wasf_in_cwd)}
    for index in range(len(loader)):
        theirs = loader[index]
        day, night = ours_by_name[Path(pairs.get_filename(pairs.image_pairs[index][1])).name]
        rng = PairRandom.from_seed(index)
        raw = transformed_pair(Image.open(day).convert("RGB"), Image.open(night).convert("RGB"),
                               rng)
        _same_sample(theirs, official_pair(raw.image1, raw.image2, raw.aflow, raw.mask, rng))


def test_flow_pairs_through_the_loader(official, wasf_in_cwd: Path) -> None:
    """F source: stored flow and mask (PNG and raw file), then the loader's stage."""
    from semcorr.data.r2d2_training import optical_flow_pairs, read_flow, read_mask
    from semcorr.train.r2d2.released_pairs import flow_pair

    pairs = official.aachen.AachenPairs_OpticalFlow()
    loader = official.dataloader.PairLoader(
        pairs, scale="RandomScale(256,1024,can_upscale=True)",
        distort="ColorJitter(0.2,0.2,0.2,0.1)", crop="RandomCrop(192)", norm=lambda a: a,
        idx_as_rng_seed=True)
    ours_by_name = {f.flow.name: f for f in optical_flow_pairs(wasf_in_cwd)}
    masked = []
    for index in range(len(loader)):
        (wasf_in_cwd / "aachen/optical_flow/flow/2002_2001.png").write_bytes(b"not a png")
        theirs = loader[index]  # the released reader replaces a broken PNG by a good one
        files = ours_by_name[Path(pairs.get_flow_filename(index)).name]
        rng = PairRandom.from_seed(index)
        raw = flow_pair(Image.open(files.image1).convert("RGB"),
                        Image.open(files.image2).convert("RGB"), read_flow(files.flow),
                        read_mask(files.mask))
        ours = official_pair(raw.image1, raw.image2, raw.aflow, raw.mask, rng)
        _same_sample(theirs, ours)
        masked.append(float(np.isnan(ours["aflow"][0]).mean()))
    assert len(masked) == 2 and min(masked) > 0  # the masks reach the crops
