"""Dataset preparation: download from the official locations, or verify a hand-made folder.

:data:`DATASETS_SPECS` lists, per benchmark, the files to fetch (URL, archive name, checksum
where one is published or known; ``None`` otherwise, said so in ``note``) and a *check* that
lists exactly what is missing from a folder, relative to it. :func:`prepare` checks the
folder, downloads and unpacks what is needed when allowed, checks again and returns a report.
Nothing touches the network at import.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcorr.data.davis import DAVIS_TRAINVAL_URL, check_davis2017
from semcorr.data.download import DownloadError, download, extract_archive
from semcorr.data.jhmdb import JHMDB_ARCHIVES, JHMDB_BASE_URL, check_jhmdb
from semcorr.data.mp100 import check_mp100
from semcorr.data.r2d2_training import check_r2d2_training
from semcorr.data.soco import check_soco
from semcorr.errors import InputError, SemcorrError

__all__ = [
    "DATASET_SPECS",
    "DatasetSpec",
    "RemoteFile",
    "check_dataset",
    "prepare",
]

PF_WILLOW_CLASSES = (
    "car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
    "winebottle(M)", "winebottle(wC)", "winebottle(woC)",
)  # fmt: skip
PF_WILLOW_IMAGES_PER_CLASS = 10


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset on its official server.

    Attributes:
        url: the official location.
        filename: local name of the download.
        checksum: ``"sha256:HEX"`` / ``"md5:HEX"``, or ``None`` when none is published.
        extract: unpack it into the dataset folder (archives).
        note: provenance of the checksum, or why there is none.
        into: sub-folder of the dataset folder it is unpacked into (default: the folder).
        strip_top: drop an archive's single top folder when unpacking.
        present: a path, relative to the dataset folder, whose existence means this file was
            already unpacked (it is then not fetched again); empty: always fetched.
    """

    url: str
    filename: str
    checksum: str | None = None
    extract: bool = True
    note: str = ""
    into: str = ""
    strip_top: bool = True
    present: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain and check one benchmark.

    Attributes:
        name: CLI name (``spair``, ``pf-pascal``, ``pf-willow``, ``ap10k``, ``cub``).
        title: human name and citation.
        files: what to download (empty: manual download only).
        check: ``root -> [missing paths, relative to root, with a reason when useful]``.
        manual: what a user must do by hand when automatic download is impossible.
    """

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    check: Callable[[Path], list[str]]
    manual: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _missing(root: Path, relative: Iterable[str], kind: str = "file") -> list[str]:
    test = Path.is_dir if kind == "folder" else Path.is_file
    suffix = "/" if kind == "folder" else ""
    return [f"{r}{suffix}" for r in relative if not test(root / r)]


def check_pf_willow(root: Path) -> list[str]:
    """PF-WILLOW: 10 class folders, each with 10 images ``.png`` and their ``.mat`` keypoints."""
    problems = _missing(root, PF_WILLOW_CLASSES, "folder")
    for cls in PF_WILLOW_CLASSES:
        folder = root / cls
        if not folder.is_dir():
            continue
        pngs = {p.stem for p in folder.glob("*.png")}
        mats = {p.stem for p in folder.glob("*.mat")}
        problems += [f"{cls}/{stem}.mat" for stem in sorted(pngs - mats)]
        problems += [f"{cls}/{stem}.png" for stem in sorted(mats - pngs)]
        complete = len(pngs & mats)
        lonely = len(pngs ^ mats)
        if complete + lonely < PF_WILLOW_IMAGES_PER_CLASS:
            problems.append(
                f"{cls}/: {PF_WILLOW_IMAGES_PER_CLASS - complete - lonely} image(s) missing with "
                f"their .mat (holds {complete} complete of {PF_WILLOW_IMAGES_PER_CLASS})"
            )
    return problems


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def check_spair(root: Path) -> list[str]:
    """SPair-71k: the folders, the large layout's lists, and every listed pair and image."""
    problems = _missing(root, ["JPEGImages", "ImageAnnotation", "PairAnnotation"], "folder")
    lists = [f"Layout/large/{s}.txt" for s in ("trn", "val", "test")]
    problems += _missing(root, lists)
    for split, listing in zip(("trn", "val", "test"), lists, strict=True):
        if not (root / listing).is_file():
            continue
        wanted: dict[str, None] = {}
        for name in _lines(root / listing):
            wanted[f"PairAnnotation/{split}/{name}.json"] = None
            pair, _, category = name.partition(":")
            parts = pair.split("-")
            for stem in parts[1:3]:
                wanted[f"JPEGImages/{category}/{stem}.jpg"] = None
                wanted[f"ImageAnnotation/{category}/{stem}.json"] = None
        problems += _missing(root, wanted)
    return list(dict.fromkeys(problems))


def check_spair_u(root: Path) -> list[str]:
    """SPair-U: SPair-71k's images and annotations in ``root``, the Extra* folders there or in a
    sibling ``SPair-U``, and, for every SPair-U test pair, its two images and their three
    annotation files (paths relative to ``root``)."""
    from semcorr.data.spair_u import EXTRA_FOLDERS, find_extra_root

    problems = _missing(root, ["JPEGImages", "ImageAnnotation"], "folder")
    found = find_extra_root(root)
    if found is None:
        return problems + [f"{name}/ (SPair-U: here or in ../SPair-U)" for name in EXTRA_FOLDERS]
    pair_folder, image_folder = (os.path.relpath(p, root) for p in found)
    pairs = sorted((found[0] / "test").glob("*:*.json"))
    if not pairs:
        problems.append(f"{pair_folder}/test/<id>-<src>-<trg>:<category>.json (no SPair-U pair "
                        "file)")
    wanted: dict[str, None] = {}
    for pair in pairs:
        stem, _, category = pair.stem.rpartition(":")
        for name in stem.split("-", 2)[1:]:
            wanted[f"JPEGImages/{category}/{name}.jpg"] = None
            wanted[f"ImageAnnotation/{category}/{name}.json"] = None
            wanted[f"{image_folder}/{category}/{name}.json"] = None
    return problems + _missing(root, wanted)


def check_pf_pascal(root: Path) -> list[str]:
    """PF-PASCAL: images, annotations, the test/val pair lists and every image they name."""
    problems = _missing(root, ["JPEGImages", "Annotations"], "folder")
    lists = ["test_pairs_pf_pascal.csv", "val_pairs_pf_pascal.csv"]
    problems += _missing(root, lists)
    problems += [f"{name} (optional, training only)" for name in
                 _missing(root, ["train_pairs_pf_pascal.csv"])]
    wanted: dict[str, None] = {}
    for listing in lists:
        if (root / listing).is_file():
            for row in _lines(root / listing)[1:]:
                for cell in row.split(",")[:2]:
                    wanted[f"JPEGImages/{Path(cell).name}"] = None
    return problems + _missing(root, wanted)


def check_cub(root: Path) -> list[str]:
    """CUB-200-2011: the tables and every image listed in ``images.txt``."""
    tables = ["images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt",
              "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt"]
    problems = _missing(root, ["images"], "folder") + _missing(root, tables)
    if (root / "images.txt").is_file():
        names = [line.split(maxsplit=1)[-1] for line in _lines(root / "images.txt")]
        problems += _missing(root, (f"images/{n}" for n in names))
    return problems


AP10K_ORIGINAL = tuple(
    f"annotations/ap10k-{s}-split1.json" for s in ("train", "val", "test")
)
AP10K_PAIR_FOLDERS = ("trn", "val", "test", "val_cross_species", "test_cross_species",
                      "val_cross_family", "test_cross_family")


def check_ap10k(root: Path) -> list[str]:
    """AP-10K as GeoAware-SC's benchmark: its folders and every file each pair names.

    A folder holding only the original AP-10K (``annotations/`` + ``data/``) reports the
    benchmark as missing; :func:`prepare` then builds it.
    """
    problems = _missing(root, ["ImageAnnotation", "JPEGImages"], "folder")
    problems += _missing(root, [f"PairAnnotation/{f}" for f in AP10K_PAIR_FOLDERS], "folder")
    wanted: dict[str, None] = {}
    for folder in AP10K_PAIR_FOLDERS:
        for pair in sorted((root / "PairAnnotation" / folder).glob("*.json")):
            stem, _, _ = pair.stem.partition(":")
            for name in stem.split("-"):
                wanted[name] = None
    if wanted and (root / "ImageAnnotation").is_dir():
        present = {p.stem for p in (root / "ImageAnnotation").glob("*/*/*.json")}
        problems += [f"ImageAnnotation/*/*/{n}.json" for n in wanted if n not in present]
        images = {p.stem for p in (root / "JPEGImages").glob("*/*/*.jpg")}
        problems += [f"JPEGImages/*/*/{n}.jpg" for n in wanted if n not in images]
    return problems


#: The downloads of naver/r2d2's download_training_data.sh (no checksums are published).
R2D2_TRAINING_FILES = tuple(
    RemoteFile(f"http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz",
               f"revisitop1m.{i}.tar.gz", None, note="no checksum is published; only the size "
               "is checked", into="revisitop1m", strip_top=False, present="revisitop1m/0d3")
    for i in range(1, 6)
) + tuple(
    RemoteFile(f"http://download.europe.naverlabs.com/3DVision/aachen_{name}.zip",
               f"aachen_{name}.zip", None, note="no checksum is published; only the size is "
               "checked", into="aachen", strip_top=False, present=f"aachen/{name}")
    for name in ("style_transfer", "optical_flow")
)


DATASET_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "spair",
            "SPair-71k (Min et al., 2019)",
            (RemoteFile("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
                        "SPair-71k.tar.gz", None,
                        note="no checksum is published; only the size is checked"),),
            check_spair,
        ),
        DatasetSpec(
            "spair-u",
            "SPair-U (Mariotti et al., Jamais Vu, NeurIPS 2025): new keypoints for SPair-71k's "
            "test pairs; ROOT is the SPair-71k folder",
            (RemoteFile("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
                        "SPair-71k.tar.gz", None, present="JPEGImages",
                        note="no checksum is published; only the size is checked"),
             RemoteFile("https://groups.inf.ed.ac.uk/hbilen-data/data/JamaisVuData/SPair-U.zip",
                        "SPair-U.zip", None, into="../SPair-U",
                        present="../SPair-U/PairAnnotation",
                        note="the location named in VICO-UoE/JamaisVu's README; no checksum "
                        "is published")),
            check_spair_u,
            manual="SPair-U.zip is unpacked beside SPair-71k, into ROOT/../SPair-U (its "
            "PairAnnotation/ and ImageAnnotation/, as Jamais Vu's and MARCO's READMEs place "
            "it); Jamais Vu's code layout, ROOT/Extra{Pair,Image}Annotation, is read too.",
        ),
        DatasetSpec(
            "pf-pascal",
            "PF-PASCAL (Ham et al., 2016) with the pair lists of Rocco et al. (2017)",
            (
                RemoteFile("http://www.di.ens.fr/willow/research/proposalflow/dataset/"
                           "PF-dataset-PASCAL.zip", "PF-dataset-PASCAL.zip", None,
                           note="no checksum is published"),
                RemoteFile("http://www.di.ens.fr/willow/research/cnngeometric/other_resources/"
                           "test_pairs_pf_pascal.csv", "test_pairs_pf_pascal.csv", None, False),
                RemoteFile("http://www.di.ens.fr/willow/research/cnngeometric/other_resources/"
                           "val_pairs_pf_pascal.csv", "val_pairs_pf_pascal.csv", None, False),
            ),
            check_pf_pascal,
            manual="train_pairs_pf_pascal.csv (training only) is shared on Google Drive by "
            "GeoAware-SC (id 111tpXshLiJ4qudBHoGK3HbMSNr9vVRq9): put it in ROOT by hand.",
        ),
        DatasetSpec(
            "pf-willow",
            "PF-WILLOW (Ham et al., 2016)",
            (RemoteFile("http://www.di.ens.fr/willow/research/proposalflow/dataset/"
                        "PF-dataset.zip", "PF-dataset.zip", None,
                        note="no checksum is published"),),
            check_pf_willow,
        ),
        DatasetSpec(
            "ap10k",
            "AP-10K (Yu et al., 2021) as GeoAware-SC's correspondence benchmark",
            (),
            check_ap10k,
            manual="AP-10K is distributed on Google Drive only (github.com/AlexTheBad/AP-10K): "
            "download it by hand and unpack it into ROOT (ROOT/annotations/ap10k-*-split1.json "
            "and ROOT/data/*.jpg); 'semcorr data prepare ap10k' then builds the benchmark.",
        ),
        DatasetSpec(
            "r2d2-training",
            "R2D2's WASF training mix (Revaud et al., 2019): web images, Aachen DB, "
            "style-transfer and optical-flow pairs",
            R2D2_TRAINING_FILES,
            check_r2d2_training,
            manual="The Aachen Day-Night images are not freely downloadable: get "
            "database_and_query_images.zip from the Aachen Day-Night page "
            "(https://www.visuallocalization.net/datasets/, after accepting its terms) and "
            "unpack it into ROOT/aachen/ (giving ROOT/aachen/images_upright/db/*.jpg).",
        ),
        DatasetSpec(
            "mp100",
            "MP-100 (Xu et al., 2022) with MARCO's pair lists (Cuttano et al., 2026)",
            (RemoteFile("https://github.com/visinf/visinf.github.io/raw/main/MARCO/annotations/"
                        "mp100_pairs.zip", "mp100_pairs.zip", None, into="pairs",
                        note="no checksum is published", present="pairs"),),
            check_mp100,
            manual="The MP-100 annotation files are shared on Google Drive only (folder "
            "1pzC5uEgi4AW9RO9_T1J-0xSKF12mdj1_, see github.com/luminxu/Pose-for-Everything "
            "mp100/README.md): put mp100_split{1..5}_{train,val,test}.json in ROOT/annotations/. "
            "The images come from 14 source datasets under their own terms: put them under "
            "ROOT/images/<category>/ (or ROOT/mp100/<category>/, MARCO's layout) as that README "
            "and MARCO's docs/data.md describe.",
        ),
        DatasetSpec(
            "soco",
            "SOCO (Duenkel et al., 2026), CC BY 4.0",
            tuple(
                RemoteFile(f"https://huggingface.co/datasets/GenIntelLab/SOCO/resolve/main/"
                           f"{name}.zip", f"{name}.zip", None, strip_top=False, present=name,
                           note="no checksum is published (the Hugging Face page lists each "
                           "file's LFS sha256)")
                for name in ("Images", "PairAnnotations", "KeypointAnnotations")
            ),
            check_soco,
        ),
        DatasetSpec(
            "cub",
            "CUB-200-2011 (Wah et al., 2011)",
            (RemoteFile("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                        "CUB_200_2011.tgz", "md5:97eceeb196236b17998738112f37df78",
                        note="md5 as used by common dataset loaders (not published by Caltech)"),),
            check_cub,
        ),
        DatasetSpec(
            "davis2017",
            "DAVIS-2017 (Pont-Tuset et al., 2017), semi-supervised, 480p train+val",
            (RemoteFile(DAVIS_TRAINVAL_URL, "DAVIS-2017-trainval-480p.zip", None,
                        note="no checksum is published; only the size is checked",
                        present="ImageSets/2017/val.txt"),),
            check_davis2017,
        ),
        DatasetSpec(
            "jhmdb",
            "JHMDB (Jhuang et al., 2013): frames, puppet joint positions and the official splits",
            tuple(RemoteFile(JHMDB_BASE_URL + name, name, None, note="no checksum is "
                             "published; only the size is checked", strip_top=False,
                             present=folder) for name, folder in JHMDB_ARCHIVES.items()),
            check_jhmdb,
        ),
    )
}


def _merge_into(source: Path, root: Path) -> None:
    """Move the content of ``source`` into ``root`` without overwriting existing files."""
    for item in source.iterdir():
        target = root / item.name
        if item.is_dir() and target.is_dir():
            _merge_into(item, target)
        elif not target.exists():
            shutil.move(str(item), str(target))


def _unpack(archive: Path, root: Path, strip_top: bool = True) -> None:
    """Extract into a scratch folder inside ``root``; a single top folder is stripped (unless
    ``strip_top`` is off)."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as scratch:
        extract_archive(archive, scratch)
        top = Path(scratch)
        while strip_top:  # the single top folder; then also one named as root (x/SPair-U/...)
            entries = [p for p in top.iterdir() if p.name != "__MACOSX"]
            if not (len(entries) == 1 and entries[0].is_dir()) or (
                    top != Path(scratch) and entries[0].name != root.name):
                break
            top = entries[0]
        _merge_into(top, root)


def _url(remote: RemoteFile, mirror: str | None) -> str:
    return remote.url if mirror is None else f"{mirror.rstrip('/')}/{remote.filename}"


def _fetch(spec: DatasetSpec, root: Path, mirror: str | None, progress: bool,
           report: dict[str, Any]) -> None:
    """Download every file of ``spec`` into ``root/.downloads`` and unpack it into ``root``."""
    done = {r.filename for r in spec.files if r.present and (root / r.present).exists()}
    for remote in spec.files:
        if remote.filename in done:
            continue
        path = download(_url(remote, mirror), root / ".downloads" / remote.filename,
                        remote.checksum, progress=progress)
        report["downloaded"].append(remote.filename)
        if remote.extract:
            _unpack(path, root / remote.into, remote.strip_top)
        else:
            shutil.copyfile(path, root / remote.filename)


#: File kinds whose content :func:`unreadable_files` checks, by suffix.
_READABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".mat", ".json")


def _read_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used (``None`` when it reads): images decode, ``.mat`` parses,
    ``.json`` parses."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".mat":
            from scipy.io import loadmat

            loadmat(str(path))
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            from semcorr.io import load_pil

            load_pil(path)
    except SemcorrError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001  (scipy and json raise many types for bad files)
        return f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return None


def unreadable_files(root: Path) -> list[str]:
    """Every image, ``.mat`` and ``.json`` under ``root`` that does not read, as
    ``"relative/path: reason"``."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _READABLE_SUFFIXES
                   and p.is_file())
    found = ((p, _read_problem(p)) for p in files)
    return [f"{p.relative_to(root)}: {reason}" for p, reason in found if reason is not None]


def bad_archives(spec: DatasetSpec, root: Path) -> list[str]:
    """Every archive kept in ``root/.downloads`` (``--keep-archives``) whose checksum is known
    and does not match, as ``"relative/path: reason"``."""
    from semcorr.data.download import file_digest, parse_checksum

    problems = []
    for remote in spec.files:
        path = root / ".downloads" / remote.filename
        expected = parse_checksum(remote.checksum)
        if expected is None or not path.is_file():
            continue
        if file_digest(path, expected[0]) != expected[1]:
            problems.append(f"{path.relative_to(root)}: {expected[0]} differs from the "
                            f"published {expected[1]}")
    return problems


def check_dataset(name: str, root: str | os.PathLike[str], contents: bool = True) -> list[str]:
    """What is missing from ``root`` for dataset ``name``, then (``contents``) every present
    file that does not read (a zero-byte image or a garbage ``.mat`` is not "complete") and
    every kept archive whose known checksum differs (empty = complete)."""
    spec = _spec(name)
    root = Path(root)
    if not root.is_dir():
        return [f"{root}/ (the folder itself)"]
    problems = spec.check(root)
    return problems + unreadable_files(root) + bad_archives(spec, root) if contents else problems


def _spec(name: str) -> DatasetSpec:
    if name not in DATASET_SPECS:
        raise InputError(f"unknown dataset {name!r} (known: {', '.join(DATASET_SPECS)})")
    return DATASET_SPECS[name]


def prepare(
    name: str,
    root: str | os.PathLike[str],
    fetch: bool = True,
    mirror: str | None = None,
    keep_archives: bool = False,
    seed: int = 42,
    progress: bool = True,
    crowd_list: str | os.PathLike[str] | None = None,
    split_files: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Make ``root`` a complete copy of dataset ``name``, or say exactly what is missing.

    Args:
        name: a key of :data:`DATASET_SPECS`.
        root: the dataset folder (created when downloading).
        fetch: download what is missing (else only verify).
        mirror: base URL replacing the official locations (``MIRROR/<filename>``).
        keep_archives: keep downloaded archives in ``root/.downloads``.
        seed: seed of the AP-10K pair sampling.
        progress: show progress bars.
        crowd_list: AP-10K only: image ids to treat as crowded (e.g. GeoAware-SC's
            ``ap-10k_is_crowd.txt``), on top of images with several annotations.
        split_files: AP-10K only: the released benchmark's ``PairAnnotation`` folder; its
            pairs are used instead of sampling new ones.

    Returns:
        ``{"dataset", "root", "complete": bool, "missing": [...], "downloaded": [...],
        "built": {...} (AP-10K), "manual": str, "checksums": {filename: note}}`` and
        ``"error"`` (a sentence) when a download failed (unreachable, interrupted, wrong
        checksum); the partial download stays in ``root/.downloads`` for the next run.
    """
    spec = _spec(name)
    root = Path(root)
    report: dict[str, Any] = {"dataset": name, "root": str(root), "downloaded": [],
                              "built": {}, "manual": spec.manual,
                              "checksums": {f.filename: f.checksum or f"unknown: {f.note}"
                                            for f in spec.files}}
    missing = check_dataset(name, root)
    if missing and fetch and spec.files:
        root.mkdir(parents=True, exist_ok=True)
        try:
            _fetch(spec, root, mirror, progress, report)
        except DownloadError as exc:
            report["error"] = str(exc)
        else:
            if not keep_archives:
                shutil.rmtree(root / ".downloads", ignore_errors=True)
        missing = check_dataset(name, root)
    rebuild = missing or split_files is not None
    if rebuild and name == "ap10k" and all((root / f).is_file() for f in AP10K_ORIGINAL):
        from semcorr.data.ap10k_benchmark import build_ap10k_benchmark

        report["built"] = build_ap10k_benchmark(root, seed=seed, crowd_list=crowd_list,
                                                split_files=split_files)
        missing = check_dataset(name, root)
    report["missing"] = missing
    report["complete"] = not missing
    return report


__all__ += ["DownloadError", "check_ap10k", "check_cub", "check_mp100", "check_pf_pascal",
            "check_pf_willow", "check_soco", "check_spair", "check_spair_u"]
