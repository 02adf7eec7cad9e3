"""Weights resolution: hub id vs local path vs $SEMCORR_WEIGHTS, clear offline errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semcorr.errors import WeightsError
from semcorr.hub import (
    WeightsSource,
    download_hint,
    hub_offline,
    load_from_pretrained,
    load_state_dict,
    resolve_weights,
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SEMCORR_WEIGHTS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


class TestResolve:
    def test_default_is_hub_id(self) -> None:
        source = resolve_weights(None, name="dinov2_vitb14", default="facebook/dinov2-base")
        assert source == WeightsSource("hub", "facebook/dinov2-base", "dinov2_vitb14")

    def test_existing_path_wins(self, tmp_path: Path) -> None:
        folder = tmp_path / "facebook" / "dinov2-base"
        folder.mkdir(parents=True)
        source = resolve_weights(str(folder), name="x", default="a/b")
        assert source.kind == "local" and source.location == str(folder)
        assert not source.is_file

    def test_hub_id_shape(self) -> None:
        assert resolve_weights("owner/model-1.5", name="x", default="a/b").kind == "hub"

    @pytest.mark.parametrize("text", ["./missing/model", "/abs/missing.pth", "missing.pth",
                                      "~/nothing/here"])
    def test_missing_local_path(self, text: str) -> None:
        with pytest.raises(WeightsError, match="no such weights file or folder"):
            resolve_weights(text, name="x", default="a/b")

    def test_env_folder_and_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("SEMCORR_WEIGHTS", str(tmp_path))
        assert resolve_weights(None, name="m", default="a/b").kind == "hub"  # nothing there yet
        (tmp_path / "m.pth").write_bytes(b"")
        source = resolve_weights(None, name="m", default="a/b")
        assert source.location == str(tmp_path / "m.pth") and source.is_file
        (tmp_path / "m").mkdir()
        assert resolve_weights(None, name="m", default="a/b").location == str(tmp_path / "m")

    def test_explicit_beats_env(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        (tmp_path / "m").mkdir()
        monkeypatch.setenv("SEMCORR_WEIGHTS", str(tmp_path))
        assert resolve_weights("org/other", name="m", default="a/b").location == "org/other"


class TestLoadFromPretrained:
    def test_offline_hub_error_names_download(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("SEMCORR_WEIGHTS", "/data/weights")
        seen = {}

        def loader(location: str, **kwargs: object) -> None:
            seen.update(kwargs)
            raise OSError("not cached")

        with pytest.raises(WeightsError) as info:
            load_from_pretrained(loader, WeightsSource("hub", "org/model", "m"))
        message = str(info.value)
        assert seen["local_files_only"] is True
        assert "offline" in message and "org/model" in message
        assert "/data/weights/m" in message
        assert hub_offline()

    def test_local_error_names_folder(self, tmp_path: Path) -> None:
        def loader(location: str, **kwargs: object) -> None:
            raise OSError("no config.json\nmore")

        with pytest.raises(WeightsError, match=f"{tmp_path}: cannot load weights.*config.json"):
            load_from_pretrained(loader, WeightsSource("local", str(tmp_path), "m"))

    def test_hint(self) -> None:
        assert "hf download org/x" in download_hint("m", "org/x")


class TestStateDict:
    def test_unwraps_and_loads_safely(self, tmp_path: Path) -> None:
        torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "a.pth")
        assert torch.equal(load_state_dict(tmp_path / "a.pth")["w"], torch.ones(2))

    def test_safetensors(self, tmp_path: Path) -> None:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
        assert load_state_dict(tmp_path / "a.safetensors")["w"].shape == (3,)

    def test_refuses_pickled_objects(self, tmp_path: Path) -> None:
        import collections

        torch.save({"w": collections.Counter("ab")}, tmp_path / "evil.pth")  # not allowlisted
        with pytest.raises(WeightsError, match="evil.pth"):
            load_state_dict(tmp_path / "evil.pth")

    def test_not_tensors(self, tmp_path: Path) -> None:
        torch.save({"w": 3}, tmp_path / "n.pth")
        with pytest.raises(WeightsError, match="state dict of tensors"):
            load_state_dict(tmp_path / "n.pth")
