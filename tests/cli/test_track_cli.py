"""``semcorr track`` end to end on small synthetic clips made from the bundled photo: outputs
and their formats, a killed run resuming to identical output, video files through PyAV,
``--print-config``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.cli.main import main
from semcorr.errors import InputError
from semcorr.track.outputs import davis_palette
from semcorr.track.synthetic import pck
from semcorr.track.video import have_av
from track_clips import bundled_clip, read_masks, save_clip

SMALL = ["--backbone-option", "image_size=64", "--context", "4", "--quiet", "--no-video"]


@pytest.fixture
def small_clip(tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    clip = bundled_clip(8, (48, 64))
    save_clip(clip, tmp_path / "frames")
    points = tmp_path / "points.json"
    points.write_text(json.dumps(clip.points[0, 9:].tolist()))  # the 4 object points
    return tmp_path / "frames", points, clip.points


def test_track_frame_folder_outputs(small_clip: tuple[Path, Path, torch.Tensor], tmp_path: Path
                                    ) -> None:
    frames, points, truth = small_clip
    out = tmp_path / "out"
    code = main(["track", str(frames), "--points", str(points), "--mask",
                 str(frames.parent / "mask.png"), "--out", str(out), *SMALL])
    assert code == 0
    doc = json.loads((out / "points.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == [f"{t:05d}.png" for t in range(8)]
    first = doc["annotations"][0]
    assert first["keypoints"] == [round(v, 2) for xy in truth[0, 9:].tolist()
                                  for v in (*xy, 2.0)]
    assert first["scores"] == [1.0] * 4
    tracked = torch.tensor([a["keypoints"] for a in doc["annotations"]]).view(8, 4, 3)[..., :2]
    assert pck(tracked[1:], truth[1:, 9:], (48, 64), alpha=0.1) >= 0.8
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == [f"{t:05d}.png" for t in range(8)]
    with Image.open(masks[3]) as image:
        assert image.mode == "P"
        assert image.getpalette()[:9] == davis_palette()[:3].reshape(-1).tolist()
    with Image.open(frames.parent / "mask.png") as given:
        assert np.array_equal(np.asarray(given), read_masks(masks[:1])[0].numpy())
    assert set(read_masks(masks).unique().tolist()) <= {0, 1}
    assert (out / "overlay.jpg").stat().st_size > 1000
    assert len(list((out / "cache").rglob("*.safetensors"))) == 8  # one entry per frame


def test_print_config_shows_dift_settings(capsys: pytest.CaptureFixture) -> None:
    assert main(["track", "--preset", "dift-davis", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["propagation"] == {"context": 28, "topk": 15, "radius": 15,
                                    "temperature": 0.2, "presence_margin": None,
                                    "presence_ratio": None}
    assert shown["backbone"] == "sd21"
    assert shown["backbone_options"]["timestep"] == 51
    assert shown["backbone_options"]["ensemble"] == 8
    assert shown["mask_normalise"] == "minmax"  # DIFT's norm_mask
    assert main(["track", "--preset", "dift-jhmdb", "--topk", "5", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["propagation"]["topk"] == 5 and shown["propagation"]["context"] == 20
    assert shown["published"] is False
    assert main(["track", "--mask-normalise", "none", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["mask_normalise"] == "none"
    assert main(["track", "--print-config"]) == 0  # semcorr track's own default
    shown = json.loads(capsys.readouterr().out)
    assert shown["propagation"]["presence_margin"] == -0.0075
    assert shown["propagation"]["presence_ratio"] == 0.1
    assert shown["presence_colour"] == 3.0
    assert main(["track", "--presence-margin", "off", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["propagation"]["presence_margin"] is None
    assert main(["track", "--preset", "dift-davis", "--presence-margin", "0",
                 "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["propagation"]["presence_margin"] == 0.0 and shown["presence_colour"] == 0.0
    assert main(["track", "--presence-colour", "-1", "--print-config"]) == 2
    assert main(["track", "--presence-margin", "x", "--print-config"]) == 2
    assert main(["track", "--presence-ratio", "off", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["propagation"]["presence_ratio"] is None
    assert main(["track", "--presence-ratio", "0.5", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["propagation"]["presence_ratio"] == 0.5
    assert main(["track", "--presence-ratio", "2", "--print-config"]) == 2
    assert main(["track", "--presence-ratio", "y", "--print-config"]) == 2


def _files(out: Path) -> dict[str, bytes]:
    names = ["points.json", *[f"masks/{t:05d}.png" for t in range(20)]]
    return {name: (out / name).read_bytes() for name in names}


def test_killed_run_resumes_to_identical_output(tmp_path: Path) -> None:
    clip = bundled_clip(20, (48, 64))
    save_clip(clip, tmp_path / "frames")
    argv = ["track", str(tmp_path / "frames"), "--points", "20,20;40,30", "--mask",
            str(tmp_path / "mask.png"), *SMALL]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "semcorr", *argv, "--out", str(killed)],
                               env=env, stderr=subprocess.DEVNULL)
    entries = killed / "cache" / "entries"
    deadline = time.monotonic() + 120
    while len(list(entries.rglob("*.safetensors"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {p: p.stat().st_mtime_ns for p in entries.rglob("*.safetensors")}
    assert 3 <= len(done_before) < 20 and not (killed / "points.json").exists()
    assert main([*argv, "--out", str(killed)]) == 0  # resume
    fresh = tmp_path / "fresh"
    assert main([*argv, "--out", str(fresh)]) == 0
    assert _files(killed) == _files(fresh)
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())  # reused, not redone


@pytest.mark.skipif(not have_av(), reason="PyAV is not installed (pip install 'semcorr[video]')")
def test_video_file_reads_back_and_tracks(tmp_path: Path) -> None:
    from semcorr.track.video import read_video, write_video

    clip = bundled_clip(10, (48, 64))
    arrays = [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in clip.frames]
    video = tmp_path / "clip.mp4"
    write_video(video, arrays, fps=10)
    back = list(read_video(video))
    assert len(back) == 10 and back[0].shape == (48, 64, 3)
    error = np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(arrays, back)])
    assert error < 4.0  # H.264 at crf 18 on a textured 64 x 48 clip: a few grey levels
    out = tmp_path / "out"
    Image.fromarray(clip.masks[0].numpy().astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert main(["track", str(video), "--mask", str(tmp_path / "m.png"), "--out", str(out),
                 "--backbone-option", "image_size=64", "--context", "4", "--quiet"]) == 0
    assert len(list((out / "frames").glob("*.png"))) == 10
    masks = read_masks(sorted((out / "masks").glob("*.png")))
    assert masks.shape == (10, 48, 64) and masks[0].eq(clip.masks[0]).all()
    assert (out / "overlay.mp4").stat().st_size > 1000
    assert len(list(read_video(out / "overlay.mp4"))) == 10


def test_video_without_pyav_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    import semcorr.track.video as video

    monkeypatch.setattr(video, "have_av", lambda: False)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 100)
    code = main(["track", str(tmp_path / "clip.mp4"), "--points", "1,1", "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "clip.mp4" in err[0] and "pip install 'semcorr[video]'" in err[0]
    assert not (tmp_path / "o").exists()


def test_points_from_csv_with_or_without_header(tmp_path: Path) -> None:
    from semcorr.cli.track import read_first_points

    (tmp_path / "a.csv").write_text("x,y\n10.5,20\n3,4\n")
    (tmp_path / "b.csv").write_text("10.5,20\n3,4\n")
    for name in ("a.csv", "b.csv"):
        assert read_first_points(str(tmp_path / name)).tolist() == [[10.5, 20.0], [3.0, 4.0]]
    (tmp_path / "c.csv").write_text("x,y\n1,oops\n")
    with pytest.raises(InputError, match="c.csv: each row must be x,y numbers"):
        read_first_points(str(tmp_path / "c.csv"))
