"""Torch weight files: read with ``weights_only=True`` only, refusals in one clean line."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from semcorr.errors import WeightsError
from semcorr.io.weights import load_torch_file


class _Payload:
    """An object whose unpickling would run a command: must never be unpickled."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch /tmp/semcorr-pwned",))


def test_plain_weights_load(tmp_path: Path) -> None:
    torch.save({"w": torch.arange(3.0), "meta": {"step": 2}}, tmp_path / "ok.pt")
    loaded = load_torch_file(tmp_path / "ok.pt")
    assert loaded["meta"] == {"step": 2} and loaded["w"].tolist() == [0.0, 1.0, 2.0]


def test_code_is_never_run_and_the_error_is_one_clean_line(tmp_path: Path) -> None:
    marker = Path("/tmp/semcorr-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"w": _Payload()}, tmp_path / "evil.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings must stay inside
        with pytest.raises(WeightsError) as info:
            load_torch_file(tmp_path / "evil.pt")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "evil.pt")) and "never unpickles" in message
    assert "\n" not in message and "weights_only=False" not in message
    assert "Please use" not in message and "add_safe_globals" not in message  # no torch advice
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip"])
def test_corrupt_files(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(WeightsError, match="bad.pt: not a readable torch weights file"):
        load_torch_file(tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="none.pt: no such weights file"):
        load_torch_file(tmp_path / "none.pt")
