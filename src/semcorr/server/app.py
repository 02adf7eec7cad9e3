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

from collections.abc import Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
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

__all__ = ["LOOPBACK_HOSTS", "BodyLimit", "RequestGuard", "create_app", "static_dir"]

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


#: Hosts a request may name by default: this machine (a rebinding DNS name is refused).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Largest JSON request body (256 points take about 10 kB).
MAX_JSON_BYTES = 64 * 1024
#: Content types a POST may carry, per route kind.
_UPLOAD_TYPES = ("application/octet-stream", "image/")
_JSON_TYPES = ("application/json",)


def _host_name(value: str) -> str:
    """``"127.0.0.1:8000"`` → ``"127.0.0.1"``, ``"[::1]:8000"`` → ``"::1"`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware in front of every route, refusing before any body is parsed:

    * a ``Host`` not in ``allowed_hosts`` (port ignored): ``400`` (DNS rebinding);
    * an ``Origin`` other than the server's own (``http(s)://<Host>``), ``null`` included, or
      ``Sec-Fetch-Site: cross-site``: ``403`` (another web page posting to this one);
    * a ``POST`` without ``application/json`` (``application/octet-stream`` or ``image/*`` for
      uploads to ``/api/images``): ``415`` (so no form or ``text/plain`` post gets in);
    * a body over ``max_json_bytes`` (JSON) or ``max_upload_bytes`` (uploads), declared or
      streamed: ``413``.

    It also adds the security headers to every answer. A pure ASGI middleware, so a refusal is
    not wrapped in task groups and costs no parsing.
    """

    def __init__(self, app: Any, max_bytes: int, max_json_bytes: int = MAX_JSON_BYTES,
                 allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes
        self.allowed_hosts = {_host_name(h) for h in allowed_hosts}

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if _host_name(host) not in self.allowed_hosts:
            return 400, "unknown Host header (allowed: " + ", ".join(sorted(self.allowed_hosts)) \
                + "; see semcorr serve --allow-host)"
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").lower() not in (
                f"http://{host.lower()}", f"https://{host.lower()}"):
            return 403, "cross-origin request refused"
        if headers.get(b"sec-fetch-site", b"").lower() == b"cross-site":
            return 403, "cross-site request refused"
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            kind = headers.get(b"content-type", b"").decode("latin-1").lower()
            kind = kind.partition(";")[0].strip()
            allowed = _UPLOAD_TYPES if scope["path"] == "/api/images" else _JSON_TYPES
            if not kind or not any(kind == t or (t.endswith("/") and kind.startswith(t))
                                   for t in allowed):
                names = " or ".join(t + "*" * t.endswith("/") for t in allowed)
                return 415, f"Content-Type must be {names}"
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._refuse(send, *refusal)
            return
        limit = self.max_bytes if scope["path"] == "/api/images" else self.max_json_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, 413, f"request body over the limit of {limit} bytes")
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
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
                await self._refuse(send, 413, f"request body over the limit of {limit} bytes")

    async def _refuse(self, send: Any, status: int, detail: str) -> None:
        body = JSONResponse({"detail": detail}, status_code=status,
                            headers={**_HEADERS, "Connection": "close"})
        await send({"type": "http.response.start", "status": body.status_code,
                    "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


#: The former name of :class:`RequestGuard` (it began as the body-size limit).
BodyLimit = RequestGuard


def _validation_summary(exc: RequestValidationError) -> str:
    """Where and what, never the input itself (no echo, nothing to fail on odd bytes)."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p)[:40] for p in error.get("loc", ()) if isinstance(p, (str, int)))
        what = str(error.get("type", "invalid"))[:40]
        problems.append(f"{where}: {what}")
    more = len(exc.errors()) - len(problems)
    return "invalid request: " + "; ".join(problems) + (f" (+{more} more)" if more > 0 else "")


def _info(image: StoredImage) -> ImageInfo:
    return ImageInfo(id=image.id, name=image.name, width=image.width, height=image.height)


def create_app(service: CorrespondenceService,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The web app around a service (routes only).

    Args:
        service: the correspondence service.
        allowed_hosts: host names a request's ``Host`` header may carry (see
            :class:`RequestGuard`); the bound address is added by ``semcorr serve``.

    ``/docs`` and ``/redoc`` are not served (their pages load scripts from a CDN, which the
    page's own security policy forbids and which is unreachable offline); the schema is at
    ``/openapi.json``.
    """
    app = FastAPI(title="semcorr", version=__version__, docs_url=None, redoc_url=None,
                  description="Click a point on the source, see its match on the target.")
    app.state.service = service

    @app.exception_handler(SemcorrError)
    async def _semcorr_error(request: Request, exc: SemcorrError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_summary(exc)}, status_code=422)

    _add_routes(app, service)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(RequestGuard, max_bytes=service.limits.max_upload_bytes,
                       max_json_bytes=MAX_JSON_BYTES, allowed_hosts=allowed_hosts)
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
