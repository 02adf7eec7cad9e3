"""semcorr: image correspondence with visual foundation models.

images → features → post-process → match → evaluate / visualise. See
:mod:`semcorr.conventions` for coordinates and shapes.
"""

from semcorr.errors import SemcorrError
from semcorr.features import create_backbone, list_backbones
from semcorr.io import load_image
from semcorr.match import create_refiner, list_refiners
from semcorr.pipeline import Matcher, MatchResult
from semcorr.postprocess import load_head

__version__ = "0.1.0"

__all__ = [
    "MatchResult",
    "Matcher",
    "SemcorrError",
    "__version__",
    "create_backbone",
    "create_refiner",
    "list_backbones",
    "list_refiners",
    "load_head",
    "load_image",
]
