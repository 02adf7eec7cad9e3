"""Thin modules over the matching rules, one registry entry each."""

from __future__ import annotations

import torch
from torch import nn

from semcorr.match.rules import (
    argmax2d,
    kernel_soft_argmax2d,
    masked_scores,
    soft_argmax2d,
    window_soft_argmax2d,
)
from semcorr.registry import Registry

__all__ = ["REFINERS", "Refiner", "create_refiner", "list_refiners"]


class Refiner(nn.Module):
    """Turns similarities ``(B, N, h, w)`` into grid coordinates ``(B, N, 2)`` and a confidence
    ``(B, N)`` (the best similarity, the same for every rule)."""

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, scores: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = masked_scores(scores, mask)
        _, best = argmax2d(scores)
        return self.rule(scores, None), best


REFINERS: Registry[Refiner] = Registry("refinement rule")


@REFINERS.register("argmax")
class ArgmaxRefiner(Refiner):
    """The best cell."""

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return argmax2d(scores, mask)[0]


@REFINERS.register("soft")
class SoftArgmaxRefiner(Refiner):
    """Soft-argmax over the whole grid."""

    def __init__(self, temperature: float = 0.02) -> None:
        super().__init__()
        self.temperature = temperature

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return soft_argmax2d(scores, self.temperature, mask)


@REFINERS.register("window")
class WindowSoftArgmax(Refiner):
    """Soft-argmax inside a window of ``radius`` cells around the argmax."""

    def __init__(self, radius: int = 3, temperature: float = 0.02) -> None:
        super().__init__()
        self.radius = radius
        self.temperature = temperature

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return window_soft_argmax2d(scores, self.radius, self.temperature, mask)


@REFINERS.register("kernel")
class KernelSoftArgmax(Refiner):
    """Soft-argmax weighted by a Gaussian of ``sigma`` cells around the argmax."""

    def __init__(self, sigma: float = 3.0, temperature: float = 0.04) -> None:
        super().__init__()
        self.sigma = sigma
        self.temperature = temperature

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return kernel_soft_argmax2d(scores, self.sigma, self.temperature, mask)


def create_refiner(name: str, **options: float) -> Refiner:
    """Build the refinement rule ``name`` (``argmax``, ``soft``, ``window``, ``kernel``)."""
    return REFINERS.create(name, **options)


def list_refiners() -> list[str]:
    return REFINERS.names()
