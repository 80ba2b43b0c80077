"""A small labelled image set on disk: the condensed set, and the random-real baseline in the same format.

    <set>/images/<class index>/<image index:05d>.png   lossless images, one folder per class
    <set>/labels/epoch-<e:05d>/part-<first image:08d>.parquet  one label epoch in parts, one per relabel block,
                                                        written by the labelling workers (schema: ``label_schema``)
    <set>/labels/epoch-<e:05d>.json                     the epoch's record (its parts and their checksums),
                                                        written last: the epoch is complete when it exists
    <set>/manifest.json                                 written last; its presence means the images are complete;
                                                        it holds a digest of every marker's and epoch record's
                                                        file list (``listing_digest``)
    <set>/.progress/                                    markers of finished work units (recovery resumes from them)
    <set>/start/                                        recover.init rded: the start images, in this format,
                                                        while the set is recovered (removed after its manifest)

Every file is written atomically (srel_ray.storage.files), so a crash never leaves a file that looks complete.
Paths go through fsspec, so a set can live on any filesystem fsspec reaches.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from srel_ray.core.relabel import row_views
from srel_ray.core.soft_labels import compress_topk
from srel_ray.core.student import EpochLabels
from srel_ray.errors import DataError
from srel_ray.storage.files import (exists, fs_path, join, read_bytes, read_json, remove, write_bytes_atomic,
                                    write_json_atomic)

# 3: the manifest vouches for the markers and epoch records (a digest of each one's file list), they for their
# files (2: a sha256 per file in the manifest; 1: also one Parquet file per label epoch). All read and verify.
FORMAT_VERSION = 3


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
    return join(set_dir, image_name(label, index))


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


def image_name(label: int, index: int) -> str:
    return f"images/{label}/{index:05d}.png"


def write_images(set_dir: str, labels_and_indices: list[tuple[int, int]], images: torch.Tensor) -> dict[str, str]:
    """Write each image as a PNG; returns their sha256 by path within the set, computed from the bytes written
    (the writer keeps them in its marker, so the manifest never reads an image back)."""
    out = {}
    for (label, index), image in zip(labels_and_indices, images):
        data = encode_png(image)
        write_bytes_atomic(image_path(set_dir, label, index), data)
        out[image_name(label, index)] = hashlib.sha256(data).hexdigest()
    return out


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


def read_images_by_id(set_dir: str, image_ids: Iterable[int], ipc: int, channels: int) -> torch.Tensor:
    """Images of a set by image id (class * ipc + index within class), as (N, C, H, W) uint8."""
    return read_images_at(set_dir, [divmod(int(i), ipc) for i in image_ids], channels)


DECODE_THREADS = 4  # reading and decoding PNGs: file I/O and zlib, which let other threads run


class SetImages:
    """The images of a share of a set's image ids (``ids``), served like a uint8 tensor of them:
    ``images[rows]`` is the (len(rows), C, H, W) uint8 of ``ids[rows]`` for a tensor of positions ``rows``, exactly
    what ``read_images_by_id`` returns, without holding the share unless it fits ``cache_bytes``.

    The first ``cache_bytes // bytes per image`` images of the share (all of them when the share fits) are decoded
    once, when first asked for, and held; any others are read and decoded whenever a batch asks for them,
    ``threads`` at a time. Picklable (a DataLoader's worker processes get a copy with an empty cache)."""

    def __init__(self, info: "SetInfo", ids: Sequence[int], cache_bytes: int, threads: int = DECODE_THREADS):
        self.set_dir, self.ipc, self.channels, self.ids, self.threads = info.path, info.ipc, info.channels, ids, threads
        self.shape = (info.channels, info.image_size, info.image_size)
        self.held_images = min(len(ids), cache_bytes // math.prod(self.shape))
        self._held: torch.Tensor | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def held_bytes(self) -> int:
        return 0 if self._held is None else self._held.numel()

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        out = torch.empty((len(rows), *self.shape), dtype=torch.uint8)
        held = rows < self.held_images
        if held.any():
            if self._held is None:
                self._held = self._decode(range(self.held_images))
            out[held] = self._held[rows[held]]
        if not held.all():
            out[~held] = self._decode(rows[~held].tolist())
        return out

    def _decode(self, positions) -> torch.Tensor:
        """The images at these positions of the share, decoded in ``threads`` chunks side by side."""
        ids = [self.ids[p] for p in positions]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)
        step = -(-len(ids) // self.threads)
        chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
        return torch.cat(list(self._pool.map(
            lambda chunk: read_images_by_id(self.set_dir, chunk, self.ipc, self.channels), chunks)))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_held": None, "_pool": None}


def unit_marker(set_dir: str, unit_name: str) -> str:
    """The marker a finished recovery unit leaves (its stats as JSON); a rerun skips units that have one."""
    return join(set_dir, ".progress", f"{unit_name}.json")


def unit_started(set_dir: str, unit_name: str) -> str:
    """The record a worker writes when it starts a recovery unit (which worker, which attempt): with no marker
    beside it, the unit is in flight or its worker (or the driver) died."""
    return join(set_dir, ".progress", f"{unit_name}.started.json")


def unit_markers(set_dir: str) -> list[dict]:
    """The records of every finished unit of work that wrote a set's images (recovery units, the baseline's class
    slices), in name order."""
    return [read_json(join(set_dir, p)) for p in record_paths(set_dir) if p.startswith(".progress/")]


def write_image_unit(set_dir: str, marker: str, labels_and_indices: list[tuple[int, int]], images: torch.Tensor,
                     record: dict | None = None) -> None:
    """One unit of work's images, then its marker (``record`` plus the images' checksums) at path ``marker``: the
    unit is done, and its images are known to the manifest, exactly when the marker exists."""
    write_unit_marker(marker, write_images(set_dir, labels_and_indices, images), record)


def write_unit_marker(marker: str, checksums: dict[str, str], record: dict | None = None) -> None:
    """The marker of a unit of work whose images (``checksums``: by path within the set, from ``write_images``)
    are all written."""
    write_json_atomic(marker, {**(record or {}), "checksums": checksums})


def slice_marker(set_dir: str, first_class: int) -> str:
    """The marker of a finished class slice of an image set that is selected, not recovered (the baseline)."""
    return join(set_dir, ".progress", f"slice-{first_class:06d}.json")


def start_dir(set_dir: str) -> str:
    """The images recovery starts from under recover.init rded (RDED's selection, one set-format folder with a
    marker per class slice), beside the set's own images while they are recovered: ``<set>/start/``."""
    return join(set_dir, "start")


def drop_start_images(set_dir: str) -> None:
    """Remove a complete set's start images: no unit is left to read them, and with ``method: rded`` (no
    iterations) they are the set's images, a second copy (ImageNet-21K at IPC 50, 224 px: up to 164 GB)."""
    assert exists(manifest_path(set_dir)), f"{set_dir} is not complete"
    remove(start_dir(set_dir))


def image_id(label: int, index: int, ipc: int) -> int:
    return label * ipc + index


# ----------------------------------------------------------------------------------------- preview


GRID_CLASSES, GRID_IPC = 100, 10  # the preview's bound: a grid of the whole set would not fit the driver at scale


def grid_targets(num_classes: int, ipc: int) -> list[tuple[int, int]]:
    """(class, index) of a set's preview: at most GRID_CLASSES classes spread evenly over the class order (all
    of them when there are fewer), the first GRID_IPC images of each; the same for the same sizes."""
    classes = torch.linspace(0, num_classes - 1, min(num_classes, GRID_CLASSES)).round().long().unique().tolist()
    return [(c, i) for c in classes for i in range(min(ipc, GRID_IPC))]


def grid_png(set_dir: str, num_classes: int, ipc: int, channels: int) -> bytes:
    """A PNG preview of a set, one row per class (``grid_targets``)."""
    import torchvision.utils

    images = read_images_at(set_dir, grid_targets(num_classes, ipc), channels)
    return encode_png(torchvision.utils.make_grid(images, nrow=min(ipc, GRID_IPC), padding=1, pad_value=255))


def save_grid(set_dir: str, num_classes: int, ipc: int, channels: int, path: str) -> str:
    """``grid_png`` written to ``path`` (local or URL)."""
    write_bytes_atomic(path, grid_png(set_dir, num_classes, ipc, channels))
    return path


# ----------------------------------------------------------------------------------------- labels


def label_record(set_dir: str, epoch: int) -> str:
    """The record that commits a label epoch (its parts, rows and checksums), written once every part is."""
    return join(set_dir, "labels", f"epoch-{epoch:05d}.json")


def _part_name(epoch: int, first: int) -> str:
    return f"labels/epoch-{epoch:05d}/part-{first:08d}.parquet"


def label_part(set_dir: str, epoch: int, first: int) -> str:
    """The part of a label epoch holding the rows of images ``first``.. (one relabel block)."""
    return join(set_dir, _part_name(epoch, first))


def _legacy_label_file(set_dir: str, epoch: int) -> str:
    return join(set_dir, "labels", f"epoch-{epoch:05d}.parquet")  # sets of format 1: one file per epoch


def encode_label_table(columns: dict[str, np.ndarray], num_classes: int, logits_dtype: str, top_k: int = 0) -> bytes:
    """Label rows as Parquet bytes, sorted by image id, then view. ``columns`` hold ``logits`` (R, C), or with
    ``top_k`` the compressed ``topk_index``, ``topk_logits``, ``rest_logsumexp`` (srel_ray.core.soft_labels)."""
    schema = label_schema(num_classes, logits_dtype, top_k)
    order = np.lexsort((columns["view"], columns["image_id"]))
    columns = {name: np.asarray(values)[order] for name, values in columns.items()}
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
    return buf.getvalue()


def write_label_part(set_dir: str, epoch: int, first: int, stop: int, columns: dict[str, np.ndarray],
                     num_classes: int, logits_dtype: str, top_k: int = 0) -> dict:
    """Write the label rows of images ``first..stop-1`` of ``epoch`` (the labelling worker does, never the
    driver); returns the part's record, checksum included, for ``commit_label_epoch``."""
    data = encode_label_table(columns, num_classes, logits_dtype, top_k)
    path = label_part(set_dir, epoch, first)
    write_bytes_atomic(path, data)
    return {"epoch": epoch, "first": first, "stop": stop, "rows": len(columns["image_id"]),
            "file": _part_name(epoch, first), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def commit_label_epoch(set_dir: str, epoch: int, parts: list[dict], num_images: int) -> None:
    """Commit ``epoch`` once its parts cover every image: the record lists them (small: one entry a block)."""
    parts = sorted(parts, key=lambda p: p["first"])
    covered = [(p["first"], p["stop"]) for p in parts]
    assert covered and covered[0][0] == 0 and covered[-1][1] == num_images and all(
        a[1] == b[0] for a, b in zip(covered, covered[1:])), f"epoch {epoch}: parts {covered} do not tile the images"
    write_json_atomic(label_record(set_dir, epoch), {"epoch": epoch, "rows": sum(p["rows"] for p in parts),
                                                    "parts": [{k: p[k] for k in ("first", "stop", "rows", "file",
                                                                                  "sha256", "bytes")} for p in parts]})


def write_label_epoch(set_dir: str, epoch: int, columns: dict[str, np.ndarray], num_classes: int,
                      logits_dtype: str, top_k: int = 0) -> None:
    """A whole label epoch as one part, committed (small sets, tests): ``columns["logits"]`` is (R, C) and is
    kept as top-k when ``top_k`` is set."""
    columns = dict(columns)
    if top_k and "logits" in columns:
        columns["topk_index"], columns["topk_logits"], columns["rest_logsumexp"] = (
            t.numpy() for t in compress_topk(torch.from_numpy(np.asarray(columns.pop("logits"))), top_k))
    stop = int(np.max(columns["image_id"])) + 1
    part = write_label_part(set_dir, epoch, 0, stop, columns, num_classes, logits_dtype, top_k)
    commit_label_epoch(set_dir, epoch, [part], stop)


def _matrix(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column as a writable (rows, k) array of its own (Arrow's are read-only views)."""
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat.reshape(len(table), -1))


def _read_table(set_dir: str, path: str) -> pa.Table:
    fs, p = fs_path(path)
    if not fs.exists(p):
        raise DataError(f"set {set_dir!r} misses label file {path!r}: was its relabel stage interrupted?")
    with fs.open(p, "rb") as f:
        return pq.read_table(f)


def read_label_epoch(set_dir: str, epoch: int, hard: bool = False,
                     images: range | np.ndarray | None = None) -> EpochLabels:
    """One label epoch as the student replays it; ``hard`` drops the logits (the hard-label baseline).
    ``images``: only the rows of these image ids (a worker's share: a range, or sorted ids, a memory's share of
    some classes), reading only the parts that hold any, a part at a time, rows in stored order."""
    if images is not None and not isinstance(images, range):
        images = np.asarray(images, dtype=np.int64)
        assert np.all(images[1:] > images[:-1]), "image ids must be sorted and distinct"
    if exists(label_record(set_dir, epoch)):
        parts = read_json(label_record(set_dir, epoch))["parts"]
        if images is not None:
            parts = [p for p in parts if _holds_any(images, p["first"], p["stop"])]
        tables = [_rows_of(_read_table(set_dir, join(set_dir, p["file"])), images) for p in parts]
    elif exists(_legacy_label_file(set_dir, epoch)):
        tables = [_rows_of(_read_table(set_dir, _legacy_label_file(set_dir, epoch)), images)]
    else:
        raise DataError(f"set {set_dir!r} has no labels for epoch {epoch}: run the relabel stage first")
    metadata = tables[0].schema.metadata
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    col = {name: table.column(name).to_numpy() for name in ("image_id", "top", "left", "height", "width", "flip")}
    labels = EpochLabels(torch.from_numpy(col["image_id"].astype(np.int64)), row_views(col))
    if hard:
        return labels
    # Logits stay in their stored precision (float16 by default: half of float32 for a share of an epoch); targets()
    # widens a batch's rows, exactly.
    if "logits" in table.column_names:
        labels.logits = torch.from_numpy(_matrix(table, "logits"))
        return labels
    num_classes = int(metadata[b"num_classes"]) if metadata else None
    assert num_classes, f"{set_dir}: a top-k label file must record num_classes in its schema metadata"
    # Kept compressed: the student expands one batch at a time (EpochLabels.targets).
    labels.topk = (torch.from_numpy(_matrix(table, "topk_index")),
                   torch.from_numpy(_matrix(table, "topk_logits")),
                   torch.from_numpy(table.column("rest_logsumexp").to_numpy().astype(np.float32)))
    labels.num_classes = num_classes
    return labels


def _holds_any(images: range | np.ndarray, first: int, stop: int) -> bool:
    """Whether any of ``images`` lies in [first, stop)."""
    if isinstance(images, range):
        return first < images.stop and stop > images.start
    return bool(np.searchsorted(images, first) < np.searchsorted(images, stop))


def _rows_of(table: pa.Table, images: range | np.ndarray | None) -> pa.Table:
    """The rows of ``images`` (all rows for None), in stored order."""
    if images is None:
        return table
    ids = table.column("image_id").to_numpy()
    keep = (ids >= images.start) & (ids < images.stop) if isinstance(images, range) else np.isin(ids, images)
    return table.filter(pa.array(keep))


def label_records(set_dir: str) -> Iterator[dict]:
    """The records of a set's committed label epochs, in epoch order, read one at a time: a record lists its epoch's
    parts (thousands at ImageNet-21K, a megabyte), and a set has hundreds of epochs."""
    fs, root = fs_path(join(set_dir, "labels"))
    for path in sorted(fs.glob(f"{root}/epoch-*.json")):
        yield read_json(fs.unstrip_protocol(path))


def label_bytes(set_dir: str) -> int:
    """Bytes of all label parts of a set, from the epoch records (no label file is read; one record held at a
    time)."""
    return sum(p["bytes"] for record in label_records(set_dir) for p in record["parts"])


def label_epochs_done(set_dir: str, epochs: int) -> list[int]:
    return [e for e in range(epochs) if exists(label_record(set_dir, e)) or exists(_legacy_label_file(set_dir, e))]


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
    recorded, images = manifest_records(set_dir)
    assert images == len(class_names) * ipc, \
        f"{set_dir}: the units' markers record {images} of its {len(class_names) * ipc} images"
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
        "records": recorded,
        "config": config,
    }
    write_json_atomic(manifest_path(set_dir), manifest)


def record_paths(set_dir: str) -> list[str]:
    """Paths, within the set, of the markers of the units of work that wrote its images, then of its label epochs'
    records: what a manifest vouches for, each of them for its own files."""
    fs, root = fs_path(set_dir)
    markers = [p for p in sorted(fs.glob(f"{root}/.progress/*.json")) if not p.endswith(".started.json")]
    epochs = sorted(fs.glob(f"{root}/labels/epoch-*.json"))
    return [p[len(root) + 1:] for p in markers + epochs]


def recorded_files(record: dict) -> dict[str, str]:
    """sha256 by path within the set of the files one marker (its images) or one epoch record (its parts) vouches
    for, as their writers computed them from the bytes they wrote."""
    if "parts" in record:
        return {part["file"]: part["sha256"] for part in record["parts"]}
    return record["checksums"]


def listing_digest(files: dict[str, str]) -> str:
    """What a manifest holds for a marker or epoch record: the sha256 of the file list it vouches for (each file's
    path and sha256, in path order). Not of the whole marker: its seconds, worker and attempt differ between two
    runs of one config, and the manifest must not."""
    return hashlib.sha256("".join(f"{p}={h}\n" for p, h in sorted(files.items())).encode()).hexdigest()


def manifest_records(set_dir: str) -> tuple[dict[str, str], int]:
    """``listing_digest`` of every marker and epoch record of the set, by path within it, and how many images the
    markers vouch for. Read one at a time: no image or label part is read back, and the driver holds one entry a
    unit or an epoch, never one an image (``srel_ray.storage.verify`` checks the files against them on demand)."""
    out, images = {}, 0
    for path in record_paths(set_dir):
        files = recorded_files(read_json(join(set_dir, path)))
        out[path] = listing_digest(files)
        images += sum(name.startswith("images/") for name in files)
    return out, images


def read_set(set_dir: str) -> SetInfo:
    if not exists(manifest_path(set_dir)):
        raise DataError(f"{set_dir!r} is not a complete set: {manifest_path(set_dir)!r} is missing "
                        "(the stage that writes it has not finished)")
    m = read_json(manifest_path(set_dir))
    return SetInfo(set_dir, [c["name"] for c in m["classes"]], int(m["ipc"]), int(m["channels"]),
                   int(m["image_size"]), m)


def copy_images(src: str, dst: str) -> int:
    """The images of the complete set ``src`` copied into ``dst`` with the markers that vouch for them, not its
    labels: each image checked against its marker's sha256 on the way, each marker copied after its images (a
    copy cut short resumes like a set being written). The caller writes ``dst``'s manifest. Returns the number of
    images copied now (0: every marker was there already)."""
    read_set(src)  # a DataError unless its manifest says its images are complete
    copied = 0
    for path in (p for p in record_paths(src) if p.startswith(".progress/")):
        if exists(join(dst, path)):
            continue
        marker = read_bytes(join(src, path))
        for name, sha256 in recorded_files(json.loads(marker)).items():
            data = read_bytes(join(src, name))
            if hashlib.sha256(data).hexdigest() != sha256:
                raise DataError(f"set {src!r}: {name} has changed since its marker {path} was written")
            write_bytes_atomic(join(dst, name), data)
            copied += 1
        write_bytes_atomic(join(dst, path), marker)
    return copied
