"""TRAM: attention-graph centrality accumulated over the blocks (prato_components/pruners/tram.py)."""

import pytest
import torch
from conftest import image, record_selections, reduced_example, stage_input, tiny_unetr, window_example

from prato_components.pruners import (
    TRAM,
    attention_graph_centrality,
    keep_count,
    reduced_attention_graph_centrality,
    window_attention_graph_centrality,
)
from prato_components.tokens import transformer_block_forward


def kept_grid(inputs, selection) -> torch.Tensor:
    """``[B, N]`` bool: grid positions kept by ``selection``."""
    grid = torch.zeros(inputs.token_index.shape[0], 17, dtype=torch.bool)
    return grid.scatter_(1, inputs.token_index, selection.keep_mask)[:, :16]


def test_attention_graph_centrality_matches_the_formula():
    attention = torch.rand(2, 3, 5, 5).softmax(-1)
    scores = attention_graph_centrality(attention)
    for b in range(2):
        graph = attention[b].max(dim=0).values
        indegree = [sum(graph[i, j] for i in range(5)) for j in range(5)]
        expected = [sum(graph[i, j] * indegree[i] for i in range(5)) for j in range(5)]
        torch.testing.assert_close(scores[b], torch.stack(expected))
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    masked = attention_graph_centrality(attention, valid)
    graph = attention[0].max(dim=0).values * valid[0, :, None]
    torch.testing.assert_close(masked[0], graph.T @ graph.sum(0))


def test_tram_accumulates_scores_over_all_blocks_since_the_start():
    """Reference: run the blocks by hand, sum the per-block centrality on the grid, top-k per stage."""
    net = tiny_unetr("tram").eval()
    calls = record_selections(net)
    x = image()
    with torch.no_grad():
        net(x)
        tokens = net.vit.patch_embedding(x)
        total = torch.zeros(2, 16)
        index = torch.arange(16).expand(2, -1)
        expected = []
        for block_index, block in enumerate(net.vit.blocks[:7]):
            tokens, attention = transformer_block_forward(block, tokens, return_attention=True)
            total = total.scatter_add(1, index, attention_graph_centrality(attention))
            if block_index in (3, 6):
                keep = total.gather(1, index).topk(keep_count(index.shape[1], 0.75), dim=1).indices.sort(1).values
                index = index.gather(1, keep)
                tokens = tokens.gather(1, keep[..., None].expand(-1, -1, 32))
                expected.append(torch.zeros(2, 17, dtype=torch.bool).scatter_(1, index, True)[:, :16])
    assert [len(inputs.attentions) for inputs, _ in calls] == [4, 3]
    for (inputs, selection), reference in zip(calls, expected):
        assert torch.equal(kept_grid(inputs, selection), reference)


@pytest.mark.parametrize("executor", ["attention_mask", "padded"])
def test_tram_maps_attention_to_the_grid_in_every_executor_mode(executor):
    x = image()
    with torch.no_grad():
        reference = tiny_unetr("tram").eval()(x)
        torch.testing.assert_close(tiny_unetr("tram", executor=executor).eval()(x), reference, atol=1e-5, rtol=1e-5)


def test_tram_training_path_equals_eval_and_only_tram_gets_attention():
    net = tiny_unetr("tram")
    calls = record_selections(net)
    x = image()
    with torch.no_grad():
        net.train()(x)
        net.eval()(x)
    assert torch.equal(calls[0][1].keep_mask, calls[2][1].keep_mask)  # parameter-free: no training-only path
    assert calls[0][1].scores is None
    other = tiny_unetr("random").eval()
    other_calls = record_selections(other)
    with torch.no_grad():
        other(x)
    assert all(not inputs.attentions for inputs, _ in other_calls)
    with pytest.raises(ValueError, match="TRAM needs the attention maps"):
        TRAM()(stage_input(torch.randn(1, 64, 32)))


# ---------------------------------------------------------------------------------------------- hierarchical attention
def test_window_centrality_is_the_centrality_of_the_block_diagonal_map():
    attention, dense = window_example(heads=3)
    expected = attention_graph_centrality(dense, attention.live_grid())
    torch.testing.assert_close(window_attention_graph_centrality(attention), expected)
    # by hand in image 1's window (cells 0 and 2 live): s_j = sum_i A_ij d_i with d_j = sum_i A_ij
    graph = attention.probs[2].amax(0)[[0, 2]][:, [0, 2]]
    indegree = graph.sum(0)
    torch.testing.assert_close(window_attention_graph_centrality(attention)[1, [0, 2]], graph.T @ indegree)


def test_reduced_centrality_equals_the_centrality_of_the_token_map():
    attention, token_map = reduced_example()
    # the square token-to-token map: row i of the grid holds the query row at cell i (zero elsewhere)
    square = torch.zeros(2, 2, 16, 16)
    live = torch.zeros(2, 16, dtype=torch.bool)
    for b in range(2):
        for row in range(5):
            if attention.query_valid[b, row]:
                cell = int(attention.query_cells[b, row])
                square[b, :, cell], live[b, cell] = token_map[b, :, row], True
    expected = attention_graph_centrality(square, live)
    torch.testing.assert_close(reduced_attention_graph_centrality(attention), expected)


def test_tram_averages_finer_grids_onto_coarser_ones():
    attention, _ = window_example()
    inputs = stage_input(torch.randn(2, 2, 8), grid=(1, 2), attentions=[attention])
    TRAM(keep_ratio=0.5)(inputs)
    fine = window_attention_graph_centrality(attention)
    total = inputs.memory["tram.scores"]
    torch.testing.assert_close(total[:, :6], fine)  # kept on the blocks' grid
    assert inputs.memory["tram.scores.grid"] == (2, 3)
    later = stage_input(torch.randn(2, 2, 8), grid=(1, 2), attentions=[torch.full((2, 1, 2, 2), 0.5)], stage=2)
    later.memory = inputs.memory
    TRAM(keep_ratio=0.5)(later)  # a uniform map on the (1, 2) grid (s_j = 1): the sum is averaged onto it first
    coarse = torch.stack([fine[:, [0, 1, 3, 4]].mean(1), fine[:, [2, 5]].mean(1)], dim=1)
    torch.testing.assert_close(later.memory["tram.scores"][:, :2], coarse + 1.0)
    assert later.memory["tram.scores.grid"] == (1, 2)
