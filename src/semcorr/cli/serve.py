"""``semcorr serve``: a local web page to click a point and see its match (``web`` extra)."""

from __future__ import annotations

import argparse

from semcorr.cli.common import add_backbone_options, backbone_from_args
from semcorr.errors import InputError
from semcorr.options import int_at_least

__all__ = ["add_parser", "allowed_hosts", "build_app"]


def build_app(args: argparse.Namespace) -> object:
    """The FastAPI app for the parsed options (backbone built and placed on its device once)."""
    try:
        from semcorr.server.app import create_app
    except ImportError as exc:
        raise InputError(
            f"semcorr serve needs the web extra ({exc.name} is missing): "
            "pip install 'semcorr[web]'"
        ) from None
    from semcorr.server.service import CorrespondenceService, ServiceLimits

    limits = ServiceLimits(  # the limits check their own ranges; name the flags in errors
        max_upload_bytes=int_at_least("--max-upload-mb", args.max_upload_mb, 1) * 1024 * 1024,
        max_pixels=int_at_least("--max-megapixels", args.max_megapixels, 1) * 1_000_000,
        max_images=int_at_least("--max-images", args.max_images, 2),
    )
    service = CorrespondenceService(backbone_from_args(args), args.backbone, limits)
    return create_app(service, allowed_hosts=allowed_hosts(args.host, args.allow_host))


def allowed_hosts(bound: str, extra: list[str] | None) -> list[str]:
    """Host names requests may carry: this machine's, the bound address (unless it is a
    wildcard) and each ``--allow-host``."""
    from semcorr.server.app import LOOPBACK_HOSTS

    hosts = [*LOOPBACK_HOSTS, *(extra or [])]
    if bound not in ("0.0.0.0", "::", ""):
        hosts.append(bound)
    return hosts


def _run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number")
    app = build_app(args)
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"semcorr serve: warning: listening on {args.host}, reachable beyond this machine")
    print(f"semcorr serve: http://{args.host}:{args.port}/ (Ctrl+C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="local web page: click a point, see its match",
        description="Serve a local page (and a JSON API, schema at /openapi.json) to load two "
        "images, click points on the source and see their matches and heat map on the target. "
        "Needs the web extra: pip install 'semcorr[web]'.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    add_backbone_options(parser)
    parser.add_argument("--max-upload-mb", type=int, default=16,
                        help="largest upload in MiB (default: 16)")
    parser.add_argument("--max-megapixels", type=int, default=25,
                        help="largest image in megapixels (default: 25)")
    parser.add_argument("--max-images", type=int, default=16,
                        help="uploads kept in memory before the oldest is evicted (default: 16)")
    parser.add_argument("--allow-host", action="append", metavar="HOST",
                        help="also accept requests naming this host (e.g. the machine's name "
                        "when listening beyond it); repeatable. Others get 400 (DNS rebinding "
                        "guard)")
    parser.set_defaults(func=_run)
