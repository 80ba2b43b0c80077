"""The Parquet source, read without Ray from local disk and from fsspec's memory filesystem."""

import io
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from srel_ray.config import DataConfig
from srel_ray.data.parquet import ParquetData
from srel_ray.data.real import decode_images, load_dataset, random_real_indices
from srel_ray.errors import DataError

NAMES = ["cat", "dog", "emu"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write(fs, root: str, split: str, n: int, seed: int, names=NAMES, shards: int = 1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(n) % len(NAMES)
    table = pa.table({"image": [_png(a) for a in images], "label": labels.astype(np.int16),
                      "class_name": [names[l] for l in labels]})
    if shards == 1:
        with fs.open(f"{root}/{split}.parquet", "wb") as f:
            pq.write_table(table, f, row_group_size=7)
    else:
        fs.makedirs(f"{root}/{split}", exist_ok=True)
        step = -(-n // shards)
        for i in range(shards):
            with fs.open(f"{root}/{split}/part-{i}.parquet", "wb") as f:
                pq.write_table(table.slice(i * step, step), f, row_group_size=5)
    return images.transpose(0, 3, 1, 2), labels


@pytest.fixture(params=["local", "memory", "sharded"])
def parquet_root(request, tmp_path):
    if request.param == "memory":
        root = f"memory://parquet-{uuid.uuid4().hex}"
    else:
        root = str(tmp_path)
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    shards = 3 if request.param == "sharded" else 1
    train = _write(fs, path, "train", 30, 0, shards=shards)
    test = _write(fs, path, "test", 9, 1, shards=shards)
    yield root, train, test
    if request.param == "memory":
        fs.rm(path, recursive=True)


def test_reads_class_order_labels_and_images(parquet_root):
    root, (train_images, train_labels), (test_images, test_labels) = parquet_root
    data = load_dataset(DataConfig(name="parquet", path=root, image_size=12, channels=3))
    assert data.class_names == NAMES and data.num_classes == 3 and data.channels == 3
    assert torch.equal(data.labels("train"), torch.from_numpy(train_labels))
    rows = torch.tensor([29, 0, 13, 7])  # any order, across row groups and shards
    assert torch.equal(data.images_at("train", rows), torch.from_numpy(train_images[rows.numpy()]))
    streamed = list(data.batches("test", 4))
    assert torch.equal(torch.cat([x for x, _ in streamed]), torch.from_numpy(test_images))
    assert torch.equal(torch.cat([y for _, y in streamed]), torch.from_numpy(test_labels))
    expected_mean = train_images.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    assert data.norm.mean == pytest.approx(tuple(expected_mean), abs=1e-3)


def test_random_real_baseline_reads_only_its_rows(parquet_root):
    root, (train_images, _), _ = parquet_root
    data = load_dataset(DataConfig(name="parquet", path=root, image_size=12))
    idx = random_real_indices(data.labels("train"), data.num_classes, 2, seed=0)
    assert [int(data.labels("train")[i]) for i in idx] == [0, 0, 1, 1, 2, 2]
    assert torch.equal(data.images_at("train", idx), torch.from_numpy(train_images[idx.numpy()]))


def test_resize_and_grey(tmp_path):
    _write(fsspec.filesystem("file"), str(tmp_path), "train", 6, 0)
    _write(fsspec.filesystem("file"), str(tmp_path), "test", 3, 1)
    data = ParquetData(DataConfig(name="parquet", path=str(tmp_path), image_size=8, channels=1))
    x = data.images_at("train", torch.tensor([0]))
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.uint8


def test_decode_images_resizes_with_pillow():
    img = np.full((10, 10, 3), 200, dtype=np.uint8)
    out, ok = decode_images([_png(img), b"not an image"], 3, 4)
    assert out.shape == (2, 3, 4, 4) and (out[0] == 200).all() and ok.tolist() == [True, False]


def test_missing_path_says_where_data_is_expected(tmp_path):
    with pytest.raises(DataError, match="no train.parquet.*cifar10"):
        ParquetData(DataConfig(name="parquet", path=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="data.path is required"):
        ParquetData(DataConfig(name="parquet"))


def test_missing_column_is_named(tmp_path):
    for split in ("train", "test"):
        pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / f"{split}.parquet")
    with pytest.raises(DataError, match="no column 'image'"):
        ParquetData(DataConfig(name="parquet", path=str(tmp_path))).images_at("train", torch.tensor([0]))


def test_conflicting_class_names_are_refused(tmp_path):
    fs = fsspec.filesystem("file")
    _write(fs, str(tmp_path), "train", 6, 0, names=["cat", "dog", "emu"])
    table = pq.read_table(tmp_path / "train.parquet")
    names = table.column("class_name").to_pylist()
    names[3] = "wolf"  # label 0 again, another name
    pq.write_table(table.set_column(2, "class_name", pa.array(names)), tmp_path / "train.parquet")
    _write(fs, str(tmp_path), "test", 3, 1)
    with pytest.raises(DataError, match="label 0 has two class names 'cat' and 'wolf'"):
        ParquetData(DataConfig(name="parquet", path=str(tmp_path)))


WNIDS = ["n01440764", "n01443537", "n01484850"]


def _hf_export(root, split: str, n: int, seed: int, image="image", label="label", shards: int = 1):
    """A split as the Hugging Face ``datasets`` library writes it: data/<split>-0000i-of-0000n.parquet, images as
    {bytes, path} structs, the class names in the schema's ClassLabel metadata."""
    import datasets

    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
    labels = (np.arange(n) % len(WNIDS)).tolist()
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=WNIDS)})
    ds = datasets.Dataset.from_dict({image: [Image.fromarray(a) for a in arrays], label: labels}, features=features)
    (root / "data").mkdir(exist_ok=True)
    for i in range(shards):
        ds.shard(shards, i, contiguous=True).to_parquet(root / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet")
    return arrays.transpose(0, 3, 1, 2), np.asarray(labels)


def test_hugging_face_export_structs_and_class_label_names(tmp_path):
    train_images, train_labels = _hf_export(tmp_path, "train", 9, 0, shards=2)
    test_images, _ = _hf_export(tmp_path, "validation", 6, 1)
    _hf_export(tmp_path, "test", 3, 2)  # unlabelled in the real exports: validation is the held-out split
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12))
    assert data.class_names == WNIDS and len(data.labels("test")) == 6
    assert torch.equal(data.labels("train"), torch.from_numpy(train_labels))
    assert torch.equal(data.images_at("train", torch.tensor([8, 1])), torch.from_numpy(train_images[[8, 1]]))
    assert torch.equal(torch.cat([x for x, _ in data.batches("test", 4)]), torch.from_numpy(test_images))


def test_hugging_face_export_with_other_column_names(tmp_path):
    _hf_export(tmp_path, "train", 6, 0, image="img", label="fine_label")
    _hf_export(tmp_path, "validation", 3, 1, image="img", label="fine_label")
    with pytest.raises(DataError, match="no column 'image' \\(data.image_column"):
        load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12))
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12, image_column="img",
                                   label_column="fine_label"))
    assert data.class_names == WNIDS and data.images_at("test", torch.tensor([2])).shape == (1, 3, 12, 12)


def _struct_table(images: list, labels: list, with_bytes: bool = True) -> pa.Table:
    rows = [{"bytes": b, "path": f"{i}.png"} if with_bytes else {"path": f"{i}.png"} for i, b in enumerate(images)]
    return pa.table({"image": rows, "label": labels})


@pytest.mark.parametrize("case", ["no bytes field", "null bytes", "label outside"])
def test_bad_exports_are_named_by_file_and_key(tmp_path, case):
    png = _png(np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "data").mkdir()
    good = _struct_table([png, png], [0, 1])
    train = {"no bytes field": _struct_table([png, png], [0, 1], with_bytes=False),
             "null bytes": _struct_table([png, None], [0, 1]), "label outside": _struct_table([png, png], [0, -1])}
    pq.write_table(train[case], tmp_path / "data" / "train-00000-of-00001.parquet")
    pq.write_table(good, tmp_path / "data" / "validation-00000-of-00001.parquet")
    message = {"no bytes field": "train-00000-of-00001.parquet': column 'image' is a struct without 'bytes'",
               "null bytes": "train-00000-of-00001.parquet': 1 rows of row group 0 have no 'image.bytes'",
               "label outside": "train-00000-of-00001.parquet row 1': 'label' -1 is outside the"}[case]
    with pytest.raises(DataError, match=message):
        ParquetData(DataConfig(name="parquet", path=str(tmp_path)))
