"""The progress board on the shared cluster: one actor serves a driver's commands in turn, and each command sees
only its own events."""

import gc

import ray

from srel_ray.distributed.progress import Board, Progress, send
from srel_ray.progress import Console


@ray.remote(num_cpus=0)
def post(board, epoch: int) -> None:
    ray.get(send(board, source="teacher", epoch=epoch, metrics={"train_loss": float(epoch)}))


def test_commands_of_one_driver_share_a_board_and_see_only_their_own_events(ray_cluster):
    first_seen, second_seen = [], []
    with Progress(Console("quiet"), lambda *event: first_seen.append(event), 10) as first:
        ray.get(post.remote(first.board, 0))
        first.flush()
    actor_id, token = first.board.actor._actor_id, first.board.token
    del first
    gc.collect()  # the first command's objects are gone, as after a command returns
    with Progress(Console("quiet"), lambda *event: second_seen.append(event), 10) as second:
        assert second.board.actor._actor_id == actor_id  # the same actor, no new process
        assert second.board.token != token
        ray.get(post.remote(Board(second.board.actor, token), 1))  # an event of the first command arriving late
        ray.get(post.remote(second.board, 2))
        with Progress(Console("quiet"), lambda *event: None, 10) as nested:  # open beside it: a board of its own
            assert nested.board.actor._actor_id != second.board.actor._actor_id
        second.flush()
    assert first_seen == [("teacher.", 0, {"train_loss": 0.0})]
    assert second_seen == [("teacher.", 2, {"train_loss": 2.0})]
