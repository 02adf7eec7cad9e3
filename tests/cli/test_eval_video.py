"""``semcorr eval --dataset davis2017|jhmdb`` end to end: tiny fixtures in the official layouts,
dense-sift features, DIFT's label propagation, the official metrics; hand-computed numbers.

Every clip is static (the same photo in every frame) and propagated with ``--topk 1``: each
cell's best match is itself, so the first frame's labels are copied exactly, and the ground
truth is what moves. DAVIS (128 x 128 frames, boundary band ceil(0.008 x 181.02) = 2 px): in
``shifted`` the ground truth of object 1 is 2 px wider (J = 64/66, its edge within the band:
F = 1) and that of object 2 starts 8 px later (J = 24/32; its only boundary 8 px away: F = 0).
JHMDB: in ``moved`` five joints are 20 px off in the ground truth of every frame after the
first, 20 / (0.6 x 113.1) = 0.29 > 0.2, the others within a cell of their place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semcorr.cli.main import main
from semcorr.data.video import read_index_png
from video_fixtures import JOINTS, JOINTS_REFERENCE, band_mask, photo, write_davis, write_jhmdb

FAST = ["--backbone", "dense-sift", "--backbone-option", "image_size=128", "--topk", "1",
        "--context", "1", "--radius", "2", "--quiet"]


def _davis(root: Path) -> Path:
    frame = photo()
    return write_davis(root, {"static": ([frame] * 3, [band_mask()] * 3),
                              "shifted": ([frame] * 3, [band_mask()] + [band_mask(2, 8)] * 2)})


def _jhmdb(root: Path) -> Path:
    frame = photo()
    still = np.repeat(JOINTS[None], 3, axis=0)
    moved = still.copy()
    moved[1:, 4:9, 0] += 20.0
    return write_jhmdb(root, {("wave", "still"): ([frame] * 3, still, "2"),
                              ("wave", "moved"): ([frame] * 3, moved, "2"),
                              ("clap", "training"): ([frame] * 2, still[:2], "1")})


def test_davis_static_and_shifted_clips_give_the_hand_computed_j_and_f(tmp_path, capsys):
    root, out = _davis(tmp_path / "DAVIS"), tmp_path / "out"
    assert main(["eval", "--dataset", "davis2017", "--root", str(root), "--out", str(out),
                 *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert results["split"] == "val" and results["videos"] == 2 and summary["objects"] == 4
    per_object = summary["per_object"]
    assert per_object["static_1"] == {"J-Mean": 1.0, "F-Mean": 1.0}
    assert per_object["static_2"] == {"J-Mean": 1.0, "F-Mean": 1.0}
    assert per_object["shifted_1"]["J-Mean"] == pytest.approx(64 / 66, abs=1e-12)
    assert per_object["shifted_1"]["F-Mean"] == 1.0
    assert per_object["shifted_2"]["J-Mean"] == pytest.approx(24 / 32, abs=1e-12)
    assert per_object["shifted_2"]["F-Mean"] == 0.0
    assert summary["J-Mean"] == pytest.approx((2 + 64 / 66 + 0.75) / 4, abs=1e-12)
    assert summary["F-Mean"] == 0.75
    assert summary["J&F-Mean"] == pytest.approx((summary["J-Mean"] + 0.75) / 2, abs=1e-12)
    assert summary["J-Decay"] == 0.0 and summary["F-Recall"] == 0.75
    assert "| 4 | 84.0 | 93.0 |" in capsys.readouterr().out  # the table, in %
    # the predictions, in the layout davis2017-evaluation reads: the first frame's labels
    for t in range(3):
        np.testing.assert_array_equal(
            read_index_png(out / "predictions" / "shifted" / f"{t:05d}.png"), band_mask())


def test_jhmdb_static_clip_scores_one_and_moved_joints_miss(tmp_path):
    root, out = _jhmdb(tmp_path / "JHMDB"), tmp_path / "out"
    assert main(["eval", "--dataset", "jhmdb", "--root", str(root), "--out", str(out),
                 *FAST]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["frames"] == 2 + 2  # the test videos only, first frames not scored
    for alpha in ("0.1", "0.2"):  # joints 4..8: hit in "still", missed in "moved"
        assert summary["per_joint"][alpha] == [1.0] * 4 + [0.5] * 5 + [1.0] * 6
        assert summary["pck"][alpha] == pytest.approx(12.5 / 15, abs=1e-12)
    videos = {p.stem: json.loads(p.read_text()) for p in (out / "videos").glob("*.json")}
    still = np.asarray(videos["wave__still"]["distances"])
    assert still.shape == (2, 15) and still.max() * JOINTS_REFERENCE < 4.0  # within a cell
    moved = np.asarray(videos["wave__moved"]["distances"])
    assert np.all(np.abs(moved[:, 4:9] * JOINTS_REFERENCE - 20.0) < 4.0)


def test_a_rerun_resumes_per_video_and_refuses_other_settings(tmp_path, capsys):
    root, out = _jhmdb(tmp_path / "JHMDB"), tmp_path / "out"
    argv = ["eval", "--dataset", "jhmdb", "--root", str(root), "--out", str(out), *FAST]
    assert main(argv + ["--limit", "1"]) == 0  # a run stopped after its first video
    done = out / "videos" / "wave__still.json"
    record = json.loads(done.read_text())
    record["distances"] = [[1.0] * 15, [1.0] * 15]  # marked: a resumed run must reuse it
    done.write_text(json.dumps(record))
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    # "still" (reused) misses every joint; "moved" (computed now) hits all but joints 4..8
    assert summary["pck"]["0.2"] == pytest.approx(10 / 15 * 0.5, abs=1e-12)
    assert main(argv[:-1] + ["--topk", "2", "--quiet"]) == 2  # bad input: one line, status 2
    assert "another configuration" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0  # recomputed from scratch
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["pck"]["0.2"] == pytest.approx(12.5 / 15, abs=1e-12)


def test_bad_roots_are_named(tmp_path, capsys):
    for dataset, named in (("davis2017", "ImageSets/2017/val.txt"), ("jhmdb", "splits")):
        assert main(["eval", "--dataset", dataset, "--root", str(tmp_path), "--quiet",
                     "--out", str(tmp_path / "o")]) == 2
        assert named in capsys.readouterr().err


def test_print_config_shows_the_dift_preset(capsys):
    assert main(["eval", "--dataset", "davis2017", "--track-preset", "dift-davis",
                 "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["split"] == "val" and shown["backbone"] == "sd21"
    assert shown["propagation"] == {"context": 28, "topk": 15, "radius": 15,
                                    "temperature": 0.2, "presence_margin": None,
                                    "presence_ratio": None}
    assert main(["eval", "--dataset", "jhmdb", "--print-config", "--topk", "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["split"] == "test" and shown["backbone"] == "dense-sift"
    assert shown["propagation"] == {"context": 20, "topk": 3, "radius": 12.0,
                                    "temperature": 0.1, "presence_margin": None,
                                    "presence_ratio": None}
