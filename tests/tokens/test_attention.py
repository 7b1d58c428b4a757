"""Attention maps of the hierarchical blocks and grid coarsening (prato_components/tokens/attention.py)."""

import pytest
import torch

from prato_components.tokens.attention import (
    ReducedAttention,
    WindowAttention,
    coarse_cells,
    coarsen,
    reduced_key_cells,
)


def test_coarse_cells_follow_the_stride_2_nesting():
    cells = coarse_cells((5, 4), (3, 2))  # odd rows: the last coarse row covers one fine row
    expected = [(r // 2) * 2 + c // 2 for r in range(5) for c in range(4)]
    assert cells.tolist() == expected
    assert coarse_cells((8, 8), (2, 2)).tolist() == [(r // 4) * 2 + c // 4 for r in range(8) for c in range(8)]
    assert coarse_cells((4, 4), (4, 4)).tolist() == list(range(16))
    with pytest.raises(ValueError, match="does not halve"):
        coarse_cells((8, 8), (3, 3))


def test_coarsen_sums_or_averages_the_covered_cells():
    values = torch.arange(40.0).view(2, 20)  # two images on a 5 x 4 grid
    cells = coarse_cells((5, 4), (3, 2))
    total = coarsen(values, (5, 4), (3, 2), "sum")
    mean = coarsen(values, (5, 4), (3, 2), "mean")
    for b in range(2):
        for target in range(6):
            covered = [values[b, i] for i in range(20) if cells[i] == target]
            assert total[b, target] == sum(covered) and mean[b, target] == pytest.approx(
                float(sum(covered)) / len(covered)
            )
    assert coarsen(values, (5, 4), (5, 4), "mean") is values


def test_window_attention_maps_slots_to_the_grid():
    # two images of 4 cells; image 0: window [cells 0, 1 | pruned slot], image 1: window [cell 2 | padding | cell 3]
    cells = torch.tensor([[0, 1, 8], [6, 8, 7]])
    attention = WindowAttention(torch.rand(2, 1, 3, 3).softmax(-1), cells, (2, 2), batch_size=2)
    assert attention.live.tolist() == [[True, True, False], [True, False, True]]
    assert attention.to_grid(torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 4.0]])).tolist() == [[1, 2, 0, 0], [0, 0, 3, 4]]
    assert attention.live_grid().tolist() == [[True, True, False, False], [False, False, True, True]]
    assert attention.image_live_counts().tolist() == [2.0, 2.0]


def test_reduced_key_cells_pool_ratio_blocks_and_attach_the_remainder():
    keys = reduced_key_cells((5, 4), 2)  # floor(5 / 2) x floor(4 / 2) = 2 x 2 keys; row 4 joins key row 1
    expected = [min(r // 2, 1) * 2 + c // 2 for r in range(5) for c in range(4)]
    assert keys.tolist() == expected
    assert reduced_key_cells((4, 4), 1).tolist() == list(range(16))
    probs = torch.rand(1, 2, 3, 4).softmax(-1)
    attention = ReducedAttention(probs, torch.tensor([[0, 6, 19]]), None, keys, (5, 4))
    assert attention.pool_sizes().tolist() == [4.0, 4.0, 6.0, 6.0]
    values = torch.tensor([[4.0, 8.0, 12.0, 6.0]])
    grid = attention.keys_to_grid(values)
    assert grid.shape == (1, 20) and grid[0, 0] == 1.0 and grid[0, 19] == 1.0 and grid[0, 17] == 2.0
    assert attention.keys_to_queries(values).tolist() == [[1.0, 2.0, 1.0]]  # cells 0 (key 0), 6 (key 1), 19 (key 3)
    assert attention.live_grid().nonzero()[:, 1].tolist() == [0, 6, 19]
