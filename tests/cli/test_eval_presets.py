"""``semcorr eval --preset NAME --print-config``: defaults < preset < options given."""

from __future__ import annotations

import json

import pytest

from semcorr.cli.main import main
from semcorr.eval import presets
from semcorr.eval.presets import EvalPreset, get_eval_preset, register_eval_preset


@pytest.fixture
def toy_preset(monkeypatch: pytest.MonkeyPatch) -> EvalPreset:
    preset = EvalPreset("toy", "a test preset", "tests", headline="PCK@0.10 per image",
                        settings={"dataset": "pf-willow", "window": 5, "pose_align": True,
                                  "thresholds": "0.1"})
    monkeypatch.setitem(presets._PRESETS, preset.name, preset)
    return preset


def _config(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main(["eval", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_preset_fills_what_is_not_given(toy_preset: EvalPreset,
                                        capsys: pytest.CaptureFixture) -> None:
    shown = _config(capsys, "--preset", "toy")
    assert shown["source"] == "tests" and shown["headline"] == "PCK@0.10 per image"
    settings = shown["settings"]
    assert (settings["dataset"], settings["window"], settings["pose_align"]) == (
        "pf-willow", 5, True)
    assert settings["temperature"] is None and settings["split"] == "test"  # option defaults


def test_options_given_beat_the_preset_even_at_their_default(
        toy_preset: EvalPreset, capsys: pytest.CaptureFixture) -> None:
    settings = _config(capsys, "--preset", "toy", "--window", "7", "--no-pose-align",
                       "--thresholds", "0.01,0.05,0.10,0.15")["settings"]
    assert settings["window"] == 7 and settings["pose_align"] is False
    assert settings["thresholds"] == "0.01,0.05,0.10,0.15"  # the default, but given


def test_without_preset_defaults_only(capsys: pytest.CaptureFixture) -> None:
    shown = _config(capsys)
    assert shown["preset"] is None and shown["settings"]["pose_align"] is False


def test_unknown_preset_and_missing_dataset(capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--preset", "nope", "--root", "x"]) == 2
    assert "unknown evaluation preset 'nope'" in capsys.readouterr().err
    assert main(["eval", "--root", "x"]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_registry_refuses_a_second_preset_of_one_name(toy_preset: EvalPreset) -> None:
    assert get_eval_preset("toy") is toy_preset
    with pytest.raises(ValueError, match="already registered"):
        register_eval_preset(toy_preset)
    with pytest.raises(TypeError):
        toy_preset.settings["window"] = 9  # type: ignore[index]  # read-only
