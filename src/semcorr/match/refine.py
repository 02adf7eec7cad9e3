"""Thin modules over the matching rules, one registry entry each."""

from __future__ import annotations

import torch
from torch import nn

from semcorr.errors import InputError
from semcorr.match.rules import (
    KERNEL_WEIGHTINGS,
    argmax2d,
    kernel_soft_argmax2d,
    masked_scores,
    soft_argmax2d,
    window_soft_argmax2d,
)
from semcorr.options import int_at_least, positive_number
from semcorr.registry import Registry

__all__ = ["REFINERS", "RULE_OPTIONS", "Refiner", "create_refiner", "list_refiners",
           "refiner_with_options"]


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
        self.temperature = positive_number("temperature", temperature)

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return soft_argmax2d(scores, self.temperature, mask)


@REFINERS.register("window")
class WindowSoftArgmax(Refiner):
    """Soft-argmax inside a window of ``radius`` cells around the argmax."""

    def __init__(self, radius: int = 3, temperature: float = 0.02) -> None:
        super().__init__()
        self.radius = int_at_least("window radius", radius, 0)
        self.temperature = positive_number("temperature", temperature)

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return window_soft_argmax2d(scores, self.radius, self.temperature, mask)


@REFINERS.register("kernel")
class KernelSoftArgmax(Refiner):
    """Soft-argmax with a Gaussian of ``sigma`` cells around the argmax, on the probabilities
    (``weighting="probability"``) or on the similarities (``"score"``, SD4Match's)."""

    def __init__(self, sigma: float = 3.0, temperature: float = 0.04,
                 weighting: str = "probability") -> None:
        super().__init__()
        if weighting not in KERNEL_WEIGHTINGS:
            raise InputError(f"kernel weighting must be one of {KERNEL_WEIGHTINGS}, "
                             f"got {weighting!r}")
        self.sigma = positive_number("sigma", sigma)
        self.temperature = positive_number("temperature", temperature)
        self.weighting = weighting

    def rule(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return kernel_soft_argmax2d(scores, self.sigma, self.temperature, mask, self.weighting)


def create_refiner(name: str, **options: float | str) -> Refiner:
    """Build the refinement rule ``name`` (``argmax``, ``soft``, ``window``, ``kernel``)."""
    return REFINERS.create(name, **options)


#: The options each rule takes (the others are ignored by :func:`refiner_with_options`).
RULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "argmax": (),
    "soft": ("temperature",),
    "window": ("radius", "temperature"),
    "kernel": ("sigma", "temperature", "weighting"),
}


def refiner_with_options(
    name: str,
    *,
    radius: int | None = None,
    temperature: float | None = None,
    sigma: float | None = None,
    weighting: str | None = None,
) -> Refiner:
    """Build rule ``name`` with the options that apply to it; ``None`` keeps the rule's
    default and an option the rule does not take is ignored (``--window`` with ``soft``)."""
    given = {"radius": radius, "temperature": temperature, "sigma": sigma,
             "weighting": weighting}
    applicable = RULE_OPTIONS.get(name, tuple(given))
    return create_refiner(name, **{k: v for k, v in given.items()
                                   if v is not None and k in applicable})


def list_refiners() -> list[str]:
    return REFINERS.names()
