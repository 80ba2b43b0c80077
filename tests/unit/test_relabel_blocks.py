"""Relabel work blocks: whole images, never two epochs in one block, the same blocks for an epoch whichever other
epochs are still to do (so a resumed relabel runs the teacher on the very batches an uninterrupted one did)."""

from srel_ray.core.relabel import epoch_blocks


def test_blocks_cover_each_epoch_once_and_never_straddle_two():
    blocks = epoch_blocks([0, 1, 2], num_images=20, images_per_block=7)
    for epoch in (0, 1, 2):
        mine = [(b["start"], b["stop"]) for b in blocks if b["epoch"] == epoch]
        assert mine == [(0, 7), (7, 14), (14, 20)]
    assert len(blocks) == 9


def test_an_epoch_has_the_same_blocks_in_a_resumed_run():
    everything = epoch_blocks(list(range(4)), num_images=20, images_per_block=7)
    resumed = epoch_blocks([2, 3], num_images=20, images_per_block=7)
    assert resumed == [b for b in everything if b["epoch"] in (2, 3)]


def test_a_short_block_is_padded_with_copies_of_its_last_row_and_marked():
    import numpy as np

    from srel_ray.core.relabel import pad_rows

    columns = {"image_id": np.array([5, 5, 6, 6]), "pixels": np.arange(8.0).reshape(4, 2)}
    padded = pad_rows(columns, 7)
    assert padded["image_id"].tolist() == [5, 5, 6, 6, 6, 6, 6]
    assert padded["pixels"][4:].tolist() == [[6.0, 7.0]] * 3
    assert padded["pad"].tolist() == [False] * 4 + [True] * 3
    full = pad_rows(columns, 4)
    assert not full["pad"].any() and full["pixels"].tolist() == columns["pixels"].tolist()
