"""Ray Datasets over the real data: shards and files are read and decoded by Ray tasks, never by the driver.

Rows are ``{"image": uint8 (C, S, S), "label": int}``; unreadable images are dropped here, and squeeze counts
them against ``data.max_corrupt``.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow.fs
import ray.data

from srel_ray.data.real import InMemoryData, RealData, decode_images, encoded_images
from srel_ray.data.webdataset import sample_image, sample_label

DECODE_BATCH = 256


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
    (epoch) and moves no rows. ImageFolder sources permute their file list here instead, which is a full shuffle at
    no data cost."""
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
        urls, labels = data.urls(split), data.labels(split).numpy()
        order = np.random.default_rng(seed).permutation(len(urls)) if shuffle else np.arange(len(urls))
        ds = ray.data.from_items([{"url": urls[i], "label": int(labels[i])} for i in order])
        return ds.map_batches(_read_files, batch_size=DECODE_BATCH).map_batches(_decode, **decode)
    assert isinstance(data, InMemoryData), f"no Ray reader for {type(data).__name__}"
    # In-memory splits are small and already in a seeded random order (a stratified random split): a Ray shuffle
    # would only add its per-epoch cost (about 35 s an epoch for digits' 1,347 rows on 2 cores).
    split_data = data.splits[split]
    return ray.data.from_items([{"image": np.asarray(img), "label": int(lbl)}
                                for img, lbl in zip(split_data.images.numpy(), split_data.labels.numpy())])
