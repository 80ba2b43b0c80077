"""Top-k soft labels: what is kept is exact, the rest is uniform mass, and the files round-trip."""

import uuid

import numpy as np
import pytest
import torch

from srel_ray.core.soft_labels import compress_topk, expand_topk
from srel_ray.storage import sets


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numpy_compress_topk(logits, k):
    """The writer before issue 18 (float64 numpy on the driver), kept here as the reference the torch version
    that labelling actors run must agree with."""
    logits = logits.astype(np.float64)
    index = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, index, axis=1)
    rest = logits.copy()
    np.put_along_axis(rest, index, -np.inf, axis=1)
    peak = rest.max(axis=1, keepdims=True)
    return index.astype(np.int32), values, (peak + np.log(np.exp(rest - peak).sum(axis=1, keepdims=True)))[:, 0]


def _numpy_expand_topk(index, values, rest_lse, num_classes):
    fill = rest_lse.astype(np.float64) - np.log(num_classes - index.shape[1])
    logits = np.repeat(fill[:, None], num_classes, axis=1)
    np.put_along_axis(logits, index.astype(np.int64), values.astype(np.float64), axis=1)
    return logits.astype(np.float32)


def test_torch_topk_equals_the_numpy_writer_it_replaced():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(200, 1000)) * 4).astype(np.float32)  # float32, as the teacher returns them
    index, values, rest = compress_topk(torch.from_numpy(logits), 10)
    ref_index, ref_values, ref_rest = _numpy_compress_topk(logits, 10)
    assert index.dtype == torch.int32 and values.dtype == rest.dtype == torch.float32
    assert np.array_equal(index.numpy(), ref_index)  # same classes, largest first
    np.testing.assert_array_equal(values.numpy(), ref_values.astype(np.float32))  # the logits themselves, exact
    np.testing.assert_allclose(rest.numpy(), ref_rest, rtol=2e-6)
    rebuilt = expand_topk(index, values, rest, 1000)
    np.testing.assert_allclose(rebuilt.numpy(), _numpy_expand_topk(ref_index, ref_values, ref_rest, 1000),
                               rtol=2e-6, atol=1e-5)


def test_topk_keeps_the_largest_probabilities_and_spreads_the_rest_evenly():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 12)) * 3
    index, values, rest = compress_topk(torch.from_numpy(logits), 3)
    rebuilt = expand_topk(index, values, rest, 12).numpy()
    index = index.numpy()
    p, q = _softmax(logits), _softmax(rebuilt.astype(np.float64))
    for row in range(5):
        top = np.argsort(-logits[row])[:3]
        assert set(index[row]) == set(top)
        np.testing.assert_allclose(q[row, top], p[row, top], rtol=1e-5)  # exact at T = 1
        others = np.setdiff1d(np.arange(12), top)
        np.testing.assert_allclose(q[row, others], p[row, others].sum() / 9, rtol=1e-5)  # uniform rest
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)


def test_topk_validates_k():
    with pytest.raises(AssertionError):
        compress_topk(torch.zeros((1, 4)), 4)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_topk_label_file_round_trip_and_size(tmp_path, where):
    root = str(tmp_path) if where == "local" else f"memory://topk-{uuid.uuid4().hex}"
    rng = np.random.default_rng(1)
    n, classes = 40, 100
    logits = rng.normal(size=(n, classes)).astype(np.float32) * 4
    columns = {"image_id": np.arange(n), "label": np.arange(n) % classes, "epoch": np.zeros(n),
               "view": np.zeros(n), "top": np.zeros(n), "left": np.zeros(n), "height": np.full(n, 8),
               "width": np.full(n, 8), "flip": np.zeros(n, bool), "logits": logits}
    sets.write_label_epoch(f"{root}/full", 0, columns, classes, "float16")
    sets.write_label_epoch(f"{root}/top5", 0, columns, classes, "float16", top_k=5)
    full = sets.read_label_epoch(f"{root}/full", 0).logits
    stored = sets.read_label_epoch(f"{root}/top5", 0)
    assert stored.logits is None and stored.topk[0].shape == (n, 5)  # kept compressed: expanded per batch
    top5 = stored.targets(torch.arange(n))
    assert top5.shape == full.shape == (n, classes)
    expected = expand_topk(*compress_topk(torch.from_numpy(logits).half().float(), 5), classes)
    torch.testing.assert_close(top5, expected, atol=2e-2, rtol=1e-2)  # fp16 storage
    assert torch.equal(top5.argmax(1), full.argmax(1))
    assert sets.label_bytes(f"{root}/top5") < sets.label_bytes(f"{root}/full") / 3


def test_a_block_labelled_as_top_k_is_the_top_k_of_its_logits():
    """The labelling actor's top-k (computed on its device, batch by batch) is the top-k of the logits it would
    have returned whole; the padding rows are labelled (same teacher batches) and dropped."""
    from srel_ray.core.normalization import Normalization
    from srel_ray.core.relabel import label_block, pad_rows, view_rows
    from srel_ray.models import create_model

    teacher = create_model("convnet", num_classes=12, in_channels=1, image_size=8, width=4, depth=1).eval()
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    columns = pad_rows(view_rows([4, 5, 6], [0, 1, 2], [1, 1, 1], height=8, width=8, k=2, scale=(0.5, 1.0),
                                 hflip=True, seed=0), 8)
    args = dict(image_size=8, norm=Normalization((0.5,), (0.25,)), batch_size=3, device="cpu")
    full = label_block([teacher], columns, images, 4, top_k=0, **args)
    top = label_block([teacher], columns, images, 4, top_k=4, **args)
    assert len(full["logits"]) == len(top["topk_index"]) == 6 and "image" not in top and "pad" not in top
    index, values, rest = compress_topk(torch.from_numpy(full["logits"]), 4)
    assert np.array_equal(top["topk_index"], index.numpy()) and np.array_equal(top["topk_logits"], values.numpy())
    np.testing.assert_allclose(top["rest_logsumexp"], rest.numpy(), rtol=1e-6)
