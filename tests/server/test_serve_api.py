"""The JSON API: documented answers, documented 4xx for bad input, and still alive afterwards."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from semcorr.server.service import CorrespondenceService

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (for fastapi's TestClient) is not installed")

SOURCE, TURNED = "sample-0", "sample-1"
EYE = [172.0, 110.0]
UPLOAD = {"Content-Type": "application/octet-stream"}


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _claimed_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b""))


def _still_answers(client) -> None:
    response = client.post("/api/match", json={"source": SOURCE, "target": TURNED,
                                               "points": [EYE]})
    assert response.status_code == 200
    x, y = response.json()["points"][0]
    assert abs(x - 183.95) < 4 and abs(y - 120.03) < 4  # the eye's true place (samples.json)


class TestAnswers:
    def test_samples(self, client) -> None:
        body = client.get("/api/samples").json()
        assert [i["id"] for i in body["images"]] == ["sample-0", "sample-1", "sample-2"]
        assert body["images"][0] == {"id": "sample-0", "name": "chelsea.jpg", "width": 451,
                                     "height": 300}
        assert body["points"][0] == EYE and body["point_names"][0] == "left eye"

    def test_pair_then_match(self, client, service: CorrespondenceService) -> None:
        pair = client.post("/api/pair", json={"source": SOURCE, "target": TURNED}).json()
        assert pair["aligned_pose"] in ("identity", "hflip")
        assert set(pair["pose_distances"]) == {"identity", "hflip"}
        body = client.post("/api/match", json={
            "source": SOURCE, "target": TURNED, "points": service.sample_points,
            "pose_align": False, "refine": "argmax"}).json()
        want = service.match(SOURCE, TURNED, service.sample_points, False, "argmax")
        np.testing.assert_allclose(body["points"], want.points.numpy(), atol=1e-4)
        np.testing.assert_allclose(body["scores"], want.scores.numpy(), atol=1e-6)
        assert body["pose"] == "identity"

    def test_heatmap_png(self, client) -> None:
        response = client.get("/api/heatmap", params={"source": SOURCE, "target": TURNED,
                                                      "x": EYE[0], "y": EYE[1]})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        heat = Image.open(io.BytesIO(response.content))
        assert heat.size == (451, 300) and heat.mode == "RGBA"

    def test_download_is_the_match_json(self, client) -> None:
        request = {"source": SOURCE, "target": TURNED, "points": [EYE, [263.0, 238.0]]}
        response = client.post("/api/matches.json", json=request)
        assert response.status_code == 200
        assert "attachment" in response.headers["content-disposition"]
        payload = json.loads(response.content)
        assert set(payload) == {"source", "backbone", "points", "targets"}
        assert payload["source"] == "chelsea.jpg" and payload["backbone"] == "dense-sift"
        assert payload["points"] == request["points"]
        (target,) = payload["targets"]
        assert set(target) == {"image", "points", "scores", "pose"}
        assert target["image"] == "chelsea_turned.jpg"
        matched = client.post("/api/match", json=request).json()
        np.testing.assert_allclose(target["points"], matched["points"], atol=1e-5)
        assert target["pose"] == matched["pose"]

    def test_page_openapi_and_headers(self, client) -> None:
        page = client.get("/")
        assert page.status_code == 200 and "semcorr" in page.text
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200
        schema = client.get("/openapi.json").json()
        assert {"/api/images", "/api/match", "/api/heatmap", "/api/pair",
                "/api/matches.json"} <= set(schema["paths"])
        match = schema["paths"]["/api/match"]["post"]["responses"]
        assert {"200", "400", "404", "422"} <= set(match)
        assert "MatchRequest" in schema["components"]["schemas"]


class TestBadInput:
    def test_bad_image_bytes(self, client) -> None:
        response = client.post("/api/images?name=cat.png", content=b"GIF89a but not really",
                               headers=UPLOAD)
        assert response.status_code == 415
        assert "cat.png" in response.json()["detail"]
        _still_answers(client)

    def test_oversize_upload_declared(self, client, service: CorrespondenceService) -> None:
        size = service.limits.max_upload_bytes + 1
        response = client.post("/api/images?name=big.png", content=b"\x00" * size,
                               headers=UPLOAD)
        assert response.status_code == 413
        assert str(service.limits.max_upload_bytes) in response.json()["detail"]
        _still_answers(client)

    def test_oversize_upload_streamed(self, client, service: CorrespondenceService) -> None:
        def chunks():
            for _ in range(service.limits.max_upload_bytes // 65536 + 2):
                yield b"\x00" * 65536

        response = client.post("/api/images?name=big.png", content=chunks(),
                               headers=UPLOAD)
        assert response.status_code == 413
        _still_answers(client)

    def test_too_many_pixels(self, client) -> None:
        response = client.post("/api/images?name=wide.png", content=_claimed_png(5000, 5000),
                               headers=UPLOAD)
        assert response.status_code == 413
        assert "5000x5000 pixels" in response.json()["detail"]
        _still_answers(client)

    def test_point_outside(self, client) -> None:
        response = client.post("/api/match", json={"source": SOURCE, "target": TURNED,
                                                   "points": [EYE, [460.0, 20.0]]})
        assert response.status_code == 400
        assert "point 1 (460, 20) is outside the 451x300" in response.json()["detail"]
        heat = client.get("/api/heatmap", params={"source": SOURCE, "target": TURNED,
                                                  "x": -3, "y": 0})
        assert heat.status_code == 400
        _still_answers(client)

    @pytest.mark.parametrize("path", ["match", "pair", "heatmap", "image"])
    def test_unknown_id(self, client, path: str) -> None:
        if path == "image":
            response = client.get("/api/images/0123456789abcdef")
        elif path == "heatmap":
            response = client.get("/api/heatmap", params={"source": "nope", "target": TURNED,
                                                          "x": 1, "y": 1})
        else:
            response = client.post(f"/api/{path}", json={"source": SOURCE, "target": "nope",
                                                          "points": [EYE]}
                                   if path == "match" else {"source": SOURCE, "target": "nope"})
        assert response.status_code == 404
        assert "unknown id" in response.json()["detail"]
        _still_answers(client)

    @pytest.mark.parametrize("body", [
        {"source": SOURCE, "target": TURNED, "points": [[1.0]]},
        {"source": SOURCE, "target": TURNED, "points": "1,2"},
        {"source": SOURCE, "target": TURNED, "points": [], "path": "/etc/passwd"},
        {"source": SOURCE, "target": TURNED, "points": [], "refine": "x" * 100},
    ])
    def test_malformed_request(self, client, body: dict) -> None:
        assert client.post("/api/match", json=body).status_code == 422
        _still_answers(client)

    def test_unknown_rule(self, client) -> None:
        response = client.post("/api/match", json={"source": SOURCE, "target": TURNED,
                                                   "points": [EYE], "refine": "best"})
        assert response.status_code == 400 and "best" in response.json()["detail"]


def test_upload_then_match(small_service: CorrespondenceService) -> None:
    """Two uploads → ids → a match whose answer the service reproduces."""
    from fastapi.testclient import TestClient

    from semcorr.server.app import create_app

    with TestClient(create_app(small_service), base_url="http://127.0.0.1") as client:
        ids = []
        for seed, name in enumerate(["a.png", "b.jpg"]):
            response = client.post(f"/api/images?name={name}", content=_png(40, 30, seed),
                               headers=UPLOAD)
            assert response.status_code == 201
            info = response.json()
            assert (info["name"], info["width"], info["height"]) == (name, 40, 30)
            ids.append(info["id"])
        shown = client.get(f"/api/images/{ids[0]}")
        assert shown.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.content))),
                              np.asarray(Image.open(io.BytesIO(_png(40, 30, 0)))))
        body = client.post("/api/match", json={"source": ids[0], "target": ids[1],
                                               "points": [[3.0, 4.0], [39.0, 29.0]]}).json()
        want = small_service.match(ids[0], ids[1], [[3.0, 4.0], [39.0, 29.0]])
        np.testing.assert_allclose(body["points"], want.points.numpy(), atol=1e-4)
