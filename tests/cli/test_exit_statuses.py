"""The exit-status contract of every job (see ``semcorr.cli.main``): 2 and one line for bad
input, argparse's included; 1 and one line for a failure during the work (``--debug`` for the
traceback); progress bars closed before the error prints."""

from __future__ import annotations

import subprocess
import sys

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
