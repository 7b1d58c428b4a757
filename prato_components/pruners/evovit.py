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
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.blocks import transformer_block_forward
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["EvoViT", "attention_received", "representative_weights"]

MEMORY_KEY = "evovit.scores"


def attention_received(attention: torch.Tensor, query_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention each key receives: summed over heads, averaged over the valid queries.

    Args:
        attention: attention probabilities ``[B, heads, n, n]`` (queries x keys).
        query_valid: optional ``[B, n]`` bool; rows of padding or pruned tokens send nothing.

    Returns:
        ``[B, n]`` scores (summing to ``heads`` over the attended keys of every image).
    """
    per_query = attention.sum(dim=1)  # [B, n, n]
    if query_valid is None:
        return per_query.mean(dim=1)
    weights = query_valid.to(per_query.dtype)
    total = torch.einsum("bij,bi->bj", per_query, weights)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


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
        """Fold the attention maps of ``inputs`` into the smoothed grid scores; returns ``[B, N + 1]`` (the last
        column collects padding rows) and stores them in ``inputs.memory``."""
        if not inputs.attentions:
            raise ValueError("EvoViT needs the attention maps of the blocks before its stage (StageInput.attentions)")
        batch = inputs.token_index.shape[0]
        num_grid = math.prod(inputs.grid_shape)
        live = F.pad(inputs.live_grid(), (0, 1))  # [B, N + 1]: the last column collects padding rows, never live
        scores = inputs.memory.get(MEMORY_KEY)
        t = self.smoothing
        for attention in inputs.attentions:
            index, query_valid = inputs.attention_positions(attention)
            received = attention_received(attention.detach().float(), query_valid)
            current = torch.zeros(batch, num_grid + 1, device=live.device).scatter(1, index, received)
            scores = current if scores is None else torch.where(live, (1.0 - t) * scores + t * current, scores)
        inputs.memory[MEMORY_KEY] = scores
        return scores

    def forward(self, inputs: StageInput) -> TokenSelection:
        scores = self.update_scores(inputs)
        selection = select_topk(scores.gather(1, inputs.token_index), self.keep_ratio, inputs.valid)
        selection.scores = None  # parameter-free scoring: no straight-through weights
        return selection

    def run_block(self, block: nn.Module, state, return_attention: bool = False):
        """The kept tokens and one representative token through ``block``; its residual evolves the placeholders
        (``state.carry`` at pruned grid positions). Returns ``(tokens, attention over the live tokens or None)``."""
        if not self.representative or state.carry is None:
            return super().run_block(block, state, return_attention)
        carry = state.carry
        placeholders = ~state.alive_grid()  # [B, N]
        scores = state.memory.get(MEMORY_KEY)
        scores = carry.new_ones(placeholders.shape) if scores is None else scores[:, : state.num_tokens].to(carry.dtype)
        weights = representative_weights(scores, placeholders)
        rep = torch.einsum("bn,bnc->bc", weights, carry).unsqueeze(1)  # [B, 1, C]
        key_mask = state.key_mask
        if key_mask is not None:
            key_mask = torch.cat([key_mask, key_mask.new_ones(key_mask.shape[0], 1)], dim=1)
        tokens = torch.cat([state.tokens, rep], dim=1)
        out, attention = transformer_block_forward(block, tokens, key_mask, return_attention)
        residual = out[:, -1:] - rep  # [B, 1, C]
        state.carry = carry + placeholders.unsqueeze(-1).to(carry.dtype) * residual
        if attention is not None:
            attention = attention[..., :-1, :-1]
        return out[:, :-1], attention

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, smoothing={self.smoothing}, representative={self.representative}"
