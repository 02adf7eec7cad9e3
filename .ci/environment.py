"""Print what a test run depends on: versions, CPU and torch's threading (run by .ci/run).

A threshold that holds on one machine and not on another is read from this: the installed
versions, the CPU's vector capability (which oneDNN/MKL kernels run) and the thread counts.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    print(f"python {platform.python_version()} at {sys.executable} ({platform.platform()})")
    packages = ("torch", "numpy", "scipy", "pillow", "transformers", "diffusers")
    print("  ".join(f"{name} {_version(name)}" for name in packages))
    print(f"cpu: {_cpu_model()}, {os.cpu_count()} logical cores, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(torch.__config__.parallel_info().rstrip())  # thread counts and their variables


if __name__ == "__main__":
    main()
