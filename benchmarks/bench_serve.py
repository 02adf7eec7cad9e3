"""Bounded load test of ``semcorr serve`` on loopback: latency percentiles and correctness.

One command::

    python benchmarks/bench_serve.py            # 200 match requests, 8 concurrent clients

The server runs in a subprocess (so clients and server do not share a GIL) on 127.0.0.1 with
the default weight-free backbone. After the two sample pairs are warmed up (their features
computed once), the same 200 varied match requests (1-6 random points, either sample pair,
pose alignment on or off, every refinement rule) are sent twice, in the same run:

1. by one client, one at a time: the reference answers and the sequential latency;
2. by ``--clients`` concurrent clients: every answer must be HTTP 200 and equal to the
   reference (points within 1e-4 px, same pose).

It prints p50/p90/p99 latency and throughput of both passes and their ratios, and exits with
status 1 on any error or wrong answer. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PAIRS = [("sample-0", "sample-1"), ("sample-0", "sample-2")]
RULES = ["window", "argmax", "soft", "kernel"]
SERVER = """
import argparse, sys
from semcorr.cli.serve import add_parser
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
args = parser.parse_args(["serve", "--host", "127.0.0.1", "--port", sys.argv[1],
                          "--backbone", sys.argv[2]])
sys.exit(args.func(args))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict, float]:
    """POST JSON → (status, answer, seconds)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, {"detail": exc.read().decode(errors="replace")}
    return status, answer, time.perf_counter() - start


def make_requests(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(1, 7))
        points = np.stack([rng.uniform(0, 450, n), rng.uniform(0, 299, n)], axis=1)
        source, target = PAIRS[i % 2]
        out.append({"source": source, "target": target, "points": points.round(2).tolist(),
                    "pose_align": bool(rng.integers(0, 2)), "refine": RULES[i % 4]})
    return out


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/samples", timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer in time")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def same(answer: dict, reference: dict) -> bool:
    return (answer["pose"] == reference["pose"]
            and np.allclose(answer["points"], reference["points"], atol=1e-4)
            and np.allclose(answer["scores"], reference["scores"], atol=1e-6))


def run(base: str, requests: list[dict], clients: int) -> int:
    for source, target in PAIRS:
        status, answer, seconds = post(f"{base}/api/pair", {"source": source, "target": target})
        if status != 200:
            raise SystemExit(f"warm-up failed: {status} {answer}")
        print(f"set_pair {source} -> {target}: {seconds:.2f} s (features computed once)")

    sequential = [post(f"{base}/api/match", r) for r in requests]
    failures = [a for s, a, _ in sequential if s != 200]
    if failures:
        raise SystemExit(f"{len(failures)} sequential errors, first: {failures[0]}")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        concurrent = list(pool.map(lambda r: post(f"{base}/api/match", r), requests))
    wall = time.perf_counter() - start

    errors = sum(s != 200 for s, _, _ in concurrent)
    wrong = sum(s == 200 and not same(a, ref[1])
                for (s, a, _), ref in zip(concurrent, sequential, strict=True))
    seq_t = [t for _, _, t in sequential]
    con_t = [t for _, _, t in concurrent]
    seq_p, con_p = percentiles(seq_t), percentiles(con_t)
    seq_rate, con_rate = len(requests) / sum(seq_t), len(requests) / wall
    print(f"\n{len(requests)} match requests, 1-6 points each, loopback")
    print(f"{'pass':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    print(f"{'1 client':<22}" + "".join(f"{seq_p[k]:9.1f}" for k in seq_p) + f"{seq_rate:9.1f}")
    print(f"{f'{clients} clients':<22}" + "".join(f"{con_p[k]:9.1f}" for k in con_p)
          + f"{con_rate:9.1f}")
    print(f"ratios ({clients} clients / 1 client): p50 {con_p['p50'] / seq_p['p50']:.2f}, "
          f"p99 {con_p['p99'] / seq_p['p99']:.2f}, throughput {con_rate / seq_rate:.2f}")
    print(f"errors: {errors}, wrong answers: {wrong} (of {len(requests)})")
    return 1 if errors or wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backbone", default="dense-sift")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (1 <= args.requests <= 1000 and 1 <= args.clients <= 32):
        raise SystemExit("bounded load test: at most 1000 requests and 32 clients")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), args.backbone],
                              stdout=subprocess.DEVNULL)
    try:
        wait_ready(base, server)
        return run(base, make_requests(args.requests, args.seed), args.clients)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
