"""Routes of ``semcorr serve`` (no inference here: see :mod:`semcorr.server.service`).

API (JSON unless said; the OpenAPI schema is served at ``/openapi.json``, docs at ``/docs``):

* ``GET  /api/samples`` → the bundled sample images and suggested source points.
* ``POST /api/images?name=NAME`` with the image's raw bytes as the body → ``201`` + ``ImageInfo``.
  ``413`` over the byte or pixel limit, ``415`` not an accepted image (sniffed by content).
* ``GET  /api/images/{id}`` → the image as PNG; ``404`` unknown id.
* ``POST /api/pair`` ``{source, target}`` → computes and caches the pair's features.
* ``POST /api/match`` ``{source, target, points, pose_align, refine}`` → points, scores, pose;
  ``400`` a point outside the source or an unknown rule, ``404`` unknown id.
* ``GET  /api/heatmap?source=&target=&x=&y=&pose_align=`` → RGBA PNG of the target's size.
* ``POST /api/matches.json`` (a match request) → the ``matches.json`` of ``semcorr match``.

fastapi is imported by this module: import it only through :func:`create_app` callers that
have the ``web`` extra.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from semcorr import __version__
from semcorr.errors import SemcorrError
from semcorr.server.schemas import (
    ErrorResponse,
    ImageInfo,
    MatchRequest,
    MatchResponse,
    PairRequest,
    PairResponse,
    SamplesResponse,
)
from semcorr.server.service import CorrespondenceService
from semcorr.server.uploads import (
    ImageTooLargeError,
    NotAnImageError,
    StoredImage,
    UnknownImageError,
)

__all__ = ["BodyLimit", "create_app", "static_dir"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad input (e.g. a point outside the source image)",
        404: "unknown image id",
        413: "request or image too large",
        415: "not an accepted image",
    }.items()
}

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'",
}


def static_dir() -> str:
    """Folder of the page's files (shipped as package data)."""
    return str(resources.files("semcorr.server") / "static")


def _status(exc: SemcorrError) -> int:
    if isinstance(exc, UnknownImageError):
        return 404
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError):
        return 415
    return 400


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with ``413``, whether the
    client declares a ``Content-Length`` or streams chunks; it also adds the security headers
    to every answer (a pure ASGI middleware, so the refusal is not wrapped in task groups)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()
                         if k.lower().encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = JSONResponse({"detail": f"request body over the limit of {self.max_bytes} bytes"},
                            status_code=413, headers={**_HEADERS, "Connection": "close"})
        await send({"type": "http.response.start", "status": body.status_code,
                    "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


def _info(image: StoredImage) -> ImageInfo:
    return ImageInfo(id=image.id, name=image.name, width=image.width, height=image.height)


def create_app(service: CorrespondenceService) -> FastAPI:
    """The web app around a service (routes only)."""
    app = FastAPI(title="semcorr", version=__version__,
                  description="Click a point on the source, see its match on the target.")
    app.state.service = service

    @app.exception_handler(SemcorrError)
    async def _semcorr_error(request: Request, exc: SemcorrError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status(exc))

    _add_routes(app, service)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_upload_bytes)
    return app


def _add_routes(app: FastAPI, service: CorrespondenceService) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(f"{static_dir()}/index.html", media_type="text/html")

    @app.get("/api/samples", response_model=SamplesResponse)
    def samples() -> SamplesResponse:
        return SamplesResponse(images=[_info(i) for i in service.store.pinned()],
                               points=service.sample_points,
                               point_names=service.sample_point_names)

    @app.post("/api/images", response_model=ImageInfo, status_code=201, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string",
                                                          "format": "binary"}}}}})
    async def upload(request: Request,
                     name: str | None = Query(None, max_length=255)) -> ImageInfo:
        data = await request.body()
        from starlette.concurrency import run_in_threadpool

        stored = await run_in_threadpool(service.add_upload, data, name)
        return _info(stored)

    @app.get("/api/images/{image_id}", responses={200: {"content": {"image/png": {}}},
                                                  **_ERRORS})
    def image(image_id: str) -> Response:
        return Response(service.store.get(image_id).png, media_type="image/png")

    @app.post("/api/pair", response_model=PairResponse, responses=_ERRORS)
    def pair(request: PairRequest) -> PairResponse:
        features = service.set_pair(request.source, request.target)
        return PairResponse(source=request.source, target=request.target,
                            aligned_pose=features.source.poses[features.aligned],
                            pose_distances=features.pose_distances)

    @app.post("/api/match", response_model=MatchResponse, responses=_ERRORS)
    def match(request: MatchRequest) -> MatchResponse:
        result = service.match(request.source, request.target, [list(p) for p in request.points],
                               request.pose_align, request.refine)
        return MatchResponse(points=result.points.tolist(), scores=result.scores.tolist(),
                             pose=result.pose, pose_distances=result.pose_distances)

    @app.get("/api/heatmap", responses={200: {"content": {"image/png": {}}}, **_ERRORS})
    def heatmap(source: str = Query(max_length=64), target: str = Query(max_length=64),
                x: float = Query(), y: float = Query(), pose_align: bool = True) -> Response:
        png = service.heatmap(source, target, x, y, pose_align)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/matches.json", responses={200: {"content": {"application/json": {}}},
                                              **_ERRORS})
    def download(request: MatchRequest) -> Response:
        data = service.matches_json(request.source, request.target,
                                    [list(p) for p in request.points], request.pose_align,
                                    request.refine)
        return Response(data, media_type="application/json", headers={
            "Content-Disposition": 'attachment; filename="matches.json"'})
