"""The labels of ImageNet's official validation set, one flat folder of ``ILSVRC2012_val_<n>.JPEG`` files.

Two releases carry them: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the string is boxes,
each starting with the image's wnid), and the ILSVRC2012 devkit (``data/ILSVRC2012_validation_ground_truth.txt``:
line n is the ILSVRC2012_ID of image n, and ``data/meta.mat`` maps those ids to wnids; the ids are not the
sorted-wnid order classifiers use, so they are always mapped through meta.mat).
"""

from __future__ import annotations

import csv
import io
from typing import Iterator

from srel_ray.errors import DataError

DEVKIT_IMAGE = "ILSVRC2012_val_{:08d}"


def flat_val_labels(fs, labels_file: str) -> Iterator[tuple[str, str]]:
    """(image file name without extension, wnid) for every image the labels file lists."""
    if labels_file.lower().endswith(".csv"):
        yield from _kaggle_csv(fs, labels_file)
    else:
        yield from _devkit(fs, labels_file)


def _kaggle_csv(fs, path: str) -> Iterator[tuple[str, str]]:
    with fs.open(path, "r") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path!r} has columns {reader.fieldnames}; LOC_val_solution.csv has ImageId and "
                            "PredictionString")
        for row in reader:
            boxes = (row["PredictionString"] or "").split()
            if not boxes:
                raise DataError(f"{path!r}: image {row['ImageId']!r} has an empty PredictionString (no wnid)")
            yield row["ImageId"], boxes[0]


def _devkit(fs, path: str) -> Iterator[tuple[str, str]]:
    import scipy.io  # scikit-learn's dependency; reads the devkit's MATLAB file

    meta = path.rsplit("/", 1)[0] + "/meta.mat" if "/" in path else "meta.mat"
    if not fs.isfile(meta):
        raise DataError(f"the devkit ground truth {path!r} needs meta.mat beside it ({meta!r}) to map its "
                        "ILSVRC2012_IDs to wnids")
    with fs.open(meta, "rb") as f:
        synsets = scipy.io.loadmat(io.BytesIO(f.read()), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    with fs.open(path, "r") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                if not line.strip().isdigit():
                    raise DataError(f"{path!r} line {n}: {line.strip()!r} is not an ILSVRC2012_ID (one integer a line)")
                ilsvrc_id = int(line)
                if ilsvrc_id not in wnid_of:
                    raise DataError(f"{path!r} line {n}: ILSVRC2012_ID {ilsvrc_id} is not in {meta!r}")
                yield DEVKIT_IMAGE.format(n), wnid_of[ilsvrc_id]
