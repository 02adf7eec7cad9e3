"""The options of a transfer job (:class:`TransferConfig`): what determines its output."""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.errors import InputError

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
        if self.batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if self.cycle_radius <= 0 or self.agreement_radius <= 0:
            raise InputError("cycle_radius and agreement_radius must be positive")
