from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nas.objectives.queue import EMPTY_ID, FeatureQueue


def _rows(start: int, count: int, dim: int = 2) -> torch.Tensor:
    """Row r holds the value start + r in every column, so slots are easy to read back."""
    return (torch.arange(start, start + count, dtype=torch.float32)[:, None]).expand(count, dim).clone()


def test_initial_rows_are_unit_norm_and_pointer_zero():
    torch.manual_seed(0)
    queue = FeatureQueue(7, 5, track_ids=True)
    assert queue.features.shape == (7, 5)
    torch.testing.assert_close(queue.features.norm(dim=1), torch.ones(7))
    assert int(queue.ptr) == 0
    assert queue.ids.tolist() == [EMPTY_ID] * 7


def test_pointer_and_slots_by_hand_including_wrap_around():
    queue = FeatureQueue(5, 2)
    queue.enqueue(_rows(10, 2))  # slots 0, 1
    assert int(queue.ptr) == 2
    assert queue.features[:2, 0].tolist() == [10.0, 11.0]

    queue.enqueue(_rows(20, 4))  # slots 2, 3, 4, then wraps to 0
    assert int(queue.ptr) == 1
    assert queue.features[:, 0].tolist() == [23.0, 11.0, 20.0, 21.0, 22.0]

    # 7 rows into 5 slots: only the newest 5 survive, in ring order ending just before the pointer.
    queue.enqueue(_rows(30, 7))
    assert int(queue.ptr) == (1 + 7) % 5 == 3
    assert queue.features[:, 0].tolist() == [34.0, 35.0, 36.0, 32.0, 33.0]


def test_ids_follow_their_features():
    queue = FeatureQueue(3, 2, track_ids=True)
    queue.enqueue(_rows(0, 2), torch.tensor([7, 8]))
    queue.enqueue(_rows(2, 2), torch.tensor([9, 10]))
    assert queue.ids.tolist() == [10, 8, 9]
    assert queue.features[:, 0].tolist() == [3.0, 1.0, 2.0]


@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6), capacity=st.integers(1, 6))
def test_matches_a_row_by_row_ring(sizes: list[int], capacity: int):
    queue = FeatureQueue(capacity, 1)
    expected = queue.features[:, 0].tolist()
    pointer, value = 0, 0
    for size in sizes:
        queue.enqueue(torch.arange(value, value + size, dtype=torch.float32)[:, None])
        for v in range(value, value + size):  # the naive ring: one row at a time
            expected[pointer] = float(v)
            pointer = (pointer + 1) % capacity
        value += size
    assert queue.features[:, 0].tolist() == expected
    assert int(queue.ptr) == pointer


def test_state_dict_holds_the_queue():
    queue = FeatureQueue(4, 3, track_ids=True)
    assert set(queue.state_dict()) == {"features", "ids", "ptr"}


def test_bad_input_is_an_error():
    queue = FeatureQueue(4, 3)
    with pytest.raises(ValueError, match=r"expected \[n, 3\]"):
        queue.enqueue(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="not tracked"):
        queue.enqueue(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="ids required"):
        FeatureQueue(4, 3, track_ids=True).enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive"):
        FeatureQueue(0, 3)
