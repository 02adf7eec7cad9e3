"""Resumable, checksummed downloads with the standard library (no network at import).

A download goes to ``DEST.part``; an interrupted transfer is resumed with an HTTP ``Range``
request (by the retry loop, or by a later run), and the file is renamed to ``DEST`` only once
complete and, when a checksum is known, verified. A wrong checksum deletes the partial file and
raises :class:`DownloadError` naming the file and both digests.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from semcorr.errors import SemcorrError

__all__ = ["DownloadError", "download", "extract_archive", "file_digest", "parse_checksum"]

_CHUNK = 1 << 16


class DownloadError(SemcorrError):
    """A download failed (unreachable, interrupted too often, or a wrong checksum)."""


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """``"sha256:HEX"`` / ``"md5:HEX"`` / bare sha256 hex → ``(algorithm, hex)``; ``None`` stays."""
    if not checksum:
        return None
    algorithm, sep, digest = checksum.partition(":")
    if not sep:
        algorithm, digest = "sha256", checksum
    if algorithm not in ("sha256", "md5"):
        raise ValueError(f"unsupported checksum algorithm {algorithm!r}")
    return algorithm, digest.lower()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open(
    url: str, offset: int, timeout: float
) -> tuple[http.client.HTTPResponse, int, int | None]:
    """Open ``url`` from byte ``offset``; returns (response, actual offset, total size or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "semcorr"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the part may be complete
            return exc, offset, offset  # type: ignore[return-value]
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: cannot connect ({exc})") from None
    length = response.headers.get("Content-Length")
    if offset and response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return response, offset, int(total) if total.isdigit() else None
    return response, 0, int(length) if length and length.isdigit() else None  # full body


def _transfer(url: str, part: Path, timeout: float, bar: object | None) -> int | None:
    """One attempt: append to ``part`` from its current size; returns the total size."""
    offset = part.stat().st_size if part.exists() else 0
    response, start, total = _open(url, offset, timeout)
    if total is not None and start == total:
        return total
    mode = "ab" if start else "wb"
    if bar is not None:
        bar.reset(total=total)  # type: ignore[attr-defined]
        bar.update(start)  # type: ignore[attr-defined]
    with response, open(part, mode) as handle:
        while True:
            block = response.read(_CHUNK)
            if not block:
                break
            handle.write(block)
            if bar is not None:
                bar.update(len(block))  # type: ignore[attr-defined]
    return total


def download(
    url: str,
    dest: str | os.PathLike[str],
    checksum: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), then verify it.

    Args:
        url: http(s) or file URL.
        dest: final path; an existing file that passes the checksum is kept as is.
        checksum: ``"sha256:HEX"``, ``"md5:HEX"`` or ``None`` when not known (then only the
            size announced by the server is checked).
        retries: attempts after an interrupted transfer, each resuming where the last stopped.
        timeout: socket timeout in seconds.
        progress: show a tqdm bar.

    Returns:
        ``dest``.

    Raises:
        DownloadError: unreachable URL, too many interruptions, or a checksum mismatch.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    expected = parse_checksum(checksum)
    if dest.is_file() and (expected is None or file_digest(dest, expected[0]) == expected[1]):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    with tqdm(desc=dest.name, unit="B", unit_scale=True, disable=not progress) as bar:
        for attempt in range(retries + 1):
            try:
                total = _transfer(url, part, timeout, bar)
            except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                if attempt == retries:
                    raise DownloadError(
                        f"{url}: transfer interrupted {retries + 1} times ({exc}); "
                        f"rerun to resume from {part}"
                    ) from None
                continue
            size = part.stat().st_size if part.exists() else 0
            if total is None or size >= total:
                break
    size = part.stat().st_size if part.exists() else 0
    if total is not None and size != total:
        raise DownloadError(f"{url}: got {size} of {total} bytes; rerun to resume from {part}")
    if expected is not None:
        actual = file_digest(part, expected[0])
        if actual != expected[1]:
            part.unlink()
            raise DownloadError(
                f"{dest.name}: {expected[0]} mismatch (expected {expected[1]}, got {actual}); "
                f"the corrupt download from {url} was deleted"
            )
    os.replace(part, dest)
    return dest


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DownloadError(f"archive member {name!r} would be written outside {root}")
    return target


def extract_archive(archive: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """Unpack a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` into ``root`` (no path escapes).

    Raises:
        DownloadError: naming the archive when it is unreadable or unsafe.
    """
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    target = _safe_target(root, member.filename)
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _safe_target(root, member.name)
                tf.extractall(root, filter="data")
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive}: corrupt archive ({exc})") from None
    return root
