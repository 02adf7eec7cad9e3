"""A job whose every item failed exits 1 with one line on stderr, lists the items on stdout and
leaves only its named resumable state (issue 19, item 10); one good item is enough for exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semcorr.cli.main import main


def test_transfer_every_target_failed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from semcorr.samples import sample_dir

    (tmp_path / "s.json").write_text(json.dumps({"source": str(sample_dir() / "chelsea.jpg"),
                                                 "points": [[100, 100]]}))
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("t0.png", "t1.png"):
        (images / name).write_bytes(b"not a png")
    out = tmp_path / "o.json"
    argv = ["transfer", "--sources", str(tmp_path / "s.json"), "--images", str(images), "--out",
            str(out), "--quiet", "--sheet", str(tmp_path / "sheet.png")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"semcorr: error: transfer: all 2 target image(s) failed (listed above; resumable state "
        f"in {out}.parts)"]
    assert captured.out.count("skipped ") == 2 and "t0.png" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "o.json.parts", "s.json"]
    shutil.copy(sample_dir() / "chelsea_turned.jpg", images / "t2.jpg")  # one good target
    assert main(argv) == 0
    document = json.loads(out.read_text())
    assert len(document["annotations"]) == 1 and len(document["semcorr"]["failed"]) == 2
    assert (tmp_path / "sheet.png").is_file()


def test_eval_every_pair_skipped(pf_willow_root: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "willow"
    shutil.copytree(pf_willow_root / "car(G)", root / "car(G)")
    for mat in root.glob("*/*.mat"):
        mat.write_bytes(b"")
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "pf-willow", "--root", str(root), "--out", str(out),
                 "--quiet", "--limit", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "semcorr: error: eval: none of the 4 pair(s) could be scored (listed above)"]
    assert captured.out.count("skipped car(G)/") == 4
    results = json.loads((out / "results.json").read_text())  # the reasons, kept for reading
    assert results["pairs"] == 0 and results["skipped"] == 4
