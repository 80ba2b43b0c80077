"""The parted Parquet index that ImageFolder and WebDataset readers keep beside the data (srel_ray.data.file_index),
on fsspec's memory filesystem: rows taken across parts and row groups, ranges, batches, and what a make that stops
half-way leaves."""

import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from srel_ray.data import file_index
from srel_ray.data.file_index import open_parted_index

PARTS = [5, 0, 7, 3]  # rows per part, an empty part among them


def _parts(sizes):
    first = 0
    for n in sizes:
        yield pa.table({"row": np.arange(first, first + n, dtype=np.int64), "half": np.arange(first, first + n) // 2})
        first += n


@pytest.fixture
def folder(monkeypatch):
    monkeypatch.setattr(file_index, "ROW_GROUP", 2)
    url = f"memory://index-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_rows_are_read_across_parts_and_row_groups(folder):
    index = open_parted_index(folder, {"what": 1}, lambda: {"train": _parts(PARTS), "test": _parts([2])},
                              ("train", "test"), "test")
    assert index.part_rows("train") == PARTS and index.num_rows("train") == 15
    assert index.column("train", "row", np.int64).tolist() == list(range(15))
    rows = np.array([14, 0, 5, 5, 4, 11, 12, 1])
    taken = index.take("train", rows, ["half", "row"])
    assert taken.column_names == ["half", "row"] and taken.column("row").to_pylist() == rows.tolist()
    assert taken.column("half").to_pylist() == (rows // 2).tolist()
    assert index.take("train", np.array([], dtype=np.int64), ["row"]).num_rows == 0
    for start, stop in ((0, 15), (3, 6), (4, 13), (12, 15), (5, 6)):
        assert index.rows("train", start, stop, ["row"]).column(0).to_pylist() == list(range(start, stop))
    for size in (1, 4, 15, 20):
        batches = [b.column("row").to_pylist() for b in index.batches("train", size, ["row"])]
        assert [len(b) for b in batches[:-1]] == [size] * (len(batches) - 1)
        assert sum(batches, []) == list(range(15))


def test_a_new_record_makes_the_index_again_and_a_stopped_make_leaves_no_record(folder):
    fs, root = fsspec.core.url_to_fs(folder)
    open_parted_index(folder, {"what": 1}, lambda: {"train": _parts(PARTS)}, ("train",), "test")
    made = []
    kept = open_parted_index(folder, {"what": 1}, lambda: made.append(1) or {"train": _parts([1])}, ("train",), "t")
    assert made == [] and kept.num_rows("train") == 15  # the record matches: read, not made

    def stops():
        yield from _parts([2])
        raise RuntimeError("the data went away")

    with pytest.raises(RuntimeError, match="went away"):
        open_parted_index(folder, {"what": 2}, lambda: {"train": stops()}, ("train",), "test")
    assert not fs.exists(f"{root}/index.json")  # the old record went first; no new one: nothing reads as complete
    again = open_parted_index(folder, {"what": 2}, lambda: {"train": _parts([3])}, ("train",), "test")
    assert again.part_rows("train") == [3]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/train", detail=False)) == ["part-00000.parquet"]


def test_a_make_checks_before_it_removes_the_old_index(folder):
    fs, root = fsspec.core.url_to_fs(folder)
    open_parted_index(folder, {"what": 1}, lambda: {"train": _parts(PARTS)}, ("train",), "test")

    def refused():
        raise ValueError("a layout error found before any listing")

    with pytest.raises(ValueError):
        open_parted_index(folder, {"what": 2}, refused, ("train",), "test")
    assert fs.exists(f"{root}/index.json") and fs.exists(f"{root}/train/part-00003.parquet")


def test_an_index_folder_that_cannot_be_written_is_one_clear_error(tmp_path):
    from srel_ray.errors import DataError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match=r"cannot write the WebDataset index at .*a-file/index.*set data\.index"):
        open_parted_index(str(tmp_path / "a-file" / "index"), {}, lambda: {"train": _parts([2])}, ("train",),
                          "WebDataset")
