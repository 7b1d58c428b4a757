"""SegFormer (Xie et al. 2021, arXiv:2105.15203) with token pruning at its stage boundaries, 2D.

Not in MONAI, so built here from torch/MONAI blocks: a Mix Transformer (MiT, variants B0-B2) of four stages, each an
overlapping patch embedding (7x7/4, then 3x3/2 convolutions + LayerNorm), blocks of efficient self-attention
(keys/values from a spatial-reduction convolution, ratios 8, 4, 2, 1) and Mix-FFN (Linear -> depth-wise 3x3 conv
-> GELU -> Linear), and a LayerNorm; then the all-MLP head (per-stage Linear to a common width, upsampling to 1/4,
concatenation, a 1x1 fuse conv, prediction; computed in an equivalent, cheaper order: :class:`AllMLPHead`) and a
bilinear upsampling to the input size.

Pruning (docs/design.md §6). Stage boundary ``s`` in {1, 2, 3} sits between MiT stage ``s`` and ``s + 1``. At a pruned
boundary the pruner sees the tokens entering stage ``s + 1`` (its overlapping patch embedding, a conv over the
restored full map of stage ``s``) on stage ``s + 1``'s own grid, with that grid's stride (input pixels per token:
8, 16, 32 at boundaries 1, 2, 3), so a box reaches every stage at its stride. The blocks of stage ``s + 1`` then run
pruned:

- queries, the attention output projection and both Mix-FFN linears run on the kept tokens only;
- keys/values come from the spatial-reduction conv over the restored grid (pruned positions hold the normalised
  value they had when pruned with ``fill="carry"``, zero with ``fill="zero"``), so kept tokens still see the whole
  image at the reduced resolution;
- the depth-wise conv runs on the restored grid of the FFN hidden; a pruned position holds zero there (its hidden is
  never computed, which is the point: computing it would cost the very Linear that pruning saves), so a pruned region
  looks to the conv like the image border.

The stage ends with its LayerNorm and the full map is restored (``fill``) for the head and the next embedding.
**Pruning does not carry across stages**: the next stage's tokens are all computed (a conv over the restored map),
its grid does not nest cell-to-cell in the previous one (each cell covers 2x2 cells and the 3x3 receptive field
overlaps), and a coverage rule would keep a different count per image (no fixed-``K`` batching). Each pruned
boundary decides afresh with its own pruner on its own grid; ``keep_ratio`` is per stage and does not compound.

Attention-based pruners (Evo-ViT, TRAM) get the spatial-reduction attention of the blocks since the previous pruned
boundary (:class:`~prato_components.tokens.attention.ReducedAttention`: live queries to the reduced keys, on the
finer grids of the stages before); those blocks compute the attention explicitly. Each stage keeps its own
``StageInput.memory``, so scores accumulated by a pruner restart at every boundary, as the decisions do. A pruner's fast
path (:meth:`TokenPruner.placeholder_weights`, Evo-ViT) runs one representative token per image through the blocks of
the stage it pruned, as one more query on the reduced keys with a position-less Mix-FFN, and moves the carried
pruned tokens by its residual (they feed the next blocks' keys, the head and the next embedding). A completion (STP's
MTA, one per pruned boundary at its stage's width) fills the pruned positions of the stage map for the head only.

Default ``prune_stages=(1, 2)``: stages 2 (1/8) and 3 (1/16) run on the kept tokens, as the paper prunes its first
two of three boundaries; stage 4 (1/32, 49 tokens at 224) stays whole: each of its tokens covers 32x32 pixels and its
attention (ratio 1) is already over all tokens as keys, so little is saved there. Stage 1 is never pruned (no
boundary before it: its tokens have seen no attention yet).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import DropPath

from prato_components.networks.clicks import ClickPromptMixin
from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.networks.region import RegionDecodingMixin, run_decoder
from prato_components.networks.vit_pruning import (
    PrunedNetworkMixin,
    PrunerSpec,
    PruningSettings,
    build_completions,
    stage_pruners,
)
from prato_components.tokens.attention import BlockOutput, ReducedAttention, reduced_key_cells
from prato_components.tokens.executor import TokenState

__all__ = [
    "SegFormer",
    "SEGFORMER_VARIANTS",
    "SEGFORMER_STAGES",
    "OverlapPatchEmbed",
    "EfficientSelfAttention",
    "MixFFN",
    "MixTransformerBlock",
    "AllMLPHead",
]

SEGFORMER_STAGES = (1, 2, 3)
SEGFORMER_VARIANTS: dict[str, dict] = {
    "b0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "num_heads": (1, 2, 5, 8), "decoder_dim": 256},
    "b1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "num_heads": (1, 2, 5, 8), "decoder_dim": 256},
    "b2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "num_heads": (1, 2, 5, 8), "decoder_dim": 768},
}
_EXECUTORS = ("gather", "padded", "mask")


def _to_map(tokens: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, C, *grid_shape]`` as a channels-last view (no copy; oneDNN's convolutions take it
    directly, several times faster on CPU than a transposed copy for the depth-wise conv)."""
    return tokens.reshape(tokens.shape[0], *grid_shape, tokens.shape[2]).permute(0, 3, 1, 2)


def _to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, *grid]`` -> ``[B, N, C]`` (a view of a channels-last map)."""
    return feature_map.permute(0, 2, 3, 1).reshape(feature_map.shape[0], -1, feature_map.shape[1])


def _channels_last_weights(module: nn.Module, skip: nn.Module | None = None) -> None:
    """Store the weights of the convolutions of ``module`` (but ``skip``) channels-last, in place.

    Their inputs are channels-last maps (:func:`_to_map`), which oneDNN convolves channels-last already, so the eager
    results are the same. A compiled program needs the weights' layout to decide so: inductor gives a batch of one
    the batch stride 0 in a map it gathered itself (a restored grid), which PyTorch's layout rule does not read as
    channels-last; with a contiguous weight the depth-wise conv then copies its input to channels-first and runs
    there, several times slower, and a full conv's weight is converted on every call.
    """
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv is not skip:
            # not .contiguous(channels_last): a depth-wise weight [C, 1, k, k] passes for channels-last as it is
            weight = torch.empty_like(conv.weight.data, memory_format=torch.channels_last)
            conv.weight.data = weight.copy_(conv.weight.data)


@torch.library.custom_op("prato::upsample_bilinear", mutates_args=())
def upsample_bilinear(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.interpolate(logits, (height, width), mode="bilinear")`` of a contiguous ``[B, C, h, w]`` map as one opaque
    operation: a compiled program (``torch.compile``) then calls ATen's vectorised kernel, about twice as fast on CPU
    as the gathers inductor decomposes it into (the final upsampling writes the largest tensor of the forward
    pass). Inference only (no gradient formula): a compiled forward with gradients keeps ``F.interpolate``."""
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


@upsample_bilinear.register_fake
def _(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], logits.shape[1], height, width)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a ``kernel``/``stride`` conv (padding ``kernel // 2``) and a LayerNorm."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return self.norm(_to_tokens(x)), (x.shape[2], x.shape[3])


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced grid.

    Args:
        dim: token width.
        num_heads: attention heads.
        sr_ratio: kernel and stride of the spatial-reduction conv (1: keys/values over all tokens).
        qkv_bias: bias of the query and key/value projections.
        attn_drop, proj_drop: dropout on the attention weights and the output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.sr_ratio, self.attn_drop = num_heads, sr_ratio, attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """Attention of the queries ``x`` ``[B, n, C]`` (any subset of the grid) to the keys/values computed from
        ``context`` ``[B, N, C]``, the full grid of shape ``grid_shape``; returns ``[B, n, C]``."""
        return self.attend(x, context, grid_shape)[0]

    def attend(
        self, x: torch.Tensor, context: torch.Tensor, grid_shape: Sequence[int], return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` and, with ``return_attention``, the attention probabilities ``[B, heads, n, M]`` over the
        ``M`` reduced keys (computed explicitly instead of the fused kernel)."""
        batch, num, dim = x.shape
        if self.sr_ratio > 1:
            context = self.norm(_to_tokens(self.sr(_to_map(context, grid_shape))))
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).view(batch, num, heads, head_dim).transpose(1, 2)
        kv = self.kv(context).view(batch, context.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.attn_drop if self.training else 0.0
        probs = None
        if return_attention:
            probs = (q @ kv[0].transpose(-2, -1) * head_dim**-0.5).softmax(dim=-1)
            out = F.dropout(probs, dropout, self.training) @ kv[1]
        else:
            out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=dropout)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, num, dim))), probs


class MixFFN(nn.Module):
    """Linear -> depth-wise 3x3 conv (on the grid) -> GELU -> Linear.

    With a pruned ``state`` the linears run on the live tokens and the depth-wise conv on the restored grid of the
    hidden, zero at pruned positions.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid_shape: Sequence[int], state: TokenState | None = None) -> torch.Tensor:
        hidden = self.fc1(x)
        pruned = state is not None and state.pruned
        grid = state.restore(hidden, fill="zero") if pruned else hidden
        grid = _to_tokens(self.dwconv(_to_map(grid, grid_shape)))
        hidden = state.live_rows(grid) if pruned else grid
        return self.drop(self.fc2(self.drop(self.act(hidden))))

    def forward_positionless(self, x: torch.Tensor) -> torch.Tensor:
        """The Mix-FFN of tokens without a grid position (Evo-ViT's representative token): the depth-wise conv sees
        zeros around the token (as at the image border or a pruned neighbour), i.e. only its centre tap."""
        hidden = self.fc1(x)
        hidden = hidden * self.dwconv.weight[:, 0, 1, 1] + self.dwconv.bias
        return self.drop(self.fc2(self.drop(self.act(hidden))))


class MixTransformerBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mix_ffn(norm2(x))``, on the live tokens of an optional :class:`TokenState`.

    Args:
        dim, num_heads, sr_ratio, qkv_bias: the attention.
        mlp_ratio: hidden width of the Mix-FFN over ``dim``.
        drop, attn_drop: dropout rates; ``drop_path``: stochastic depth rate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid_shape: Sequence[int], state: TokenState | None = None) -> torch.Tensor:
        """``x``: the live tokens ``[B, n, C]`` (``state.tokens``), or the full grid when ``state`` is ``None``."""
        return self.run(x, grid_shape, state).tokens

    def run(
        self,
        x: torch.Tensor,
        grid_shape: Sequence[int],
        state: TokenState | None = None,
        return_attention: bool = False,
        representative: torch.Tensor | None = None,
    ) -> BlockOutput:
        """:meth:`forward`, also returning, when asked, the attention probabilities ``[B, heads, n, M]`` and the block
        output of one ``representative`` token per image (``[B, 1, C]``, Evo-ViT's fast path): it attends to the
        reduced keys as one more query and takes the Mix-FFN without a position (:meth:`MixFFN.forward_positionless`);
        no stochastic depth, since it stands for the tokens the block does not run."""
        pruned = state is not None and state.pruned
        h = self.norm1(x)
        context = state.restore(h, carry_transform=self.norm1) if pruned else h
        queries = h if representative is None else torch.cat([h, self.norm1(representative)], dim=1)
        out, probs = self.attn.attend(queries, context, grid_shape, return_attention)
        num = x.shape[1]
        x = x + self.drop_path(out[:, :num])
        x = x + self.drop_path(self.mlp(self.norm2(x), grid_shape, state if pruned else None))
        rep = None
        if representative is not None:
            rep = representative + out[:, num:]
            rep = rep + self.mlp.forward_positionless(self.norm2(rep))
            probs = None if probs is None else probs[:, :, :num]
        return BlockOutput(x, probs, rep)


class MiTStage(nn.Module):
    """One Mix Transformer stage: overlapping patch embedding, blocks, LayerNorm."""

    def __init__(self, patch_embed: OverlapPatchEmbed, blocks: Sequence[MixTransformerBlock], dim: int) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)


class AllMLPHead(nn.Module):
    """SegFormer's decoder: per-stage Linear to ``decoder_dim``, upsample to the first map, concatenate (deepest
    first), 1x1 fuse conv + BN + ReLU, dropout, 1x1 prediction.

    Computed in an equivalent, cheaper order (same parameters and state-dict keys, same values up to float error).
    The fuse conv is linear and bilinear upsampling is linear and per channel, so the fuse conv over the
    concatenation is the sum over stages of its input-channel block ``W_i`` applied to each stage's map, and
    ``W_i`` commutes with the upsampling. Each stage is therefore mapped straight to ``decoder_dim`` on its own grid,
    by ``W_i A_i`` (``A_i`` the stage's Linear) folded into one matrix when the stage has more tokens than channels,
    else by ``A_i`` then ``W_i``; only then upsampled and summed. All biases fold into one vector added once
    (upsampling keeps constants). The ``decoder_dim x (stages * decoder_dim)`` fuse conv at 1/4 resolution, most of
    the original head's cost, is gone.

    Args:
        in_dims: channels of the stage maps, shallowest first.
        decoder_dim: common width of the stages and of the fused map.
        out_channels: segmentation classes.
        dropout: channel dropout before the prediction.
    """

    def __init__(self, in_dims: Sequence[int], decoder_dim: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(d, decoder_dim) for d in in_dims)
        self.fuse = Convolution(
            2, decoder_dim * len(in_dims), decoder_dim, kernel_size=1, norm="batch", act="relu", bias=False
        )
        self.dropout = nn.Dropout2d(dropout)
        self.pred = nn.Conv2d(decoder_dim, out_channels, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``maps``: the stage maps ``[B, C_i, h_i, w_i]``, shallowest (largest) first; returns logits on the first
        map's grid."""
        if len(maps) != len(self.linear_c):
            raise ValueError(f"AllMLPHead expects {len(self.linear_c)} stage maps, got {len(maps)}")
        size = maps[0].shape[2:]
        fuse = self.fuse.conv.weight.flatten(1)  # [D, stages * D]: input blocks in concatenation order, deepest first
        blocks = fuse.chunk(len(maps), dim=1)[::-1]  # blocks[i] acts on stage i
        bias = fuse @ torch.cat([linear.bias for linear in self.linear_c[::-1]])
        if self.fuse.conv.bias is not None:
            bias = bias + self.fuse.conv.bias
        fused = None
        for index, (feature_map, linear, block) in enumerate(zip(maps, self.linear_c, blocks)):
            tokens = _to_tokens(feature_map)
            if tokens.shape[0] * tokens.shape[1] > tokens.shape[2]:  # folding costs D*D*C_i, saves B*N_i*D*D
                x = F.linear(tokens, block @ linear.weight, bias if index == 0 else None)
            else:
                x = F.linear(F.linear(tokens, linear.weight), block, bias if index == 0 else None)
            x = _to_map(x, feature_map.shape[2:])
            if x.shape[2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused.add_(x)  # fused starts as stage 0's fresh output: ours to update
        return self.pred(self.dropout(self.fuse.adn(fused)))


class SegFormer(ClickPromptMixin, RegionDecodingMixin, PrunedNetworkMixin, nn.Module):
    """SegFormer (MiT encoder + all-MLP head), 2D, with token pruning at chosen stage boundaries.

    Called as ``net(image [B, C, H, W], boxes=None, points=None, point_labels=None)`` with boxes ``[B, M, 4]`` (or
    ``[B, 4]``) and clicks ``[B, N, 2]`` in input pixels (docs/design.md §6.2); returns logits ``[B, out_channels,
    H, W]``. Any image size works (no position embedding).

    Args:
        variant: ``"b0"``, ``"b1"`` or ``"b2"`` (:data:`SEGFORMER_VARIANTS`).
        in_channels: image channels.
        out_channels: segmentation classes.
        embed_dims, depths, num_heads, decoder_dim: override the variant's (e.g. tiny test networks).
        sr_ratios: spatial-reduction ratio per stage (default ``(8, 4, 2, 1)``).
        mlp_ratio: Mix-FFN hidden width over the token width (4).
        qkv_bias: bias of the query/key/value projections.
        drop_rate, attn_drop_rate: dropout; ``drop_path_rate``: stochastic depth, linear over all blocks (0.1).
        head_dropout: dropout before the head's prediction (0.1).
        pruner: a registered pruner name or a factory such as a bundle's ``_mode_: callable`` pruner class (one is
            built per pruned stage at that stage's width, with ``pruner_kwargs``; ``num_classes`` is filled in), a
            mapping ``{stage: TokenPruner}``, a :class:`TokenPruner` (copied to every pruned stage, so it must work
            at each stage's width) or ``None``
            for the unpruned baseline. A pruner that needs attention maps gets the spatial-reduction attention of
            the blocks before its boundary (:class:`~prato_components.tokens.attention.ReducedAttention`); one that
            runs ViT blocks itself is refused unless it also gives :meth:`TokenPruner.placeholder_weights` (Evo-ViT's
            fast path, run here with the Mix Transformer blocks).
        prune_stages: stage boundaries to prune at, a subset of ``(1, 2, 3)`` (default ``(1, 2)``).
        executor: ``"gather"`` (fast), ``"padded"`` (variable counts) or ``"mask"`` (full-length reference). A pruner
            that trains with ``"attention_mask"`` trains with ``"mask"`` here: keys come from a conv that mixes
            tokens, so a per-key mask has no meaning.
        fill: value of pruned positions in the restored grids (keys/values and stage outputs): ``"carry"`` or
            ``"zero"``.
        pruner_kwargs: keyword arguments for a pruner given by name.
        completion: a learned fill of the pruned positions for the head (STP's MTA), one per pruned boundary ``s`` at
            the width of the stage it feeds: a factory called as ``completion(dim=embed_dims[s], taps=(s,))`` or a
            mapping ``{s: module}``; each runs as ``module(grid [B, N, C], state, s)`` on the restored map of stage
            ``s + 1``, which then feeds the head (the next stage's patch embedding still reads the carried map, as
            the original MTA only feeds the decoder).
        decode_region: ``"full"`` or ``"box"``: run the all-MLP head (and the final upsampling) only over the prompt
            boxes plus ``decode_margin`` pixels, snapped to the 32-pixel cells of the last stage, background outside
            (docs/design.md §6.1); an image size that is not a multiple of 32 decodes in full.
        decode_margin: pixels added around the boxes' union for ``decode_region="box"``.
        coarse_head: a 1x1 convolution on the (detached) last stage map, for ``decode_region="guided"`` (where the
            coarse head finds foreground outside the boxes, the head runs too).
        coarse_threshold: the coarse foreground probability from which ``"guided"`` decodes outside the box
            window too (default 0.4; docs/design.md §6.1).
        click_prompts: build the click encoder (``networks.clicks``): the click embedding joins the tokens of MiT
            stage 2 (boundary 1, stride 8), the full-resolution guidance the upsampled logits.

    After each forward pass, :attr:`token_report` lists per pruned stage the tokens in and kept per image,
    :attr:`block_report` per MiT block (all four stages) the tokens it ran on (the token sparsity,
    :meth:`kept_fraction`), :attr:`aux_loss` holds the pruners' side loss (or ``None``), :attr:`aux_logits` their
    intermediate logits, and :attr:`grid_shapes` the token grid of every stage.
    """

    # keys come from a convolution that mixes tokens, so a per-key mask has no meaning here (docs/design.md §5)
    executor_aliases = {"attention_mask": "mask"}

    def __init__(
        self,
        variant: str = "b0",
        in_channels: int = 1,
        out_channels: int = 4,
        embed_dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        decoder_dim: int | None = None,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_dropout: float = 0.1,
        pruner: PrunerSpec = None,
        prune_stages: Sequence[int] = (1, 2),
        executor: str = "gather",
        fill: str = "carry",
        pruner_kwargs: Mapping | None = None,
        completion=None,
        decode_region: str = "full",
        decode_margin: int = 16,
        coarse_head: bool = False,
        coarse_threshold: float = 0.4,
        click_prompts: bool = False,
    ) -> None:
        super().__init__()
        settings = PruningSettings(pruner, prune_stages, executor, fill, pruner_kwargs, completion, decode_region,
                                   decode_margin, coarse_head, coarse_threshold,
                                   click_prompts)
        self._setup_decoding(settings.decode_region, settings.decode_margin, settings.coarse_threshold)
        if variant.lower() not in SEGFORMER_VARIANTS:
            raise ValueError(f"unknown SegFormer variant {variant!r}; choose one of {sorted(SEGFORMER_VARIANTS)}")
        config = dict(SEGFORMER_VARIANTS[variant.lower()])
        for key, value in (("embed_dims", embed_dims), ("depths", depths), ("num_heads", num_heads)):
            if value is not None:
                config[key] = tuple(int(v) for v in value)
        if decoder_dim is not None:
            config["decoder_dim"] = int(decoder_dim)
        for key in ("embed_dims", "depths", "num_heads"):
            if len(config[key]) != 4:
                raise ValueError(f"{key} must give 4 stages, got {config[key]}")
        if len(sr_ratios) != 4 or min(sr_ratios) < 1:
            raise ValueError(f"sr_ratios must give 4 ratios >= 1, got {tuple(sr_ratios)}")
        self.variant, self.in_channels, self.out_channels = variant.lower(), in_channels, out_channels
        self.embed_dims = config["embed_dims"]

        rates = torch.linspace(0, drop_path_rate, sum(config["depths"])).tolist()
        stages, channels, first = [], in_channels, 0
        layers = zip(self.embed_dims, config["depths"], config["num_heads"], sr_ratios)
        for index, (dim, depth, heads, ratio) in enumerate(layers):
            embed = OverlapPatchEmbed(channels, dim, 7 if index == 0 else 3, 4 if index == 0 else 2)
            blocks = [
                MixTransformerBlock(dim, heads, mlp_ratio, ratio, qkv_bias, drop_rate, attn_drop_rate, rates[first + i])
                for i in range(depth)
            ]
            stages.append(MiTStage(embed, blocks, dim))
            channels, first = dim, first + depth
        self.stages = nn.ModuleList(stages)
        self.head = AllMLPHead(self.embed_dims, config["decoder_dim"], out_channels, head_dropout)
        self.apply(self._init_weights)
        _channels_last_weights(self.stages, skip=self.stages[0].patch_embed.proj)

        widths = {stage: self.embed_dims[stage] for stage in SEGFORMER_STAGES}  # boundary s feeds MiT stage s + 1
        pruners = stage_pruners("SegFormer", settings.pruner, settings.pruner_kwargs, settings.prune_stages, widths,
                                out_channels, hierarchical=True)
        self._install_pruners(pruners, settings.executor, settings.fill, _EXECUTORS)
        self.completion = build_completions(settings.completion, {s: self.embed_dims[s] for s in self.prune_stages})
        self.grid_shapes: list[tuple[int, int]] = []
        self._setup_coarse_head(settings.coarse_head, self.embed_dims[-1], out_channels, 2)
        self._setup_clicks(settings.click_prompts, 2, self.embed_dims[1], 8, out_channels, out_channels)  # stride 8

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def encode(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The MiT encoder with pruning: the four restored stage maps ``[B, C_i, h_i, w_i]``.

        ``boxes`` must already be checked (``[B, M, 4]`` or ``None``). Sets the token report and side terms.
        """
        mode = self.executor_mode()
        maps, states = [], []

        def embed(number: int, x: torch.Tensor) -> TokenState:
            """The tokens of MiT stage ``number`` (1-4): its own state, so every boundary decides afresh; the clicks
            join stage 2's (boundary 1), whose embedding saw the image only."""
            if number > 2:
                tokens, grid = self.stages[number - 1].patch_embed(x)
            else:
                tokens, grid = self._reused(f"embedding{number}", lambda: self.stages[number - 1].patch_embed(x))
            if number == 2:
                tokens = self._add_click_tokens(tokens, grid)
            states.append(TokenState(tokens, grid, mode, self.fill))
            return states[-1]

        def run_layer(number: int, state: TokenState, attentions: list) -> torch.Tensor:
            if number > 1:
                return run_stage(number, state, attentions)
            x, first_map = self._image_layer(state, attentions, lambda: (run_stage(1, state, attentions), maps.pop()))
            maps.append(first_map)
            return x

        def run_stage(number: int, state: TokenState, attentions: list) -> torch.Tensor:
            stage, grid = self.stages[number - 1], state.grid_shape
            fast_path = self._placeholder_weights(number, state)  # Evo-ViT's, after a pruned boundary
            want = self._wants_attention(number)
            for block in stage.blocks:
                rep = None if fast_path is None else state.representative(fast_path[1])
                out = block.run(state.tokens, grid, state, want, rep)
                state.tokens = out.tokens
                if want:
                    key_of = reduced_key_cells(grid, block.attn.sr_ratio).to(image.device)
                    attentions.append(ReducedAttention(out.attention.detach(), *state.row_positions(), key_of, grid))
                if rep is not None:  # every placeholder moves by the representative's residual
                    state.evolve_placeholders(fast_path[0], rep, out.representative)
                state.record_block()
            restored = state.restore(stage.norm(state.tokens), carry_transform=stage.norm)
            x = _to_map(restored, grid)
            if self.completion is not None and str(number - 1) in self.completion and state.pruned:
                restored = self.completion[str(number - 1)](restored, state, number - 1)
                maps.append(_to_map(restored, grid))  # for the head only
            else:
                maps.append(x)
            return x

        def stride(number: int, state: TokenState) -> tuple[float, ...]:
            return tuple(size / cells for size, cells in zip(image.shape[2:], state.grid_shape))

        self._run_stages(embed(1, image), len(self.stages), run_layer, lambda n, _, x: embed(n + 1, x), stride, boxes)
        self._take_reports(*states)
        self.grid_shapes = [state.grid_shape for state in states]
        return maps

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None, previous_mask: torch.Tensor | None = None,
                prompt_class: torch.Tensor | None = None) -> torch.Tensor:
        check_image(image, self.in_channels, image.shape[2:] if image.ndim == 4 else (0, 0))
        size = tuple(image.shape[2:])
        boxes = check_network_boxes(boxes, image.shape[0], size)
        boxes = self._read_clicks(points, point_labels, previous_mask, boxes, size, image.shape[0],
                                  prompt_class)
        maps = self.encode(image, boxes)
        self._coarse_pass(maps[-1], boxes, size, None if any(s % 32 for s in size) else 32)
        maps, strides = self._with_click_maps(maps, [4 * 2**index for index in range(len(maps))])
        if any(s % 32 for s in size):  # the stage maps are not exactly 1/4 ... 1/32 of the image: decode it whole
            self.last_decode_window = None
            return self._clicks_done(self._decode(*maps, size=size))
        window = self._decode_window(boxes, size, 32)
        return self._clicks_done(self._with_coarse_in_graph(run_decoder(window, self._decode, maps, strides)))

    def _decode(self, *maps: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """The all-MLP head on the four stage maps, upsampled to ``size`` (default: 4 x the first map), plus the
        click guidance of the click maps (a fifth map, full resolution), if any."""
        maps, click_maps = maps[:4], (maps[4] if len(maps) > 4 else None)
        # the head's logits are channels-last (like the stage maps); making the small 1/4-resolution map contiguous
        # before upsampling hands MONAI a plain [B, C, H, W] tensor and is faster than upsampling channels-last with
        # few channels and copying the full-resolution result
        logits = self.head(list(maps)).contiguous()
        size = tuple(4 * s for s in maps[0].shape[2:]) if size is None else tuple(size)
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting() and not torch.is_grad_enabled():
            return self._click_guide(upsample_bilinear(logits, *size), click_maps)
        return self._click_guide(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), click_maps)

    @property
    def pruned_grid_tokens(self) -> int:
        """Tokens on the grid of the last pruned stage in the last forward pass (0 before any forward pass)."""
        if not self.grid_shapes:
            return 0
        return math.prod(self.grid_shapes[self.prune_stages[-1] if self.prune_stages else -1])
