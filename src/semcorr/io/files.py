"""Atomic writes (a killed job never leaves a half-written file behind) and content stamps (a
resumed job notices a file that changed since)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "check_output_dir", "check_output_file",
           "quick_stamp"]

#: Bytes of a file's start hashed by :func:`quick_stamp`.
STAMP_HEAD_BYTES = 1 << 20


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def quick_stamp(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A cheap identity of a file's content: size, modification time and the sha256 of its first
    MiB; ``None`` when the file cannot be read. A replaced or edited file gets another stamp."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(STAMP_HEAD_BYTES)
            status = os.fstat(handle.fileno())
    except OSError:
        return None
    return {"bytes": status.st_size, "mtime_ns": status.st_mtime_ns,
            "head_sha256": hashlib.sha256(head).hexdigest()}


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be (or already is) a writable folder.

    Nothing is created: a job makes its outputs only when the work starts.

    Raises:
        InputError: naming the option and the path when it is a file, lies under a file, or is
            not writable.
    """
    folder = Path(path)
    _check_writable(folder, folder, flag)
    return folder


def check_output_file(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder can be made
    and written; ``path`` itself is not a folder).

    Raises:
        InputError: naming the option and the path.
    """
    from semcorr.errors import InputError

    file = Path(path)
    if file.is_dir():
        raise InputError(f"{flag} {file}: is a folder, expected a file name")
    _check_writable(file.parent, file, flag)
    return file


def _check_writable(folder: Path, named: Path, flag: str) -> None:
    """``folder`` is, or can become, a folder we can write in; errors name ``named``."""
    from semcorr.errors import InputError

    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "is a file" if existing == named else f"lies under the file {existing}"
        raise InputError(f"{flag} {named}: {where}, not a folder")
    try:  # a real probe: permission bits say nothing for root, nor about /proc and the like
        fd, probe = tempfile.mkstemp(prefix=".semcorr-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{flag} {named}: cannot write in {existing} "
                         f"({exc.strerror or exc})") from None
