"""Zero-shot head, presets, HeadedBackbone and the CLI head options."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from semcorr import Matcher, create_backbone
from semcorr.cli.common import add_backbone_options, backbone_from_args
from semcorr.errors import InputError, UnknownNameError, WeightsError
from semcorr.postprocess import (
    PRESETS,
    HeadedBackbone,
    backbone_options_for_head,
    create_head,
    get_preset,
    list_heads,
    load_head,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the machine is shared, and spinning threads slow small convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry_lists_heads():
    assert {"geoaware", "geoaware-zero-shot"} <= set(list_heads())
    with pytest.raises(UnknownNameError, match="unknown head 'nope'"):
        create_head("nope")


def test_zero_shot_is_the_fusion_recipe():
    head = load_head("geoaware-zero-shot", None, feature_dims=(3, 4, 2), dino_parts=1)
    x = torch.randn(2, 9, 3, 3)
    sd = F.normalize(x[:, :7], dim=1)
    dino = F.normalize(x[:, 7:], dim=1)
    expected = torch.cat([sd, dino], 1) / (2**0.5)
    torch.testing.assert_close(head(x), expected)
    with pytest.raises(WeightsError, match="has no weights"):
        load_head("geoaware-zero-shot", "x.pt")


def test_presets_hold_published_numbers():
    assert dict(get_preset("spair").published)["spair_pck@0.10_per_image"] == 85.6
    zero = get_preset("zero-shot")
    assert dict(zero.published)["spair_pck@0.10_per_keypoint"] == 65.4
    assert zero.window == 5 and zero.pose_align and zero.head == "geoaware-zero-shot"
    assert PRESETS["spair"].window == 7 and PRESETS["spair"].init == "ap10k"
    assert backbone_options_for_head("geoaware", "sd+dino") == {"mode": "raw",
                                                                "recipe": "geoaware"}
    with pytest.raises(UnknownNameError):
        get_preset("nope")


def test_headed_backbone_is_a_backbone():
    backbone = create_backbone("dense-sift", image_size=64, bin_sizes=(4, 8))
    head = create_head("geoaware", feature_dims=(128, 128), projection_dim=64, num_groups=8)
    headed = HeadedBackbone(backbone, head.eval(), "geoaware")
    assert headed.info.name == "dense-sift+geoaware" and headed.stride == backbone.stride
    image = torch.rand(3, 45, 60)
    feats, transforms = headed.extract([image])
    assert feats.shape == (1, 64, 16, 16)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(1, 16, 16))
    raw, _ = backbone.extract([image])
    with torch.no_grad():
        torch.testing.assert_close(feats, F.normalize(head(raw), dim=1))
    results = Matcher(headed).match(image, [image], [[10.0, 20.0], [50.0, 30.0]])
    assert results[0].points.shape == (2, 2)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_backbone_options(parser)
    return parser.parse_args(list(argv))


def test_cli_head_options(tmp_path):
    head = create_head("geoaware", feature_dims=(128,) * 4, projection_dim=128)
    torch.save(head.state_dict(), tmp_path / "h.PTH")
    built = backbone_from_args(_args("--device", "cpu", "--head", "geoaware", "--head-weights",
                                     str(tmp_path / "h.PTH")))
    assert isinstance(built, HeadedBackbone)
    for a, b in zip(built.head.state_dict().values(), head.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not isinstance(backbone_from_args(_args("--device", "cpu")), HeadedBackbone)
    with pytest.raises(InputError, match="--head-weights needs --head"):
        backbone_from_args(_args("--head-weights", "x"))


def test_match_cli_with_head(tmp_path, capsys):
    from semcorr.cli.main import main
    from shared_data import shared_path

    head = create_head("geoaware", feature_dims=(128,) * 4, projection_dim=128)
    torch.save(head.state_dict(), tmp_path / "h.PTH")
    from PIL import Image

    Image.open(shared_path("r2d2", "boat.png")).convert("RGB").resize((120, 90)).save(
        tmp_path / "boat.png")
    photo = str(tmp_path / "boat.png")
    common = ["match", photo, photo, "--points", "30,30;80,60", "--device", "cpu",
              "--out", str(tmp_path / "out"), "--head", "geoaware"]
    assert main([*common, "--head-weights", str(tmp_path / "h.PTH")]) == 0
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.PTH")
    assert main([*common, "--head-weights", str(tmp_path / "bad.PTH")]) == 2
    assert "bad.PTH: not a GeoAware-SC aggregation network" in capsys.readouterr().err


def test_zero_shot_head_on_raw_parts_equals_zero_shot_fusion():
    from semcorr.features.fusion import fuse_raw, fuse_zero_shot

    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(1, 6, 8, 8, generator=g), torch.randn(1, 4, 4, 4, generator=g),
             torch.randn(1, 5, 8, 8, generator=g)]
    head = load_head("geoaware-zero-shot", None, feature_dims=(6, 4, 5))
    torch.testing.assert_close(head(fuse_raw(parts, (8, 8))),
                               fuse_zero_shot(parts[:2], parts[2], (8, 8)))
