"""What a pruner and an executor exchange at a stage boundary (docs/design.md §4).

A backbone hands its pruner a :class:`StageInput` (the live tokens, where they sit on the grid, the prompts, and
the last attention maps for pruners that ask for them) and gets back a :class:`TokenSelection`, which the executor
(:class:`prato_components.tokens.executor.TokenState`) applies. Pure tensor code: imports nothing from this package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["StageInput", "TokenSelection", "scatter_to_grid", "straight_through", "tracing"]


def tracing() -> bool:
    """Whether a compiler traces the forward pass (``torch.compile`` or ``torch.export``): data-dependent checks are
    skipped (the callers run them eagerly) and token counts must come from shapes, never from values."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def scatter_to_grid(index: torch.Tensor, values: torch.Tensor, num_grid: int) -> torch.Tensor:
    """``values`` ``[B, n]`` written at grid positions ``index`` ``[B, n]`` of a zero ``[B, num_grid]`` map; rows
    whose index is ``num_grid`` (padding rows of a padded token set) are dropped."""
    grid = values.new_zeros(values.shape[0], num_grid + 1)
    return grid.scatter(1, index, values)[:, :num_grid]


@dataclass
class StageInput:
    """What a pruner sees at a stage boundary.

    Attributes:
        tokens: live tokens ``[B, n, C]``.
        token_index: ``[B, n]`` position of each live token in the flattened full grid (row-major over
            ``grid_shape``); padding rows (see ``valid``) hold ``N = prod(grid_shape)``.
        valid: ``[B, n]`` bool, ``False`` on padding rows when images keep different numbers of tokens;
            ``None`` when every row is a real token.
        grid_shape: the full token grid, e.g. ``(14, 14)``.
        stride: network-input voxels per grid cell along each axis.
        boxes: ``[B, M, 2*D]`` box prompts in network-input voxel coordinates (padding rows have
            max < min), or ``None`` without a prompt.
        stage: index of the stage boundary (1-based, backbone specific).
        attentions: attention probabilities ``[B, heads, n_l, n_l]`` of every block since the previous pruned
            stage boundary (over the tokens live in that block), only for pruners whose ``needs_attention`` is
            ``True``; otherwise empty. The last entry is over the current live tokens. The hierarchical backbones
            give their blocks' attention on those blocks' own (finer) grids instead:
            :class:`~prato_components.tokens.attention.WindowAttention` (Swin UNETR) or
            :class:`~prato_components.tokens.attention.ReducedAttention` (SegFormer).
        feature_map: callable returning the live tokens restored to the grid, ``[B, C, *grid_shape]``
            (pruned positions hold the value they had when pruned); computed on demand.
        memory: a dict that lives for one forward pass, shared by all stages (for scores accumulated
            across layers or stages).
    """

    tokens: torch.Tensor
    token_index: torch.Tensor
    valid: torch.Tensor | None
    grid_shape: tuple[int, ...]
    stride: tuple[float, ...]
    boxes: torch.Tensor | None
    stage: int
    feature_map: Callable[[], torch.Tensor]
    attentions: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return len(self.grid_shape)

    def attention_positions(self, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grid positions ``[B, n_l]`` of the tokens of one of :attr:`attentions` and which of them are live tokens
        (``None``: all). A map is over the live tokens (gather/padded executors) or over the whole grid
        (full-length executors, where tokens pruned earlier are not live)."""
        size, batch = attention.shape[-1], self.token_index.shape[0]
        num_grid = math.prod(self.grid_shape)
        if size == self.token_index.shape[1]:
            return self.token_index, self.valid
        if size == num_grid:
            return torch.arange(num_grid, device=self.token_index.device).expand(batch, -1), self.live_grid()
        raise ValueError(
            f"an attention map over {size} tokens matches neither the {self.token_index.shape[1]} live tokens nor "
            f"the {num_grid} grid tokens"
        )

    def live_grid(self) -> torch.Tensor:
        """``[B, N]`` bool: grid positions of the live tokens."""
        live = torch.ones_like(self.token_index, dtype=torch.bool)
        return scatter_to_grid(self.token_index, live, math.prod(self.grid_shape))

    def token_centres(self) -> torch.Tensor:
        """``[B, n, D]`` centres of the live tokens in network-input voxel coordinates."""
        index = self.token_index.clamp(max=math.prod(self.grid_shape) - 1)
        coords = []
        for size in reversed(self.grid_shape):
            coords.append(index % size)
            index = torch.div(index, size, rounding_mode="floor")
        cells = torch.stack(coords[::-1], dim=-1).to(self.tokens.dtype) + 0.5
        return cells * torch.tensor(self.stride, dtype=self.tokens.dtype, device=self.tokens.device)


@dataclass
class TokenSelection:
    """A pruner's decision over the ``n`` live tokens of a :class:`StageInput`.

    Attributes:
        keep_mask: ``[B, n]`` bool, ``True`` for tokens that stay.
        keep_index: ``[B, K]`` ascending indices into the live tokens when every image keeps the same
            ``K`` (top-k); ``None`` when the count varies per image (fixed threshold).
        scores: ``[B, n]`` differentiable keep probabilities; in training the executor multiplies kept
            tokens by ``straight_through(keep_mask, scores)`` (1 in the forward pass) so the scorer learns.
        aux_loss: a scalar side loss to add to the training loss (e.g. DynamicViT's ratio loss).
        aux_logits: ``[B, classes, *grid_shape]`` intermediate segmentation logits to be supervised with the
            label (e.g. DToP's auxiliary heads); see :class:`prato_components.engine.PrunedSegLoss`.
    """

    keep_mask: torch.Tensor
    keep_index: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None

    @property
    def num_kept(self) -> torch.Tensor:
        """``[B]`` number of kept tokens per image."""
        return self.keep_mask.sum(dim=1)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return hard.to(soft.dtype) + soft - soft.detach()
