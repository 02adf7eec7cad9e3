"""``semcorr serve``: a local page to click a point and see its match.

:mod:`semcorr.server.service` holds the inference (no web dependency);
:mod:`semcorr.server.app` holds the routes and needs the ``web`` extra (fastapi, uvicorn).
"""

from semcorr.server.service import CorrespondenceService, ServiceLimits

__all__ = ["CorrespondenceService", "ServiceLimits"]
