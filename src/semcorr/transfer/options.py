"""The options of a transfer job (:class:`TransferConfig`): what determines its output."""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.options import finite_number, int_at_least, positive_number

__all__ = ["TransferConfig"]


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferConfig:
    """Options of a transfer job (what determines its output; hashed to guard resumes).

    Attributes:
        batch_size: targets per forward pass.
        refine: refinement rule (``argmax``, ``soft``, ``window``, ``kernel``).
        window: window radius in feature cells for ``window`` (default: the rule's).
        temperature: softmax temperature of the soft rules (default: the rule's).
        sigma, kernel_weighting: the ``kernel`` rule's Gaussian (default: the rule's).
        pose_align: also try the flipped source per target (left/right names are swapped).
        min_score: points scoring below it get visibility 0 in the output.
        cycle: match each vote back from the target to its source: a vote's score is multiplied
            by ``exp(-e² / 2r²)`` (``e`` the cycle error, ``r`` = ``cycle_radius``), and votes
            with ``e > r`` are dropped from the consensus unless every vote of the point fails.
        cycle_radius: radius of the cycle check, as a fraction of the source's longer side.
        agreement_radius: votes within this fraction of the target's longer side of the
            consensus count as agreeing; the score is multiplied by the agreeing weight share.
        iterations: Weiszfeld iterations of the geometric median.
    """

    batch_size: int = 8
    refine: str = "window"
    window: int | None = None
    temperature: float | None = None
    sigma: float | None = None
    kernel_weighting: str | None = None
    pose_align: bool = False
    min_score: float = 0.0
    cycle: bool = True
    cycle_radius: float = 0.1
    agreement_radius: float = 0.1
    iterations: int = 30

    def __post_init__(self) -> None:
        """Check every option before any work (the rule's options through the rule itself)."""
        from semcorr.match.refine import refiner_with_options

        int_at_least("batch_size", self.batch_size, 1)
        int_at_least("iterations", self.iterations, 1)
        positive_number("cycle_radius", self.cycle_radius)
        positive_number("agreement_radius", self.agreement_radius)
        finite_number("min_score", self.min_score)
        refiner_with_options(self.refine, radius=self.window, temperature=self.temperature,
                             sigma=self.sigma, weighting=self.kernel_weighting)
