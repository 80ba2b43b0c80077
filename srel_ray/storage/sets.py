"""A small labelled image set on disk: the condensed set, and the random-real baseline in the same format.

    <set>/images/<class index>/<image index:05d>.png   lossless images, one folder per class
    <set>/labels/epoch-<e:05d>.parquet                  one file per label epoch (schema: ``LABEL_SCHEMA``)
    <set>/manifest.json                                 written last; its presence means the images are complete
    <set>/.progress/                                    markers of finished work units (recovery resumes from them)

Every file is written atomically (srel_ray.storage.files), so a crash never leaves a file that looks complete.
Paths go through fsspec, so a set can live on any filesystem fsspec reaches.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from srel_ray.core.relabel import row_views
from srel_ray.core.soft_labels import compress_topk, expand_topk
from srel_ray.core.student import EpochLabels
from srel_ray.errors import DataError
from srel_ray.storage.files import (TMP_SUFFIX, exists, fs_path, join, read_json, write_bytes_atomic,
                                    write_json_atomic)

FORMAT_VERSION = 1


def label_schema(num_classes: int, logits_dtype: str = "float16", top_k: int = 0) -> pa.Schema:
    """Full logits per view, or with ``top_k`` only the k largest (srel_ray.core.soft_labels)."""
    value = pa.float16() if logits_dtype == "float16" else pa.float32()
    if top_k:
        logits = [("topk_index", pa.list_(pa.int32() if num_classes > 32767 else pa.int16(), top_k)),
                  ("topk_logits", pa.list_(value, top_k)),  # the k largest logits, largest first
                  ("rest_logsumexp", value)]  # log-sum-exp of the other C - k logits
    else:
        logits = [("logits", pa.list_(value, num_classes))]  # the teacher's logits on this view
    return pa.schema([
        ("image_id", pa.int32()),  # class * ipc + index within class
        ("label", pa.int32()),  # the image's class index
        ("epoch", pa.int32()),
        ("view", pa.int32()),  # 0..K-1 within the epoch
        ("top", pa.int32()), ("left", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),  # crop box (px)
        ("flip", pa.bool_()),
        *logits,
    ])


# ----------------------------------------------------------------------------------------- images


def image_path(set_dir: str, label: int, index: int) -> str:
    return join(set_dir, "images", str(label), f"{index:05d}.png")


def encode_png(image: torch.Tensor) -> bytes:
    """(C, H, W) uint8 -> PNG bytes (grey for one channel, RGB for three)."""
    array = image.permute(1, 2, 0).numpy()
    array = array[:, :, 0] if array.shape[2] == 1 else array
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, channels: int) -> torch.Tensor:
    img = Image.open(io.BytesIO(data))
    img = img.convert("L" if channels == 1 else "RGB")
    array = np.asarray(img, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def write_images(set_dir: str, labels_and_indices: list[tuple[int, int]], images: torch.Tensor) -> None:
    for (label, index), image in zip(labels_and_indices, images):
        write_bytes_atomic(image_path(set_dir, label, index), encode_png(image))


def read_image(set_dir: str, label: int, index: int, channels: int) -> torch.Tensor:
    """One image of a set as (C, H, W) uint8."""
    return read_images_at(set_dir, [(label, index)], channels)[0]


def read_images_at(set_dir: str, labels_and_indices: list[tuple[int, int]], channels: int) -> torch.Tensor:
    """Images of a set by (class, index within class), as (N, C, H, W) uint8 (the filesystem is resolved once)."""
    fs, root = fs_path(set_dir)
    images = []
    for label, index in labels_and_indices:
        path = image_path(root, label, index)
        try:
            with fs.open(path, "rb") as f:
                images.append(decode_png(f.read(), channels))
        except FileNotFoundError:
            raise DataError(f"set {set_dir!r} misses image {path!r}: was its stage interrupted?") from None
    return torch.stack(images)


def read_images(set_dir: str, num_classes: int, ipc: int, channels: int) -> torch.Tensor:
    """All images of a set as (num_classes * ipc, C, H, W) uint8, ordered by image id."""
    return read_images_at(set_dir, [(label, index) for label in range(num_classes) for index in range(ipc)],
                          channels)


def unit_marker(set_dir: str, unit_name: str) -> str:
    """The marker a finished recovery unit leaves (its stats as JSON); a rerun skips units that have one."""
    return join(set_dir, ".progress", f"{unit_name}.json")


def unit_started(set_dir: str, unit_name: str) -> str:
    """The record a worker writes when it starts a recovery unit (which worker, which attempt): with no marker
    beside it, the unit is in flight or its worker (or the driver) died."""
    return join(set_dir, ".progress", f"{unit_name}.started.json")


def unit_markers(set_dir: str) -> list[dict]:
    """The stats of every finished recovery unit of a set, in unit order."""
    fs, root = fs_path(join(set_dir, ".progress"))
    done = [p for p in sorted(fs.glob(f"{root}/*.json")) if not p.endswith(".started.json")]
    return [read_json(fs.unstrip_protocol(p)) for p in done]


def image_id(label: int, index: int, ipc: int) -> int:
    return label * ipc + index


# ----------------------------------------------------------------------------------------- preview


GRID_CLASSES, GRID_IPC = 100, 10  # the preview's bound: a grid of the whole set would not fit the driver at scale


def grid_targets(num_classes: int, ipc: int) -> list[tuple[int, int]]:
    """(class, index) of a set's preview: at most GRID_CLASSES classes spread evenly over the class order (all
    of them when there are fewer), the first GRID_IPC images of each; the same for the same sizes."""
    classes = torch.linspace(0, num_classes - 1, min(num_classes, GRID_CLASSES)).round().long().unique().tolist()
    return [(c, i) for c in classes for i in range(min(ipc, GRID_IPC))]


def save_grid(set_dir: str, num_classes: int, ipc: int, channels: int, path: str) -> str:
    """A PNG preview of a set, one row per class (``grid_targets``), written to ``path`` (local or URL)."""
    import torchvision.utils

    images = read_images_at(set_dir, grid_targets(num_classes, ipc), channels)
    grid = torchvision.utils.make_grid(images, nrow=min(ipc, GRID_IPC), padding=1, pad_value=255)
    write_bytes_atomic(path, encode_png(grid))
    return path


# ----------------------------------------------------------------------------------------- labels


def label_file(set_dir: str, epoch: int) -> str:
    return join(set_dir, "labels", f"epoch-{epoch:05d}.parquet")


def write_label_epoch(set_dir: str, epoch: int, columns: dict[str, np.ndarray], num_classes: int,
                      logits_dtype: str, top_k: int = 0) -> None:
    """Write one label epoch (rows sorted by image id, then view) atomically; ``columns["logits"]`` is (R, C)."""
    schema = label_schema(num_classes, logits_dtype, top_k)
    order = np.lexsort((columns["view"], columns["image_id"]))
    columns = {name: np.asarray(values)[order] for name, values in columns.items()}
    if top_k:
        columns["topk_index"], columns["topk_logits"], columns["rest_logsumexp"] = (
            t.numpy() for t in compress_topk(torch.from_numpy(np.asarray(columns["logits"])), top_k))
    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            value_type = field.type.value_type
            flat = pa.array(values.astype(value_type.to_pandas_dtype()).ravel(), type=value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        else:
            arrays.append(pa.array(values.astype(field.type.to_pandas_dtype()), type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema.with_metadata({"num_classes": str(num_classes)}))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(label_file(set_dir, epoch), buf.getvalue())


def _matrix(table: pa.Table, name: str) -> np.ndarray:
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(table), -1)


def read_label_epoch(set_dir: str, epoch: int, hard: bool = False) -> EpochLabels:
    """One label epoch as the student replays it; ``hard`` drops the logits (the hard-label baseline)."""
    fs, p = fs_path(label_file(set_dir, epoch))
    if not fs.exists(p):
        raise DataError(f"set {set_dir!r} has no labels for epoch {epoch}: run the relabel stage first")
    with fs.open(p, "rb") as f:
        table = pq.read_table(f)
    col = {name: table.column(name).to_numpy() for name in ("image_id", "top", "left", "height", "width", "flip")}
    labels = EpochLabels(torch.from_numpy(col["image_id"].astype(np.int64)), row_views(col))
    if hard:
        return labels
    if "logits" in table.column_names:
        labels.logits = torch.from_numpy(_matrix(table, "logits").astype(np.float32))
        return labels
    num_classes = int(table.schema.metadata[b"num_classes"]) if table.schema.metadata else None
    assert num_classes, f"{p}: a top-k label file must record num_classes in its schema metadata"
    # Kept compressed: the student expands one batch at a time (EpochLabels.targets).
    labels.topk = (torch.from_numpy(_matrix(table, "topk_index").astype(np.int32)),
                   torch.from_numpy(_matrix(table, "topk_logits").astype(np.float32)),
                   torch.from_numpy(table.column("rest_logsumexp").to_numpy().astype(np.float32)))
    labels.num_classes = num_classes
    return labels


def label_bytes(set_dir: str) -> int:
    """Bytes of all label files of a set."""
    fs, path = fs_path(join(set_dir, "labels"))
    return sum(fs.size(p) for p in fs.ls(path, detail=False)) if fs.exists(path) else 0


def label_epochs_done(set_dir: str, epochs: int) -> list[int]:
    return [e for e in range(epochs) if exists(label_file(set_dir, e))]


# ----------------------------------------------------------------------------------------- manifest


@dataclass
class SetInfo:
    """What a manifest says about a set: enough to read it and to check it against a teacher and dataset."""

    path: str
    class_names: list[str]
    ipc: int
    channels: int
    image_size: int
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_epochs(self) -> int:
        return int(self.manifest.get("labels", {}).get("epochs", 0))


def manifest_path(set_dir: str) -> str:
    return join(set_dir, "manifest.json")


def write_manifest(set_dir: str, *, kind: str, dataset: str, class_names: list[str], ipc: int, channels: int,
                   image_size: int, normalization: dict, teacher: dict, config: dict,
                   labels: dict | None = None, source: dict | None = None) -> None:
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "dataset": dataset,
        "classes": [{"index": i, "name": n} for i, n in enumerate(class_names)],
        "ipc": ipc,
        "channels": channels,
        "image_size": image_size,
        "normalization": normalization,
        "teacher": teacher,
        "counts": {"images": len(class_names) * ipc,
                   "label_files": labels["epochs"] if labels else 0},
        "labels": labels or {},
        "source": source or {},
        "checksums": checksums(set_dir),
        "config": config,
    }
    write_json_atomic(manifest_path(set_dir), manifest)


def checksums(set_dir: str) -> dict[str, str]:
    """sha256 of every image and label file, by path relative to the set (``verify_set`` checks them)."""
    fs, root = fs_path(set_dir)
    files = [p for sub in ("images", "labels") if fs.exists(f"{root}/{sub}") for p in fs.find(f"{root}/{sub}")]
    return {p[len(root) + 1:]: hashlib.sha256(fs.cat_file(p)).hexdigest()
            for p in sorted(files) if not p.endswith(TMP_SUFFIX)}


def verify_set(set_dir: str) -> None:
    """Raise DataError naming the first file that is missing or differs from the manifest's checksum."""
    recorded = read_set(set_dir).manifest.get("checksums", {})
    actual = checksums(set_dir)
    for path, digest in recorded.items():
        if actual.get(path) != digest:
            state = "missing" if path not in actual else "changed"
            raise DataError(f"set {set_dir!r}: {path} is {state} since the manifest was written")


def read_set(set_dir: str) -> SetInfo:
    if not exists(manifest_path(set_dir)):
        raise DataError(f"{set_dir!r} is not a complete set: {manifest_path(set_dir)!r} is missing "
                        "(the stage that writes it has not finished)")
    m = read_json(manifest_path(set_dir))
    return SetInfo(set_dir, [c["name"] for c in m["classes"]], int(m["ipc"]), int(m["channels"]),
                   int(m["image_size"]), m)
