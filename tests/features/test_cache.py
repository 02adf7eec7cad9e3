"""The feature cache: config hashing, storage codecs, integrity, resumable extraction, sharding."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr import create_backbone
from semcorr.config import canonical_json, config_hash
from semcorr.distributed import DistInfo, all_gather_objects, barrier, init_from_env, shard
from semcorr.errors import InputError
from semcorr.features.base import Backbone, BackboneInfo
from semcorr.features.cache import (
    STORAGE_DTYPES,
    CacheError,
    FeatureCache,
    cached_extract,
    cached_features,
    checksum,
    dequantize_int8,
    extract_parts,
    extraction_config,
    file_stamp,
    quantize_int8,
)
from semcorr.geometry import ResizePad
from semcorr.io import load_image
from semcorr.match.rules import argmax2d
from semcorr.match.similarity import cosine_similarity

# --- config hashing -----------------------------------------------------------------------------


class TestConfigHash:
    def test_order_and_container_type_do_not_matter(self) -> None:
        a = {"backbone": "x", "layers": (2, 5, 8), "opts": {"t": 50, "seed": 0}}
        b = {"opts": {"seed": 0, "t": 50}, "layers": [2, 5, 8], "backbone": "x"}
        assert config_hash(a) == config_hash(b)
        assert canonical_json(a) == '{"backbone":"x","layers":[2,5,8],"opts":{"seed":0,"t":50}}'

    def test_known_value(self) -> None:
        # sha256 of the text '{"a":1}' (computed independently with hashlib)
        assert config_hash({"a": 1}, length=64) == (
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
        )

    def test_any_change_changes_the_hash(self) -> None:
        base = {"backbone": "x", "timestep": 50, "flip": False}
        hashes = {
            config_hash(base),
            config_hash({**base, "timestep": 51}),
            config_hash({**base, "flip": True}),
            config_hash({**base, "extra": None}),
        }
        assert len(hashes) == 4

    def test_refuses_unstable_values(self) -> None:
        with pytest.raises(TypeError):
            config_hash({"model": object()})
        with pytest.raises(TypeError):
            config_hash({"x": float("nan")})
        assert config_hash({"p": Path("/a/b")}) == config_hash({"p": "/a/b"})
        assert config_hash({"d": torch.float16}) == config_hash({"d": "torch.float16"})


# --- codecs -------------------------------------------------------------------------------------


class TestQuantize:
    def test_known_answer(self) -> None:
        x = torch.tensor([[[127.0, -63.5]], [[0.0, 0.0]], [[1.0, 0.5]]])  # (3, 1, 2)
        q, scale = quantize_int8(x)
        assert torch.equal(scale, torch.tensor([1.0, 1.0, 1 / 127]))
        assert q[0, 0].tolist() == [127, -64]  # round half to even: -63.5 -> -64
        assert q[1, 0].tolist() == [0, 0]  # an all-zero channel stays zero
        assert q[2, 0].tolist() == [127, 64]

    def test_error_bound(self) -> None:
        torch.manual_seed(0)
        x = torch.randn(16, 9, 7) * torch.logspace(-3, 2, 16).view(16, 1, 1)
        q, scale = quantize_int8(x)
        error = (dequantize_int8(q, scale, torch.float32) - x).abs()
        assert bool((error <= scale.view(16, 1, 1) / 2 + 1e-7 * x.abs()).all())


class TestChecksum:
    def test_known_answer(self) -> None:
        assert checksum(b"") == "0:0000000000000000:0000000000000000:"
        assert checksum(b"abc") == "3:0000000000000000:0000000000000000:616263"
        # one word 1, one word 2 (block 1 of 1), tail ff: sums 3 and 1 * 3
        data = (1).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"\xff"
        assert checksum(data) == "11:0000000000000003:0000000000000003:ff"
        # sums wrap modulo 2**64
        assert checksum(b"\xff" * 16).split(":")[1] == "fffffffffffffffe"

    def test_detects_bit_flips_swaps_and_truncation(self) -> None:
        data = bytes(np.random.default_rng(0).integers(0, 256, 3 * 8 * 4096 + 5, dtype=np.uint8))
        reference = checksum(data)
        flipped = bytearray(data)
        flipped[40_000] ^= 0x10
        block = 8 * 4096
        swapped = data[block : 2 * block] + data[:block] + data[2 * block :]
        assert len({reference, checksum(bytes(flipped)), checksum(swapped),
                    checksum(data[:-1])}) == 4


def _random_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        array = (rng.random((40 + 4 * index, 56, 3)) * 255).astype(np.uint8)
        path = folder / f"img{index}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread (restored afterwards): on a shared 2-core machine OpenMP threads waiting for
    each other make tiny extractions 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("dense-sift", image_size=64, stride=4, bin_sizes=(4,)).eval()


def _features(image_id: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    original = {"a": torch.randn(5, 4, 4, generator=generator) * 3,
                "b": torch.randn(3, 2, 2, generator=generator)}
    return {"original": original}


def _make_cache(root: Path, storage: str = "float16", flip: bool = False,
                compress: bool = False) -> FeatureCache:
    config = {"backbone": "synthetic", "storage": storage, "flip": flip}
    return FeatureCache.create(root, config, compress=compress)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("storage", list(STORAGE_DTYPES))
def test_roundtrip_every_storage(tmp_path: Path, storage: str, compress: bool) -> None:
    cache = _make_cache(tmp_path / "c", storage, compress=compress)
    features = _features("x", 1)
    transform = ResizePad(30, 20, 16, 4)
    cache.put("x", features, transform, {"bytes": 1, "sha256": "0"})
    got = FeatureCache(tmp_path / "c").get("x")  # a fresh reader, without the codec option
    for name, x in features["original"].items():
        if storage == "int8":
            expected = dequantize_int8(*quantize_int8(x), torch.float32)
        else:
            expected = x.to(STORAGE_DTYPES[storage]).float()
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], expected)
    entry = cache.entry("x")
    assert entry is not None and entry.transform == transform
    assert entry.original_size == (30, 20)


def test_transform_anchor_and_fill_round_trip(tmp_path: Path) -> None:
    """SAM's transform (top-left content, mean padding) comes back as written."""
    cache = _make_cache(tmp_path / "c", "float32")
    transform = ResizePad(30, 20, 16, 4, anchor="top_left", fill=(0.485, 0.456, 0.406))
    cache.put("x", _features("x", 1), transform)
    entry = FeatureCache(tmp_path / "c").entry("x")
    assert entry is not None and entry.transform == transform


@pytest.mark.parametrize(("storage", "native"), [("float16", torch.float16),
                                                 ("bfloat16", torch.bfloat16),
                                                 ("int8", torch.float32)])
def test_native_dtype_read(tmp_path: Path, storage: str, native: torch.dtype) -> None:
    cache = _make_cache(tmp_path / "c", storage)
    cache.put("x", _features("x", 3), ResizePad(8, 8, 16, 4))
    native_parts = cache.get("x", dtype=None)
    as_float = cache.get("x")
    assert {v.dtype for v in native_parts.values()} == {native}
    for name, x in native_parts.items():
        assert torch.equal(x.float(), as_float[name])
    half = cache.get("x", dtype=torch.float16)
    assert torch.allclose(half["a"].float(), as_float["a"], rtol=1e-3, atol=1e-3)


def test_entry_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    cache = _make_cache(tmp_path / "c", "float16", flip=True)
    features = _features("x", 2)
    flipped = {k: -v for k, v in features["original"].items()}
    cache.put("x", {**features, "flipped": flipped}, ResizePad(8, 8, 16, 4))
    path = cache.entry_path("x")
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["flipped/a", "flipped/b", "original/a", "original/b"]
        assert handle.get_tensor("original/a").dtype == torch.float16
        assert handle.get_tensor("flipped/b").shape == (3, 2, 2)
    assert torch.equal(cache.get("x", flip=True)["a"], -cache.get("x")["a"])
    assert list(cache.get("x", parts=["b"])) == ["b"]
    with pytest.raises(KeyError):
        cache.get("missing")


def test_flip_orientation_is_enforced(tmp_path: Path) -> None:
    cache = _make_cache(tmp_path / "c", flip=True)
    with pytest.raises(ValueError, match="orientations"):
        cache.put("x", _features("x", 0), ResizePad(8, 8, 16, 4))
    plain = _make_cache(tmp_path / "d", flip=False)
    plain.put("x", _features("x", 0), ResizePad(8, 8, 16, 4))
    with pytest.raises(CacheError, match="--flip"):
        plain.get("x", flip=True)


# --- integrity ------------------------------------------------------------------------------------


def test_truncated_entry_is_missing_and_named(tmp_path: Path) -> None:
    cache = _make_cache(tmp_path / "c")
    cache.put("x", _features("x", 0), ResizePad(8, 8, 16, 4))
    path = cache.entry_path("x")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    assert not cache.contains("x")
    with pytest.raises(CacheError, match="truncated") as info:
        cache.entry("x")
    assert str(path) in str(info.value)
    assert cache.keys() == []


def test_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    cache = _make_cache(tmp_path / "c")
    cache.put("x", _features("x", 0), ResizePad(8, 8, 16, 4))
    path = cache.entry_path("x")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data
    path.write_bytes(bytes(data))
    assert cache.contains("x")  # the header is intact: found, but reading fails loudly
    with pytest.raises(CacheError, match="checksum") as info:
        cache.get("x")
    assert str(path) in str(info.value)
    with pytest.raises(CacheError):
        cache.entry("x").verify()


def test_refuses_to_mix_configs(tmp_path: Path) -> None:
    _make_cache(tmp_path / "c", "float16")
    assert _make_cache(tmp_path / "c", "float16").config_hash  # same config: reopened
    with pytest.raises(InputError, match="another --cache"):
        _make_cache(tmp_path / "c", "int8")
    with pytest.raises(CacheError, match="not a feature cache"):
        FeatureCache(tmp_path / "nothing")


# --- extraction -----------------------------------------------------------------------------------


def test_cached_extract_matches_backbone_and_skips(tmp_path: Path, backbone: Backbone) -> None:
    paths = _random_images(tmp_path / "img", 3)
    cache = FeatureCache.create(tmp_path / "c", extraction_config(backbone, storage="float32",
                                                                  flip=True))
    ids = [p.name for p in paths]
    first = cached_extract(backbone, cache, paths, ids, batch_size=2)
    assert (first.computed, first.skipped, first.failed) == (3, 0, [])
    assert first.bytes == sum(cache.entry_path(i).stat().st_size for i in ids)
    assert cache.keys() == sorted(ids)
    image = load_image(paths[1])
    expected, transforms = backbone.extract([image])
    expected_flip, _ = backbone.extract([image.flip(-1)])
    got = cache.get(ids[1])["dense-sift"]
    # float32 storage is exact; the backbone ran on a batch of 2, equal up to float rounding
    torch.testing.assert_close(got, expected[0], atol=1e-6, rtol=0)
    flipped = cache.get(ids[1], flip=True)["dense-sift"]
    torch.testing.assert_close(flipped, expected_flip[0], atol=1e-6, rtol=0)
    assert (flipped - got).abs().max() > 1e-2  # the mirror image has its own features
    assert cache.entry(ids[1]).transform == transforms[0]
    second = cached_extract(backbone, cache, paths, ids)
    assert (second.computed, second.skipped) == (0, 3)
    again = cached_extract(backbone, cache, paths[:1], ids[:1], overwrite=True)
    assert again.computed == 1


def test_changed_or_missing_image(tmp_path: Path, backbone: Backbone) -> None:
    paths = _random_images(tmp_path / "img", 2)
    cache = FeatureCache.create(tmp_path / "c", extraction_config(backbone))
    cached_extract(backbone, cache, paths, ["a", "b"])
    _random_images(tmp_path / "other", 1, seed=5)[0].replace(paths[0])  # new content, same name
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    summary = cached_extract(
        backbone, cache, [paths[0], paths[1], tmp_path / "gone.png", tmp_path / "img" / "bad.png"],
        ["a", "b", "gone", "bad"],
    )
    assert (summary.computed, summary.skipped) == (1, 1)
    assert [f[0] for f in summary.failed] == ["gone", "bad"]
    assert "gone.png" in summary.failed[0][1] and "bad.png" in summary.failed[1][1]
    assert cache.entry("a").meta["source"] == file_stamp(paths[0])


def test_cached_features_recomputes_corrupt_entry(tmp_path: Path, backbone: Backbone) -> None:
    path = _random_images(tmp_path / "img", 1)[0]
    cache = FeatureCache.for_backbone(tmp_path / "c", backbone, storage="float32")
    assert cache.config == FeatureCache.create(
        tmp_path / "c", extraction_config(backbone, storage="float32")).config
    parts, transform = cached_features(backbone, cache, path)
    expected, transforms = backbone.extract([load_image(path)])
    assert torch.equal(parts["dense-sift"], expected) and transform == transforms[0]
    entry_path = cache.entry_path(str(path.resolve()))
    data = bytearray(entry_path.read_bytes())
    data[-5] ^= 0x01
    entry_path.write_bytes(bytes(data))
    parts, _ = cached_features(backbone, cache, path)
    assert torch.equal(parts["dense-sift"], expected)
    cache.entry(str(path.resolve())).verify()  # rewritten, intact


def test_wrong_backbone_is_refused(tmp_path: Path, backbone: Backbone) -> None:
    cache = _make_cache(tmp_path / "c")
    with pytest.raises(InputError, match="synthetic"):
        cached_extract(backbone, cache, [], [])


class _TwoParts(Backbone):
    """A backbone with two named parts on different grids (like SD's s3/s4)."""

    def __init__(self) -> None:
        super().__init__()
        self.info = BackboneInfo(name="two-parts", stride=4, image_size=32,
                                 extra={"layers": [1, 2]})
        self.register_buffer("w", torch.tensor([1.0, -2.0, 0.5]), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_parts(images)["fine"]

    def feature_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fine = torch.nn.functional.avg_pool2d(images * self.w.view(1, 3, 1, 1), 4)
        return {"fine": fine, "coarse": torch.nn.functional.avg_pool2d(fine, 2).repeat(1, 2, 1, 1)}


def test_multi_part_backbone(tmp_path: Path) -> None:
    paths = _random_images(tmp_path / "img", 2)
    model = _TwoParts()
    cache = FeatureCache.create(tmp_path / "c", extraction_config(model, storage="int8",
                                                                  flip=True), compress=True)
    assert cache.config["backbone_extra"] == {"layers": [1, 2]}
    cached_extract(model, cache, paths, ["p", "q"])
    parts = cache.get("q", flip=True)
    assert parts["fine"].shape == (3, 8, 8) and parts["coarse"].shape == (6, 4, 4)
    batch, _ = model.prepare([load_image(paths[1]).flip(-1)])
    reference = model.feature_parts(model.normalize(batch))["coarse"][0]
    q, scale = quantize_int8(reference)
    assert torch.equal(parts["coarse"], dequantize_int8(q, scale, torch.float32))


class _OwnParts(_TwoParts):
    """A backbone that prepares its parts from the original images itself."""

    def extract_parts(self, images):  # noqa: ANN001, ANN201
        transforms = [self.transform_for(img.shape[-1], img.shape[-2]) for img in images]
        return {"mean": torch.stack([img.mean(dim=(1, 2))[:, None, None] for img in images])}, \
            transforms


def test_backbone_own_extract_parts_is_preferred(tmp_path: Path) -> None:
    path = _random_images(tmp_path / "img", 1)[0]
    model = _OwnParts()
    cache = FeatureCache.for_backbone(tmp_path / "c", model, storage="float32")
    cached_extract(model, cache, [path], ["p"])
    parts = cache.get("p")
    assert list(parts) == ["mean"]
    expected = load_image(path).mean(dim=(1, 2))
    assert torch.equal(parts["mean"].flatten(), expected)


@pytest.mark.parametrize(("storage", "min_agreement"),
                         [("float16", 0.999), ("bfloat16", 0.99), ("int8", 0.98)])
def test_lossy_storage_keeps_matches_on_real_photos(
    tmp_path: Path, storage: str, min_agreement: float
) -> None:
    """Nearest-neighbour matches of every cell of graffiti img1 in img2 (dense-sift, 32 x 32
    grid) from decoded features agree with float32 ones (measured: float16 1.000, bfloat16
    0.997, int8 0.988; the rest are near-ties) and the best similarity moves by < 2e-3."""
    from shared_data import shared_path

    root = shared_path("homography", "graffiti")
    paths = [root / "img1.png", root / "img2.png"]
    model = create_backbone("dense-sift", image_size=128).eval()
    results = []
    for kind in ("float32", storage):
        cache = FeatureCache.for_backbone(tmp_path / kind, model, storage=kind, compress=True)
        cached_extract(model, cache, paths, ["a", "b"])
        f0, f1 = (cache.get(i)["dense-sift"][None] for i in ("a", "b"))
        results.append(argmax2d(cosine_similarity(f0.flatten(2).transpose(1, 2), f1)))
    (coords, best), (coords_lossy, best_lossy) = results
    agreement = (coords == coords_lossy).all(dim=-1).float().mean().item()
    assert agreement >= min_agreement
    assert (best - best_lossy).abs().max().item() < 2e-3


# --- distributed helpers -------------------------------------------------------------------


def test_shard_is_a_balanced_partition() -> None:
    items = list(range(11))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == items
    assert shard(items, 0, 1) == items
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_from_env() == DistInfo(0, 1, 0)
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    barrier()  # a no-op without a process group
    assert not torch.distributed.is_initialized()
    assert os.environ.get("WORLD_SIZE") is None


@pytest.mark.slow  # ~17 s on the shared machine, mostly importing diffusers
def test_geoaware_parts_of_tiny_sd_dino(tmp_path: Path) -> None:
    """The GeoAware-SC feature set (s3, s4, s5, dino) of a tiny random-weight SD + DINOv2,
    cached through ``semcorr extract`` at native grids, int8 + zlib, with the flipped image."""
    pytest.importorskip("diffusers")
    from tiny_models import save_tiny_dinov2, save_tiny_stable_diffusion

    from semcorr.cli.main import main

    weights = tmp_path / "weights"
    save_tiny_stable_diffusion(weights / "sd15")
    save_tiny_dinov2(weights / "dinov2_vitb14", layers=1)
    path = _random_images(tmp_path / "img", 1)[0]
    options = ['sd_options={"image_size": 32}', 'dino_options={"num_patches": 4}', "mode=raw"]
    argv = ["extract", "--backbone", "sd+dino", "--weights", str(weights), "--cache",
            str(tmp_path / "c"), "--flip", "--dtype", "int8", "--compress", "--quiet",
            "--root", str(path.parent), str(path)]
    for option in options:
        argv += ["--option", option]
    assert main(argv) == 0
    cache = FeatureCache(tmp_path / "c")
    assert cache.config["options"]["sd_options"] == {"image_size": 32}
    parts = cache.get(path.name, flip=True)
    assert {k: tuple(v.shape[1:]) for k, v in parts.items()} == {
        "s3": (16, 16), "s4": (8, 8), "s5": (4, 4), "dino": (4, 4)}
    model = create_backbone("sd+dino", weights=str(weights), mode="raw",
                            sd_options={"image_size": 32}, dino_options={"num_patches": 4})
    expected, _ = extract_parts(model.eval(), [load_image(path).flip(-1)])
    for name, x in expected.items():
        assert torch.equal(parts[name], dequantize_int8(*quantize_int8(x[0]), torch.float32))
