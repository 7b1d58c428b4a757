"""PrATo: prompt-based adaptive token pruning (docs/design.md §7.1).

At a stage boundary with tokens ``Y [B, n, C]`` on a grid of stride ``p``:

1. the live tokens are put back on the grid (pruned cells keep the value they had when pruned);
2. every box (divided by ``p``) is RoIAligned into ``k^D`` features: ``F [B, M, C]`` with ``M = boxes * k^D``;
3. ``V1 = F f1``, ``V2 = Y f2`` with learnable ``f1, f2: C -> d_v``;
4. ``S = V1 V2^T / sqrt(d_v)``  ``[B, M, n]``;
5. ``rho = softmax(S)`` over the tokens;  6. entropy ``H_m = -sum_j rho_mj log rho_mj``;
7. ranks of ``H`` (ascending) normalised to ``[0, 1]``; ``Omega = 1 - rank / (M - 1)``;
8. relevance ``r_j = mean_m Omega_m S_mj`` (the paper's ``1/C'`` read as a mean over RoI features: the only
   reading with consistent shapes);
9. keep ``sigmoid(r_j) > tau``: ``threshold="percentile"`` keeps the top ``keep_ratio`` of every image
   (the ``100 * (1 - keep_ratio)``-th percentile; fixed K, batchable), ``threshold="fixed"`` keeps
   ``sigmoid(r) > tau`` (variable K; executor ``padded`` or ``mask``);
10. training uses the hard selection forward and the gradient of ``sigmoid(r)`` backward (straight-through).

``protect_boxes=True`` (the bundles' default since 0.2.0; ``False`` is the paper's literal rule) ranks every
token whose grid cell overlaps a prompt box above every token outside all boxes; within each group the
learned relevance orders them, and the straight-through gradient is the same. The literal rule ranks by
content similarity alone, so a token inside the box that looks like the background outside it (a small dark,
fluid-like structure) can rank with the background; a token pruned in every training step gets no gradient
towards being kept, and the box hardly changes the selection. Such a structure was reported lost; on our synthetic
set the literal rule kept it, but its Dice did not react to the prompt (the small-structure study in docs/notes).

Without a prompt (``boxes=None``, or only padding rows for an image) the whole image is the box.
``scoring="naive_crop"`` is the paper's ablation without RoIAlign: a token's relevance is minus the distance
(in grid cells) of its centre to the nearest box, so tokens whose centres fall in a box come first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from prato_components.pruners.base import TokenPruner, select_threshold, select_topk
from prato_components.pruners.registry import register_pruner
from prato_components.pruners.roi_align import roi_align
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["PrATo", "entropy_rank_weights", "prompt_boxes_or_image"]


def prompt_boxes_or_image(inputs: StageInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in network-input voxels with the whole image standing in where no valid prompt is given.

    Returns:
        boxes ``[B, M, 2D]`` and a validity mask ``[B, M]`` (padding rows, max < min, are invalid).
    """
    dims = inputs.spatial_dims
    batch = inputs.tokens.shape[0]
    dtype, device = inputs.tokens.dtype, inputs.tokens.device
    extent = [g * s for g, s in zip(inputs.grid_shape, inputs.stride)]
    image_box = torch.tensor([0.0] * dims + extent, dtype=dtype, device=device)
    if inputs.boxes is None:
        return image_box.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=device)
    boxes = inputs.boxes.to(dtype)
    valid = (boxes[..., dims:] > boxes[..., :dims]).all(dim=-1)
    # images whose rows are all padding: the whole image stands in as the first box (branch-free, so the
    # network exports with torch.export and runs the same graph for any prompt)
    use_image = F.pad(~valid.any(dim=1, keepdim=True), (0, boxes.shape[1] - 1))
    return torch.where(use_image.unsqueeze(-1), image_box, boxes), valid | use_image


def entropy_rank_weights(entropy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``Omega = 1 - rank(H) / (M_valid - 1)`` per image; 0 on invalid rows (step 7).

    Args:
        entropy: ``[B, M]`` entropies.
        valid: ``[B, M]`` bool, rows that take part in the ranking.
    """
    ranked = entropy.detach().masked_fill(~valid, float("inf"))
    ranks = ranked.argsort(dim=1, stable=True).argsort(dim=1)
    denom = (valid.sum(dim=1, keepdim=True, dtype=entropy.dtype) - 1).clamp(min=1)
    return (1.0 - ranks / denom).clamp(min=0.0) * valid  # invalid rows rank last: <= 0 before the clamp


@register_pruner("prato")
class PrATo(TokenPruner):
    """Prompt-based adaptive token pruning.

    Args:
        dim: token width ``C``.
        keep_ratio: fraction kept per stage in ``percentile`` mode (0.75 = the paper's 25th percentile).
        roi_size: RoIAlign bins per axis ``k`` (paper best: 5).
        proj_dim: projection width ``d_v`` of ``f1`` and ``f2``.
        threshold: ``"percentile"`` (top-k, fixed K) or ``"fixed"`` (``sigmoid(r) > tau``).
        tau: the fixed threshold, in (0, 1).
        entropy_weighting: ``False`` sets ``Omega = 1`` (ablation).
        scoring: ``"roi_align"`` (PrATo) or ``"naive_crop"`` (ablation: distance to the box, no learning).
        sampling_ratio: bilinear samples per RoIAlign bin and axis.
        protect_boxes: tokens whose cells overlap a prompt box outrank all others (``fixed`` threshold: they are
            always kept); ``False``: the paper's literal ranking by relevance alone.
    """

    def __init__(
        self,
        dim: int,
        keep_ratio: float = 0.75,
        roi_size: int = 5,
        proj_dim: int = 64,
        threshold: str = "percentile",
        tau: float = 0.5,
        entropy_weighting: bool = True,
        scoring: str = "roi_align",
        sampling_ratio: int = 2,
        protect_boxes: bool = False,
    ) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if threshold not in ("percentile", "fixed"):
            raise ValueError(f"threshold must be 'percentile' or 'fixed', got {threshold!r}")
        if scoring not in ("roi_align", "naive_crop"):
            raise ValueError(f"scoring must be 'roi_align' or 'naive_crop', got {scoring!r}")
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        if roi_size < 1 or proj_dim < 1:
            raise ValueError(f"roi_size and proj_dim must be >= 1, got {roi_size} and {proj_dim}")
        self.roi_size, self.proj_dim, self.threshold, self.tau = roi_size, proj_dim, threshold, tau
        self.entropy_weighting, self.scoring, self.sampling_ratio = entropy_weighting, scoring, sampling_ratio
        self.protect_boxes = bool(protect_boxes)
        self.f1 = nn.Linear(dim, proj_dim)
        self.f2 = nn.Linear(dim, proj_dim)

    def relevance(self, inputs: StageInput, prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Token relevance ``r`` ``[B, n]`` (steps 1-8); ``prompts``: :func:`prompt_boxes_or_image` of ``inputs`` when
        the caller already has it."""
        boxes, box_valid = prompt_boxes_or_image(inputs) if prompts is None else prompts
        if self.scoring == "naive_crop":
            return self._distance_relevance(inputs, boxes, box_valid)
        dims = inputs.spatial_dims
        grid_boxes = boxes / boxes.new_tensor(tuple(inputs.stride) * 2)
        pooled = roi_align(inputs.feature_map(), grid_boxes, self.roi_size, self.sampling_ratio)  # [B, M', C, k..]
        batch, channels = pooled.shape[0], pooled.shape[2]
        roi_features = pooled.movedim(2, -1).reshape(batch, -1, channels)  # [B, M, C]
        feature_valid = box_valid.repeat_interleave(self.roi_size**dims, dim=1)  # [B, M]

        similarity = self.similarity(roi_features, inputs.tokens)  # [B, M, n]
        if self.entropy_weighting:
            logits = similarity if inputs.valid is None else similarity.masked_fill(~inputs.valid[:, None], -1e4)
            log_rho = logits.log_softmax(dim=-1)
            entropy = -(log_rho.exp() * log_rho).sum(dim=-1)  # [B, M]
            omega = entropy_rank_weights(entropy, feature_valid)
        else:
            omega = feature_valid.to(similarity.dtype)
        weights = omega / feature_valid.sum(dim=1, keepdim=True, dtype=omega.dtype).clamp(min=1)
        return (weights.unsqueeze(1) @ similarity).squeeze(1)

    def similarity(self, roi_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``S = f1(F) f2(Y)^T / sqrt(d_v)`` ``[B, M, n]`` (steps 3-4), in the cheaper of two exact orders.

        With few RoI features (``M``) the tokens are never projected: ``S = (V1 W2) Y^T + V1 b2`` costs
        ``M C n`` multiply-adds instead of ``n C d_v + M d_v n`` (``W2, b2``: ``f2``'s weight and bias).
        """
        v1 = self.f1(roi_features) * self.proj_dim**-0.5  # [B, M, d_v]
        num_features, channels = v1.shape[1], tokens.shape[2]
        if num_features * channels < (channels + num_features) * self.proj_dim:
            bias = (v1 @ self.f2.bias).unsqueeze(-1)  # [B, M, 1]
            return torch.baddbmm(bias, v1 @ self.f2.weight, tokens.transpose(1, 2))
        return v1 @ self.f2(tokens).transpose(1, 2)

    @staticmethod
    def _distance_relevance(inputs: StageInput, boxes: torch.Tensor, box_valid: torch.Tensor) -> torch.Tensor:
        """Minus the distance (grid cells) from each token centre to its nearest box; 0 inside a box."""
        dims = inputs.spatial_dims
        stride = torch.tensor(inputs.stride, dtype=boxes.dtype, device=boxes.device)
        centres = inputs.token_centres()[:, :, None] / stride  # [B, n, 1, D]
        lo, hi = (boxes[..., :dims] / stride)[:, None], (boxes[..., dims:] / stride)[:, None]  # [B, 1, M, D]
        gap = (lo - centres).clamp(min=0) + (centres - hi).clamp(min=0)
        distance = gap.norm(dim=-1).masked_fill(~box_valid[:, None], float("inf"))
        return -distance.min(dim=-1).values

    @staticmethod
    def inside_boxes(inputs: StageInput, prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``[B, n]`` bool: the live token's grid cell overlaps a valid prompt box (every token without a prompt).

        Per axis, cell ``v`` (covering ``[v p, (v + 1) p)``) overlaps ``[lo, hi]`` when ``v p < hi`` and
        ``(v + 1) p > lo``; a cell overlaps a box when it does along every axis (an outer product of the per-axis
        masks, a handful of small operations whatever the grid size). ``prompts`` as in :meth:`relevance`.
        """
        boxes, box_valid = prompt_boxes_or_image(inputs) if prompts is None else prompts
        dims, grid_shape = inputs.spatial_dims, inputs.grid_shape
        inside = box_valid[:, :, None]  # [B, M, 1] -> [B, M, N] over the flattened grid
        for axis, (size, stride) in enumerate(zip(grid_shape, inputs.stride)):
            cells = torch.arange(size + 1, dtype=boxes.dtype, device=boxes.device) * stride  # cell edges
            overlap = (cells[:-1] < boxes[..., dims + axis, None]) & (cells[1:] > boxes[..., axis, None])  # [B, M, G_a]
            inside = (inside[..., :, None] & overlap[..., None, :]).flatten(-2)
        on_grid = inside.any(dim=1)  # [B, N]
        return on_grid.gather(1, inputs.token_index.clamp(max=on_grid.shape[1] - 1))

    def forward(self, inputs: StageInput) -> TokenSelection:
        prompts = prompt_boxes_or_image(inputs)
        relevance = self.relevance(inputs, prompts)
        if self.scoring == "naive_crop":
            if self.threshold == "fixed":  # keep exactly the tokens whose centres fall in a box
                return select_threshold(relevance, -1e-6, inputs.valid)
            return select_topk(relevance, self.keep_ratio, inputs.valid)
        scores = torch.sigmoid(relevance)
        if self.protect_boxes:  # in (1, 2) inside a box, (0, 1) outside; the same gradient as sigmoid(r)
            scores = scores + self.inside_boxes(inputs, prompts).to(scores.dtype)
        if self.threshold == "fixed":
            return select_threshold(scores, self.tau, inputs.valid)
        return select_topk(scores, self.keep_ratio, inputs.valid)

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, roi_size={self.roi_size}, proj_dim={self.proj_dim}, "
            f"threshold={self.threshold!r}, tau={self.tau}, entropy_weighting={self.entropy_weighting}, "
            f"scoring={self.scoring!r}, protect_boxes={self.protect_boxes}"
        )
