"""bf16 that pays: features within the cosine bound of fp32 (DINOv2, DINOv3, SAM), weights
stored once in bf16 with output identical to plain autocast, ``precision="auto"`` selection and
its on-disk cache (no timing asserted), and fine-tuning's bf16 forward/backward."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import (  # noqa: E402
    one_thread,  # noqa: F401  (autouse)
    save_tiny_dinov2,
    save_tiny_dinov3,
    save_tiny_sam,
)

from semcorr import create_backbone  # noqa: E402
from semcorr.features import precision as prec  # noqa: E402
from semcorr.train.finetune.batches import PairBatch  # noqa: E402
from semcorr.train.finetune.config import FinetuneConfig  # noqa: E402
from semcorr.train.finetune.losses import pair_losses  # noqa: E402

CPU = torch.device("cpu")
#: name, saver, options, input side
MODELS = {
    "dinov2_vitb14": (lambda d: save_tiny_dinov2(d, layers=3), {"num_patches": 4}, 56),
    "dinov3_vitb16": (save_tiny_dinov3, {"num_patches": 3}, 48),
    "sam_vit_b": (save_tiny_sam, {}, 64),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    return {name: save(root / name) for name, (save, _, _) in MODELS.items()}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache file and an empty in-process memo."""
    path = tmp_path / "cache" / "precision.json"
    monkeypatch.setenv(prec.CACHE_ENV, str(path))
    monkeypatch.setattr(prec, "_MEMO", {})
    return path


def _images(side: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(1))


def _backbone(folders: dict[str, Path], name: str, precision: str) -> torch.nn.Module:
    return create_backbone(name, weights=str(folders[name]), precision=precision,
                           **MODELS[name][1])


def _linear_dtypes(backbone: torch.nn.Module) -> set[torch.dtype]:
    return {m.weight.dtype for m in backbone.modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_features_within_cosine_bound(folders: dict[str, Path], name: str) -> None:
    images = _images(MODELS[name][2])
    full, half = _backbone(folders, name, "fp32"), _backbone(folders, name, "bf16")
    with torch.no_grad():
        a, b = full.features(images), half.features(images)
    assert b.dtype == torch.float32 and b.shape == a.shape
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.mean() >= 0.999 and cos.min() > 0.99, (cos.mean(), cos.min())
    assert not torch.equal(a, b)  # bf16 really ran
    assert _linear_dtypes(half) == {torch.bfloat16}  # stored once, not re-cast per call
    assert _linear_dtypes(full) == {torch.float32}


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stored_weights_equal_plain_autocast(folders: dict[str, Path], name: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights stored in bf16 give bit-identical features to autocast re-casting fp32 weights
    on every call."""
    import semcorr.features.base as base

    images = _images(MODELS[name][2])
    stored, recast = _backbone(folders, name, "bf16"), _backbone(folders, name, "bf16")
    with torch.no_grad():
        a = stored.features(images)
        monkeypatch.setattr(base, "store_matmul_weights", lambda module, dtype: None)
        b = recast.features(images)
    assert _linear_dtypes(recast) == {torch.float32}
    assert _linear_dtypes(stored) == {torch.bfloat16}
    assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
def test_training_forward_keeps_fp32_weights(folders: dict[str, Path]) -> None:
    backbone = _backbone(folders, "dinov2_vitb14", "bf16")
    backbone.features(_images(56)).sum().backward()
    assert _linear_dtypes(backbone) == {torch.float32}


def test_slow_bf16_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import semcorr.features.base as base

    monkeypatch.setattr(base, "_WARNED_SLOW_BF16", set())
    monkeypatch.setattr(base, "native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert base.resolve_precision("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert base.resolve_precision("bf16", CPU) == "bf16"  # once only
        monkeypatch.setattr(base, "_WARNED_SLOW_BF16", set())
        monkeypatch.setattr(base, "native_bf16", lambda device: True)
        assert base.resolve_precision("bf16", CPU) == "bf16"  # fast bf16: no warning


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    (1.0, 0.5, "bf16"), (1.0, 1.0 / 1.2, "bf16"), (1.0, 0.9, "fp32"), (1.0, 4.0, "fp32"),
    (1.0, float("inf"), "fp32"), (0.0, 0.5, "fp32"), (1.0, 0.0, "fp32"),
])
def test_choose_precision(fp32: float, bf16: float, expected: str) -> None:
    assert prec.choose_precision(fp32, bf16) == expected


def _counting(seconds: dict[str, float]) -> tuple[Callable[[torch.device], dict[str, float]],
                                                   list[int]]:
    calls = [0]

    def measure(device: torch.device) -> dict[str, float]:
        calls[0] += 1
        return dict(seconds)

    return measure, calls


def test_auto_measures_once_and_caches_on_disk(isolated_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    measure, calls = _counting({"fp32": 1.0, "bf16": 0.3})
    assert prec.auto_precision(CPU, measure) == "bf16"
    assert prec.auto_precision(CPU, measure) == "bf16"
    assert calls[0] == 1  # memoised in the process
    entry = json.loads(isolated_cache.read_text())[prec.cache_key(CPU)]
    assert entry["precision"] == "bf16" and entry["fp32_s"] == 1.0 and entry["bf16_s"] == 0.3
    assert [p.name for p in isolated_cache.parent.iterdir()] == ["precision.json"]  # no temp
    monkeypatch.setattr(prec, "_MEMO", {})  # a new process reads the file, does not re-measure
    slower, later = _counting({"fp32": 1.0, "bf16": 3.0})
    assert prec.auto_precision(CPU, slower) == "bf16" and later[0] == 0


def test_cache_keeps_other_keys_and_survives_corruption(isolated_cache: Path) -> None:
    isolated_cache.parent.mkdir(parents=True)
    isolated_cache.write_text("{not json")
    measure, calls = _counting({"fp32": 1.0, "bf16": 3.0})
    assert prec.auto_precision(CPU, measure) == "fp32" and calls[0] == 1
    data = json.loads(isolated_cache.read_text())
    data["other|machine"] = {"precision": "bf16"}
    isolated_cache.write_text(json.dumps(data))
    prec._MEMO.clear()
    assert prec.auto_precision(CPU, measure) == "fp32" and calls[0] == 1
    assert set(json.loads(isolated_cache.read_text())) == {"other|machine", prec.cache_key(CPU)}


def test_cache_disabled_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prec.CACHE_ENV, "0")
    assert prec.precision_cache_path() is None
    monkeypatch.setenv("HOME", str(tmp_path))
    measure, calls = _counting({"fp32": 1.0, "bf16": 0.5})
    assert prec.auto_precision(CPU, measure) == "bf16"
    prec._MEMO.clear()
    assert prec.auto_precision(CPU, measure) == "bf16" and calls[0] == 2
    assert not any(tmp_path.rglob("precision.json"))


def test_default_cache_path_is_user_cache(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.delenv(prec.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert prec.precision_cache_path() == tmp_path / "semcorr" / "precision.json"


def test_unsupported_bf16_means_fp32() -> None:
    def failing(device: torch.device) -> dict[str, float]:
        raise RuntimeError("bf16 autocast unsupported")

    assert prec.auto_precision(CPU, failing) == "fp32"


def test_probe_runs_both_precisions() -> None:
    seconds = prec.probe_seconds(CPU, tokens=16, dim=32, heads=2, repeats=1)
    assert set(seconds) == {"fp32", "bf16"}
    assert all(0 < t < float("inf") for t in seconds.values())


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
@pytest.mark.parametrize("choice", ["bf16", "fp32"])
def test_backbone_auto_follows_the_cached_choice(folders: dict[str, Path], isolated_cache: Path,
                                                 choice: str) -> None:
    isolated_cache.parent.mkdir(parents=True)
    isolated_cache.write_text(json.dumps({prec.cache_key(CPU): {"precision": choice}}))
    name = "dinov2_vitb14"
    images = _images(MODELS[name][2])
    auto, fixed = _backbone(folders, name, "auto"), _backbone(folders, name, choice)
    with torch.no_grad():
        a, b = auto.features(images), fixed.features(images)
    assert torch.equal(a, b)
    assert _linear_dtypes(auto) == {torch.bfloat16 if choice == "bf16" else torch.float32}


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
def test_finetune_bf16_forward_backward_close_to_fp32(folders: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """Fine-tuning's loss under bf16 autocast: finite, close to fp32, and gradients whose
    direction and size match fp32's; the trained weights stay fp32 (autocast re-casts them)."""
    name = "dinov2_vitb14"
    gen = torch.Generator().manual_seed(2)
    b, n, side, cells = 2, 5, MODELS[name][2], 4
    batch = PairBatch(
        source=torch.rand(b, 3, side, side, generator=gen),
        target=torch.rand(b, 3, side, side, generator=gen),
        source_cells=torch.randint(0, cells, (b, n, 2), generator=gen).float(),
        target_cells=torch.randint(0, cells, (b, n, 2), generator=gen).float(),
        valid=torch.ones(b, n, dtype=torch.bool),
        target_masks=torch.ones(b, cells, cells, dtype=torch.bool),
    )
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        backbone = _backbone(folders, name, "fp32")  # as the trainer builds it
        config = FinetuneConfig(root=str(tmp_path), precision=precision, loss="softargmax",
                                window=2)
        loss = pair_losses(backbone, batch, config).mean()
        loss.backward()
        assert _linear_dtypes(backbone) == {torch.float32}
        losses[precision] = loss.item()
        grads[precision] = torch.cat([p.grad.flatten() for p in backbone.parameters()
                                      if p.grad is not None])
    assert torch.isfinite(grads["bf16"]).all() and grads["bf16"].abs().sum() > 0
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99, cos
    assert grads["bf16"].norm() == pytest.approx(grads["fp32"].norm().item(), rel=0.05)


def test_cli_precision_flag(folders: dict[str, Path]) -> None:
    import argparse

    from semcorr.cli.common import add_backbone_options, backbone_from_args, with_precision

    parser = argparse.ArgumentParser()
    add_backbone_options(parser)
    args = parser.parse_args(["--backbone", "dinov2_vitb14", "--weights",
                              str(folders["dinov2_vitb14"]), "--precision", "auto",
                              "--backbone-option", "num_patches=4", "--device", "cpu"])
    assert backbone_from_args(args).precision == "auto"
    assert with_precision({"precision": "bf16"}, args) == {"precision": "bf16"}  # option wins
    assert with_precision({}, parser.parse_args([])) == {}  # dense-sift takes no precision
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])


def test_extract_cli_records_the_resolved_precision(folders: dict[str, Path], tmp_path: Path,
                                                    isolated_cache: Path) -> None:
    """``semcorr extract --precision auto``: the feature cache's configuration names what ran
    (a cache is not shared between a bf16 and an fp32 machine under the name "auto")."""
    from PIL import Image

    from semcorr.cli.main import main
    from semcorr.features.cache import FeatureCache

    isolated_cache.parent.mkdir(parents=True)
    isolated_cache.write_text(json.dumps({prec.cache_key(CPU): {"precision": "fp32"}}))
    image = tmp_path / "im.png"
    Image.new("RGB", (40, 30), (90, 140, 30)).save(image)
    cache = tmp_path / "feats"
    assert main(["extract", "--backbone", "dinov2_vitb14", "--weights",
                 str(folders["dinov2_vitb14"]), "--option", "num_patches=4", "--precision",
                 "auto", "--device", "cpu", "--cache", str(cache), "--quiet", str(image)]) == 0
    assert FeatureCache(cache).config["options"] == {"num_patches": 4, "precision": "fp32"}
