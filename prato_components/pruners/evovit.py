"""Evo-ViT (Xu et al. 2022): slow-fast token evolution, adapted to a segmentation ViT without a CLS token.

Scoring. Every block before a pruned stage returns its attention probabilities; a token's score in that block is
the attention it *receives*: summed over heads and averaged over the (live) queries, so a block's scores form a
distribution over its keys like the CLS attention row of the original. Scores are smoothed across blocks with
Evo-ViT's exponential moving average ``s <- (1 - t) s + t a`` (``t = smoothing``, the original's ``tradeoff``),
kept per grid position in the forward pass's shared ``StageInput.memory``: tokens pruned earlier keep their last
score, as in the original.

Selection. At each pruned stage the top ``keep_ratio`` of the live tokens (``keep_count`` rule) take the slow
path: they run through the full blocks. The others become *placeholders*: they stay in the executor's carry
buffer (``TokenState.carry``, read by the decoder taps through ``fill="carry"``).

Fast path (:meth:`EvoViT.run_block`). In every block after the stage, one representative token, the
score-weighted mean of the placeholders, runs through the block together with the kept tokens (``K + 1``
tokens); its residual ``block(x)_rep - rep`` is added to every placeholder: one extra token per block and an
``O(N C)`` update, so placeholders evolve and the decoder taps see them evolved.

Adaptations (see ``docs/pruners/evovit.md``): no CLS token, so the score is the attention received from all
tokens; selection happens only at the common stage boundaries (matched budgets), and a placeholder never returns
to the slow path; the scores are updated from the slow path's attention of every block before a pruned stage
(blocks after the last pruned stage keep the fast attention path since nothing is selected after them).

Hierarchical backbones. On Swin UNETR a token receives attention only inside its windows
(:func:`window_attention_received`: the column sums of the window maps over the image's live queries, i.e. the
attention received on the image's block-diagonal map, so a token in a window with few live tokens is not
favoured); on SegFormer the live tokens attend to reduced keys (:func:`reduced_attention_received`: a key's
received attention spread evenly over the tokens it pools). The blocks before a boundary run on a finer grid than
the pruner's, so the smoothed scores are summed onto coarser grids (:func:`~prato_components.tokens.attention.coarsen`;
a sum keeps them a distribution of the attention received, by region). Those backbones run the fast path with
their own blocks through :meth:`EvoViT.placeholder_weights`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

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
from prato_components.tokens.blocks import transformer_block_forward
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = [
    "EvoViT",
    "attention_received",
    "reduced_attention_received",
    "representative_weights",
    "window_attention_received",
]

MEMORY_KEY = "evovit.scores"


def attention_received(
    attention: torch.Tensor, query_valid: torch.Tensor | None = None, num_queries: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention each key receives: summed over heads, averaged over the valid queries.

    Args:
        attention: attention probabilities ``[G, heads, q, k]`` (queries x keys) of ``G`` images (or windows).
        query_valid: optional ``[G, q]`` bool; rows of padding or pruned tokens send nothing.
        num_queries: optional ``[G]``: the number of queries to average over (default: the valid queries of each
            map); a window's map passes the live tokens of its whole image.

    Returns:
        ``[G, k]`` scores (summing to ``heads`` over the attended keys of every image).
    """
    per_query = attention.sum(dim=1)  # [G, q, k]
    if query_valid is None and num_queries is None:
        return per_query.mean(dim=1)
    weights = torch.ones_like(per_query[..., 0]) if query_valid is None else query_valid.to(per_query.dtype)
    total = torch.einsum("bij,bi->bj", per_query, weights)
    count = weights.sum(dim=1) if num_queries is None else num_queries.to(total.dtype)
    return total / count.unsqueeze(1).clamp(min=1.0)


def window_attention_received(attention: WindowAttention) -> torch.Tensor:
    """:func:`attention_received` of window attention, on the grid ``[B, N]``: a token's column sum in its window
    (its live queries, all heads) over the live tokens of its image. This is the attention received on the image's
    block-diagonal ``[N, N]`` map, so every image's scores still sum to ``heads``, and a window's share is its
    population's: under uniform attention every token scores ``heads / N_live``, however full its window."""
    received = attention_received(attention.probs, attention.live, attention.image_live_counts())
    return attention.to_grid(received)


def reduced_attention_received(attention: ReducedAttention) -> torch.Tensor:
    """:func:`attention_received` of spatial-reduction attention, on the grid ``[B, N]``: every reduced key's
    received attention (all heads, mean over the live queries) divided among the tokens it pools, i.e. the
    attention received on the token-to-token map ``A[i, key(j)] / pool(key(j))``."""
    return attention.keys_to_grid(attention_received(attention.probs, attention.query_valid))


def representative_weights(scores: torch.Tensor, placeholders: torch.Tensor) -> torch.Tensor:
    """Normalised weights ``[B, N]`` of the placeholders for the representative token.

    Score-weighted (Evo-ViT); uniform over the placeholders of an image whose placeholder scores sum to zero; all
    zero for an image without placeholders.

    Args:
        scores: ``[B, N]`` non-negative token scores on the grid.
        placeholders: ``[B, N]`` bool, the pruned grid positions.
    """
    mask = placeholders.to(scores.dtype)
    weights = scores.clamp(min=0) * mask
    total = weights.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, weights, mask)
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


@register_pruner("evovit")
class EvoViT(TokenPruner):
    """Keep the tokens that received the most (smoothed) attention; evolve the rest through a representative token.

    Args:
        keep_ratio: fraction of the live tokens that take the slow path at each pruned stage.
        smoothing: weight ``t`` of the current block in the moving average ``s <- (1 - t) s + t a`` (Evo-ViT's
            ``tradeoff``, 0.5 in the original); 1 uses the last block's attention only.
        representative: update the placeholders through the representative token (Evo-ViT's fast path);
            ``False`` freezes them (plain carry, an ablation).
    """

    needs_attention = True

    def __init__(self, keep_ratio: float = 0.75, smoothing: float = 0.5, representative: bool = True) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.representative = representative

    def update_scores(self, inputs: StageInput) -> torch.Tensor:
        """Fold the attention maps of ``inputs`` into the smoothed scores; returns them on the pruner's grid,
        ``[B, N + 1]`` (the last column collects padding rows), and keeps them in ``inputs.memory`` on the grid of
        the last map (scores of a finer grid are summed onto the next one first)."""
        if not inputs.attentions:
            raise ValueError("EvoViT needs the attention maps of the blocks before its stage (StageInput.attentions)")
        grid, scores = load_grid_scores(inputs.memory, MEMORY_KEY)
        t = self.smoothing
        for attention in inputs.attentions:
            current, live, on = attention_scores_on_grid(
                inputs, attention, attention_received, window_attention_received, reduced_attention_received
            )
            if scores is not None and grid != on:  # the previous blocks ran on a finer grid
                scores = pad_column(coarsen(scores[:, :-1], grid, on, "sum"))
            scores = current if scores is None else torch.where(live, (1.0 - t) * scores + t * current, scores)
            grid = on
        store_grid_scores(inputs.memory, MEMORY_KEY, grid, scores)
        return pad_column(coarsen(scores[:, :-1], grid, inputs.grid_shape, "sum"))

    def forward(self, inputs: StageInput) -> TokenSelection:
        scores = self.update_scores(inputs)
        selection = select_topk(scores.gather(1, inputs.token_index), self.keep_ratio, inputs.valid)
        selection.scores = None  # parameter-free scoring: no straight-through weights
        return selection

    def placeholder_weights(
        self, memory: dict, grid_shape: tuple[int, ...], placeholders: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The representative token's weights: the smoothed scores (summed onto ``grid_shape``) normalised over the
        placeholders (:func:`representative_weights`); uniform before any score; ``None`` with
        ``representative=False``."""
        if not self.representative:
            return None
        grid, scores = load_grid_scores(memory, MEMORY_KEY)
        if scores is None:
            scores = torch.ones(placeholders.shape, dtype=dtype, device=placeholders.device)
        else:
            scores = coarsen(scores[:, :-1], grid, grid_shape, "sum").to(dtype)
        return representative_weights(scores, placeholders)

    def run_block(self, block: nn.Module, state, return_attention: bool = False):
        """The kept tokens and one representative token through ``block``; its residual evolves the placeholders
        (``state.carry`` at pruned grid positions). Returns ``(tokens, attention over the live tokens or None)``."""
        if not self.representative or state.carry is None:
            return super().run_block(block, state, return_attention)
        placeholders = ~state.alive_grid()  # [B, N]
        rep = state.representative(self.placeholder_weights(state.memory, state.grid_shape, placeholders,
                                                            state.carry.dtype))  # [B, 1, C]
        key_mask = state.key_mask
        if key_mask is not None:
            key_mask = torch.cat([key_mask, key_mask.new_ones(key_mask.shape[0], 1)], dim=1)
        tokens = torch.cat([state.tokens, rep], dim=1)
        out, attention = transformer_block_forward(block, tokens, key_mask, return_attention)
        state.evolve_placeholders(placeholders, rep, out[:, -1:])
        if attention is not None:
            attention = attention[..., :-1, :-1]
        return out[:, :-1], attention

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, smoothing={self.smoothing}, representative={self.representative}"
