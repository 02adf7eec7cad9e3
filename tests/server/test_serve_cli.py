"""``semcorr serve`` options, the missing-extra message, and a light ``semcorr.server`` import."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from semcorr.cli.serve import add_parser, build_app
from semcorr.errors import InputError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_defaults_bind_loopback() -> None:
    args = _parse()
    assert (args.host, args.port, args.backbone) == ("127.0.0.1", 8000, None)  # → dense-sift
    assert (args.max_upload_mb, args.max_megapixels, args.max_images) == (16, 25, 16)


def test_bad_port() -> None:
    args = _parse("--port", "70000")
    with pytest.raises(InputError, match="70000 is not a port"):
        args.func(args)


def test_missing_web_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi → ImportError
    monkeypatch.delitem(sys.modules, "semcorr.server.app", raising=False)
    with pytest.raises(InputError, match=r"web extra .*pip install 'semcorr\[web\]'"):
        build_app(_parse())


def test_build_app_applies_limits() -> None:
    pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
    app = build_app(_parse("--max-upload-mb", "3", "--max-images", "5",
                           "--max-megapixels", "2"))
    limits = app.state.service.limits
    assert (limits.max_upload_bytes, limits.max_images, limits.max_pixels) == (
        3 * 1024 * 1024, 5, 2_000_000)


def test_server_package_import_is_light() -> None:
    code = ("import sys, semcorr, semcorr.server, semcorr.cli.serve; "
            "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
