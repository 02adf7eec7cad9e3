"""``semcorr match`` and ``semcorr demo`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semcorr.cli.main import main
from semcorr.samples import load_samples


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semcorr", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_finds_the_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "matches.json") in printed
    result = json.loads((tmp_path / "matches.json").read_text())
    samples = load_samples()
    poses = [t["pose"] for t in result["targets"]]
    assert poses == ["identity", "hflip"]  # the second target is mirrored
    for target, truth in zip(result["targets"], samples.target_points):
        error = (torch.tensor(target["points"]) - truth).norm(dim=1)
        assert error.max() < 8.0, error  # 8 px on a 451 px image (PCK@0.02)
    assert len(list(tmp_path.glob("match_*.png"))) == 2


def test_match_writes_the_documented_schema(tmp_path: Path) -> None:
    samples = load_samples()
    points = tmp_path / "points.json"
    points.write_text(json.dumps(samples.points.tolist()))
    code = main(["match", str(samples.source), str(samples.targets[0]), str(samples.targets[1]),
                 "--points", str(points), "--refine", "kernel", "--out", str(tmp_path / "o")])
    assert code == 0
    result = json.loads((tmp_path / "o" / "matches.json").read_text())
    assert set(result) == {"source", "backbone", "points", "targets"}
    assert result["backbone"] == "dense-sift"
    assert len(result["targets"]) == 2
    for target in result["targets"]:
        assert set(target) == {"image", "points", "scores", "pose"}
        assert len(target["points"]) == len(target["scores"]) == 6
        assert all(-1.0 <= s <= 1.0 for s in target["scores"])
    error = (torch.tensor(result["targets"][0]["points"]) - samples.target_points[0]).norm(dim=1)
    assert error.max() < 8.0


def test_inline_points(tmp_path: Path) -> None:
    samples = load_samples()
    code = main(["match", str(samples.source), str(samples.targets[0]), "--points",
                 "172,110;316,133", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "matches.json").read_text())
    assert result["points"] == [[172.0, 110.0], [316.0, 133.0]]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda s, d: [str(d / "missing.png"), str(s.targets[0]), "--points", "1,1"],
         "missing.png: no such image file"),
        (lambda s, d: [str(s.source), str(d / "nope.jpg"), "--points", "1,1"],
         "nope.jpg: no such image file"),
        (lambda s, d: [str(s.source), str(d / "corrupt.jpg"), "--points", "1,1"],
         "corrupt.jpg: not a readable image"),
        (lambda s, d: [str(s.source), str(s.targets[0]), "--points", "10,10;999,5"],
         "source point 1 (999, 5) is outside the 451x300 source image"),
        (lambda s, d: [str(s.source), str(s.targets[0]), "--points", "1;2"],
         "malformed --points"),
        (lambda s, d: [str(s.source), str(s.targets[0]), "--points", str(d / "bad.json")],
         "bad.json: not valid JSON"),
        (lambda s, d: [str(s.source), str(s.targets[0]), "--points", "1,1", "--backbone", "nope"],
         "unknown backbone 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make_args, message: str) -> None:  # noqa: ANN001
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "bad.json").write_text("[[1, 2],")
    done = run_cli("match", *make_args(load_samples(), tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("semcorr: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in done.stderr
