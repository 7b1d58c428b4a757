"""STP + MTA (Zhou et al. 2023): sparse token pruning with multi-layer token assembly.

**STP** scores every live token with a small network that sees the token and a feature pooled over the image
(:class:`~prato_components.pruners.predictor.LocalGlobalPredictor`), ``s = log sigmoid(MLP([x_j, mean(x)]))``.
Training: Gumbel noise (temperature ``tau``) is added to ``s``, the top ``keep_ratio`` tokens are kept (hard, and
really removed: the executor gathers them in training too) and the gradient flows through the softmax of the noisy
scores over the tokens (straight-through). Inference: plain top-k of ``s``, no noise.

**MTA** (:class:`MultiLayerTokenAssembly`) is the learned way to fill the pruned positions for the dense decoder:
pass it as ``PrunedUNETR(completion=...)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.nets.swin_unetr import BasicLayer

from prato_components.pruners.base import TokenPruner, select_topk
from prato_components.pruners.predictor import LocalGlobalPredictor
from prato_components.pruners.registry import register_pruner
from prato_components.tokens.blocks import transformer_block_forward
from prato_components.tokens.stage import StageInput, TokenSelection

__all__ = ["STP", "MultiLayerTokenAssembly", "gumbel_noise"]


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel samples ``-log(-log U)`` shaped like ``like``."""
    uniform = torch.rand_like(like, dtype=torch.float32).clamp(1e-9, 1.0 - 1e-9)
    return -torch.log(-torch.log(uniform)).to(like.dtype)


@register_pruner("stp")
class STP(TokenPruner):
    """Sparse token pruning: a learned local/global score, Gumbel top-k in training, plain top-k at inference.

    Args:
        dim: token width ``C``.
        keep_ratio: fraction of the live tokens kept at each stage boundary.
        hidden_dim: width of the score network (default ``C // 4``).
        tau: Gumbel temperature (the paper's 1).
    """

    def __init__(self, dim: int, keep_ratio: float = 0.75, hidden_dim: int | None = None, tau: float = 1.0) -> None:
        super().__init__(keep_ratio=keep_ratio)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = tau
        self.score_net = LocalGlobalPredictor(dim, 1, hidden_dim)

    def score(self, inputs: StageInput) -> torch.Tensor:
        """Log keep probabilities ``log sigmoid(MLP([x_j, mean(x)]))``, ``[B, n]``."""
        return F.logsigmoid(self.score_net(inputs.tokens, inputs.valid).squeeze(-1))

    def forward(self, inputs: StageInput) -> TokenSelection:
        scores = self.score(inputs)
        if not self.training:
            selection = select_topk(scores, self.keep_ratio, inputs.valid)
            selection.scores = scores.exp()
            return selection
        noisy = (scores + gumbel_noise(scores)) / self.tau
        selection = select_topk(noisy, self.keep_ratio, inputs.valid)
        logits = noisy if inputs.valid is None else noisy.masked_fill(~inputs.valid, float("-inf"))
        selection.scores = logits.softmax(dim=1)  # the straight-through gradient of the hard top-k
        return selection

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, tau={self.tau}"


class _Assembler(nn.Module):
    """``x + W_out(LN(blocks(W_in(LN(x)) + pos)))`` at a reduced width; ``W_out`` starts at zero. The blocks are
    MONAI ``TransformerBlock``s (global attention), or with ``window_size`` one MONAI Swin ``BasicLayer`` of
    ``depth`` blocks (window attention, every second block shifted)."""

    def __init__(
        self, dim: int, width: int, depth: int, num_heads: int, mlp_ratio: float, dropout_rate: float,
        window_size: Sequence[int] | None = None,
    ):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, width)
        self.windows = None
        if window_size is not None and depth > 0:
            self.windows = BasicLayer(width, depth, num_heads, tuple(window_size), [0.0] * depth, mlp_ratio,
                                      qkv_bias=True, drop=dropout_rate)
            self.blocks = nn.ModuleList()
        else:
            self.blocks = nn.ModuleList(
                TransformerBlock(width, int(width * mlp_ratio), num_heads, dropout_rate, qkv_bias=True)
                for _ in range(depth)
            )
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, position: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        hidden = self.proj_in(self.norm_in(x)) + position
        for block in self.blocks:
            hidden, _ = transformer_block_forward(block, hidden)
        if self.windows is not None:  # channel-first grid in and out
            grid = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], *grid_shape)
            hidden = self.windows(grid).flatten(2).transpose(1, 2)
        return x + self.proj_out(self.norm_out(hidden))


class MultiLayerTokenAssembly(nn.Module):
    """STP's MTA as a ``PrunedUNETR`` completion: ``completion(grid [B, N, C], state, tap) -> grid``.

    ``state`` is the :class:`~prato_components.tokens.TokenState` of the tapped grid (it offers ``grid_shape``,
    ``pruned_stages`` and ``pruned_at()``; on Swin UNETR's coarser grids ``pruned_at`` also tells where a cell's
    children were pruned, docs/design.md §5). The hierarchical backbones build one MTA per tap, at that tap's width (a
    factory, see :func:`~prato_components.networks.vit_pruning.build_completions`).

    The restored ``grid`` holds the live tokens at their positions and, with the default ``fill="carry"``, every
    pruned token frozen at the value it had when it was pruned. MTA adds a learnable token per pruning stage to
    the pruned positions (:meth:`TokenState.pruned_at` tells the stage), adds a fixed sin-cos position embedding and
    runs the assembled full grid through a small transformer whose output feeds the decoder.

    How it applies to UNETR's taps: the decoder reads taps 1-3 (after blocks 3, 6, 9) and the final output (tap 4).
    A tap at a pruned stage is read before that stage prunes, so MTA runs on every tap after the first pruned stage
    (with stages (1, 2): taps 2, 3 and 4), each with its own transformer (the taps carry features of different
    depths, and UNETR's decoder branches expect them). The pruned tokens of tap ``t`` are those pruned before block
    ``3t``; the stage tokens are shared by all taps. Taps not in ``taps`` get the assembly without a transformer.

    Cost: the transformers run on all ``N`` tokens, so at full width each would cost a whole ViT block and three of
    them would cancel the savings of pruning. They run at a reduced width ``hidden_size`` (default ``C // 4``)
    between a ``C -> hidden_size`` and a ``hidden_size -> C`` projection, added back as a residual whose output
    projection starts at zero (so a network fine-tuned from an unpruned checkpoint starts from carry fill plus stage
    tokens). Set ``hidden_size=C`` for the full-width original. No extra loss. On the fine grids of a hierarchical
    backbone (Swin UNETR's first pruned grid has 56 x 56 tokens at 224 x 224) global attention over all tokens costs
    more than pruning saves; ``window_size`` makes the transformer attend within windows (MONAI's Swin blocks, every
    second one shifted), as the backbone's own blocks do.

    Args:
        dim: token width ``C``.
        spatial_dims: 2 or 3 (for the position embedding).
        depth: transformer blocks per tap (the paper uses 1-3).
        hidden_size: width of the transformer (divisible by ``num_heads`` and by 4 in 2D, 6 in 3D; default ``C // 4``
            rounded down to such a multiple, at least one).
        num_heads: attention heads.
        mlp_ratio: MLP width of the blocks relative to ``hidden_size``.
        num_stages: number of pruning stages of the backbone (UNETR: 3), one learnable token each.
        taps: decoder taps that get a transformer (UNETR: 2, 3 and 4 = the final output).
        dropout_rate: dropout of the blocks.
        window_size: ``None`` (default): global attention (the original); an int: window attention in windows of
            that size per axis (MONAI's Swin ``BasicLayer``).
    """

    def __init__(
        self,
        dim: int,
        spatial_dims: int = 2,
        depth: int = 1,
        hidden_size: int | None = None,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_stages: int = 3,
        taps: Sequence[int] = (2, 3, 4),
        dropout_rate: float = 0.0,
        window_size: int | None = None,
    ) -> None:
        super().__init__()
        multiple = {2: 4, 3: 6}.get(spatial_dims)
        if multiple is None:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if hidden_size is None:  # C // 4, rounded down to what the embedding and the heads take (at least that)
            step = math.lcm(multiple, num_heads)
            hidden_size = max(step, dim // 4 // step * step)
        if depth < 0 or num_stages < 1:
            raise ValueError(f"depth must be >= 0 and num_stages >= 1, got {depth} and {num_stages}")
        if hidden_size < 1 or hidden_size % multiple or hidden_size % num_heads:
            raise ValueError(
                f"hidden_size must be a positive multiple of {multiple} (sin-cos embedding in {spatial_dims}D) and of "
                f"num_heads={num_heads}, got {hidden_size}"
            )
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be None or >= 1, got {window_size}")
        self.dim, self.spatial_dims, self.hidden_size, self.depth = dim, spatial_dims, hidden_size, depth
        self.window_size = window_size
        self.taps = tuple(int(t) for t in taps)
        self.stage_tokens = nn.Parameter(torch.zeros(num_stages, dim))
        nn.init.trunc_normal_(self.stage_tokens, std=0.02)
        windows = None if window_size is None else (int(window_size),) * spatial_dims
        self.assemblers = nn.ModuleDict(
            {
                str(t): _Assembler(dim, hidden_size, depth, num_heads, mlp_ratio, dropout_rate, windows)
                for t in self.taps
            }
        )
        self._positions: dict[tuple, torch.Tensor] = {}

    def position_embedding(self, grid_shape: Sequence[int], device, dtype) -> torch.Tensor:
        """The fixed sin-cos embedding ``[1, N, hidden_size]`` of ``grid_shape`` (cached)."""
        key = (tuple(grid_shape), str(device), dtype)
        if key not in self._positions:
            if len(grid_shape) != self.spatial_dims:
                raise ValueError(f"MTA was built for {self.spatial_dims}D grids, got grid shape {tuple(grid_shape)}")
            with warnings.catch_warnings():  # MONAI's meshgrid call warns about the indexing argument
                warnings.simplefilter("ignore", UserWarning)
                table = build_sincos_position_embedding(list(grid_shape), self.hidden_size, self.spatial_dims)
            self._positions[key] = table.detach().to(device=device, dtype=dtype)
        return self._positions[key]

    def assemble(self, grid: torch.Tensor, state) -> torch.Tensor:
        """``grid`` with the learnable token of the stage each pruned position was pruned at added."""
        if state.pruned_stages and max(state.pruned_stages) > self.stage_tokens.shape[0]:
            raise ValueError(f"MTA has {self.stage_tokens.shape[0]} stage tokens; tokens were pruned at a later stage")
        stage_of = state.pruned_at()  # [B, N], 0 = alive
        pruned = (stage_of > 0).unsqueeze(-1).to(grid.dtype)
        return grid + self.stage_tokens.to(grid.dtype)[(stage_of - 1).clamp(min=0)] * pruned

    def forward(self, grid: torch.Tensor, state, tap: int) -> torch.Tensor:
        """The assembled (and, for taps in ``taps``, transformed) grid ``[B, N, C]``."""
        if grid.shape[1] != math.prod(state.grid_shape) or grid.shape[2] != self.dim:
            expected = f"[B, {math.prod(state.grid_shape)}, {self.dim}]"
            raise ValueError(f"MTA expects a grid {expected}, got {tuple(grid.shape)}")
        assembled = self.assemble(grid, state)
        if str(tap) not in self.assemblers:
            return assembled
        position = self.position_embedding(state.grid_shape, grid.device, grid.dtype)
        return self.assemblers[str(tap)](assembled, position, state.grid_shape)

    def extra_repr(self) -> str:
        window = "" if self.window_size is None else f", window_size={self.window_size}"
        return f"dim={self.dim}, hidden_size={self.hidden_size}, depth={self.depth}, taps={self.taps}{window}"
