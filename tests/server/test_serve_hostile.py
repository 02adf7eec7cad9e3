"""Hostile requests against a live ``semcorr serve`` (uvicorn on a loopback port): cross-site
posts, a foreign Host (DNS rebinding), random bytes, a million points. None gets a 5xx, none is
echoed back, and a concurrent GET keeps answering within a second.

Every request goes to 127.0.0.1 only; loops are bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from urllib.parse import urlsplit

import pytest

SOURCE, TURNED = "sample-0", "sample-1"


def _request(base: str, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        sent = {"Host": url.netloc, **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _match_body(points: object = ((172.0, 110.0),)) -> bytes:
    return json.dumps({"source": SOURCE, "target": TURNED, "points": points}).encode()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(("headers", "status"), [
    ({"Content-Type": "text/plain"}, 415),  # a form-less CSRF "simple request"
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({}, 415),  # no type at all (a Blob without one)
    ({**JSON, "Origin": "http://evil.example"}, 403),
    ({**JSON, "Origin": "null"}, 403),
    ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
    ({**JSON, "Host": "evil.example:8000"}, 400),  # DNS rebinding: the name is not ours
    ({**JSON, "Host": "127.0.0.1.evil.example"}, 400),
])
def test_cross_site_and_rebinding_refused(live_server: str, headers: dict, status: int) -> None:
    code, body = _request(live_server, "POST", "/api/match", _match_body(), headers)
    assert code == status, body
    assert "detail" in json.loads(body)


def test_uploads_need_an_image_type(live_server: str) -> None:
    code, _ = _request(live_server, "POST", "/api/images?name=x.png", b"\x89PNG....",
                       {"Content-Type": "text/plain"})
    assert code == 415
    code, _ = _request(live_server, "POST", "/api/images?name=x.png", b"\x89PNG....",
                       {"Content-Type": "application/octet-stream",
                        "Origin": "http://evil.example"})
    assert code == 403


def test_same_origin_json_works(live_server: str) -> None:
    origin = live_server  # what a browser on the page sends
    code, body = _request(live_server, "POST", "/api/match", _match_body(),
                          {**JSON, "Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert code == 200, body
    assert len(json.loads(body)["points"]) == 1


def test_random_bytes_never_a_5xx_and_never_echoed(live_server: str) -> None:
    rng = random.Random(0)
    for trial in range(30):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        code, body = _request(live_server, "POST", "/api/match", junk, JSON)
        assert 400 <= code < 500, (trial, code, body[:200])
        detail = json.loads(body)["detail"]
        assert isinstance(detail, str) and len(body) < 1200
        assert junk[:16].decode("latin-1") not in detail or len(junk) < 4


def test_wrongly_typed_points_refused_like_the_cli(live_server: str) -> None:
    for points in ([[True, False]], [["1", "2"]], [[1.0]], "1,2"):
        code, body = _request(live_server, "POST", "/api/match", _match_body(points), JSON)
        assert code == 422, (points, body)
        assert b'"1"' not in body and b"true" not in body  # the input is not echoed


def _declare_and_read(base: str, path: str, body: bytes) -> tuple[int, bytes]:
    """Send the headers (with the body's length) and the first 64 kB, then read the answer: the
    server refuses from the declared length and closes, so the rest is never needed."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.putrequest("POST", path, skip_host=True)
        for key, value in {"Host": url.netloc, **JSON, "Content-Length": str(len(body))}.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            connection.send(body[:65536])
        except OSError:
            pass  # already refused and closed
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_million_points_refused_fast_while_gets_keep_answering(live_server: str) -> None:
    huge = _match_body([[1.5, 2.5]] * 1_000_000)  # ~12 MB of JSON
    answers: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            code, _ = _request(live_server, "GET", "/api/samples")
            assert code == 200
            answers.append(time.monotonic() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        start = time.monotonic()
        code, body = _declare_and_read(live_server, "/api/match", huge)
        took = time.monotonic() - start
    finally:
        stop.set()
        poller.join(timeout=35)
    assert code == 413 and len(body) < 500, body[:200]
    assert took < 5.0, took  # refused from Content-Length, before parsing
    assert answers and max(answers) < 1.0, answers


def test_docs_not_served_schema_is(live_server: str) -> None:
    code, _ = _request(live_server, "GET", "/docs")
    assert code == 404  # Swagger's page loads scripts from a CDN: not served offline
    code, body = _request(live_server, "GET", "/openapi.json")
    assert code == 200 and "/api/match" in json.loads(body)["paths"]
