"""``semcorr extract``: summaries, bad input, resume after SIGKILL, torchrun with 2 gloo ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.cli.extract import DELAY_VARIABLE
from semcorr.cli.main import main
from semcorr.features.cache import FeatureCache

NUM_IMAGES = 6
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _write_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        array = (rng.random((36 + 2 * index, 48, 3)) * 255).astype(np.uint8)
        paths.append(folder / f"im{index:02d}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """In-process runs use one thread too (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _write_images(tmp_path_factory.mktemp("images"), NUM_IMAGES)


def _args(cache: Path, images: list[Path], *extra: str) -> list[str]:
    return ["extract", "--backbone", "dense-sift", "--option", "image_size=64", "--option",
            "bin_sizes=[4, 8]", "--cache", str(cache), "--root", str(images[0].parent), "--flip",
            "--quiet", *extra, *map(str, images)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", DELAY_VARIABLE)}
    # one thread per process, as torchrun sets for its workers: on a shared 2-core machine,
    # OpenMP threads waiting for each other make tiny extractions 20x slower
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run_module(cache: Path, images: list[Path], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semcorr", *_args(cache, images)],
        env=_env(**env), capture_output=True, text=True, timeout=300, check=False,
    )


def _cache_files(root: Path) -> dict[str, bytes]:
    """Every file of a cache but the run summary, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "last_run.json"
    }


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory: pytest.TempPathFactory, images: list[Path]) -> Path:
    """An uninterrupted single-process run."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    result = _run_module(cache, images)
    assert result.returncode == 0, result.stderr
    return cache


def test_reference_run_summary(reference_cache: Path, images: list[Path]) -> None:
    summary = json.loads((reference_cache / "last_run.json").read_text())
    assert summary["images"] == NUM_IMAGES and summary["computed"] == NUM_IMAGES
    assert summary["skipped"] == 0 and summary["failed"] == []
    files = _cache_files(reference_cache)
    entries = [k for k in files if k.startswith("entries/")]
    assert len(entries) == NUM_IMAGES
    assert summary["bytes"] == sum(len(files[k]) for k in entries)
    cache = FeatureCache(reference_cache)
    assert cache.keys() == sorted(p.name for p in images)  # ids relative to --root
    parts = cache.get("im03.png", flip=True)
    assert parts["dense-sift"].shape == (256, 16, 16)
    assert cache.config["options"] == {"bin_sizes": [4, 8], "image_size": 64}


def test_rerun_skips_everything(tmp_path: Path, images: list[Path],
                                capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    assert main(_args(cache, images[:3])) == 0
    assert main(_args(cache, images[:4])) == 0
    out = capsys.readouterr().out
    assert "4 images, 1 computed, 3 skipped, 0 failed" in out
    assert main(_args(cache, images[:2], "--overwrite", "--limit", "1")) == 0
    assert json.loads((cache / "last_run.json").read_text())["computed"] == 1


def test_bad_input(tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    assert main(["extract", "--cache", str(cache)]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["extract", "--cache", str(cache), "--dataset", "pf-willow"]) == 2
    assert "--root" in capsys.readouterr().err
    assert main(_args(cache, images[:1])) == 0
    assert main(_args(cache, images[:1], "--dtype", "int8")) == 2
    err = capsys.readouterr().err
    assert err.startswith("semcorr: error:") and "another --cache" in err
    assert main(["extract", "--cache", str(tmp_path / "c2"), "--root", str(tmp_path / "elsewhere"),
                 "--quiet", str(images[0])]) == 2
    assert "not inside --root" in capsys.readouterr().err
    assert main(_args(tmp_path / "c4", images[:1], "--option", "nope")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(_args(tmp_path / "c5", images[:1], "--option", "colour=1")) == 2
    assert "dense-sift" in capsys.readouterr().err
    missing = images[0].parent / "missing.png"
    assert main(_args(tmp_path / "c3", [images[0], missing])) == 0  # skip and report
    captured = capsys.readouterr()
    assert "1 failed" in captured.out and "failed: " in captured.out
    assert "missing.png" in captured.out
    assert main(_args(tmp_path / "c6", [missing])) == 2  # no image at all: bad input
    assert "none of the 1 image file(s) exists" in capsys.readouterr().err
    assert not (tmp_path / "c6").exists()
    garbage = images[0].parent / "garbage.png"
    garbage.write_bytes(b"not a png")
    assert main(_args(tmp_path / "c7", [garbage])) == 1  # nothing done: a failed job
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [  # one line; the listing is on stdout
        "semcorr: error: extract: all 1 image(s) failed (listed above)"]
    assert "failed: " in captured.out and "garbage.png" in captured.out
    garbage.unlink()


def test_dataset_branch(tmp_path: Path) -> None:
    from shared_data import shared_path

    root = shared_path("pf-willow")
    data = pytest.importorskip("semcorr.data")
    if "pf-willow" not in data.list_datasets():
        pytest.skip("pf-willow dataset loader not available")
    cache = tmp_path / "cache"
    assert main(["extract", "--dataset", "pf-willow", "--root", str(root), "--cache", str(cache),
                 "--limit", "2", "--quiet"]) == 0
    keys = FeatureCache(cache).keys()
    assert len(keys) == 2 and all(not k.startswith("/") for k in keys)


def test_killed_run_resumes_without_recomputing(
    tmp_path: Path, images: list[Path], reference_cache: Path
) -> None:
    cache = tmp_path / "cache"
    entries = cache / "entries"
    process = subprocess.Popen(
        [sys.executable, "-m", "semcorr", *_args(cache, images)],
        env=_env(**{DELAY_VARIABLE: "0.5"}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(entries.glob("*/*.safetensors"))) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no entries written in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    done = sorted(entries.glob("*/*.safetensors"))
    assert 2 <= len(done) < NUM_IMAGES  # killed midway
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    partial = FeatureCache(cache)
    for image_id in partial.keys():  # every entry left behind is complete and intact
        partial.entry(image_id).verify()

    result = _run_module(cache, images)
    assert result.returncode == 0, result.stderr
    summary = json.loads((cache / "last_run.json").read_text())
    assert summary["skipped"] == len(done)
    assert summary["computed"] == NUM_IMAGES - len(done)  # nothing computed twice
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == before
    assert not list(entries.glob("*/.*.tmp"))
    assert _cache_files(cache) == _cache_files(reference_cache)


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside python")
def test_torchrun_two_gloo_ranks_equal_one_process(
    tmp_path: Path, images: list[Path], reference_cache: Path
) -> None:
    cache = tmp_path / "cache"
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "semcorr",
         *_args(cache, images)],
        env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((cache / "last_run.json").read_text())
    assert summary["world_size"] == 2
    assert (summary["images"], summary["computed"]) == (NUM_IMAGES, NUM_IMAGES)
    assert result.stdout.count("images,") == 1  # one summary, printed by rank 0
    assert _cache_files(cache) == _cache_files(reference_cache)


def test_resume_recomputes_a_corrupt_entry_and_verify_finds_it(
        tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture) -> None:
    """A resumed run used to skip an entry whose data was damaged (only its header was read);
    now each skipped entry's checksums are checked, and ``--verify`` checks a whole cache."""
    cache = tmp_path / "cache"
    assert main(_args(cache, images[:2])) == 0
    assert main(["extract", "--cache", str(cache), "--verify"]) == 0
    assert "2 of 2 entries sound" in capsys.readouterr().out
    victim = sorted((cache / "entries").glob("*/*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside the last tensor, header intact
    victim.write_bytes(bytes(data))
    assert main(["extract", "--cache", str(cache), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 entries sound" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        "semcorr: error: extract --verify: 1 corrupt of 2 entries")
    assert main(_args(cache, images[:2])) == 0  # resume: the damaged entry is recomputed
    assert "1 computed, 1 skipped" in capsys.readouterr().out
    assert main(["extract", "--cache", str(cache), "--verify"]) == 0
    assert main(["extract", "--cache", str(cache), "--verify", str(images[0])]) == 2
