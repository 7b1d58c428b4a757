"""The pruning interface shared by every method.

At a stage boundary a backbone hands its pruner a :class:`StageInput` (the live tokens, where they sit on
the grid, the prompts, and the last attention map for pruners that ask for it) and gets back a
:class:`TokenSelection`. The backbone's executor (:class:`prato_components.tokens.TokenState`)
applies the selection, so a backbone never knows which method it carries.

The data types and token helpers live in the neutral core :mod:`prato_components.tokens`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from prato_components.tokens.attention import ReducedAttention, WindowAttention, pad_column
from prato_components.tokens.blocks import transformer_block_forward
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["TokenPruner", "attention_scores_on_grid", "float32_inputs", "keep_count", "select_threshold",
           "select_topk"]


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """Tokens kept out of ``num_tokens`` at ``keep_ratio`` (rounded, at least one).

    Every pruner uses this one rule so that methods compared at the same ratio keep the same number of
    tokens. ``keep_ratio = 1 - q / 100`` is the per-image ``q``-th percentile threshold of the paper.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    # trunc == floor here (the value is positive); trunc, sym_min and sym_max give plain ints in eager and keep a
    # data-dependent count symbolic (and serializable) under torch.export
    return torch.sym_max(1, torch.sym_min(num_tokens, math.trunc(num_tokens * keep_ratio + 0.5)))


def select_topk(scores: torch.Tensor, keep_ratio: float, valid: torch.Tensor | None = None) -> TokenSelection:
    """Keep the ``keep_count(n_valid, keep_ratio)`` highest scores of every image (same K for all images).

    Args:
        scores: ``[B, n]`` scores (higher keeps); kept as ``TokenSelection.scores`` for straight-through.
        keep_ratio: fraction of the live tokens to keep.
        valid: optional ``[B, n]`` bool; padding rows are never kept and the count is taken over the
            smallest number of valid rows in the batch so that K is the same for every image.
    """
    num_live = scores.shape[1]
    if valid is not None:  # .item(): under torch.export a data-dependent size, bounded by the checks
        num_live = valid.sum(dim=1).min().item()
        torch._check(num_live >= 0)
        torch._check(num_live <= scores.shape[1])
    k = keep_count(num_live, keep_ratio)
    ranked = scores.detach() if valid is None else scores.detach().masked_fill(~valid, float("-inf"))
    keep_index = ranked.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    keep_mask = torch.zeros_like(ranked, dtype=torch.bool).scatter_(1, keep_index, True)
    return TokenSelection(keep_mask=keep_mask, keep_index=keep_index, scores=scores)


def select_threshold(scores: torch.Tensor, threshold: float, valid: torch.Tensor | None = None) -> TokenSelection:
    """Keep tokens whose score exceeds ``threshold`` (a variable count per image; at least one kept)."""
    keep = scores.detach() > threshold
    if valid is not None:
        keep &= valid
    best = (scores.detach() if valid is None else scores.detach().masked_fill(~valid, float("-inf"))).argmax(1)
    keep[torch.arange(keep.shape[0], device=keep.device), best] = True  # never empty an image
    return TokenSelection(keep_mask=keep, keep_index=None, scores=scores)


def float32_inputs(inputs: StageInput) -> StageInput:
    """``inputs`` with its tokens, feature map and attention probabilities in float32 (``memory`` is shared)."""
    feature_map = inputs.feature_map
    attentions = [a.float() if isinstance(a, torch.Tensor) else dataclasses.replace(a, probs=a.probs.float())
                  for a in inputs.attentions]
    return dataclasses.replace(inputs, tokens=inputs.tokens.float(), feature_map=lambda: feature_map().float(),
                               attentions=attentions)


def attention_scores_on_grid(
    inputs: StageInput,
    attention,
    dense: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    windowed: Callable[[WindowAttention], torch.Tensor],
    reduced: Callable[[ReducedAttention], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Score the tokens of one entry of ``inputs.attentions`` on the grid that block ran on.

    Args:
        inputs: the stage input the attention came with.
        attention: a dense map ``[B, heads, n, n]`` (ViT blocks, over the live tokens or the whole grid), a
            :class:`~prato_components.tokens.attention.WindowAttention` (Swin) or a
            :class:`~prato_components.tokens.attention.ReducedAttention` (SegFormer).
        dense: ``dense(probs, query_valid) -> [B, n]`` per-key scores of a dense map.
        windowed, reduced: the same score on the grid ``[B, N]`` for the other two kinds.

    Returns:
        scores ``[B, N + 1]`` and the block's live tokens ``[B, N + 1]`` (bool) on its grid (the last column
        collects padding rows), and that grid's shape (a hierarchical block's grid can be finer than the pruner's).
    """
    if isinstance(attention, WindowAttention):
        return pad_column(windowed(attention)), pad_column(attention.live_grid()), attention.grid_shape
    if isinstance(attention, ReducedAttention):
        return pad_column(reduced(attention)), pad_column(attention.live_grid()), attention.grid_shape
    index, query_valid = inputs.attention_positions(attention)
    scores = dense(attention.detach().float(), query_valid)
    grid = scores.new_zeros(scores.shape[0], math.prod(inputs.grid_shape) + 1)
    return grid.scatter(1, index, scores), pad_column(inputs.live_grid()), inputs.grid_shape


class TokenPruner(nn.Module):
    """Base class of all pruners: ``forward(StageInput) -> TokenSelection``.

    Args:
        keep_ratio: fraction of the live tokens kept at each stage boundary (the common budget).

    Class attributes:
        needs_attention: set ``True`` to receive the attention maps of the blocks before the boundary
            (``StageInput.attentions``); those blocks then take the slower explicit attention path.
        train_executor: executor mode to use while training instead of the network's (e.g. DynamicViT trains
            with ``"attention_mask"``); ``None`` keeps the network's.

    Subclasses may override :meth:`run_block` to change how the ViT blocks after their stage are computed (e.g.
    Evo-ViT updates the pruned tokens through a representative token), and :meth:`placeholder_weights` to have the
    hierarchical backbones (Swin UNETR, SegFormer), whose blocks are not ViT blocks, do the same with their own
    blocks.
    """

    needs_attention: bool = False
    train_executor: str | None = None

    def __init__(self, keep_ratio: float = 0.75) -> None:
        super().__init__()
        keep_count(1, keep_ratio)  # validates the ratio
        self.keep_ratio = keep_ratio

    def __call__(self, inputs: StageInput) -> TokenSelection:
        """Under autocast the pruner scores in float32 (softmax, entropy, sigmoid, RoIAlign box coordinates and top-k
        ties are not resolved in half precision); its differentiable scores come back in the tokens' dtype."""
        device_type = inputs.tokens.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().__call__(inputs)
        with torch.autocast(device_type, enabled=False):
            selection = super().__call__(float32_inputs(inputs))
        if selection.scores is not None:
            selection.scores = selection.scores.to(inputs.tokens.dtype)
        return selection

    def forward(self, inputs: StageInput) -> TokenSelection:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement forward(StageInput) -> TokenSelection")

    def run_block(self, block: nn.Module, state, return_attention: bool = False):
        """Run one transformer ``block`` on ``state`` (a :class:`~prato_components.tokens.TokenState`)
        after this pruner's stage; returns ``(tokens, attention or None)``. Default: the block on the live
        tokens with the executor's key mask."""
        return transformer_block_forward(block, state.tokens, state.key_mask, return_attention)

    def placeholder_weights(
        self, memory: dict, grid_shape: tuple[int, ...], placeholders: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Weights ``[B, N]`` (summing to 1 over each image's ``placeholders``, the pruned grid positions) of a
        representative token that runs through every block after this pruner's stage with the kept tokens, its
        residual added to every pruned token (Evo-ViT's fast path); ``None`` (default): pruned tokens are carried
        unchanged. ``memory`` is the forward pass's shared ``StageInput.memory``, ``grid_shape`` the blocks' grid."""
        return None

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}"
