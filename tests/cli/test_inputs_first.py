"""Every job checks its inputs and outputs before any work (issue 19, items 2, 9 and 10): a bad
path or dataset gives exit 2 and one line naming it, before any weights are fetched, and leaves
nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semcorr.cli.main import main


@pytest.fixture
def willow(pf_willow_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "willow"
    shutil.copytree(pf_willow_root / "car(G)", root / "car(G)")
    return root


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a backbone (which may reach the hub) fails the test: inputs come first."""

    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a backbone was built before the inputs were checked")

    import semcorr.train.finetune.trainer as finetune
    import semcorr.train.geoaware as geoaware

    monkeypatch.setattr(finetune, "create_backbone", touched)
    monkeypatch.setattr(geoaware, "create_backbone", touched)


def _swap(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv
    return [new if a == old else a for a in argv]


def _cases(tmp: Path, willow: Path) -> list[tuple[list[str], str]]:
    from semcorr.samples import sample_dir

    cat = str(sample_dir() / "chelsea.jpg")
    (tmp / "afile").write_text("x")
    (tmp / "c.json").write_text('{"steps": "abc"}')
    (tmp / "s.json").write_text(f'{{"source": "{cat}", "points": [[100, 100]]}}')
    o, nowhere, afile = str(tmp / "o"), str(tmp / "nowhere"), str(tmp / "afile")
    finetune = ["train", "finetune", "--out", o, "--steps", "1"]
    on_willow = ["--root", str(willow), "--dataset", "pf-willow", "--train-split", "test",
                 "--val-split", ""]
    geoaware = ["train", "geoaware", f"out={o}", f"root={willow}", "dataset=pf-willow",
                "split=test", "backbone=dense-sift", "steps=1"]
    eval_ = ["eval", "--dataset", "pf-willow", "--root", str(willow), "--out", o, "--quiet"]
    transfer = ["transfer", "--sources", str(tmp / "s.json"), "--images", str(sample_dir()),
                "--out", str(tmp / "o.json"), "--quiet"]
    return [
        # the reproduction: named at once, no hub access (no_weights)
        ([*finetune, "--root", nowhere], f"{nowhere}: missing SPair-71k folder"),
        ([*finetune, "--root", str(willow), "--dataset", "nosuch"], "nosuch"),
        ([*finetune, *_swap(on_willow, "test", "trn")], "split must be one of"),
        (["train", "finetune", "--out", f"{afile}/x", "--root", nowhere],
         "lies under the file"),
        ([*finetune, *on_willow, "--report-on", f"pf-willow={nowhere}"],
         f"{nowhere}: missing PF-WILLOW folder"),
        ([*finetune, *on_willow, "--report-only"], "no such checkpoint"),
        (_swap(geoaware, f"root={willow}", f"root={nowhere}"), f"{nowhere}: missing PF-WILLOW"),
        (_swap(geoaware, "split=test", "split=trn"), "split must be one of"),
        (_swap(geoaware, f"out={o}", f"out={afile}"), "is a file, not a folder"),
        ([*geoaware, f"init={nowhere}.pt"], "no such weights file"),
        ([*geoaware, f"cache={afile}/c"], "cache"),
        ([*geoaware, "eval_dataset=pf-willow", f"eval_root={nowhere}"], "missing PF-WILLOW"),
        (["train", "r2d2", nowhere, "--out", o], "no such image folder"),
        (["train", "r2d2", str(sample_dir()), "--out", o, "--config", str(tmp / "c.json")],
         f"{tmp / 'c.json'}: steps must be an integer, got 'abc'"),
        (["train", "r2d2", str(sample_dir()), "--out", o, "--lr", "nan"],
         "lr must be a finite number"),
        (_swap(eval_, str(willow), nowhere), f"{nowhere}: missing PF-WILLOW folder"),
        ([*eval_, "--split", "trn"], "split must be one of"),
        ([*eval_, "--limit", "0"], "--limit must be at least 1"),
        ([*eval_, "--weights", f"{nowhere}.pt", "--backbone", "dinov2_vits14"],
         "no such weights file"),
        (_swap(transfer, str(tmp / "s.json"), f"{nowhere}.json"), "no such annotation file"),
        (_swap(transfer, str(sample_dir()), nowhere), "no such folder or image list"),
        ([*transfer, "--cache", afile], "--cache"),
        (["extract", "--cache", o, f"{nowhere}.png"], "none of the 1 image file(s) exists"),
        (["extract", "--cache", o, "--dataset", "pf-willow", "--root", nowhere],
         "missing PF-WILLOW folder"),
        (["keypoints", f"{nowhere}.png", "--out", o], "none of the 1 image file(s) exists"),
        (["track", nowhere, "--points", "1,1", "--out", o], "no such video file or frame folder"),
        (["track", str(sample_dir()), "--out", o], "nothing to track"),
        (["track", str(sample_dir()), "--points", f"{nowhere}.json", "--out", o],
         "no such points file"),
        (["track", str(sample_dir()), "--points", "9999,1", "--out", o], "outside the 451x300"),
        (["track", str(sample_dir()), "--mask", str(sorted((willow / "car(G)").glob("*.png"))[0]),
          "--out", o], "the frames are 451x300"),
        (["track", str(sample_dir()), "--points", "1,1", "--out", afile], "is a file"),
        (["track", str(sample_dir()), "--points", "1,1", "--out", o, "--topk", "0"], "--topk"),
        (["track", afile, "--points", "1,1", "--out", o], "not a video"),
        (["track", str(sample_dir()), "--points", "1,1", "--out", o, "--sigma", "0"], "--sigma"),
    ]


def test_bad_inputs_refused_before_any_work(tmp_path: Path, willow: Path, no_weights: None,
                                            capsys: pytest.CaptureFixture) -> None:
    """Each command: exit 2, exactly one line on stderr naming the problem, nothing created."""
    for argv, message in _cases(tmp_path, willow):
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (argv, err)
        assert len(err) == 1 and err[0].startswith("semcorr: error:"), (argv, err)
        assert message in err[0], (argv, err)
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before, argv
