"""The sample images that ship inside the package (Chelsea the cat, CC0) and their ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

__all__ = ["SamplePair", "sample_dir", "load_samples"]


@dataclass(frozen=True)
class SamplePair:
    """The bundled source image, its named points and the targets with their true points.

    Attributes:
        source: path of the source image.
        points: ``(N, 2)`` source points; ``point_names`` names them.
        targets: paths of the target images.
        target_points: one ``(N, 2)`` tensor of true points per target.
        matrices: one ``(3, 3)`` source→target pixel matrix per target.
    """

    source: Path
    points: torch.Tensor
    point_names: list[str]
    targets: list[Path]
    target_points: list[torch.Tensor]
    matrices: list[torch.Tensor]


def sample_dir() -> Path:
    """Folder of the bundled images."""
    return Path(str(resources.files("semcorr") / "assets"))


def load_samples() -> SamplePair:
    """The bundled sample pair(s) with ground truth."""
    root = sample_dir()
    meta = json.loads((root / "samples.json").read_text())
    return SamplePair(
        source=root / meta["source"],
        points=torch.tensor(meta["points"], dtype=torch.float32),
        point_names=list(meta["point_names"]),
        targets=[root / t["image"] for t in meta["targets"]],
        target_points=[torch.tensor(t["points"], dtype=torch.float32) for t in meta["targets"]],
        matrices=[torch.tensor(t["matrix"], dtype=torch.float64) for t in meta["targets"]],
    )
