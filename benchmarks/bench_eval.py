"""Throughput and peak memory of ``semcorr eval`` on PF-WILLOW at several pair counts.

One command::

    python benchmarks/bench_eval.py                       # 100 and 900 pairs, dense-sift
    python benchmarks/bench_eval.py --pairs 50 200 --root ../shared/data/pf-willow

Each size runs ``semcorr eval --limit N`` in a fresh process (so peak RSS is that run's own) and
into a fresh folder. The script prints pairs per second and peak RSS per size, and the ratios of
the largest run to the smallest, measured in the same invocation. Evaluation streams (predictions
on disk, running sums, a bounded feature cache), so the memory ratio should stay near 1; the
script exits with status 1 if peak memory grows by more than ``--tolerance`` (default 15 %).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "pf-willow"


def run_eval(root: Path, pairs: int, out: Path, backbone: str) -> tuple[float, float, float]:
    """Run one ``semcorr eval``; returns (wall seconds, peak RSS in MiB, PCK@0.10 per image)."""
    command = [sys.executable, "-m", "semcorr", "eval", "--dataset", "pf-willow",
               "--root", str(root), "--limit", str(pairs), "--out", str(out),
               "--backbone", backbone, "--quiet", "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"semcorr eval --limit {pairs} failed (status {status})")
    pck = json.loads((out / "results.json").read_text())["pck"]["0.10"]["per_image"]
    return seconds, usage.ru_maxrss / 1024, pck  # Linux reports ru_maxrss in KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="PF-WILLOW folder")
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 900])
    parser.add_argument("--backbone", default="dense-sift")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's output folder under this folder")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="allowed relative growth of peak memory")  # fmt: skip
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"{args.root}: no PF-WILLOW folder", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        tmp = args.keep or Path(scratch)
        for pairs in sorted(args.pairs):
            out = Path(tmp) / f"n{pairs}"
            seconds, peak, pck = run_eval(args.root, pairs, out, args.backbone)
            rows.append((pairs, seconds, pairs / seconds, peak))
            print(f"{pairs:5d} pairs: {seconds:7.1f} s  {pairs / seconds:6.2f} pairs/s  "
                  f"peak RSS {peak:7.1f} MiB  PCK@0.10 {100 * pck:.1f}", flush=True)  # fmt: skip
    (small, _, small_rate, small_peak), (large, _, large_rate, large_peak) = rows[0], rows[-1]
    memory_ratio = large_peak / small_peak
    print(
        f"ratio {large}/{small} pairs: throughput x{large_rate / small_rate:.2f}, "
        f"peak memory x{memory_ratio:.3f}"
    )
    if memory_ratio > 1 + args.tolerance:
        print(f"FAIL: peak memory grew by more than {args.tolerance:.0%}", file=sys.stderr)
        return 1
    print("OK: peak memory flat in the number of pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
