"""Fine-tuning the last blocks of a ViT (semcorr.train.finetune) on synthetic keypoint pairs.

The data are real photographs (../shared/data/r2d2) cropped and warped by known similarities,
written in the keypoints-json layout (one category per crop; training and validation images are
different warps of the same crops); the backbone is a tiny random-weight DINOv2 saved in the
``transformers`` format and loaded through the real path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))

from tiny_models import (  # noqa: E402, F401
    one_thread,
    save_tiny_dinov2,
    save_tiny_dinov3,
    save_tiny_sam,
)

from semcorr.cli.main import main  # noqa: E402
from semcorr.data import create_dataset  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features import create_backbone  # noqa: E402
from semcorr.geometry import similarity_matrix, warp_image, warp_points  # noqa: E402
from semcorr.io import load_image  # noqa: E402
from semcorr.train.finetune import (  # noqa: E402
    FinetuneConfig,
    batch_indices,
    bilinear_cell_targets,
    freeze_for_finetuning,
    grid_cross_entropy,
    is_finetune_checkpoint,
    keypoint_losses,
    load_finetuned,
    soft_argmax_error,
    train_finetune,
    validation_pck,
    warmup_cosine,
)
from shared_data import shared_path  # noqa: E402

SIZE = 112  # image side; the tiny ViT sees 8 x 8 patches of 14 px


def write_warped_layout(root: Path, photos: list[Path], crops: int, warps: dict[str, int],
                        size: int = SIZE, grid: int = 5, seed: int = 0) -> Path:
    """A keypoints-json layout: ``crops`` square crops of the photos (one category each), each
    warped ``warps[split]`` times by random similarities (±20°, ×0.85–1.15, ±8 px); keypoints
    are a ``grid x grid`` lattice of the crop moved by the warp (null when outside)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    lattice = torch.linspace(0.2 * (size - 1), 0.8 * (size - 1), grid)
    points = torch.stack(torch.meshgrid(lattice, lattice, indexing="xy"), -1).reshape(-1, 2)
    names = [f"k{i}" for i in range(points.shape[0])]
    categories, images = [], []
    loaded = [load_image(path) for path in photos[:crops]]
    for c in range(crops):
        photo = loaded[c % len(loaded)]
        h, w = photo.shape[-2:]
        side = min(h, w) // 2
        x0, y0 = int(uniform(0, w - side)), int(uniform(0, h - side))
        base = F.interpolate(photo[None, :, y0:y0 + side, x0:x0 + side], size=(size, size),
                             mode="bilinear", antialias=True, align_corners=False)[0]
        category = f"crop{c}"
        categories.append({"name": category, "keypoints": names})
        (root / category).mkdir(parents=True, exist_ok=True)
        for split, count in warps.items():
            for k in range(count):
                matrix = similarity_matrix(size, size, uniform(-20, 20), uniform(0.85, 1.15),
                                           (uniform(-8, 8), uniform(-8, 8)))
                image = warp_image(base, matrix, (size, size))
                moved = warp_points(points, matrix)
                inside = ((moved >= 0) & (moved <= size - 1)).all(-1)
                file = f"{category}/{split}{k}.png"
                array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                Image.fromarray(array).save(root / file)
                keypoints = {n: (p if ok else None)
                             for n, p, ok in zip(names, moved.tolist(), inside.tolist(),
                                                 strict=True)}
                images.append({"file": file, "category": category, "split": split,
                               "keypoints": keypoints})
    (root / "annotations.json").write_text(json.dumps({"categories": categories,
                                                       "images": images}))
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    photos = sorted(shared_path("r2d2").glob("*.png"))
    return write_warped_layout(tmp_path_factory.mktemp("pairs"), photos, 6,
                               {"trn": 4, "val": 2})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"), layers=2)


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2_3"), layers=3)


def config(layout: Path, weights: Path, out: Path, **changes: object) -> FinetuneConfig:
    values: dict[str, object] = dict(
        backbone="dinov2_vits14", weights=str(weights), backbone_options={"num_patches": 8},
        layers=2, dataset="keypoints-json", root=str(layout), train_split="trn",
        val_split="val", out=str(out), steps=20, batch_size=4, micro_batch=2, lr=1e-2,
        warmup=10, temperature=0.1, val_every=0, val_pairs=12, checkpoint_every=5,
        log_every=1000,
    )
    values.update(changes)
    return FinetuneConfig(**values)  # type: ignore[arg-type]


def trained_params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["trained"]


# ----------------------------------------------------------------------------- losses


class TestLosses:
    def test_bilinear_targets_mean_is_the_point(self) -> None:
        target = torch.tensor([[[2.25, 3.5], [0.0, 0.0], [6.0, 4.0], [5.9, 0.1]]])
        probs = bilinear_cell_targets(target, 5, 7).view(1, 4, 5, 7)
        assert torch.allclose(probs.sum((-2, -1)), torch.ones(1, 4))
        ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
        mean = torch.stack([(probs * xs).sum((-2, -1)), (probs * ys).sum((-2, -1))], -1)
        assert torch.allclose(mean, target, atol=1e-6)
        assert probs[0, 0, 3, 2] == pytest.approx(0.75 * 0.5)  # known answer

    def test_cross_entropy_known_answer(self) -> None:
        scores = torch.zeros(1, 1, 2, 2)
        loss = grid_cross_entropy(scores, torch.tensor([[[0.0, 0.0]]]), temperature=1.0)
        assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())

    def test_cross_entropy_prefers_the_target(self) -> None:
        target = torch.tensor([[[3.0, 1.0]]])
        peaked = torch.full((1, 1, 4, 6), -1.0)
        peaked[0, 0, 1, 3] = 1.0
        wrong = torch.full((1, 1, 4, 6), -1.0)
        wrong[0, 0, 2, 0] = 1.0
        assert grid_cross_entropy(peaked, target, 0.1) < grid_cross_entropy(wrong, target, 0.1)

    def test_masked_cells_no_nan(self) -> None:
        scores = torch.randn(2, 3, 4, 4, requires_grad=True)
        mask = torch.ones(2, 4, 4, dtype=torch.bool)
        mask[:, :, 3] = False  # the target's right neighbour column is padding
        target = torch.tensor([[[2.5, 1.0]] * 3] * 2)
        loss = grid_cross_entropy(scores, target, 0.05, mask)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(scores.grad).all()

    def test_soft_argmax_error_zero_at_the_target(self) -> None:
        scores = torch.full((1, 2, 5, 5), -1.0)
        scores[0, 0, 1, 4] = 1.0
        scores[0, 1, 3, 0] = 1.0
        target = torch.tensor([[[4.0, 1.0], [0.0, 3.0]]])
        assert soft_argmax_error(scores, target, 0.01).abs().max() < 1e-4
        assert soft_argmax_error(scores, target, 0.01, window=1).abs().max() < 1e-4

    @pytest.mark.parametrize("loss", ["ce", "softargmax"])
    def test_gradcheck(self, loss: str) -> None:
        scores = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([[[1.3, 0.6], [2.0, 1.9]]], dtype=torch.float64)
        if loss == "ce":
            def fn(s: torch.Tensor) -> torch.Tensor:
                logits = s / 0.5  # grid_cross_entropy computes in float32: check its maths
                logp = torch.log_softmax(logits.flatten(2), -1)
                return -(bilinear_cell_targets(target, 3, 4) * logp).sum(-1)
            reference = fn(scores).float()
            assert torch.allclose(grid_cross_entropy(scores, target, 0.5), reference, atol=1e-5)
            assert torch.autograd.gradcheck(fn, (scores,))
        else:
            assert torch.autograd.gradcheck(
                lambda s: soft_argmax_error(s, target, 0.5), (scores,))

    def test_unknown_loss(self) -> None:
        with pytest.raises(InputError, match="unknown loss"):
            keypoint_losses(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2), "l1", 0.1)


class TestSchedule:
    def test_warmup_then_cosine(self) -> None:
        f = warmup_cosine(10, 110, 0.1)
        assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
        assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
        assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)

    def test_batches_cover_each_epoch(self) -> None:
        steps = [batch_indices(s, 4, 10, seed=3) for s in range(5)]  # 20 = two epochs
        flat = [i for b in steps for i in b]
        assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
        assert batch_indices(3, 4, 10, 3) == steps[3]  # stateless
        assert flat[:10] != flat[10:]  # a new order every epoch


# ----------------------------------------------------------------------------- what is trained


class TestFreeze:
    def test_only_last_blocks(self, tiny3: Path) -> None:
        backbone = create_backbone("dinov2_vits14", weights=str(tiny3), num_patches=4)
        names = freeze_for_finetuning(backbone, 2)
        assert names and all(n.startswith(("model.encoder.layer.1.", "model.encoder.layer.2."))
                             for n in names)
        assert any(n.startswith("model.encoder.layer.1.") for n in names)
        normed = create_backbone("dinov2_vits14", weights=str(tiny3), num_patches=4,
                                 final_norm=True)
        assert "model.layernorm.weight" in freeze_for_finetuning(normed, 1)
        with pytest.raises(InputError, match="--layers 4"):
            freeze_for_finetuning(backbone, 4)

    def test_sam_neck_trained(self, tmp_path: Path) -> None:
        folder = save_tiny_sam(tmp_path / "sam")
        backbone = create_backbone("sam_vit_b", weights=str(folder))
        names = freeze_for_finetuning(backbone, 1)
        assert any(n.startswith("encoder.neck.") for n in names)
        assert any(n.startswith("encoder.layers.1.") for n in names)
        assert not any(n.startswith(("encoder.layers.0.", "encoder.patch_embed")) for n in names)

    def test_dinov3_blocks_and_norm(self, tmp_path: Path) -> None:
        folder = save_tiny_dinov3(tmp_path / "v3")
        backbone = create_backbone("dinov3_vits16", weights=str(folder), num_patches=4,
                                   final_norm=True)
        names = freeze_for_finetuning(backbone, 1)
        assert {n.split(".layer.")[-1].split(".")[0] for n in names if ".layer." in n} == {"1"}
        assert any(n.startswith("model.norm.") for n in names)

    def test_step_changes_only_chosen_blocks(self, layout: Path, tiny3: Path,
                                             tmp_path: Path) -> None:
        cfg = config(layout, tiny3, tmp_path / "run", steps=1, layers=2, warmup=1,
                     val_split="", weight_decay=0.0)
        before = create_backbone("dinov2_vits14", weights=str(tiny3), num_patches=8)
        start = {n: p.detach().clone() for n, p in before.named_parameters()}
        train_finetune(cfg)
        after = load_finetuned(tmp_path / "run" / "last.pt")
        trained = set(trained_params(tmp_path / "run" / "last.pt"))
        assert trained == {n for n in start if n.startswith(("model.encoder.layer.1.",
                                                             "model.encoder.layer.2."))}
        for name, param in after.named_parameters():
            if name in trained:
                assert not torch.equal(param, start[name]), name
            else:
                assert torch.equal(param, start[name]), name  # bit-identical


# ----------------------------------------------------------------------------- training


class TestTraining:
    def test_pck_rises_above_untrained(self, layout: Path, tiny: Path, tmp_path: Path) -> None:
        """Validation PCK@0.10 0.140 untrained; after 400 steps 0.290, 0.310, 0.303 for data
        order seeds 0, 1, 2 (1 and 2 torch threads gave identical runs at 200 steps). Bounds:
        +0.08 and x1.5 (0.21); the test's seed clears them by 0.07 and 0.08, the seed spread is
        0.02.
        At 200 steps it was 0.260, 0.313, 0.310: a 0.04 margin under a 0.053 spread."""
        cfg = config(layout, tiny, tmp_path / "run", steps=400, warmup=20, val_every=50,
                     checkpoint_every=100)
        val = create_dataset("keypoints-json", layout, split="val")
        indices = list(range(len(val)))
        base = create_backbone("dinov2_vits14", weights=str(tiny), num_patches=8)
        before = torch.tensor(validation_pck(base, val, indices, alpha=0.1)).mean()
        best = train_finetune(cfg)
        tuned = load_finetuned(best)
        after = torch.tensor(validation_pck(tuned, val, indices, alpha=0.1)).mean()
        record = torch.load(best, weights_only=True)
        print(f"val PCK@0.10 untrained {before:.3f} -> fine-tuned {after:.3f} "
              f"(best step {record['best']['step']})")
        assert after > before + 0.08 and after > 1.5 * before
        assert record["best"]["pck"] == pytest.approx(float(after))

    def test_kill_and_resume_is_exact(self, layout: Path, tiny: Path, tmp_path: Path) -> None:
        whole = config(layout, tiny, tmp_path / "whole", steps=12, val_every=6)
        train_finetune(whole)

        class Killed(Exception):
            pass

        def kill(step: int, numbers: dict[str, float]) -> None:
            if step == 8:  # last.pt was written at step 5
                raise Killed

        part = config(layout, tiny, tmp_path / "part", steps=12, val_every=6)
        with pytest.raises(Killed):
            train_finetune(part, progress=kill)
        with pytest.raises(InputError, match="--resume"):
            train_finetune(part)
        train_finetune(part, resume=True)
        a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
        b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
        assert a["step"] == b["step"] == 12
        for name, value in a["trained"].items():
            assert torch.equal(value, b["trained"][name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            for i, state in a["optimizer"]["state"].items():
                assert torch.equal(state[key], b["optimizer"]["state"][i][key])
        assert a["scheduler"] == b["scheduler"]
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]

    def test_resume_refuses_other_settings(self, layout: Path, tiny: Path,
                                           tmp_path: Path) -> None:
        train_finetune(config(layout, tiny, tmp_path / "run", steps=2, val_split=""))
        with pytest.raises(InputError, match="lr"):
            train_finetune(config(layout, tiny, tmp_path / "run", steps=4, lr=1.0,
                                  val_split=""), resume=True)

    def test_accumulation_matches_one_batch(self, layout: Path, tiny: Path,
                                            tmp_path: Path) -> None:
        for micro in (1, 4):
            train_finetune(config(layout, tiny, tmp_path / f"m{micro}", steps=2,
                                  micro_batch=micro, val_split=""))
        a, b = trained_params(tmp_path / "m1" / "last.pt"), trained_params(tmp_path / "m4"
                                                                           / "last.pt")
        for name in a:
            if name.endswith("k_proj.bias"):
                # softmax ignores a key bias: its true gradient is 0, and Adam turns the
                # rounding noise that stands for it into full-size steps
                continue
            assert torch.allclose(a[name], b[name], atol=1e-6), name

    @pytest.mark.parametrize(("precision", "loss"), [("bf16", "softargmax"), ("fp16", "ce")])
    def test_mixed_precision(self, layout: Path, tiny: Path, tmp_path: Path, precision: str,
                             loss: str) -> None:
        train_finetune(config(layout, tiny, tmp_path / "run", steps=3, precision=precision,
                              loss=loss, window=2, val_split=""))
        record = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in record["history"])
        assert set(record) >= {"trained", "optimizer", "scheduler", "scaler", "rng", "step",
                               "base", "config"}
        assert "model" not in record  # only the trained parameters are stored
        assert record["scaler"].get("scale", 1.0) > 0 and record["best"] == {"pck": -1.0,
                                                                             "step": 3}


# ----------------------------------------------------------------------------- loading, CLI


@pytest.fixture(scope="module")
def run(layout: Path, tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_run")
    code = main(["train", "finetune", "--backbone", "dinov2_vits14", "--weights", str(tiny),
                 "--layers", "1", "--dataset", "keypoints-json", "--root", str(layout),
                 "--out", str(out), "--steps", "6", "--batch-size", "2", "--val-every", "3",
                 "--val-pairs", "12", "--option", 'backbone_options={"num_patches": 8}',
                 "--option", "temperature=0.1", "--device", "cpu"])
    assert code == 0
    return out


class TestCheckpointUse:
    def test_cli_writes_checkpoints(self, run: Path) -> None:
        assert is_finetune_checkpoint(run / "best.pt") and is_finetune_checkpoint(run / "last.pt")
        best = torch.load(run / "best.pt", weights_only=True)
        assert "optimizer" not in best and best["base"]["layers"] == 1
        assert json.loads((run / "metrics.json").read_text())["best"]["step"] in (3, 6)

    def test_eval_cli_uses_the_finetuned_weights(self, run: Path, layout: Path,
                                                 tmp_path: Path) -> None:
        out = tmp_path / "eval"
        code = main(["eval", "--dataset", "keypoints-json", "--root", str(layout), "--split",
                     "val", "--weights", str(run / "best.pt"), "--out", str(out), "--quiet",
                     "--device", "cpu"])
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        best = torch.load(run / "best.pt", weights_only=True)
        assert results["config"]["matcher"]["backbone"] == "dinov2_vits14"
        # validation used the same matcher on the same 12 pairs: the same number
        assert results["pck"]["0.10"]["per_image"] == pytest.approx(best["best"]["pck"])

    def test_wrong_base_weights(self, run: Path, layout: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
        other = save_tiny_dinov2(tmp_path / "other", seed=1, layers=2)
        with pytest.raises(WeightsError, match="differ from those"):
            load_finetuned(run / "best.pt", base_weights=str(other))
        with pytest.raises(WeightsError, match="fine-tuned from"):
            load_finetuned(run / "best.pt", expected_backbone="dinov2_vitb14")
        args = ["eval", "--dataset", "keypoints-json", "--root", str(layout), "--weights",
                str(run / "best.pt"), "--backbone", "dinov2_vitb14", "--out", str(tmp_path)]
        assert main(args) == 2
        assert "best.pt: fine-tuned from 'dinov2_vits14'" in capsys.readouterr().err
        junk = tmp_path / "junk.pt"
        torch.save({"a": torch.zeros(1)}, junk)
        assert not is_finetune_checkpoint(junk)
        with pytest.raises(WeightsError, match="junk.pt"):
            load_finetuned(junk)

    def test_cross_dataset_report(self, run: Path, layout: Path, capsys: pytest.CaptureFixture
                                  ) -> None:
        willow = shared_path("pf-willow")
        code = main(["train", "finetune", "--backbone", "dinov2_vits14", "--dataset",
                     "keypoints-json", "--root", str(layout), "--out", str(run),
                     "--report-only", "--report-split", "val", "--report-limit", "3",
                     "--report-on", f"pf-willow={willow}"])
        assert code == 0
        table = (run / "report" / "report.md").read_text()
        assert "| base |" in table and "| finetuned |" in table and "pf-willow (test)" in table
        assert "foundation-finetune protocol (<=" in table and "PCK@0.20 per keypoint" in table
        assert "## finetuned on pf-willow (test)" in table  # per category and difficulty
        report = json.loads((run / "report" / "report.json").read_text())
        assert report["protocol"] == "foundation-finetune"
        assert report["thresholds"] == ["0.05", "0.10", "0.15", "0.20"]
        for row in report["table"].values():
            assert set(row) == {"keypoints-json (val)", "pf-willow (test)"}
            for cell in row.values():
                assert cell["pairs"] == 3
                assert all(0 <= cell[kind][k]["mean"] <= 1 and cell[kind][k]["std"] >= 0
                           for kind in ("per_image", "per_keypoint") for k in report["thresholds"])
        assert "finetuned" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a real kill


def _cli_args(layout: Path, tiny: Path, out: Path) -> list[str]:
    return ["train", "finetune", "--backbone", "dinov2_vits14", "--weights", str(tiny),
            "--layers", "2", "--dataset", "keypoints-json", "--root", str(layout),
            "--out", str(out), "--steps", "10", "--batch-size", "2", "--val-every", "0",
            "--option", 'backbone_options={"num_patches": 8}', "--option", "temperature=0.1",
            "--option", "checkpoint_every=2", "--device", "cpu"]


def test_sigkilled_run_resumes_exactly(layout: Path, tiny: Path, tmp_path: Path) -> None:
    """A real process killed with SIGKILL after its first checkpoint, then resumed with
    ``--resume``, ends bit-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "semcorr"]
    whole = tmp_path / "whole"
    subprocess.run([*command, *_cli_args(layout, tiny, whole)], env=env, check=True,
                   capture_output=True, timeout=600)

    part = tmp_path / "part"
    proc = subprocess.Popen([*command, *_cli_args(layout, tiny, part)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (part / "last.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = torch.load(part / "last.pt", weights_only=True)["step"]
    assert proc.returncode == -signal.SIGKILL and killed_at < 10, "the run was not cut short"

    subprocess.run([*command, *_cli_args(layout, tiny, part), "--resume"], env=env, check=True,
                   capture_output=True, timeout=600)
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for name, value in a["trained"].items():
        assert torch.equal(value, b["trained"][name]), name
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
