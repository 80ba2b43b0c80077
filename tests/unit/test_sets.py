"""The on-disk set format: PNG images, per-epoch label parquet files, manifest; on local disk and fsspec memory."""


import fsspec
import numpy as np
import pytest
import torch

from srel_ray.storage import files, sets
from srel_ray.errors import DataError


def _images(n, c, h=6, w=5, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(channels):
    image = _images(1, channels)[0]
    data = sets.encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = sets.decode_png(data, channels)
    assert back.dtype == torch.uint8 and back.shape == image.shape
    assert torch.equal(back, image)


@pytest.mark.parametrize("channels", [1, 3])
def test_write_and_read_images(root, channels):
    images = _images(6, channels, seed=channels)
    targets = [(c, i) for c in range(3) for i in range(2)]  # class-major: image id = c * 2 + i
    sets.write_images(root, targets, images)
    assert files.exists(sets.image_path(root, 2, 1))
    assert torch.equal(sets.read_image(root, 1, 0, channels), images[2])
    assert torch.equal(sets.read_images(root, 3, 2, channels), images)
    with pytest.raises(DataError, match="misses image"):
        sets.read_image(root, 3, 0, channels)


def _label_columns(num_classes=4, n_images=5, k=2, epoch=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = n_images * k
    image_id = np.repeat(np.arange(n_images), k)
    view = np.tile(np.arange(k), n_images)
    perm = rng.permutation(rows)  # written shuffled; the file must come back sorted
    cols = {
        "image_id": image_id[perm].astype(np.int64),
        "label": (image_id[perm] % num_classes).astype(np.int64),
        "epoch": np.full(rows, epoch),
        "view": view[perm],
        "top": rng.integers(0, 4, rows), "left": rng.integers(0, 4, rows),
        "height": rng.integers(1, 9, rows), "width": rng.integers(1, 9, rows),
        "flip": rng.random(rows) < 0.5,
        "logits": rng.normal(0, 3, (rows, num_classes)).astype(np.float32),
    }
    return cols, np.lexsort((cols["view"], cols["image_id"]))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_label_epoch_round_trip(root, dtype):
    cols, order = _label_columns()
    sets.write_label_epoch(root, 3, cols, num_classes=4, logits_dtype=dtype)
    assert files.exists(sets.label_record(root, 3)) and files.exists(sets.label_part(root, 3, 0))
    labels = sets.read_label_epoch(root, 3)
    assert labels.image_index.dtype == torch.int64
    assert labels.image_index.tolist() == sorted(cols["image_id"].tolist())
    assert torch.equal(labels.image_index, torch.from_numpy(cols["image_id"][order]))
    boxes = np.stack([cols["top"], cols["left"], cols["height"], cols["width"]], 1)[order].astype(np.float32)
    assert labels.views.boxes.dtype == torch.float32
    assert torch.equal(labels.views.boxes, torch.from_numpy(boxes))
    assert torch.equal(labels.views.flips, torch.from_numpy(cols["flip"][order]))
    expected = cols["logits"][order]
    if dtype == "float16":
        expected = expected.astype(np.float16)
    assert labels.logits.dtype == getattr(torch, dtype) and labels.logits.shape == (10, 4)  # held as stored
    every = labels.targets(torch.arange(10))  # widened a batch at a time, exactly
    assert every.dtype == torch.float32 and torch.equal(every, torch.from_numpy(expected.astype(np.float32)))
    if dtype == "float16":  # really stored at half precision
        assert not torch.equal(every, torch.from_numpy(cols["logits"][order]))


def test_label_epoch_hard_drops_logits(root):
    cols, order = _label_columns()
    sets.write_label_epoch(root, 0, cols, num_classes=4, logits_dtype="float16")
    hard = sets.read_label_epoch(root, 0, hard=True)
    assert hard.logits is None
    assert torch.equal(hard.image_index, torch.from_numpy(cols["image_id"][order]))
    assert torch.equal(hard.views.flips, torch.from_numpy(cols["flip"][order]))


def test_label_epochs_done_and_missing_epoch(root):
    cols, _ = _label_columns()
    for e in (0, 2):
        sets.write_label_epoch(root, e, cols, num_classes=4, logits_dtype="float16")
    assert sets.label_epochs_done(root, 4) == [0, 2]
    with pytest.raises(DataError, match="epoch 1"):
        sets.read_label_epoch(root, 1)


def test_manifest_round_trip(root):
    sets.write_image_unit(root, sets.unit_marker(root, "unit-000000"), [(c, i) for c in range(3) for i in range(2)],
                          _images(6, 1))
    sets.write_manifest(root, kind="condensed", dataset="digits", class_names=["a", "b", "c"], ipc=2, channels=1,
                        image_size=16, normalization={"mean": [0.5], "std": [0.5]}, teacher={"arch": "convnet"},
                        config={"seed": 0}, labels={"epochs": 5, "views_per_epoch": 1})
    info = sets.read_set(root)
    assert info.path == root
    assert info.class_names == ["a", "b", "c"] and info.num_classes == 3
    assert (info.ipc, info.channels, info.image_size) == (2, 1, 16)
    assert info.label_epochs == 5
    assert info.manifest["counts"] == {"images": 6, "label_files": 5}
    assert info.manifest["format_version"] == sets.FORMAT_VERSION
    assert info.manifest["normalization"] == {"mean": [0.5], "std": [0.5]}
    # No temporary file left behind.
    fs, p = fsspec.core.url_to_fs(root)
    assert not fs.exists(p + "/manifest.json.tmp")


def test_manifest_without_labels(root):
    sets.write_image_unit(root, sets.slice_marker(root, 0), [(0, 0)], _images(1, 3))
    sets.write_manifest(root, kind="random_real", dataset="digits", class_names=["x"], ipc=1, channels=3,
                        image_size=8, normalization={}, teacher={}, config={})
    info = sets.read_set(root)
    assert info.label_epochs == 0 and info.manifest["counts"]["label_files"] == 0


def test_read_set_without_manifest_raises(root):
    sets.write_images(root, [(0, 0)], _images(1, 1))  # a folder with content, but incomplete
    with pytest.raises(DataError, match="manifest.json"):
        sets.read_set(root)


def test_remove(root):
    files.write_json_atomic(files.join(root, "a", "b.json"), {"k": 1})
    assert files.read_json(files.join(root, "a", "b.json")) == {"k": 1}
    files.remove(files.join(root, "a"))
    assert not files.exists(files.join(root, "a", "b.json"))
    files.remove(files.join(root, "a"))  # removing what is gone is fine


def _two_unit_set(set_dir, ipc=2, labelled=True):
    """Two classes, one recovery unit each, and (``labelled``) one label epoch in two parts; with its manifest."""
    images = _images(2 * ipc, 1)
    for c in (0, 1):
        sets.write_image_unit(set_dir, sets.unit_marker(set_dir, f"unit-{c:06d}"), [(c, i) for i in range(ipc)],
                              images[c * ipc:(c + 1) * ipc], {"unit": c})
    labels = None
    if labelled:
        cols, _ = _label_columns(num_classes=2, n_images=2 * ipc)
        parts = [sets.write_label_part(set_dir, 0, first, stop, _rows(cols, range(first, stop)), 2, "float16")
                 for first, stop in ((0, ipc), (ipc, 2 * ipc))]
        sets.commit_label_epoch(set_dir, 0, parts, 2 * ipc)
        labels = {"epochs": 1}
    sets.write_manifest(set_dir, kind="condensed", dataset="toy", class_names=["a", "b"], ipc=ipc, channels=1,
                        image_size=6, normalization={"mean": [0.5], "std": [0.5]}, teacher={}, config={},
                        labels=labels)
    return images


def test_verify_catches_a_changed_image_marker_or_label_part(tmp_path):
    """The manifest vouches for the markers and the epoch record (their file lists), they for the images and
    parts: verify checks both links, and names what changed."""
    from srel_ray.storage.verify import verify_set

    set_dir = tmp_path / "set"
    images = _two_unit_set(str(set_dir))
    manifest = sets.read_set(str(set_dir)).manifest
    assert list(manifest["records"]) == [".progress/unit-000000.json", ".progress/unit-000001.json",
                                         "labels/epoch-00000.json"]
    assert verify_set(str(set_dir)) == 3 + 4 + 2  # the records, the images, the parts
    for path, other in (("images/1/00000.png", sets.encode_png(images[0])),
                        (".progress/unit-000001.json", b'{"unit": 1, "checksums": {}}'),
                        ("labels/epoch-00000/part-00000002.parquet",
                         (set_dir / "labels/epoch-00000/part-00000000.parquet").read_bytes())):
        kept = (set_dir / path).read_bytes()
        (set_dir / path).write_bytes(other)
        with pytest.raises(DataError, match=f"{path} is changed"):
            verify_set(str(set_dir))
        (set_dir / path).unlink()
        with pytest.raises(DataError, match=f"{path} is missing"):
            verify_set(str(set_dir))
        (set_dir / path).write_bytes(kept)
    verify_set(str(set_dir))
    marker = files.read_json(sets.unit_marker(str(set_dir), "unit-000000"))
    files.write_json_atomic(sets.unit_marker(str(set_dir), "unit-000000"), {**marker, "seconds": 9.5, "attempt": 2})
    assert verify_set(str(set_dir)) == 9  # a marker's stats and worker differ between runs: not vouched for


def test_a_manifest_needs_a_marker_for_every_image(tmp_path):
    set_dir = str(tmp_path / "set")
    sets.write_image_unit(set_dir, sets.unit_marker(set_dir, "unit-000000"), [(0, 0)], _images(1, 1))
    sets.write_images(set_dir, [(1, 0)], _images(1, 1))  # written, but no marker vouches for it
    with pytest.raises(AssertionError, match="record 1 of its 2 images"):
        sets.write_manifest(set_dir, kind="condensed", dataset="toy", class_names=["a", "b"], ipc=1, channels=1,
                            image_size=6, normalization={}, teacher={}, config={})


def test_manifest_holds_an_entry_per_unit_and_epoch_not_per_image(tmp_path):
    """The driver assembles the manifest from the markers one at a time: 100x the images in the same units and
    epoch leave it the same size but for the counts' digits, and it names no image."""
    small, large = tmp_path / "small", tmp_path / "large"
    _two_unit_set(str(small), ipc=2)
    _two_unit_set(str(large), ipc=200)
    sizes = [len((folder / "manifest.json").read_bytes()) for folder in (small, large)]
    assert 0 < sizes[1] - sizes[0] <= 6  # ipc 2 -> 200, images 4 -> 400
    assert "images/" not in (large / "manifest.json").read_text()
    assert sets.read_set(str(large)).manifest["counts"]["images"] == 400


def test_older_manifests_with_a_checksum_per_file_still_read_and_verify(tmp_path):
    """Sets of format 2 list every file's sha256 in the manifest: they read as before and verify file by file."""
    import hashlib
    import json

    from srel_ray.storage.verify import verify_set

    set_dir = tmp_path / "set"
    _two_unit_set(str(set_dir))
    manifest = json.loads((set_dir / "manifest.json").read_text())
    files_ = sorted(p for p in set_dir.rglob("*") if p.suffix in (".png", ".parquet"))
    del manifest["records"]
    manifest.update(format_version=2, checksums={str(p.relative_to(set_dir)): hashlib.sha256(p.read_bytes())
                                                 .hexdigest() for p in files_})
    (set_dir / "manifest.json").write_text(json.dumps(manifest))
    info = sets.read_set(str(set_dir))
    assert (info.num_classes, info.ipc, info.label_epochs) == (2, 2, 1)
    assert verify_set(str(set_dir)) == 6
    (set_dir / "images/0/00001.png").write_bytes((set_dir / "images/0/00000.png").read_bytes())
    with pytest.raises(DataError, match="images/0/00001.png is changed"):
        verify_set(str(set_dir))


def _rows(cols, images):
    keep = np.isin(cols["image_id"], list(images))
    return {k: v[keep] for k, v in cols.items()}


def test_label_epoch_in_parts_is_committed_by_its_record_and_read_by_share(root):
    """Workers write parts (one a relabel block) and return their records; the epoch exists once the record that
    lists them is written; a worker that needs some images reads only the parts that hold them."""
    cols, order = _label_columns(n_images=5)
    parts = [sets.write_label_part(root, 3, first, stop, _rows(cols, range(first, stop)), 4, "float32")
             for first, stop in ((3, 5), (0, 3))]
    assert parts[1] == {"epoch": 3, "first": 0, "stop": 3, "rows": 6, "file": "labels/epoch-00003/part-00000000.parquet",
                        "sha256": parts[1]["sha256"], "bytes": parts[1]["bytes"]}
    assert sets.label_epochs_done(root, 4) == []  # parts without the record are not an epoch
    with pytest.raises(AssertionError, match="do not tile"):
        sets.commit_label_epoch(root, 3, parts[:1], 5)
    sets.commit_label_epoch(root, 3, parts, 5)
    assert sets.label_epochs_done(root, 4) == [3]
    whole = sets.read_label_epoch(root, 3)
    scattered = sets.read_label_epoch(root, 3, images=np.array([0, 2, 4]))  # ids from both parts, in stored order
    keep = np.isin(whole.image_index.numpy(), [0, 2, 4])
    assert torch.equal(scattered.image_index, whole.image_index[keep])
    assert torch.equal(scattered.logits, whole.logits[keep]) and len(scattered.image_index) == 6
    assert torch.equal(whole.image_index, torch.from_numpy(cols["image_id"][order]))
    assert torch.equal(whole.logits, torch.from_numpy(cols["logits"][order]))
    record = files.read_json(sets.label_record(root, 3))
    assert sets.recorded_files(record)["labels/epoch-00003/part-00000003.parquet"] == parts[0]["sha256"]
    assert sets.label_bytes(root) == parts[0]["bytes"] + parts[1]["bytes"]
    fs, path = files.fs_path(sets.label_part(root, 3, 0))
    fs.rm(path)  # a share of images 3-4 never opens the part of images 0-2
    share = sets.read_label_epoch(root, 3, images=range(3, 5))
    assert share.image_index.tolist() == [3, 3, 4, 4]
    assert torch.equal(share.logits, whole.logits[6:])
    # A memory's share of some classes: sorted image ids, here only in the part that is left.
    ids = sets.read_label_epoch(root, 3, images=np.array([4]))
    assert ids.image_index.tolist() == [4, 4] and torch.equal(ids.logits, whole.logits[8:])
    with pytest.raises(DataError, match="misses label file"):
        sets.read_label_epoch(root, 3)


def test_label_epoch_of_format_1_sets_still_reads(root):
    """Sets written before label epochs came in parts (one Parquet file an epoch) read as they did."""
    cols, order = _label_columns()
    files.write_bytes_atomic(files.join(root, "labels", "epoch-00000.parquet"),
                             sets.encode_label_table(cols, 4, "float32"))
    assert sets.label_epochs_done(root, 2) == [0]
    assert torch.equal(sets.read_label_epoch(root, 0).logits, torch.from_numpy(cols["logits"][order]))
