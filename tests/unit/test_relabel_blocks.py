"""Relabel work blocks: a range of whole images for a group of epochs; every epoch's image ranges (and so its teacher
batches) the same whichever other epochs a resumed run still has to do and however epochs are grouped; each block's
images decoded once for all its epochs, its parts exactly those of one epoch at a time (no Ray)."""

import numpy as np
import torch

from srel_ray.core.normalization import Normalization
from srel_ray.core.relabel import (MAX_EPOCHS_PER_BLOCK, BlockPlan, epochs_per_block, label_block,
                                   label_image_block, pad_rows, view_rows)
from srel_ray.models import create_model


def test_blocks_cover_each_epoch_once_with_the_same_image_ranges_whatever_the_grouping():
    for group in (1, 2, 3, 8):
        plan = BlockPlan((0, 1, 2), num_images=20, images_per_block=7, epochs_per_block=group)
        blocks = list(plan)
        assert [plan.block(i) for i in range(len(plan))] == blocks
        for epoch in (0, 1, 2):
            mine = [(b["start"], b["stop"]) for b in blocks if epoch in b["epochs"]]
            assert mine == [(0, 7), (7, 14), (14, 20)]
        assert len(blocks) == 3 * -(-3 // group)
        assert all(len(b["epochs"]) <= group for b in blocks)
    grouped = list(BlockPlan((0, 1, 2, 3, 4), num_images=20, images_per_block=7, epochs_per_block=2))
    assert [b["epochs"] for b in grouped] == [[0, 1]] * 3 + [[2, 3]] * 3 + [[4]] * 3  # group by group, in order


def test_an_epoch_has_the_same_blocks_in_a_resumed_run():
    everything = list(BlockPlan(tuple(range(4)), num_images=20, images_per_block=7))
    resumed = list(BlockPlan((2, 3), num_images=20, images_per_block=7))
    assert resumed == [b for b in everything if set(b["epochs"]) <= {2, 3}]


def test_a_plan_at_imagenet_21k_scale_is_its_parameters_not_a_list_of_blocks():
    import pickle

    plan = BlockPlan(tuple(range(300)), num_images=21841 * 50, images_per_block=512, epochs_per_block=8)
    assert plan.blocks_per_epoch == 2133 and len(plan) == 38 * 2133
    assert plan.block(0) == {"epochs": list(range(8)), "start": 0, "stop": 512}
    assert plan.block(len(plan) - 1) == {"epochs": [296, 297, 298, 299], "start": 2132 * 512, "stop": 21841 * 50}
    assert len(pickle.dumps(plan)) < 4096  # what each labelling actor is sent, whatever the number of blocks


def test_epochs_per_block_is_bounded_and_leaves_blocks_for_every_worker():
    assert epochs_per_block(300, blocks_per_epoch=50, workers=8) == MAX_EPOCHS_PER_BLOCK
    assert epochs_per_block(4, blocks_per_epoch=2, workers=1) == 2  # 4 blocks of 2 epochs for one worker
    assert epochs_per_block(4, blocks_per_epoch=2, workers=2) == 1
    assert epochs_per_block(1, blocks_per_epoch=1, workers=4) == 1


def test_a_short_block_is_padded_with_copies_of_its_last_row_and_marked():
    columns = {"image_id": np.array([5, 5, 6, 6]), "pixels": np.arange(8.0).reshape(4, 2)}
    padded = pad_rows(columns, 7)
    assert padded["image_id"].tolist() == [5, 5, 6, 6, 6, 6, 6]
    assert padded["pixels"][4:].tolist() == [[6.0, 7.0]] * 3
    assert padded["pad"].tolist() == [False] * 4 + [True] * 3
    full = pad_rows(columns, 4)
    assert not full["pad"].any() and full["pixels"].tolist() == columns["pixels"].tolist()


def test_a_block_of_several_epochs_labels_each_epoch_as_a_block_of_that_epoch_alone():
    """The images of a block are decoded once for all its epochs; each epoch's rows, teacher batches and logits
    are those of a one-epoch block of the same images (the teacher batch is ``rows`` rows, padding included)."""
    teacher = create_model("convnet", num_classes=6, in_channels=1, image_size=8, width=4, depth=1).eval()
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    args = dict(top_k=0, image_size=8, norm=Normalization((0.5,), (0.25,)), batch_size=8, device="cpu")
    views = dict(k=2, scale=(0.5, 1.0), hflip=True, seed=3)
    out = list(label_image_block([teacher], images, 12, [5, 6, 7], ipc=4, rows=8, **views, **args))
    assert [epoch for epoch, _ in out] == [5, 6, 7]
    for epoch, rows in out:
        alone = label_block([teacher], pad_rows(view_rows([12, 13, 14], [3, 3, 3], [epoch] * 3, height=8, width=8,
                                                          **views), 8), images, 12, **args)
        assert rows.keys() == alone.keys() and all(np.array_equal(rows[k], alone[k]) for k in rows)
        assert rows["epoch"].tolist() == [epoch] * 6 and rows["image_id"].tolist() == [12, 12, 13, 13, 14, 14]
    assert not np.array_equal(out[0][1]["top"], out[1][1]["top"])  # each epoch its own views
