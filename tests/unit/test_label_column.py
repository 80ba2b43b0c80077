"""Opening a file reader, and the driver's start-up checks, hold no label column (8 B an image: 88 MB at
ImageNet-21K's 11 M images). Rows and images per class are counted a Parquet file or index part at a time; only
the processes that draw or read rows (recovery and relabel workers, baseline tasks, trials) load the labels."""

import io
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from srel_ray.cli import quickstart_config
from srel_ray.config import DataConfig, load_config
from srel_ray.data import file_index
from srel_ray.data.real import check_images_per_class, load_dataset
from srel_ray.errors import DataError
from srel_ray.stages.checks import check_inputs
from srel_ray.storage.layout import prepare_out

from .test_webdataset_source import write_shards

CLASSES = ["n01440764", "n01443537", "n01484850"]
# Uneven classes, not in class order: a count that ignored a file or part, or its order, would show.
TRAIN = np.array([2, 0, 0, 1, 0, 2, 0, 0, 1, 0, 0, 2, 0])
TEST = np.array([1, 2, 0, 1, 1])


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _parquet(tmp_path) -> str:
    """Shards of 5 rows on fsspec's memory filesystem."""
    root = f"memory://labels-{uuid.uuid4().hex}"
    fs, path = fsspec.core.url_to_fs(root)
    for split, labels in (("train", TRAIN), ("test", TEST)):
        fs.makedirs(f"{path}/{split}", exist_ok=True)
        for i, first in enumerate(range(0, len(labels), 5)):
            part = labels[first:first + 5]
            table = pa.table({"image": [_png(first + j) for j in range(len(part))], "label": part.astype(np.int64),
                              "class_name": [CLASSES[c] for c in part]})
            with fs.open(f"{path}/{split}/part-{i}.parquet", "wb") as f:
                pq.write_table(table, f, row_group_size=2)
    return root


def _imagefolder(tmp_path) -> str:
    for split, labels in (("train", TRAIN), ("val", TEST)):
        for row, c in enumerate(labels):
            folder = tmp_path / split / CLASSES[c]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{row:03d}.png").write_bytes(_png(row))
    return str(tmp_path)


def _webdataset(tmp_path) -> str:
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    write_shards(tmp_path, "train", len(TRAIN), 0, shards=3, labels=TRAIN)
    write_shards(tmp_path, "validation", len(TEST), 1, labels=TEST)
    return str(tmp_path)


SOURCES = {"parquet": _parquet, "imagefolder": _imagefolder, "webdataset": _webdataset}


@pytest.fixture(params=list(SOURCES))
def source(request, tmp_path, monkeypatch):
    """(data config, the reader's class) of a dataset in each file format; file indexes of parts of 2 class folders
    or 1 shard and row groups of 2 rows, so that counts cross parts and groups."""
    from srel_ray.data import folder_index, webdataset

    monkeypatch.setattr(folder_index, "PART_CLASSES", 2)
    monkeypatch.setattr(webdataset, "PART_SHARDS", 1)
    monkeypatch.setattr(file_index, "ROW_GROUP", 2)
    cfg = DataConfig(name=request.param, path=SOURCES[request.param](tmp_path), image_size=8, channels=3)
    data = load_dataset(cfg)
    return cfg, type(data)


def _no_labels(monkeypatch, reader: type) -> None:
    def refuse(self, split):
        raise AssertionError(f"the {split} label column was read")

    monkeypatch.setattr(reader, "labels", refuse)


def test_rows_and_images_per_class_are_counted_without_the_label_column(source, monkeypatch):
    cfg, reader = source
    with monkeypatch.context() as patch:
        _no_labels(patch, reader)
        data = load_dataset(cfg)  # an open that finds the index (or reads the Parquet files)
        assert data.class_names == CLASSES
        assert (data.num_images("train"), data.num_images("test")) == (len(TRAIN), len(TEST))
        assert data.class_sizes().tolist() == np.bincount(TRAIN, minlength=3).tolist() == [8, 2, 3]
        assert data.norm.mean  # the normalisation sample draws rows by count and reads their images
        tested = torch.cat([y for _, y in data.batches("test", 2)])  # streamed labels come with their images
        assert tested.tolist() == sorted(TEST.tolist()) if cfg.name == "imagefolder" else TEST.tolist()
    labels = data.labels("train")  # what a worker that draws rows reads, on first use
    assert sorted(labels.tolist()) == sorted(TRAIN.tolist()) and labels.dtype == torch.int64


def test_the_start_up_checks_read_no_label_column(source, tmp_path, monkeypatch):
    """check_inputs of a whole run with real-image starts and the random-real baseline: both count the images per
    class of every class."""
    data_cfg, reader = source
    overrides = [f"data.name={data_cfg.name}", f"data.path={data_cfg.path}", "data.image_size=8",
                 "data.channels=3", "recover.ipc=2", "recover.init=real", "relabel.top_k=0",
                 "teacher.arch_kwargs={width: 4, depth: 1}", "evaluate.arch_kwargs={width: 4, depth: 1}"]
    cfg = load_config(quickstart_config(), overrides)
    run = prepare_out(cfg, tmp_path / "run")
    _no_labels(monkeypatch, reader)
    check_inputs(cfg, run, ("squeeze", "recover", "relabel", "evaluate"))
    too_many = load_config(quickstart_config(), overrides + ["recover.ipc=3"])
    with pytest.raises(DataError, match="class 1 has only 2 training images, fewer than recover.ipc=3"):
        check_inputs(too_many, prepare_out(too_many, tmp_path / "run3"), ("squeeze", "recover"))


def test_a_named_class_without_images_counts_zero(tmp_path):
    """Hugging Face's ClassLabel names three classes; the training files hold two of them."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    (tmp_path / "data").mkdir()
    for split, labels in (("train", [0, 1, 1, 0]), ("validation", [2, 0])):
        images = [Image.open(io.BytesIO(_png(i))) for i in range(len(labels))]
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=6))
    assert data.class_sizes().tolist() == [2, 2, 0]
    with pytest.raises(DataError, match="class 2 has only 0 training images"):
        check_images_per_class(data.class_sizes(), 1)


def test_the_tune_driver_counts_the_validation_split_without_the_label_column(source, monkeypatch):
    """srel-ray tune's driver checks each corner's recovery inputs on the training images outside the validation
    split, and says how many validation images the trials score on: both from the images per class. A trial
    draws the same rows from the labels (WithoutRows of validation_indices, the split it scores on)."""
    from srel_ray.data.real import WithoutRows, WithoutValidation, validation_indices

    cfg, reader = source
    with monkeypatch.context() as patch:
        _no_labels(patch, reader)
        kept = WithoutValidation(load_dataset(cfg), 0.25, split_seed=3)
        # 8, 2 and 3 images: round(0.25 x size) of each class, at least one and never all of it.
        assert kept.class_sizes().tolist() == [6, 1, 2] and kept.validation_images() == 4
        assert kept.num_images("train") == 9 and kept.num_images("test") == len(TEST)
    data = load_dataset(cfg)
    rows = validation_indices(data.labels("train"), 3, 0.25, split_seed=3)
    explicit = WithoutRows(data, rows)
    assert torch.equal(kept.kept, explicit.kept) and torch.equal(kept.labels("train"), explicit.labels("train"))
    assert torch.equal(kept.class_sizes(), torch.bincount(explicit.labels("train"), minlength=3))
    assert len(rows) == kept.validation_images()
