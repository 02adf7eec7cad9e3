"""The options of a transfer job (:class:`TransferConfig`): what determines its output."""

from __future__ import annotations

from dataclasses import dataclass

from semcorr.options import finite_number, int_at_least, positive_number

__all__ = ["SPEED_OPTIONS", "TransferConfig"]

#: Options that change how fast a job runs but not what it writes: left out of the job's
#: fingerprint (a resumed job may use other values) and of the output's recorded config.
SPEED_OPTIONS: tuple[str, ...] = ("batch_size", "workers", "memory_budget")


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferConfig:
    """Options of a transfer job (what determines its output, hashed to guard resumes; the
    :data:`SPEED_OPTIONS` are not hashed: they change the speed, not the output).

    Attributes:
        batch_size: targets per forward pass; ``None`` = the memory rule of
            :mod:`semcorr.features.batching` (from the sources' feature size, the points per
            target and ``memory_budget``).
        workers: threads decoding the next targets while the backbone runs (``0``: decode
            each batch just before its forward, the sequential path; same output).
        memory_budget: bytes a batch may use for the automatic batch size (default: half the
            memory available when the job starts).
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

    batch_size: int | None = None
    workers: int = 2
    memory_budget: int | None = None
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

        if self.batch_size is not None:
            int_at_least("batch_size", self.batch_size, 1)
        int_at_least("workers", self.workers, 0)
        if self.memory_budget is not None:
            int_at_least("memory_budget", self.memory_budget, 1)
        int_at_least("iterations", self.iterations, 1)
        positive_number("cycle_radius", self.cycle_radius)
        positive_number("agreement_radius", self.agreement_radius)
        finite_number("min_score", self.min_score)
        refiner_with_options(self.refine, radius=self.window, temperature=self.temperature,
                             sigma=self.sigma, weighting=self.kernel_weighting)
