"""Concurrent clients on a live loopback server get the same answers as one client alone."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from semcorr.server.service import CorrespondenceService

PAIRS = [("sample-0", "sample-1"), ("sample-0", "sample-2")]
RULES = ["window", "argmax", "soft", "kernel"]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def _requests(count: int, seed: int = 0) -> list[dict]:
    """Varied match requests: pair, 1-6 random points, pose alignment and rule."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(1, 7))
        points = np.stack([rng.uniform(0, 450, n), rng.uniform(0, 299, n)], axis=1)
        source, target = PAIRS[i % 2]
        out.append({"source": source, "target": target, "points": points.round(2).tolist(),
                    "pose_align": bool(rng.integers(0, 2)), "refine": RULES[i % 4]})
    return out


def test_concurrent_answers_are_correct(live_server: str, service: CorrespondenceService) -> None:
    requests = _requests(40)
    expected = [service.match(r["source"], r["target"], r["points"], r["pose_align"],
                              r["refine"]) for r in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda r: _post(f"{live_server}/api/match", r), requests))
    for request, (status, body), want in zip(requests, answers, expected, strict=True):
        assert status == 200
        assert len(body["points"]) == len(request["points"])
        np.testing.assert_allclose(body["points"], want.points.numpy(), atol=1e-4)
        np.testing.assert_allclose(body["scores"], want.scores.numpy(), atol=1e-6)
        assert body["pose"] == want.pose
        if not request["pose_align"]:
            assert body["pose"] == "identity"
