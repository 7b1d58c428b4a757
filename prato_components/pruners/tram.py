"""TRAM (Marchetti et al. 2025): parameter-free token pruning by attention-graph centrality.

Every block's attention is read as a directed graph over its tokens, ``A = max over heads`` (``A[i, j]``: how much
query ``i`` attends to key ``j``). A token's in-degree is its column sum, ``d_j = sum_i A_ij``, and its score is the
attention it receives weighted by the in-degree of the tokens that send it: ``s_j = sum_i A_ij d_i``. Scores are
summed over all blocks since the start of the network; every pruned stage keeps the top ``keep_ratio`` of the live
tokens.

The running sum lives on the full token grid in the forward pass's shared ``StageInput.memory``, so a later stage
continues the sum of an earlier one whatever the executor mode: an attention map over the live tokens (``gather``,
``padded``) is mapped to the grid through ``token_index``; one over the full grid (``mask``) is used as is.
"""

from __future__ import annotations

import math

import torch

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["TRAM", "attention_graph_centrality"]

MEMORY_KEY = "tram.scores"


def attention_graph_centrality(attention: torch.Tensor, query_valid: torch.Tensor | None = None) -> torch.Tensor:
    """TRAM's per-block score ``s_j = sum_i A_ij d_i`` with ``A = max_h attention`` and ``d = A.sum(queries)``.

    Args:
        attention: attention probabilities ``[B, heads, n, n]`` (queries x keys).
        query_valid: optional ``[B, n]`` bool; rows of padding or pruned tokens send no attention.

    Returns:
        ``[B, n]`` scores.
    """
    graph = attention.amax(dim=1)
    if query_valid is not None:
        graph = graph * query_valid.unsqueeze(-1).to(graph.dtype)
    indegree = graph.sum(dim=1)  # column sums: attention each token receives
    return torch.einsum("bij,bi->bj", graph, indegree)


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
        batch = inputs.token_index.shape[0]
        num_grid = math.prod(inputs.grid_shape)
        total = inputs.memory.get(MEMORY_KEY)  # [B, N + 1]; the last column collects padding rows
        if total is None:
            total = inputs.tokens.new_zeros(batch, num_grid + 1, dtype=torch.float32)
        for attention in inputs.attentions:
            index, query_valid = inputs.attention_positions(attention)
            total = total.scatter_add(1, index, attention_graph_centrality(attention.float(), query_valid))
        inputs.memory[MEMORY_KEY] = total
        scores = total.gather(1, inputs.token_index)
        selection = select_topk(scores, self.keep_ratio, inputs.valid)
        selection.scores = None  # parameter-free: nothing to learn
        return selection
