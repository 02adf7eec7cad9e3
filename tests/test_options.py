"""One validation layer for options (issue: nothing gets through): the functions, and the
commands that reach them (exit 2, one line naming the option, nothing written)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from semcorr.cli.main import main
from semcorr.errors import InputError
from semcorr.match.refine import refiner_with_options
from semcorr.options import check_device, finite_number, int_at_least, positive_number
from semcorr.samples import sample_dir


class TestFunctions:
    @pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, -math.inf, True, "1", None])
    def test_positive_refuses(self, value: object) -> None:
        with pytest.raises(InputError, match="^temperature must be"):
            positive_number("temperature", value)

    def test_positive_accepts(self) -> None:
        assert positive_number("t", 0.04) == 0.04 and positive_number("t", 2) == 2.0
        assert finite_number("x", -3) == -3.0

    @pytest.mark.parametrize("value", [-1, 2.5, math.nan, True, "3", None])
    def test_int_refuses(self, value: object) -> None:
        with pytest.raises(InputError, match=r"^radius must be an integer >= 0"):
            int_at_least("radius", value, 0)

    def test_int_accepts(self) -> None:
        assert int_at_least("r", 0, 0) == 0 and int_at_least("r", 3.0, 1) == 3
        assert type(int_at_least("r", 3.0, 1)) is int

    def test_devices(self) -> None:
        assert check_device("cpu") == torch.device("cpu")
        with pytest.raises(InputError, match="not a device to compute on"):
            check_device("meta")
        with pytest.raises(InputError, match="bad --device 'bogus'"):
            check_device("bogus")
        if not torch.cuda.is_available():
            with pytest.raises(InputError, match="CUDA is not available"):
                check_device("cuda")

    @pytest.mark.parametrize(("name", "options", "message"), [
        ("window", {"radius": -1}, "window radius must be an integer >= 0"),
        ("window", {"temperature": 0.0}, "temperature must be > 0"),
        ("soft", {"temperature": math.nan}, "temperature must be a finite number"),
        ("kernel", {"sigma": -2.0}, "sigma must be > 0"),
    ])
    def test_the_python_api_checks_too(self, name: str, options: dict, message: str) -> None:
        with pytest.raises(InputError, match=message):
            refiner_with_options(name, **options)


@pytest.mark.parametrize(("flags", "message"), [
    (["--window", "-1"], "window radius must be an integer >= 0, got -1"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--temperature", "nan"], "temperature must be a finite number, got nan"),
    (["--refine", "kernel", "--sigma", "inf"], "sigma must be a finite number"),
    (["--device", "meta"], "--device meta: not a device to compute on"),
])
def test_match_refuses_bad_options(flags: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv = ["match", str(sample_dir() / "chelsea.jpg"), str(sample_dir() / "chelsea_turned.jpg"),
            "--points", "172,110", "--out", str(out), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"semcorr: error: {err[0][len('semcorr: error: '):]}"] and message in err[0]
    assert not out.exists()


def test_eval_refuses_bad_options_before_any_output(pf_willow_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root), "--out", str(out),
            "--temperature", "-0.5"]
    assert main(argv) == 2
    assert "temperature must be > 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-images", "1"], "--max-images must be an integer >= 2, got 1"),
    (["--max-megapixels", "-1"], "--max-megapixels must be an integer >= 1, got -1"),
])
def test_serve_refuses_limits_that_cannot_work(flags: list[str], message: str,
                                               capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("fastapi")
    assert main(["serve", "--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--window", "-1"], "window radius must be an integer >= 0"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
])
def test_transfer_refuses_bad_options_before_any_work(flags: list[str], message: str,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The NaN-filled COCO file of the issue: refused before a target is touched."""
    out = tmp_path / "labels.json"
    argv = ["transfer", "--sources", str(tmp_path / "ann.json"), "--images", str(sample_dir()),
            "--out", str(out), "--quiet", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
