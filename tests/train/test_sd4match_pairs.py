"""SD4Match training on annotated benchmark pairs (SPair-71k layout), as the official code does:
stretched inputs, keypoint mapping and loss checked against the official loss, official
epochs, class prompts keyed by category, export to the released layout."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semcorr.train.sd4match import (
    SD4MatchTrainConfig,
    config_from_sources,
    sd4match_loss,
    total_steps,
)
from semcorr.train.sd4match_pairs import (
    AnnotatedPairs,
    epoch_indices,
    nearest_neighbour_pck,
    stretched_to_cells,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference" / "ActiveVisionLab+SD4Match"
KEYPOINTS = 8


# ------------------------------------------------------------------------- SPair fixture
def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _spair_from_photos(root: Path) -> Path:
    """SPair-71k layout, two categories: crops of one photo per category at known offsets,
    so keypoints correspond exactly; 3 trn, 1 val and 2 test pairs per category."""
    from PIL import Image

    photos = {"cat": SHARED / "data" / "r2d2" / "boat.png",
              "dog": SHARED / "data" / "r2d2" / "peppers.png"}
    if not all(p.is_file() for p in photos.values()):
        pytest.skip(f"{SHARED / 'data' / 'r2d2'} is absent")
    crops = [((10, 8), (64, 48)), ((22, 14), (56, 56)), ((4, 20), (70, 44))]  # offset, size
    rng = np.random.default_rng(0)
    base_points = rng.uniform([30, 26], [60, 46], size=(KEYPOINTS, 2))  # inside every crop
    lists: dict[str, list[str]] = {"trn": [], "test": [], "val": []}
    for category, photo in photos.items():
        base = Image.open(photo).convert("RGB").resize((120, 90), Image.BILINEAR)
        names = []
        for i, ((ox, oy), (w, h)) in enumerate(crops):
            name = f"{category}_{i}"
            names.append((name, (ox, oy), (w, h)))
            folder = root / "JPEGImages" / category
            folder.mkdir(parents=True, exist_ok=True)
            base.crop((ox, oy, ox + w, oy + h)).save(folder / f"{name}.jpg", quality=95)
            kps = {str(k): [float(x - ox), float(y - oy)] for k, (x, y) in enumerate(base_points)}
            _write_json(root / "ImageAnnotation" / category / f"{name}.json",
                        {"category": category, "bndbox": [0, 0, w - 1, h - 1], "kps": kps,
                         "image_width": w, "image_height": h})
        for a in names:
            for b in names:
                if a is b:
                    continue
                split = {("0", "1"): "test", ("2", "0"): "test", ("1", "2"): "val"}.get(
                    (a[0][-1], b[0][-1]), "trn")
                pair_id = f"{sum(map(len, lists.values())):06d}-{a[0]}-{b[0]}:{category}"
                _write_json(root / "PairAnnotation" / split / f"{pair_id}.json", {
                    "category": category, "src_imname": f"{a[0]}.jpg",
                    "trg_imname": f"{b[0]}.jpg", "src_bndbox": [0, 0, a[2][0] - 1, a[2][1] - 1],
                    "trg_bndbox": [0, 0, b[2][0] - 1, b[2][1] - 1],
                    "src_imsize": [*a[2], 3], "trg_imsize": [*b[2], 3]})
                lists[split].append(pair_id)
    for split, names_ in lists.items():
        (root / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
        folder = root / "Layout" / "large"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.txt").write_text("".join(f"{n}\n" for n in names_))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
    from tiny_models import save_tiny_stable_diffusion

    root = tmp_path_factory.mktemp("sd4m-pairs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"sd": save_tiny_stable_diffusion(root / "sd"),
           "spair": _spair_from_photos(root / "SPair-71k"), "root": root}
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- data, by hand
class _OnePair:
    """A one-pair dataset (a PF-PASCAL training row when ``flip``)."""

    def __init__(self, image: Path, flip: int) -> None:
        self.sample = SimpleNamespace(
            source_path=image, target_path=image, category="boat", extra={"flip": flip},
            source_points=torch.tensor([[0.0, 0.0], [10.0, 5.0], [-1.0, -1.0], [39.0, 29.0]]),
            target_points=torch.tensor([[2.0, 3.0], [4.0, 6.0], [1.0, 1.0], [20.0, 10.0]]),
            visible=torch.tensor([True, True, False, True]), source_size=(40, 30),
            target_size=(40, 30), target_bbox=torch.tensor([2.0, 3.0, 30.0, 20.0]))

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> SimpleNamespace:
        return self.sample


@pytest.mark.parametrize("flip", [0, 1])
def test_stretch_points_and_flip_by_hand(tmp_path: Path, flip: int) -> None:
    from PIL import Image

    array = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    data = AnnotatedPairs(_OnePair(tmp_path / "a.png", flip), size=16, dino_side=28)
    out = data.sample(0)
    # x * 16 / 40, y * 16 / 30, clamped into [1e-4, 15 - 1e-4]; a flip maps x to 16 - x
    x = torch.tensor([0.0, 4.0, 15.6])
    y = torch.tensor([0.0, 8 / 3, 15.466667])
    if flip:
        x = 16 - x
    expected = torch.stack([x, y], -1).clamp(1e-4, 15 - 1e-4)
    torch.testing.assert_close(out["points0"], expected, atol=1e-5, rtol=0)
    assert out["points0"].shape == (3, 2) and out["valid"].all()
    assert out["threshold"] == pytest.approx(max(28 * 16 / 40, 17 * 16 / 30))  # stretched box
    stretched = np.asarray(Image.fromarray(array).resize((16, 16), Image.BILINEAR))
    stretched = torch.from_numpy(stretched.copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(out["image0"], stretched.flip(-1) if flip else stretched)
    from semcorr.features.sd4match_official import cpm_dino_input

    raw = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert torch.equal(out["dino0"], cpm_dino_input(raw.flip(-1) if flip else raw, 28))


def test_epochs_are_permutations_and_official_lengths() -> None:
    seen = [i for step in range(4) for i in epoch_indices(7, 2, 1, 0, step, seed=3)]
    assert sorted(seen[:7]) == list(range(7))  # one epoch = every pair once (+1 wrapped)
    ranks = [epoch_indices(8, 2, 2, r, 0, seed=0) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    spair = SD4MatchTrainConfig(dataset="spair", root="r", out="o", batch_size=3)
    assert total_steps(spair, pairs=10) == 5 * 4  # official 5 epochs (script/spair/*.sh)
    pascal = SD4MatchTrainConfig(dataset="pf-pascal", root="r", out="o", batch_size=3)
    assert total_steps(pascal, pairs=10) == 90 * 4  # official 90 epochs
    assert total_steps(pascal, pairs=10, world_size=2) == 90 * 2
    assert (spair.lr, spair.timestep) == (0.01, 261)
    with pytest.raises(Exception, match="needs --root"):
        config_from_sources(None, ["out=o"], dataset="spair")


def _official_utils(name: str):
    if not (REFERENCE / "utils" / "evaluator.py").is_file():
        pytest.skip(f"{REFERENCE} is absent")
    sys.path.insert(0, str(REFERENCE))
    try:
        return __import__(name, fromlist=["*"])
    finally:
        sys.path.remove(str(REFERENCE))


def test_validation_pck_equals_the_official_evaluator() -> None:
    """nn PCK@0.1 per pair, mean over pairs = PCKEvaluator's ``nn_pck0.1`` (by image).

    Reference: the official ``utils/evaluator.py`` imported from ../shared/reference, fed the
    same random feature maps and points; it shares no code with semcorr."""
    evaluator_module = _official_utils("utils.evaluator")
    cfg = SimpleNamespace(EVALUATOR=SimpleNamespace(ALPHA=[0.1], BY="image"))
    evaluator = evaluator_module.PCKEvaluator(cfg)
    g = torch.Generator().manual_seed(4)
    size, b, n = 48, 3, 6
    f0 = torch.randn(b, 16, 12, 12, generator=g)
    f1 = f0.roll(1, dims=-1) + 0.3 * torch.randn(b, 16, 12, 12, generator=g)
    p0 = torch.rand(b, n, 2, generator=g) * (size - 1)
    p1 = (p0 + torch.tensor([size / 12, 0.0]) + torch.randn(b, n, 2, generator=g)).clamp(
        1e-4, size - 1 - 1e-4)
    npts = torch.tensor([6, 4, 5])
    valid = torch.arange(n)[None] < npts[:, None]
    thresholds = torch.tensor([20.0, 35.5, 12.0])
    evaluator.evaluate_feature_map({
        "src_img": torch.zeros(b, 3, size, size), "trg_img": torch.zeros(b, 3, size, size),
        "src_featmaps": f0, "trg_featmaps": f1, "src_kps": p0, "trg_kps": p1, "n_pts": npts,
        "category": ["cat", "dog", "cat"], "pckthres": thresholds})
    official = torch.tensor(evaluator.result["nn_pck0.1"]["all"])
    ours = nearest_neighbour_pck(f0, f1, p0, p1, valid, thresholds, size)
    assert 0 < float(ours.mean()) < 1  # neither trivial
    torch.testing.assert_close(ours.float(), official.float(), atol=1e-6, rtol=0)


def test_loss_equals_the_official_loss() -> None:
    """Stretched keypoints, corner-aligned cells, per-pair mean = GaussianCrossEntropyLoss,
    up to its kernel's sum (it leaves the Gaussian unnormalised; ours sums to 1).

    Reference: the official ``src/loss.py`` imported from ../shared/reference, fed the same
    random feature maps and points; it shares no code with semcorr."""
    if not (REFERENCE / "src" / "loss.py").is_file():
        pytest.skip(f"{REFERENCE} is absent")
    sys.path.insert(0, str(REFERENCE))
    try:
        from src.loss import GaussianCrossEntropyLoss
    finally:
        sys.path.remove(str(REFERENCE))
    g = torch.Generator().manual_seed(0)
    size, cells = 64, 16
    f0, f1 = torch.randn(2, 8, cells, cells, generator=g), torch.randn(2, 8, cells, cells,
                                                                        generator=g)
    # interior points (the Gaussian window stays inside, where both masks agree)
    p0 = torch.rand(2, 5, 2, generator=g) * (size - 1)
    p1 = 3.2 * (size - 1) / (cells - 1) + torch.rand(2, 5, 2, generator=g) * (
        (cells - 1 - 6.4) * (size - 1) / (cells - 1))
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pad0, pad1 = torch.full((2, 20, 2), -2.0), torch.full((2, 20, 2), -2.0)
    pad0[:, :5], pad1[:, :5] = p0, p1
    official = GaussianCrossEntropyLoss()(
        src_featmaps=f0, trg_featmaps=f1, src_kps=pad0, trg_kps=pad1,
        src_imgsize=(size, size), trg_imgsize=(size, size), npts=torch.tensor([5, 3]),
        softmax_temp=0.04, enable_l2_norm=True)
    ours = sd4match_loss(f0, f1, stretched_to_cells(p0, size, cells),
                         stretched_to_cells(p1, size, cells), valid, beta=0.04, size=7,
                         average="pairs")
    offsets = torch.arange(-3.0, 4.0)
    r2 = offsets[None] ** 2 + offsets[:, None] ** 2
    z = (torch.exp(-r2 / (2 * 1.5**2)) / (2 * math.pi * 1.5**2)).sum()
    torch.testing.assert_close(official, z * ours, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------ tiny training
def _train_config(tiny: dict[str, Path], out: str, **kw: object) -> SD4MatchTrainConfig:
    base = SD4MatchTrainConfig(
        dataset="spair", root=str(tiny["spair"]), out=str(tiny["root"] / out),
        sd_weights=str(tiny["sd"]), prompt="class", image_size=32, length=4, batch_size=2,
        epochs=2, device="cpu", checkpoint_every=100, export_official=True)
    return SD4MatchTrainConfig(**{**base.__dict__, **kw})


def _dataset_loss(backbone: torch.nn.Module, config: SD4MatchTrainConfig) -> float:
    from semcorr.train.sd4match import next_batch, training_data, training_step

    data = training_data(config)
    with torch.no_grad():
        losses = [float(training_step(backbone, next_batch(data, config, None, step), config))
                  for step in range(math.ceil(len(data) / config.batch_size))]
    return sum(losses) / len(losses)


def test_class_prompt_trains_on_spair_and_evaluates(tiny: dict[str, Path]) -> None:
    from semcorr import create_backbone
    from semcorr.cli.main import main
    from semcorr.train.sd4match import build_backbone, train_sd4match

    config = _train_config(tiny, "class", epochs=1)
    assert config.timestep == 261  # training keeps SD4Match's timestep
    path = train_sd4match(config)
    record = json.loads((path.parent / "train.json").read_text())
    assert record["steps"] == 3 and len(record["losses"]) == 3  # 6 trn pairs, batch 2
    assert len(record["val_pck"]) == 1  # measured after each epoch, the best one kept
    fresh = build_backbone(config, ["cat", "dog"]).eval()
    trained = create_backbone("sd4match", weights=str(path), sd_weights=str(tiny["sd"])).eval()
    assert trained.config.categories == ("cat", "dog")  # keyed by category, not file stem
    from semcorr.train.sd4match import validation_data, validation_score

    best = validation_score(trained, validation_data(config), config)
    assert best == pytest.approx(max(record["val_pck"]), abs=1e-6)
    before, after = _dataset_loss(fresh, config), _dataset_loss(trained, config)
    assert after < before - 0.5, (before, after)

    official = path.parent / "official" / "Class_spair_sd2-1_TokenEmbeds4"
    from semcorr.features.sd4match_official import read_official_prompt

    exported = read_official_prompt(official / "caption.pt")  # the same prompt, as released
    assert exported.config.categories == ("cat", "dog")
    assert torch.equal(exported.state["embeds"], trained.prompt.embeds.detach())
    out = tiny["root"] / "eval-official"
    argv = ["eval", "--dataset", "spair", "--root", str(tiny["spair"]), "--out", str(out),
            "--quiet", "--head", "sd4match", "--head-weights", str(official), "--weights",
            str(tiny["sd"]), "--backbone-option", "image_size=32", "--device", "cpu"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["category"] for r in records) == ["cat", "cat", "dog", "dog"]
    assert all(len(r["pred"]) == KEYPOINTS for r in records)


def test_cpm_trains_on_spair_and_exports_ckpt(tiny: dict[str, Path]) -> None:
    from tiny_models import save_tiny_dinov2

    from semcorr.features.sd4match import read_prompt_file
    from semcorr.features.sd4match_official import read_official_prompt
    from semcorr.train.sd4match import train_sd4match

    dino = save_tiny_dinov2(tiny["root"] / "dino")
    config = _train_config(tiny, "cpm", prompt="cpm", dino_weights=str(dino), epochs=1,
                           global_length=2, cond_length=2, dino_patches=4)
    path = train_sd4match(config)
    losses = json.loads((path.parent / "train.json").read_text())["losses"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    _, state = read_prompt_file(path)
    exported = read_official_prompt(path.parent / "official" /
                                    "CPM_spair_sd2-1_Pair-DINO-Feat-G2-C2")
    assert set(exported.state) == set(state)
    assert all(torch.equal(exported.state[k], state[k]) for k in state)


def test_the_best_epoch_is_kept(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation PCK 0.5 then 0.25: prompt.safetensors stays the first epoch's prompt; every
    step draws its own noise."""
    import semcorr.train.sd4match as trainer
    from semcorr.features.sd4match import read_prompt_file

    scores = iter([0.5, 0.25])
    monkeypatch.setattr(trainer, "validation_score", lambda *args: next(scores))
    seeds, step = [], trainer.training_step

    def recording_step(backbone, batch, config):  # the noise each step is drawn with
        seeds.append(backbone.sd.seed)
        return step(backbone, batch, config)

    monkeypatch.setattr(trainer, "training_step", recording_step)
    path = trainer.train_sd4match(_train_config(tiny, "best", prompt="single",
                                                export_official=False))
    record = json.loads((path.parent / "train.json").read_text())
    assert record["val_pck"] == [0.5, 0.25] and record["step"] == 6
    assert len(set(seeds)) == 6  # fresh noise at every step, as the official training
    last = torch.load(path.parent / "last.pt", weights_only=True)["model"]["embeds"]
    saved = read_prompt_file(path)[1]["embeds"]
    assert (saved - last).abs().max() > 1e-4  # the last epoch was worse: not kept
