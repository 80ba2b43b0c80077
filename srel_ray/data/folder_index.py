"""The file index of an ImageFolder tree: every image's path and class, per split, listed once and kept as Parquet
parts (srel_ray.data.file_index), so that later opens (the driver's, every actor's and task's) read it instead of
listing millions of files again.

    <index>/train/part-00000.parquet ...  columns path (string, relative to data.path) and label (int32); the parts
    <index>/test/part-00000.parquet ...   concatenated are in path order, the rows a sequential sorted listing gives
    <index>/index.json                    written last: the train class folders and the held-out layout it was
                                          listed from, and each split's rows per part. An index whose record
                                          differs from the folder's (a class folder added, removed or renamed;
                                          another data.val_labels) is listed again; one that lacks images added
                                          inside a class folder is not: remove the index folder to list again.

The index folder is data.index, or data.path/.srel_ray_index. A class tree is listed ``PART_CLASSES`` class folders
at a time, each part sorted and written before the next is listed, so the lister holds one part's paths (about
128,000 at ImageNet-21K's average class size) however large the tree: listing every path of 11 M files and
sorting them held about 3 GB. Parts follow the class folders in the order of ``name + "/"``: no folder's key is
a prefix of another's, so every path of one part sorts before every path of the next, and the concatenation is
the sorted listing of the whole tree ('a-b/' before 'a/'). Folders of a part are listed in a thread pool: listing
is I/O (on an object store mostly latency), and the data layer stays free of Ray.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from srel_ray.data.file_index import PartedIndex, open_parted_index

INDEX_VERSION = 2  # 1: one Parquet file a split
LIST_THREADS = 32  # class folders listed at once
PART_CLASSES = 256  # class folders listed, sorted and written as one part of a split
SPLITS = ("train", "test")

Listing = tuple[list[str], list[int]]  # relative paths and their labels, in index order


class FolderIndex(PartedIndex):
    """The index of one ImageFolder tree at ``folder`` (a URL): its splits' labels and paths."""

    def paths_at(self, split: str, rows: np.ndarray) -> list[str]:
        """The relative paths of ``rows``, in their order, reading only the parts and row groups that hold them."""
        return self.take(split, rows, ["path"]).column(0).to_pylist()


def open_index(folder: str, record: dict, list_splits: Callable[[], dict[str, Iterable[Listing]]]) -> FolderIndex:
    """The index at ``folder`` when its record equals ``record`` (the folder's class list and held-out layout);
    otherwise ``list_splits()`` lists the tree, each split as its parts in index order, and every part is written
    as it is listed, the record last."""

    def tables() -> dict[str, Iterable[pa.Table]]:
        return {split: (_table(*listing) for listing in parts) for split, parts in list_splits().items()}

    open_parted_index(folder, {"version": INDEX_VERSION, **record}, tables, SPLITS, "ImageFolder")
    return FolderIndex(folder)


def _table(paths: list[str], labels: list[int]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int32())})


def sorted_by_path(paths: list[str], labels: list[int]) -> Listing:
    """The rows in path order (UTF-8 byte order, the code-point order of a sorted listing); sorted by Arrow, which
    holds millions of paths far more compactly than a NumPy string array."""
    order = pc.sort_indices(pa.array(paths, pa.string())).to_numpy()
    return [paths[i] for i in order], [labels[i] for i in order]


def list_class_parts(fs: fsspec.AbstractFileSystem, folders: list[tuple[str, str, int]], root: str,
                     is_image: Callable[[str], bool], threads: int = LIST_THREADS) -> Iterator[Listing]:
    """Every image under each (name, folder, label), in path order, as parts of ``PART_CLASSES`` folders: each part
    listed (``threads`` folders at a time) and sorted when the previous one has been taken; paths relative to
    ``root``."""

    def one(item: tuple[str, str, int]) -> list[str]:
        return [p[len(root) + 1:] for p in fs.find(item[1]) if is_image(p)]

    ordered = sorted(folders, key=lambda item: (item[0] + "/").encode())
    with ThreadPoolExecutor(threads) as pool:
        for first in range(0, len(ordered), PART_CLASSES):
            part = ordered[first:first + PART_CLASSES]
            paths, labels = [], []
            for (_, _, label), found in zip(part, pool.map(one, part)):
                paths += found
                labels += [label] * len(found)
            yield sorted_by_path(paths, labels)
