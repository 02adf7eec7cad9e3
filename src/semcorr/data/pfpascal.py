"""PF-PASCAL (Ham et al., 2018) with the pair lists of Rocco et al. (CNNGeometric).

::

    ROOT/JPEGImages/<name>.jpg
    ROOT/Annotations/<class>/<name>.mat     ``kps`` (K x 2, NaN = absent), ``bbox`` (1 x 4)
    ROOT/test_pairs_pf_pascal.csv          source_image,target_image,class,XA,YA,XB,YB
    ROOT/val_pairs_pf_pascal.csv           (same columns)
    ROOT/train_pairs_pf_pascal.csv         source_image,target_image,class,flip

In the test and validation lists the keypoints are in the CSV (``XA`` = ``"x1;x2;..."``);
``class`` is 1-based over the 20 VOC classes; image paths are relative to ROOT's parent (e.g.
``PF-dataset-PASCAL/JPEGImages/2009_002457.jpg``; only the file name is used). Training pairs
take their keypoints from the ``.mat`` files. PCK uses α times the larger side of the target
image (``normalisation="image"``, the standard protocol) or of the target bounding box
(``"bbox"``, read from the ``.mat``). Coordinates are used as annotated.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from semcorr.data.base import (
    PairDataset,
    PairSample,
    image_size,
    register_dataset,
    require_dir,
    require_file,
)
from semcorr.errors import InputError

__all__ = ["PFPASCAL_CLASSES", "PFPascal", "read_pascal_annotation"]

PFPASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_CSV = {
    "test": "test_pairs_pf_pascal.csv",
    "val": "val_pairs_pf_pascal.csv",
    "train": "train_pairs_pf_pascal.csv",
}


def read_pascal_annotation(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keypoints ``(K, 2)`` (NaN = absent) and bbox ``(4,)`` (or ``None``) of a PF-PASCAL .mat.

    Raises:
        InputError: naming the file when it is missing or lacks ``kps``.
    """
    import scipy.io

    require_file(path, "annotation file")
    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"{path}: not a readable .mat file ({exc})") from None
    kps = mat.get("kps")
    if kps is None or kps.ndim != 2 or (kps.size and kps.shape[1] != 2):
        raise InputError(f"{path}: expected a K x 2 array 'kps'")
    bbox = mat.get("bbox")
    box = None if bbox is None else torch.as_tensor(bbox.reshape(-1)[:4].astype("float32"))
    return torch.as_tensor(kps.astype("float32")).reshape(-1, 2), box


def _parse_coords(text: str, path: Path, row: int) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(";") if v.strip()], dtype=torch.float32)
    except ValueError:
        raise InputError(f"{path}: row {row}: malformed coordinates {text!r}") from None


class PFPascal(PairDataset):
    """PF-PASCAL pairs of one split.

    Args:
        root: the ``PF-dataset-PASCAL`` folder.
        split: ``test``, ``val`` or ``train``.
        normalisation: ``image`` (standard) or ``bbox``.
        category: restrict to one class.
    """

    name = "pf-pascal"

    def __init__(
        self,
        root: Path,
        split: str = "test",
        normalisation: str = "image",
        category: str | None = None,
    ) -> None:
        split = "train" if split == "trn" else split
        if split not in _CSV:
            raise InputError(f"pf-pascal split must be test, val or train, not {split!r}")
        if normalisation not in ("image", "bbox"):
            raise InputError(
                f"pf-pascal normalisation must be 'image' or 'bbox', not {normalisation!r}"
            )
        self.root = require_dir(Path(root), "PF-PASCAL folder")
        self.split = split
        self.normalisation = normalisation
        self.protocol = {"normalisation": normalisation, "average": "pairs"}
        require_dir(self.root / "JPEGImages", "folder of the PF-PASCAL layout")
        if split == "train" or normalisation == "bbox":
            require_dir(self.root / "Annotations", "folder of the PF-PASCAL layout")
        self._rows = self._read_csv(require_file(self.root / _CSV[split], "pair list"))
        if category is not None:
            self._rows = [r for r in self._rows if r["category"] == category]

    def _read_csv(self, path: Path) -> list[dict[str, str]]:
        needed = ["source_image", "target_image", "class"]
        if self.split != "train":
            needed += ["XA", "YA", "XB", "YB"]
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for number, row in enumerate(reader, start=2):
                try:
                    cls = PFPASCAL_CLASSES[int(row["class"]) - 1]
                except (ValueError, IndexError):
                    raise InputError(f"{path}: row {number}: bad class {row['class']!r}") from None
                rows.append(
                    {
                        **{k: row[k] for k in needed},
                        "category": cls,
                        "row": str(number),
                        "flip": row.get("flip") or "0",
                    }
                )
        return rows

    def __len__(self) -> int:
        return len(self._rows)

    def _image(self, name: str) -> Path:
        return self.root / "JPEGImages" / Path(name).name

    def image_paths(self) -> list[Path]:
        return sorted(
            {self._image(r[k]) for r in self._rows for k in ("source_image", "target_image")}
        )

    def _annotation(self, category: str, image: Path) -> Path:
        return self.root / "Annotations" / category / f"{image.stem}.mat"

    def _points(self, row: dict[str, str], source: Path, target: Path) -> tuple[torch.Tensor, ...]:
        path = self.root / _CSV[self.split]
        if self.split != "train":
            xa, ya = (
                _parse_coords(row["XA"], path, int(row["row"])),
                _parse_coords(row["YA"], path, int(row["row"])),
            )
            xb, yb = (
                _parse_coords(row["XB"], path, int(row["row"])),
                _parse_coords(row["YB"], path, int(row["row"])),
            )
            if not (xa.shape == ya.shape == xb.shape == yb.shape):
                raise InputError(f"{path}: row {row['row']}: XA, YA, XB, YB differ in length")
            return torch.stack([xa, ya], 1), torch.stack([xb, yb], 1)
        src, _ = read_pascal_annotation(self._annotation(row["category"], source))
        trg, _ = read_pascal_annotation(self._annotation(row["category"], target))
        if src.shape != trg.shape:
            raise InputError(
                f"{self._annotation(row['category'], source)}: keypoint count "
                "differs from its pair's"
            )
        return src, trg

    def sample(self, index: int) -> PairSample:
        row = self._rows[index]
        source, target = self._image(row["source_image"]), self._image(row["target_image"])
        src_pts, trg_pts = self._points(row, source, target)
        visible = ~(src_pts.isnan().any(1) | trg_pts.isnan().any(1))
        src_pts = torch.where(src_pts.isnan(), -1.0, src_pts)
        trg_pts = torch.where(trg_pts.isnan(), -1.0, trg_pts)
        src_box = trg_box = None
        if (self.root / "Annotations").is_dir():
            src_mat, trg_mat = (self._annotation(row["category"], p) for p in (source, target))
            if src_mat.is_file() and trg_mat.is_file():
                src_box, trg_box = (
                    read_pascal_annotation(src_mat)[1],
                    read_pascal_annotation(trg_mat)[1],
                )
        target_size = image_size(target)
        if self.normalisation == "bbox":
            if trg_box is None:
                raise InputError(f"{self._annotation(row['category'], target)}: missing bbox")
            reference = float(max(trg_box[2] - trg_box[0], trg_box[3] - trg_box[1]))
        else:
            reference = float(max(target_size))
        n = src_pts.shape[0]
        return PairSample(
            source_path=source,
            target_path=target,
            source_points=src_pts,
            target_points=trg_pts,
            visible=visible,
            category=row["category"],
            source_bbox=src_box,
            target_bbox=trg_box,
            source_size=image_size(source),
            target_size=target_size,
            pck_reference=reference,
            keypoint_ids=torch.arange(n),
            flip_permutation=torch.full((n,), -1, dtype=torch.long),
            pair_id=f"{row['category']}/{source.stem}-{target.stem}#{row['row']}",
            extra={"flip": int(float(row["flip"]))} if self.split == "train" else {},
        )


@register_dataset("pf-pascal")
def pf_pascal(
    *, root: Path, split: str = "test", normalisation: str = "image", category: str | None = None
) -> PFPascal:
    """PF-PASCAL from its CSV pair lists (see :class:`PFPascal`)."""
    return PFPascal(root, split, normalisation, category)
