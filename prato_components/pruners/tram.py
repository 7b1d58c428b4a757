"""TRAM (Marchetti et al. 2025): parameter-free token pruning by attention-graph centrality.

Every block's attention is read as a directed graph over its tokens, ``A = max over heads`` (``A[i, j]``: how much
query ``i`` attends to key ``j``). A token's in-degree is its column sum, ``d_j = sum_i A_ij``, and its score is the
attention it receives weighted by the in-degree of the tokens that send it: ``s_j = sum_i A_ij d_i``. Scores are
summed over all blocks since the start of the network; every pruned stage keeps the top ``keep_ratio`` of the live
tokens.

The running sum lives on the full token grid in the forward pass's shared ``StageInput.memory``, so a later stage
continues the sum of an earlier one whatever the executor mode: an attention map over the live tokens (``gather``,
``padded``) is mapped to the grid through ``token_index``; one over the full grid (``mask``) is used as is.

Hierarchical backbones. Swin UNETR's window attention is the graph restricted to each window
(:func:`window_attention_graph_centrality`: the formula window by window, equal to it on the image's block-diagonal
map; a token's in-degree and score already have the same scale whatever its window's population). SegFormer's live
tokens attend to reduced keys (:func:`reduced_attention_graph_centrality`: the formula on the token-to-token map in
which a key's attention is spread evenly over the tokens it pools). The blocks before a boundary run on a finer
grid than the pruner's, so the running sum is averaged onto coarser grids
(:func:`~prato_components.tokens.attention.coarsen`; a mean keeps every block's weight in the sum, as on one grid).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prato_components.pruners.base import TokenPruner, attention_scores_on_grid, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.attention import (
    ReducedAttention,
    WindowAttention,
    coarsen,
    load_grid_scores,
    pad_column,
    store_grid_scores,
)
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = [
    "TRAM",
    "attention_graph_centrality",
    "reduced_attention_graph_centrality",
    "window_attention_graph_centrality",
]

MEMORY_KEY = "tram.scores"


def attention_graph_centrality(
    attention: torch.Tensor,
    query_valid: torch.Tensor | None = None,
    query_degree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """TRAM's per-block score ``s_j = sum_i A_ij d_i`` with ``A = max_h attention`` and ``d = A.sum(queries)``.

    Args:
        attention: attention probabilities ``[G, heads, q, k]`` (queries x keys) of ``G`` images (or windows).
        query_valid: optional ``[G, q]`` bool; rows of padding or pruned tokens send no attention.
        query_degree: maps the keys' in-degrees ``[G, k]`` to the queries' ``[G, q]`` where queries are not keys
            (spatial-reduction attention); default: queries and keys are the same tokens (``q == k``).

    Returns:
        ``[G, k]`` scores.
    """
    graph = attention.amax(dim=1)
    if query_valid is not None:
        graph = graph * query_valid.unsqueeze(-1).to(graph.dtype)
    indegree = graph.sum(dim=1)  # column sums: attention each token receives
    sender = indegree if query_degree is None else query_degree(indegree)
    return torch.einsum("bij,bi->bj", graph, sender)


def window_attention_graph_centrality(attention: WindowAttention) -> torch.Tensor:
    """:func:`attention_graph_centrality` of window attention, window by window (graph, in-degrees and scores
    inside each window, its live tokens as senders), on the grid ``[B, N]``."""
    return attention.to_grid(attention_graph_centrality(attention.probs, attention.live))


def reduced_attention_graph_centrality(attention: ReducedAttention) -> torch.Tensor:
    """:func:`attention_graph_centrality` of spatial-reduction attention on the grid ``[B, N]``: on the token map
    ``A[i, key(j)] / pool(key(j))``, a token's in-degree is its key's divided by the key's pool, and its score its
    key's score (in-degree-weighted attention from the live queries) divided the same way."""
    scores = attention_graph_centrality(attention.probs, attention.query_valid, attention.keys_to_queries)
    return attention.keys_to_grid(scores)


@register_pruner("tram")
class TRAM(TokenPruner):
    """Keep the live tokens with the highest attention-graph centrality, accumulated over all blocks so far.

    Args:
        keep_ratio: fraction of the live tokens kept at each stage boundary.
    """

    needs_attention = True

    def forward(self, inputs: StageInput) -> TokenSelection:
        if not inputs.attentions:
            raise ValueError("TRAM needs the attention maps of the blocks before its stage (StageInput.attentions)")
        grid, total = load_grid_scores(inputs.memory, MEMORY_KEY)  # [B, N + 1]; the last column: padding rows
        for attention in inputs.attentions:
            current, _, on = attention_scores_on_grid(
                inputs, attention, attention_graph_centrality, window_attention_graph_centrality,
                reduced_attention_graph_centrality,
            )
            if total is None:
                total = torch.zeros_like(current)
            elif grid != on:  # the previous blocks ran on a finer grid
                total = pad_column(coarsen(total[:, :-1], grid, on, "mean"))
            total, grid = total + current, on
        store_grid_scores(inputs.memory, MEMORY_KEY, grid, total)
        scores = pad_column(coarsen(total[:, :-1], grid, inputs.grid_shape, "mean")).gather(1, inputs.token_index)
        selection = select_topk(scores, self.keep_ratio, inputs.valid)
        selection.scores = None  # parameter-free: nothing to learn
        return selection
