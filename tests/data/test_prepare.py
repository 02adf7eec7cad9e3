"""Dataset preparation: verification of real folders, downloads from a local HTTP server
(127.0.0.1 only) with checksums and resumes, and the AP-10K benchmark construction."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from semcorr.data.ap10k_benchmark import build_ap10k_benchmark, sample_pairs, split_species
from semcorr.data.download import DownloadError, download, extract_archive
from semcorr.data.prepare import (
    PF_WILLOW_CLASSES,
    check_ap10k,
    check_dataset,
    check_pf_willow,
    prepare,
)

# --- a local server --------------------------------------------------------------------------


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_first: set[str] = set()  # paths whose first GET stops halfway
    log: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.lstrip("/")
        self.log.append((name, self.headers.get("Range")))
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in self.cut_first:
            self.cut_first.discard(name)
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Handler", (_Files,), {"files": {}, "cut_first": set(), "log": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def tiny_image_bytes(kind: str = "PNG", side: int = 4, shade: int = 0) -> bytes:
    """A real, decodable image of ``side`` x ``side`` pixels (the check opens every file)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (shade, shade, shade)).save(buffer, format=kind)
    return buffer.getvalue()


def tiny_mat_bytes() -> bytes:
    """A real ``.mat`` holding a 2x10 ``pts_coord``, like PF-WILLOW's."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {"pts_coord": np.ones((2, 10))})
    return buffer.getvalue()


def tiny_willow_zip() -> bytes:
    """PF-dataset.zip's layout (top folder PF-dataset/, 10 classes x 10 .png + .mat), tiny."""
    buffer = io.BytesIO()
    mat = tiny_mat_bytes()
    with zipfile.ZipFile(buffer, "w") as zf:
        for cls in PF_WILLOW_CLASSES:
            for i in range(10):
                zf.writestr(f"PF-dataset/{cls}/img_{i:03d}.png", tiny_image_bytes(shade=i))
                zf.writestr(f"PF-dataset/{cls}/img_{i:03d}.mat", mat)
    return buffer.getvalue()


# --- verification ----------------------------------------------------------------------------


def test_real_pf_willow_is_complete(pf_willow_root: Path) -> None:
    assert check_pf_willow(pf_willow_root) == []
    report = prepare("pf-willow", pf_willow_root, fetch=False)
    assert report["complete"] and report["missing"] == []


def test_one_removed_file_is_named(pf_willow_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "pf-willow"
    shutil.copytree(pf_willow_root, root)
    (root / "car(G)" / "Cars_006a.mat").unlink()
    (root / "duck(S)" / sorted(p.name for p in (root / "duck(S)").glob("*.png"))[0]).unlink()
    missing = check_dataset("pf-willow", root)
    duck = sorted(p.stem for p in (pf_willow_root / "duck(S)").glob("*.png"))[0]
    assert missing == ["car(G)/Cars_006a.mat", f"duck(S)/{duck}.png"]
    shutil.rmtree(root / "winebottle(M)")
    assert "winebottle(M)/" in check_dataset("pf-willow", root)


def test_missing_folder(tmp_path: Path) -> None:
    assert check_dataset("cub", tmp_path / "nope") == [f"{tmp_path / 'nope'}/ (the folder itself)"]
    missing = check_dataset("cub", tmp_path)
    assert "images/" in missing and "parts/part_locs.txt" in missing


# --- downloads -------------------------------------------------------------------------------


def test_download_and_checksum(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    url, handler = server
    data = bytes(range(256)) * 400
    handler.files["blob.bin"] = data
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    path = download(f"{url}/blob.bin", tmp_path / "blob.bin", good, progress=False)
    assert path.read_bytes() == data
    assert download(f"{url}/blob.bin", path, good, progress=False) == path  # cached
    assert len(handler.log) == 1


def test_broken_checksum(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    url, handler = server
    handler.files["blob.bin"] = b"corrupted content"
    with pytest.raises(DownloadError, match=r"blob\.bin: sha256 mismatch \(expected 00+"):
        download(f"{url}/blob.bin", tmp_path / "blob.bin", "sha256:" + "0" * 64, progress=False)
    assert not (tmp_path / "blob.bin").exists()
    assert not (tmp_path / "blob.bin.part").exists()


def test_interrupted_transfer_resumes(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    url, handler = server
    data = np.random.default_rng(0).bytes(100_000)
    handler.files["big.bin"] = data
    handler.cut_first.add("big.bin")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = download(f"{url}/big.bin", tmp_path / "big.bin", digest, progress=False)
    assert path.read_bytes() == data
    assert handler.log == [("big.bin", None), ("big.bin", "bytes=50000-")]


def test_resume_on_a_later_run(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    url, handler = server
    data = np.random.default_rng(1).bytes(10_000)
    handler.files["big.bin"] = data
    handler.cut_first.add("big.bin")
    with pytest.raises(DownloadError, match="rerun to resume"):
        download(f"{url}/big.bin", tmp_path / "big.bin", None, retries=0, progress=False)
    assert (tmp_path / "big.bin.part").stat().st_size == 5_000
    download(f"{url}/big.bin", tmp_path / "big.bin", None, retries=0, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert handler.log[-1] == ("big.bin", "bytes=5000-")


def test_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot connect|HTTP"):
        download("http://127.0.0.1:9/none.zip", tmp_path / "x.zip", progress=False, retries=0)


def test_archive_cannot_escape(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(archive, tmp_path / "root")


def test_prepare_downloads_pf_willow(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    url, handler = server
    handler.files["PF-dataset.zip"] = tiny_willow_zip()
    handler.cut_first.add("PF-dataset.zip")
    root = tmp_path / "pf-willow"
    report = prepare("pf-willow", root, mirror=url, progress=False)
    assert report["complete"], report["missing"]
    assert report["downloaded"] == ["PF-dataset.zip"]
    assert (root / "car(G)" / "img_000.png").read_bytes() == tiny_image_bytes(shade=0)
    assert not (root / ".downloads").exists()
    assert [r for _, r in handler.log] == [None, "bytes=" + str(
        len(handler.files["PF-dataset.zip"]) // 2) + "-"]


def test_prepare_reports_failed_download(tmp_path: Path) -> None:
    report = prepare("pf-willow", tmp_path / "w", mirror="http://127.0.0.1:9", progress=False)
    assert not report["complete"] and "cannot connect" in report["error"]
    assert "car(G)/" in report["missing"]


# --- AP-10K benchmark ------------------------------------------------------------------------


def _ap10k_original(root: Path, seed: int = 0) -> None:
    """A tiny AP-10K: 2 families (3 species) of 60 images each, COCO annotation files."""
    rng = np.random.default_rng(seed)
    jpeg = tiny_image_bytes("JPEG")
    species = [(1, "dog", "Canidae"), (2, "fox", "Canidae"), (3, "cat", "Felidae")]
    categories = [{"id": i, "name": n, "supercategory": f} for i, n, f in species]
    splits: dict[str, dict] = {s: {"images": [], "annotations": [], "categories": categories}
                               for s in ("train", "val", "test")}
    (root / "data").mkdir(parents=True)
    image_id = 0
    for cid, _, _ in species:
        for _ in range(60):
            image_id += 1
            vis = (rng.random(17) < 0.6) * 2
            kps = np.stack([rng.random(17) * 90, rng.random(17) * 90, vis], 1).ravel()
            split = ("train", "val", "test")[image_id % 3]
            name = f"{image_id:012d}.jpg"
            splits[split]["images"].append({"id": image_id, "file_name": name, "width": 100,
                                            "height": 100})
            ann = {"id": 1000 + image_id, "image_id": image_id, "category_id": cid,
                   "bbox": [1, 2, 80, 70], "keypoints": kps.tolist(),
                   "num_keypoints": int((vis > 0).sum())}
            splits[split]["annotations"].append(ann)
            if image_id == 5:  # a crowded image: two animals
                splits[split]["annotations"].append({**ann, "id": 99999})
            (root / "data" / name).write_bytes(jpeg)
    (root / "annotations").mkdir()
    for split, data in splits.items():
        (root / "annotations" / f"ap10k-{split}-split1.json").write_text(json.dumps(data))


def _listing(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.iterdir())
            for d in sorted((root / "PairAnnotation").iterdir())}


def test_split_species() -> None:
    parts = split_species([f"{i:03d}" for i in range(60, 0, -1)])
    assert len(parts["test"]) == 30 and len(parts["val"]) == 20 and len(parts["trn"]) == 10
    assert parts["test"][-1] == "060" and parts["trn"][0] == "001"
    small = split_species(["a", "b", "c"])
    assert small == {"trn": [], "val": [], "test": ["a", "b", "c"]}


def test_sample_pairs_mutual_visibility() -> None:
    full = [2] * 17
    few = [2, 2, 0] + [0] * 14
    records = {n: {"keypoints": [c for v in vis for c in (1, 1, v)]}
               for n, vis in {"a": full, "b": full, "c": few}.items()}
    pairs = sample_pairs(np.random.default_rng(0), records, ["a", "b", "c"], None, None)
    assert [tuple(sorted(p)) for p in pairs] == [("a", "b")]  # c shares only 2 keypoints


def test_ap10k_benchmark_is_reproducible(tmp_path: Path) -> None:
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    for root in (one, two, other):
        _ap10k_original(root)
    counts = build_ap10k_benchmark(one, seed=7)
    assert build_ap10k_benchmark(two, seed=7) == counts
    assert _listing(one) == _listing(two)
    build_ap10k_benchmark(other, seed=8)
    assert _listing(one) != _listing(other)
    assert counts["images"] == 180
    assert counts["test_cross_family"] == 30 * 1  # one pair of families
    assert 0 < counts["test_cross_species"] <= 900
    assert check_ap10k(one) == []
    # crowded image 5 is annotated but never paired
    assert (one / "ImageAnnotation" / "Canidae" / "dog" / "000000000005.json").is_file()
    assert not any("000000000005" in n for names in _listing(one).values() for n in names)
    # every pair has >= 3 mutually visible keypoints and the right category
    for path in (one / "PairAnnotation" / "test_cross_species").glob("*.json"):
        pair = json.loads(path.read_text())
        src, trg = (json.loads((one / pair[k]).read_text()) for k in ("src_json_path",
                                                                       "trg_json_path"))
        vs = np.asarray(src["keypoints"]).reshape(-1, 3)[:, 2] / 2
        vt = np.asarray(trg["keypoints"]).reshape(-1, 3)[:, 2] / 2
        assert (vs * vt).sum() >= 3 and src["name"] != trg["name"]
        assert path.stem.endswith(":Canidae")


def test_prepare_builds_ap10k_and_loader_reads_it(tmp_path: Path) -> None:
    from semcorr.data import create_dataset

    _ap10k_original(tmp_path)
    report = prepare("ap10k", tmp_path, progress=False)
    assert report["complete"], report["missing"][:5]
    assert report["built"]["test"] > 0
    dataset = create_dataset("ap10k", tmp_path, split="test", subset="cross-family")
    assert len(dataset) == 30
    sample = dataset[0]
    assert int(sample.visible.sum()) >= 3


def test_tar_archive_with_top_folder(server: tuple[str, type[_Files]], tmp_path: Path) -> None:
    """A .tgz (CUB's format) is unpacked and its single top folder stripped."""
    import tarfile

    from semcorr.data.prepare import _unpack

    src = tmp_path / "src" / "CUB_200_2011"
    (src / "images" / "001.Bird").mkdir(parents=True)
    (src / "images" / "001.Bird" / "a.jpg").write_bytes(b"jpg")
    (src / "images.txt").write_text("1 001.Bird/a.jpg\n")
    archive = tmp_path / "cub.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="CUB_200_2011")
    root = tmp_path / "cub"
    root.mkdir()
    _unpack(archive, root)
    assert (root / "images" / "001.Bird" / "a.jpg").read_bytes() == b"jpg"
    missing = check_dataset("cub", root)
    assert "images/001.Bird/a.jpg" not in missing and "classes.txt" in missing


def test_crowd_list_excludes_images(tmp_path: Path) -> None:
    _ap10k_original(tmp_path)
    crowd = tmp_path / "crowd.txt"
    crowd.write_text("000000000007\n000000000008\n")
    prepare("ap10k", tmp_path, progress=False, crowd_list=crowd)
    names = [p.name for p in (tmp_path / "PairAnnotation").glob("*/*.json")]
    assert names and not any("000000000007" in n or "000000000008" in n for n in names)
    record = json.loads((tmp_path / "ImageAnnotation" / "Canidae" / "dog" / "000000000007.json")
                        .read_text())
    assert record["is_crowd"] == 1
