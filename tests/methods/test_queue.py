import pytest
import torch

from kubedistill.methods.distillation import TeacherQueue, auto_queue_size
from kubedistill.methods.distillation.queue import QUEUE_SIZE_TABLE


@pytest.mark.parametrize(
    ("num_images", "expected"),
    [
        (1, 16), (49, 16), (50, 32), (99, 32), (100, 64), (249, 64), (250, 128), (499, 128), (500, 256),
        (999, 256), (1_000, 512), (1_999, 512), (2_000, 1024), (3_999, 1024), (4_000, 2048), (9_999, 2048),
        (10_000, 4096), (19_999, 4096), (20_000, 8192), (10_000_000, 8192),
    ],
)
def test_auto_queue_size_table(num_images, expected):
    assert auto_queue_size(num_images) == expected


def test_table_is_increasing():
    bounds = [b for b, _ in QUEUE_SIZE_TABLE]
    sizes = [s for _, s in QUEUE_SIZE_TABLE]
    assert bounds == sorted(bounds) and sizes == sorted(sizes)


def _rows(values):
    return torch.tensor([[float(v), 0.0] for v in values])


def test_fifo_order_newest_first_and_mask():
    queue = TeacherQueue(size=5, dim=2)
    assert queue.mask.tolist() == [False] * 5
    queue.enqueue(_rows([1, 2]))
    assert queue.vectors[:, 0].tolist() == [1, 2, 0, 0, 0]
    assert queue.mask.tolist() == [True, True, False, False, False]
    queue.enqueue(_rows([3, 4]))
    assert queue.vectors[:, 0].tolist() == [3, 4, 1, 2, 0]
    assert queue.filled == 4
    queue.enqueue(_rows([5, 6]))
    # The oldest vector (2) fell off the end; the queue is full so nothing is masked.
    assert queue.vectors[:, 0].tolist() == [5, 6, 3, 4, 1]
    assert queue.mask is None and queue.filled == 5


def test_batch_larger_than_queue_keeps_a_fair_sample_of_every_rank():
    """A global batch of 2 ranks x 4 rows (rank 0's rows first) into a queue of 4: rows 0, 2, 4, 6, two of each
    rank's, not rank 0's four."""
    queue = TeacherQueue(size=4, dim=2)
    queue.enqueue(_rows([10, 11, 12, 13, 20, 21, 22, 23]))
    assert queue.vectors[:, 0].tolist() == [10, 12, 20, 22]
    assert queue.mask is None
    # 5 rows into 3: evenly spread (0, 1, 3), the last rank still represented.
    queue = TeacherQueue(size=3, dim=2)
    queue.enqueue(_rows([1, 2, 3, 4, 5]))
    assert queue.vectors[:, 0].tolist() == [1, 2, 4]


def test_state_dict_round_trip_restores_fill_level():
    queue = TeacherQueue(size=4, dim=2)
    queue.enqueue(_rows([7]))
    restored = TeacherQueue(size=4, dim=2)
    restored.load_state_dict(queue.state_dict())
    assert restored.filled == 1
    assert restored.mask.tolist() == [True, False, False, False]
    assert torch.equal(restored.vectors, queue.vectors)


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError, match="queue size"):
        TeacherQueue(size=0, dim=2)
