"""Ray Datasets over the real data: shards and files are read and decoded by Ray tasks, never by the driver.

Rows are ``{"image": uint8 (C, S, S), "label": int}``; unreadable images are dropped here, and squeeze counts
them against ``data.max_corrupt``.
"""

from __future__ import annotations

from functools import partial

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask

from srel_ray.data.folder_index import FolderIndex
from srel_ray.data.real import InMemoryData, RealData, decode_images, encoded_images
from srel_ray.data.webdataset import sample_image, sample_label

DECODE_BATCH = 256
URL_ROWS = pa.schema([("url", pa.string()), ("label", pa.int64())])  # the rows ray.data.from_items made of them


def block_ranges(rows: int, blocks: int) -> list[tuple[int, int]]:
    """``rows`` split into ``blocks`` consecutive ranges (start, stop) as ray.data.from_items splits its items: the
    first ``rows % blocks`` ranges one row longer."""
    size, longer = divmod(rows, blocks)
    return [(i * size + min(i, longer), (i + 1) * size + min(i + 1, longer)) for i in range(blocks)]


def from_items_blocks(rows: int) -> int:
    """How many blocks ray.data.from_items makes of ``rows`` items on the driver (Ray 2.60, outside a placement
    group): DataContext.read_op_min_num_blocks, or twice the cluster's CPUs if more, never more than the items."""
    ctx = ray.data.DataContext.get_current()
    return min(rows, max(ctx.read_op_min_num_blocks, 2 * int(ray.cluster_resources().get("CPU", 1))))


def _url_rows(folder: str, split: str, prefix: str, start: int, stop: int) -> list[pa.Table]:
    rows = FolderIndex(folder).rows(split, start, stop, ["path", "label"])
    return [pa.table([pc.binary_join_element_wise(prefix, rows.column("path"), ""),
                      rows.column("label").cast(pa.int64())], schema=URL_ROWS)]


class FolderIndexRows(ray.data.Datasource):
    """The (url, label) rows of one ImageFolder split, in index order, read from its index's parts by Ray tasks, a row
    range each: the driver holds no path. The ranges are the blocks ray.data.from_items made of the same rows
    (built on the driver before), so batches, and the sums of the class statistics, stay byte-identical."""

    def __init__(self, index: FolderIndex, split: str, url_prefix: str, num_rows: int):
        super().__init__()
        self.folder, self.split, self.prefix, self.num_rows = index.folder, split, url_prefix, num_rows

    def estimate_inmemory_data_size(self) -> None:
        return None  # unknown until read (paths vary in length); Ray then splits no read task's block

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(partial(_url_rows, self.folder, self.split, self.prefix, start, stop),
                         BlockMetadata(num_rows=stop - start, size_bytes=None, exec_stats=None, input_files=None),
                         schema=URL_ROWS, per_task_row_limit=per_task_row_limit)
                for start, stop in block_ranges(self.num_rows, min(parallelism, self.num_rows))]


def _decode(batch: dict, channels: int, size: int, resize: int) -> dict:
    images, ok = decode_images(encoded_images(list(batch["image"])), channels, size, resize)
    return {"image": images[ok], "label": np.asarray(batch["label"], dtype=np.int64)[ok]}


def _read_files(batch: dict) -> dict:
    return {"image": [fsspec.open(url, "rb").open().read() for url in batch["url"]], "label": batch["label"]}


def _webdataset_rows(batch: dict, label_key: str) -> dict:
    """Samples (one column per member extension, raw bytes) -> encoded image and label; the start-up index has
    checked that every sample has both."""
    columns = [c for c in batch if not c.startswith("__")]
    samples = [{c: batch[c][i] for c in columns} for i in range(len(batch["__key__"]))]
    return {"image": [sample_image(s) for s in samples],
            "label": np.asarray([sample_label(s, label_key) for s in samples], dtype=np.int64)}


def ray_dataset(data: RealData, split: str, shuffle: str | None = None, seed: int = 0) -> ray.data.Dataset:
    """A streamed Ray Dataset of one split, decoded and resized inside the pipeline.

    ``shuffle`` (file-based sources): None keeps the stored order; "global" is a seeded shuffle of the still-encoded
    rows (files are often sorted by class; shuffling before decoding moves a third of the bytes that shuffling
    decoded CIFAR would); "files" gives Parquet files and WebDataset shards a seeded new order at every execution
    (epoch) and moves no rows. ImageFolder sources (either mode) shuffle their (url, label) rows, seeded, before any
    file is read: a full shuffle that moves no image bytes."""
    from srel_ray.data.imagefolder import ImageFolderData
    from srel_ray.data.parquet import ParquetData
    from srel_ray.data.webdataset import WebDatasetData

    assert shuffle in (None, "global", "files"), shuffle
    seed = seed % 2**32  # Ray's shuffles take 32-bit seeds
    decode = {"fn_kwargs": {"channels": data.channels, "size": data.image_size, "resize": data.resize_for(split)},
              "batch_size": DECODE_BATCH}
    if isinstance(data, ParquetData):
        filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(data.fs))
        file_order = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle == "files" else None
        ds = ray.data.read_parquet(data.files[split], filesystem=filesystem, shuffle=file_order)
        ds = ds.select_columns([data.IMAGE, data.LABEL])
        if (data.IMAGE, data.LABEL) != ("image", "label"):
            ds = ds.rename_columns({data.IMAGE: "image", data.LABEL: "label"})
        ds = ds.random_shuffle(seed=seed) if shuffle == "global" else ds
        return ds.map_batches(_decode, **decode)
    if isinstance(data, WebDatasetData):
        filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(data.fs))
        file_order = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle == "files" else None
        ds = ray.data.read_webdataset(data.shards(split), filesystem=filesystem, decoder=None, shuffle=file_order)
        ds = ds.map_batches(_webdataset_rows, fn_kwargs={"label_key": data.label_key}, batch_size=DECODE_BATCH)
        ds = ds.random_shuffle(seed=seed) if shuffle == "global" else ds
        return ds.map_batches(_decode, **decode)
    if isinstance(data, ImageFolderData):
        rows = FolderIndexRows(data.index, split, data.url_prefix(), data.num_images(split))
        ds = ray.data.read_datasource(rows, override_num_blocks=from_items_blocks(rows.num_rows))
        ds = ds.random_shuffle(seed=seed) if shuffle else ds
        return ds.map_batches(_read_files, batch_size=DECODE_BATCH).map_batches(_decode, **decode)
    assert isinstance(data, InMemoryData), f"no Ray reader for {type(data).__name__}"
    # In-memory splits are small and already in a seeded random order (a stratified random split): a Ray shuffle
    # would only add its per-epoch cost (about 35 s an epoch for digits' 1,347 rows on 2 cores).
    split_data = data.splits[split]
    return ray.data.from_items([{"image": np.asarray(img), "label": int(lbl)}
                                for img, lbl in zip(split_data.images.numpy(), split_data.labels.numpy())])
