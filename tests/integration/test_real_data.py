"""Real data through Ray: Parquet shards read and decoded inside Ray Data, and squeeze trained from them."""

import hashlib
import io
import json
from pathlib import Path

import fsspec
import numpy as np
import torch

from srel_ray.cli import main
from srel_ray.config import DataConfig, load_config
from srel_ray.data.imagefolder import ImageFolderData
from srel_ray.data.real import load_dataset
from srel_ray.teacher import load_teacher

from ..conftest import needs_shared_cifar10
from ..unit.test_parquet_source import NAMES, _write

REPO = Path(__file__).resolve().parents[2]


def _parquet(tmp_path):
    fs = fsspec.filesystem("file")
    train = _write(fs, str(tmp_path), "train", 60, 0, shards=3)
    _write(fs, str(tmp_path), "test", 15, 1)
    return train


def test_ray_dataset_decodes_in_the_pipeline(ray_cluster, tmp_path):
    from srel_ray.distributed.datasets import ray_dataset

    images, labels = _parquet(tmp_path)
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12))
    rows = ray_dataset(data, "train").take_all()
    got = sorted((int(r["label"]), np.asarray(r["image"]).tobytes()) for r in rows)
    want = sorted((int(l), img.tobytes()) for img, l in zip(images, labels))
    assert got == want


def _shard_sequence(ds, shard_of: dict) -> list[int]:
    """The shard each row came from, in the order rows arrive; consecutive repeats collapsed."""
    seq = [shard_of[np.asarray(r["image"]).tobytes()] for r in ds.iter_rows()]
    return [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]]


def test_files_shuffle_reorders_shards_every_epoch_and_moves_no_rows(ray_cluster, tmp_path):
    import ray.data

    from srel_ray.distributed.datasets import ray_dataset

    fs = fsspec.filesystem("file")
    images, _ = _write(fs, str(tmp_path), "train", 40, 0, shards=4)  # part-i holds rows 10i .. 10i+9
    _write(fs, str(tmp_path), "test", 8, 1)
    shard_of = {img.tobytes(): i // 10 for i, img in enumerate(images)}
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12))
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True  # read tasks may otherwise finish in any order
    try:
        files = ray_dataset(data, "train", shuffle="files", seed=3)
        epoch0, epoch1 = _shard_sequence(files, shard_of), _shard_sequence(files, shard_of)
        again = _shard_sequence(ray_dataset(data, "train", shuffle="files", seed=3), shard_of)
        stored = _shard_sequence(ray_dataset(data, "train"), shard_of)
        shuffled = ray_dataset(data, "train", shuffle="global", seed=3)
        global_rows = [np.asarray(r["image"]).tobytes() for r in shuffled.iter_rows()]
        global_again = [np.asarray(r["image"]).tobytes() for r in
                        ray_dataset(data, "train", shuffle="global", seed=3).iter_rows()]
        global_order = _shard_sequence(shuffled, shard_of)
    finally:
        options.preserve_order = before
    assert stored == [0, 1, 2, 3]
    # Each shard arrives whole (no row exchange), in a seeded order that changes from one epoch to the next.
    assert sorted(epoch0) == sorted(epoch1) == [0, 1, 2, 3]
    assert epoch0 != epoch1 and again == epoch0
    # A global shuffle mixes rows of different shards, in the same order in every execution with the seed (what a
    # squeeze restarted from a checkpoint relies on to retrain exactly the epochs that were lost).
    assert len(global_order) > 4 and global_again == global_rows


def test_squeeze_streams_parquet_through_ray_train(ray_cluster, tmp_path, mlflow_uri):
    """Three shards read and decoded by parallel Ray tasks, shuffled globally, into Ray Train (that the shuffled
    rows come in the same order every time: test_files_shuffle_reorders_shards_every_epoch_and_moves_no_rows)."""
    _parquet(tmp_path / "data")
    args = ["--config", str(REPO / "jobs/configs/cifar10.yaml"),
            "--set", f"data.path={tmp_path / 'data'}", "--set", "data.image_size=12",
            "--set", "teacher.epochs=1", "--set", "teacher.arch_kwargs={width: 8, depth: 2}",
            "--set", "resources.use_gpu=false", "--set", f"tracking.tracking_uri={mlflow_uri}"]
    out = tmp_path / "run"
    assert main(["squeeze", "--out", str(out), *args]) == 0
    teacher = load_teacher(str(out / "teacher" / "teacher.pt"))
    assert teacher.class_names == NAMES and teacher.in_channels == 3 and teacher.image_size == 12
    history = teacher.metrics["history"]
    assert len(history) == 1 and 0 <= history[0]["test_top1"] <= 1
    assert history[0]["skipped_images"] == 0  # all 60 rows of the three shards reached the worker
    assert json.loads((out / "stages" / "squeeze.json").read_text())["result"]["metrics"]["epochs"] == 1


@needs_shared_cifar10
def test_cifar10_config_reads_the_shared_copy(monkeypatch):
    monkeypatch.chdir(REPO)  # the config's data.path is relative to the repository root
    cfg = load_config(REPO / "jobs/configs/cifar10.yaml")
    data = load_dataset(cfg.data)
    assert data.class_names[:3] == ["airplane", "automobile", "bird"] and data.num_classes == 10
    assert len(data.labels("train")) == 50_000 and len(data.labels("test")) == 10_000
    x = data.images_at("test", torch.tensor([0, 9_999]))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    assert 0.4 < data.norm.mean[0] < 0.55  # CIFAR-10's red-channel mean is about 0.49


def test_missing_cifar_path_is_one_clear_error(tmp_path, capsys):
    code = main(["squeeze", "--config", str(REPO / "jobs/configs/cifar10.yaml"), "--out", str(tmp_path / "o"),
                 "--set", f"data.path={tmp_path / 'absent'}"])
    err = capsys.readouterr().err
    assert code == 3 and "absent" in err and "train.parquet" in err
    assert not (tmp_path / "o").exists()


def test_imagefolder_with_too_many_corrupt_images_stops_with_a_count(ray_cluster, tmp_path, mlflow_uri, capsys):
    """Files are read and decoded by Ray tasks; the unreadable one is dropped, counted, and over the limit."""
    from ..unit.test_imagefolder_source import _tree

    _tree(fsspec.filesystem("file"), str(tmp_path / "data"), corrupt=True)
    code = main(["squeeze", "--config", str(REPO / "jobs/configs/cifar10.yaml"), "--out", str(tmp_path / "run"),
                 "--set", "data.name=imagefolder", "--set", f"data.path={tmp_path / 'data'}",
                 "--set", "data.image_size=10", "--set", "data.max_corrupt=0", "--set", "teacher.epochs=1",
                 "--set", "teacher.arch_kwargs={width: 8, depth: 1}", "--set", "resources.use_gpu=false",
                 "--set", f"tracking.tracking_uri={mlflow_uri}"])
    err = capsys.readouterr().err
    assert code == 3 and "1 training images of 'imagefolder' could not be read" in err
    assert not (tmp_path / "run" / "teacher" / "teacher.pt").exists()


def _imagefolder_tree(root: str) -> None:
    """500 training images (10 classes of 50) and 70 held out, seeded PNGs of a few sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    fs = fsspec.filesystem("file")
    for split, per_class in (("train", 50), ("val", 7)):
        for c in range(10):
            fs.makedirs(f"{root}/{split}/c{c}", exist_ok=True)
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (9 + i % 5, 11, 3), dtype=np.uint8)).save(buf, format="PNG")
                fs.pipe_file(f"{root}/{split}/c{c}/{i:02d}.png", buf.getvalue())


def _blocks_digest(ds) -> str:
    """sha256 over a dataset's blocks in order: each block's row count, decoded images and labels."""
    digest = hashlib.sha256()
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        digest.update(f"{len(block['label'])}:".encode())
        digest.update(np.ascontiguousarray(block["image"]).tobytes() + np.asarray(block["label"]).tobytes())
    return digest.hexdigest()


# The blocks of the tree above as ray.data.from_items of every (url, label) on the driver makes them (what main
# did up to 81c1fee), on the tests' cluster with read_op_min_num_blocks at COMPARED_BLOCKS: the class statistics
# and every unshuffled batch depend on them.
COMPARED_BLOCKS = 8
FROM_ITEMS_BLOCKS_SHA256 = {"train": "276712663c114f6e034210f8380f19a73f9efefc176c93cf61c075cc96a7df49",
                            "test": "f0cfb50bc5a88a1c138ee7ace30decd05ff7d743852f7eb5da33702e0405ae5a"}


def test_imagefolder_split_is_read_from_its_index_in_row_order(ray_cluster, tmp_path, monkeypatch):
    """An ImageFolder split's (url, label) rows are read from its index's parts by Ray read tasks, a row range each
    (here across parts of 3 classes), in the blocks ray.data.from_items made of the same rows on the driver: the
    decoded blocks are byte-identical. A shuffled split is a seeded shuffle of those rows: every image once, the same
    order for the same seed."""
    import ray.data

    from srel_ray.data import folder_index
    from srel_ray.distributed.datasets import DECODE_BATCH, _decode, _read_files, from_items_blocks, ray_dataset

    context = ray.data.DataContext.get_current()
    for n in (1, 70, 500, 1000):
        assert from_items_blocks(n) == ray.data.from_items(list(range(n))).num_blocks(), n
    _imagefolder_tree(str(tmp_path))
    monkeypatch.setattr(folder_index, "PART_CLASSES", 3)  # the driver lists the index; read tasks read its record
    data = ImageFolderData(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8))
    assert data.index.part_rows("train") == [150, 150, 150, 50]
    options = context.execution_options
    before, options.preserve_order = options.preserve_order, True  # read tasks may otherwise finish in any order
    # Fewer, larger blocks than the default's 200 (a Ray task each, seconds of the suite for 500 tiny images);
    # from_items_blocks follows the setting as from_items does, so the comparison is the same.
    min_blocks, context.read_op_min_num_blocks = context.read_op_min_num_blocks, COMPARED_BLOCKS
    try:
        for split, n in (("train", 500), ("test", 70)):
            paths, labels = data.paths_at(split, range(n)), data.labels(split).tolist()
            items = ray.data.from_items([{"url": p, "label": int(l)} for p, l in zip(paths, labels)])
            decode = {"channels": 3, "size": 8, "resize": data.resize_for(split)}
            old = items.map_batches(_read_files, batch_size=DECODE_BATCH).map_batches(
                _decode, fn_kwargs=decode, batch_size=DECODE_BATCH)
            digest = _blocks_digest(ray_dataset(data, split))
            assert digest == _blocks_digest(old), split
            assert digest == FROM_ITEMS_BLOCKS_SHA256[split], f"{split} blocks now {digest} (update the pin)"
        shuffled = [(int(r["label"]), np.asarray(r["image"]).tobytes())
                    for r in ray_dataset(data, "train", shuffle="global", seed=3).iter_rows()]
        again = [(int(r["label"]), np.asarray(r["image"]).tobytes())
                 for r in ray_dataset(data, "train", shuffle="global", seed=3).iter_rows()]
    finally:
        options.preserve_order, context.read_op_min_num_blocks = before, min_blocks
    stored = data.labels("train").tolist()  # index order: class by class
    assert shuffled == again and len(shuffled) == 500 and len(set(shuffled)) == 500
    assert [label for label, _ in shuffled] != stored and sorted(label for label, _ in shuffled) == stored


def test_webdataset_shards_through_ray_data(ray_cluster, tmp_path):
    """Shards written with the webdataset package, read by Ray Data's reader: every sample once with its label;
    teacher.shuffle=files reorders whole shards every epoch (seeded), global mixes rows of different shards."""
    import ray.data

    from srel_ray.distributed.datasets import ray_dataset

    from ..unit.test_webdataset_source import CLASSES, write_shards

    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    images, labels = write_shards(tmp_path, "train", 40, 0, shards=4)  # shard i holds rows 10i .. 10i+9
    write_shards(tmp_path, "validation", 6, 1, label="json")
    data = load_dataset(DataConfig(name="webdataset", path=str(tmp_path), image_size=12))
    rows = ray_dataset(data, "train").take_all()
    assert sorted((int(r["label"]), np.asarray(r["image"]).tobytes()) for r in rows) == sorted(
        (int(l), img.tobytes()) for img, l in zip(images, labels))
    assert len(ray_dataset(data, "test").take_all()) == 6  # .json labels
    shard_of = {img.tobytes(): i // 10 for i, img in enumerate(images)}
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        files = ray_dataset(data, "train", shuffle="files", seed=3)
        epoch0, epoch1 = _shard_sequence(files, shard_of), _shard_sequence(files, shard_of)
        again = _shard_sequence(ray_dataset(data, "train", shuffle="files", seed=3), shard_of)
        mixed = _shard_sequence(ray_dataset(data, "train", shuffle="global", seed=3), shard_of)
    finally:
        options.preserve_order = before
    assert sorted(epoch0) == sorted(epoch1) == [0, 1, 2, 3]
    assert epoch0 != epoch1 and again == epoch0 and len(mixed) > 4


def test_hugging_face_parquet_structs_through_ray_data(ray_cluster, tmp_path):
    from srel_ray.distributed.datasets import ray_dataset

    from ..unit.test_parquet_source import _hf_export

    images, labels = _hf_export(tmp_path, "train", 6, 0, image="img", label="fine_label")
    _hf_export(tmp_path, "validation", 3, 1, image="img", label="fine_label")
    data = load_dataset(DataConfig(name="parquet", path=str(tmp_path), image_size=12, image_column="img",
                                   label_column="fine_label"))
    rows = ray_dataset(data, "train", shuffle="global").take_all()
    assert sorted((int(r["label"]), np.asarray(r["image"]).tobytes()) for r in rows) == sorted(
        (int(l), img.tobytes()) for img, l in zip(images, labels))
