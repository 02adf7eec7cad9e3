"""The exit-status contract of every job (see ``semcorr.cli.main``): 2 and one line for bad
input, argparse's included; 1 and one line for a failure during the work (``--debug`` for the
traceback); progress bars closed before the error prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from semcorr.cli.main import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semcorr", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("argv", "start"), [
    (["match"], "semcorr: error: match: the following arguments are required"),
    (["bogus"], "semcorr: error: argument JOB: invalid choice: 'bogus'"),
    (["eval", "--window", "x"], "semcorr: error: eval: argument --window: invalid int value"),
    (["train", "r2d2", "--steps", "many"], "semcorr: error: train r2d2: argument --steps"),
])
def test_argparse_errors_are_one_line_exit_2(argv: list[str], start: str,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(start), err


def test_failure_during_work_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    import semcorr.cli.demo as demo

    def broken(*args: object, **kwargs: object) -> None:
        from tqdm import tqdm

        tqdm(total=10, desc="working").update(3)  # left open, as a crash would leave it
        raise RuntimeError("disk\nfull")

    monkeypatch.setattr(demo, "run_match", broken)
    assert main(["demo", "--out", "unused"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last == ("semcorr: error: RuntimeError: disk full (run with --debug for the "
                    "traceback)")
    from tqdm import tqdm

    assert not list(getattr(tqdm, "_instances", ()))  # the bar was closed before the error
    with pytest.raises(RuntimeError, match="disk"):
        main(["--debug", "demo", "--out", "unused"])


def test_help_still_exits_zero() -> None:
    done = run_cli("eval", "--help")
    assert done.returncode == 0 and "--preset" in done.stdout


def _unwritable_cases(tmp: Path) -> list[tuple[list[str], str]]:
    from semcorr.samples import sample_dir

    cat = str(sample_dir() / "chelsea.jpg")
    afile = tmp / "afile"
    afile.write_text("x")
    return [
        (["match", cat, cat, "--points", "1,1", "--out", str(afile)], "is a file, not a folder"),
        (["match", cat, cat, "--points", "1,1", "--out", str(afile / "x")],
         "lies under the file"),
        (["match", cat, cat, "--points", "1,1", "--out", "/proc/semcorr"], "cannot write in"),
        (["show", "features", cat, "--out", "/proc/semcorr"], "cannot write in"),
        (["extract", "--cache", str(afile), cat], "--cache"),
        (["extract", "--cache", str(tmp / "c"), str(tmp / "missing.png")], "none of the 1 image"),
        (["train", "r2d2", str(tmp / "nowhere"), "--out", str(tmp / "r")], "no such image folder"),
        (["train", "r2d2", str(sample_dir()), "--out", str(afile)], "is a file, not a folder"),
        (["transfer", "--sources", str(tmp / "s.json"), "--images", str(sample_dir()), "--out",
          str(afile / "o.json"), "--quiet"], "lies under the file"),
        (["transfer", "--sources", str(tmp / "s.json"), "--images", str(sample_dir()), "--out",
          str(tmp / "o.json"), "--sheet", "/proc/semcorr/s.png", "--quiet"], "--sheet"),
    ]


def test_unwritable_or_missing_outputs_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Each reproduction of the issue: exit 2, one line, and nothing left behind."""
    for argv, message in _unwritable_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("semcorr: error:") and message in err[-1], (argv, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, argv
