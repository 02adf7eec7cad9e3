"""Configuration layering refuses values that would make a run silently wrong."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from semcorr.config import build_config
from semcorr.errors import InputError


@dataclass
class _Toy:
    steps: int = 10
    lr: float = 1e-3
    name: str = "run"


@pytest.mark.parametrize(("override", "message"), [
    ("steps=abc", "command line: steps must be an integer, got 'abc'"),
    ("steps=2.5", "steps must be an integer"),
    ("lr=nan", "command line: lr must be a finite number, got nan"),
    ("lr=inf", "lr must be a finite number"),
    ("lr=-.inf", "lr must be a finite number"),
    ("lr=fast", "lr must be a number, got 'fast'"),
    ("lr=true", "lr must be a number, got True"),
    ("speed=3", "unknown setting(s) speed"),
])
def test_bad_values_name_the_key_and_source(override: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(_Toy, overrides=[override])


def test_good_values_and_precedence(tmp_path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("steps: 20\nlr: 0.5\n")
    config = build_config(_Toy, file, ["lr=2e-3"], base={"steps": 5, "name": "preset"})
    assert (config.steps, config.lr, config.name) == (20, 0.002, "preset")
    file.write_text('steps: "abc"\n')
    with pytest.raises(InputError, match=r"c.yaml: steps must be an integer, got 'abc'"):
        build_config(_Toy, file)
