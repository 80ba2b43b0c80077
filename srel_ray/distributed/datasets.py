"""Ray Datasets over the real data: shards and files are read and decoded by Ray tasks, never by the driver.

Rows are ``{"image": uint8 (C, S, S), "label": int}``; unreadable images are dropped here, and squeeze counts
them against ``data.max_corrupt``.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow.fs
import ray.data

from srel_ray.data.real import InMemoryData, RealData, decode_images

DECODE_BATCH = 256


def _decode(batch: dict, channels: int, size: int) -> dict:
    images, ok = decode_images(list(batch["image"]), channels, size)
    return {"image": images[ok], "label": np.asarray(batch["label"], dtype=np.int64)[ok]}


def _read_files(batch: dict) -> dict:
    return {"image": [fsspec.open(url, "rb").open().read() for url in batch["url"]], "label": batch["label"]}


def ray_dataset(data: RealData, split: str) -> ray.data.Dataset:
    """A streamed Ray Dataset of one split, decoded and resized inside the pipeline."""
    from srel_ray.data.imagefolder import ImageFolderData
    from srel_ray.data.parquet import ParquetData

    decode = {"fn_kwargs": {"channels": data.channels, "size": data.image_size}, "batch_size": DECODE_BATCH}
    if isinstance(data, ParquetData):
        filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(data.fs))
        ds = ray.data.read_parquet(data.files[split], filesystem=filesystem)
        return ds.select_columns([data.IMAGE, data.LABEL]).map_batches(_decode, **decode)
    if isinstance(data, ImageFolderData):
        paths, labels = data.files[split]
        ds = ray.data.from_items([{"url": data.url(p), "label": int(l)} for p, l in zip(paths, labels)])
        return ds.map_batches(_read_files, batch_size=DECODE_BATCH).map_batches(_decode, **decode)
    assert isinstance(data, InMemoryData), f"no Ray reader for {type(data).__name__}"
    split_data = data.splits[split]
    return ray.data.from_items([{"image": np.asarray(img), "label": int(lbl)}
                                for img, lbl in zip(split_data.images.numpy(), split_data.labels.numpy())])
