"""Fixtures of the server tests: one service on the bundled samples, a client, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from semcorr.features import create_backbone
from semcorr.server.service import CorrespondenceService, ServiceLimits

#: Small limits so the oversize tests stay cheap.
LIMITS = ServiceLimits(max_upload_bytes=2 * 1024 * 1024, max_pixels=4_000_000, max_images=4)


@pytest.fixture(scope="session")
def service() -> CorrespondenceService:
    """The service on the default weight-free backbone with the samples pinned."""
    return CorrespondenceService(create_backbone("dense-sift"), "dense-sift", LIMITS)


@pytest.fixture(scope="session")
def small_service() -> CorrespondenceService:
    """A cheap service (64-pixel input) for tests of the mechanics rather than of accuracy."""
    backbone = create_backbone("dense-sift", image_size=64)
    return CorrespondenceService(backbone, "dense-sift", LIMITS, pose_grid=16)


@pytest.fixture(scope="session")
def client(service: CorrespondenceService) -> Iterator[object]:
    pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
    pytest.importorskip("httpx", reason="httpx (for fastapi's TestClient) is not installed")
    from fastapi.testclient import TestClient

    from semcorr.server.app import create_app

    with TestClient(create_app(service), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(service: CorrespondenceService) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port in a background thread → base URL."""
    pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    from semcorr.server.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
