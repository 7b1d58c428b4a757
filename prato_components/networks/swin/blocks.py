"""MONAI ``SwinTransformerBlock`` forwards on a pruned grid: :func:`swin_block_forward` on the live tokens only,
skipping windows without a live token (executor ``"gather"``), and :func:`swin_block_forward_masked`, the full-grid
reference with pruned keys masked (executor ``"attention_mask"``). See :mod:`prato_components.networks.swin_unetr`
for why pruned tokens are masked keys.

:func:`swin_block_run` is :func:`swin_block_forward` that can also return the block's window attention (for
pruners that score tokens by attention) and run one representative token per image through the block (Evo-ViT's
fast path): the representative has no position, so it attends, as one query, to all live tokens of its image and
itself (no relative position bias); the live tokens' windows do not hold it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import (
    SwinTransformerBlock,
    compute_mask,
    get_window_size,
    window_partition,
    window_reverse,
)

from prato_components.networks.swin.windows import WindowPlan, block_layout, plan_windows
from prato_components.tokens.attention import BlockOutput, WindowAttention

__all__ = ["swin_block_forward", "swin_block_forward_masked", "swin_block_run"]


def _relative_position_bias(attn: WindowAttention, n: int) -> torch.Tensor:
    """``[heads, n, n]`` relative position bias of MONAI's ``WindowAttention`` (as its forward builds it)."""
    index = attn.relative_position_index[:n, :n].reshape(-1)
    return attn.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)


def _drop_path(module: nn.Module, x: torch.Tensor, image: torch.Tensor, batch_size: int) -> torch.Tensor:
    """MONAI's ``DropPath`` per image on flat tokens ``[T, C]`` (``image`` ``[T]`` says whose token a row is)."""
    prob = float(getattr(module, "drop_prob", 0.0))
    if not module.training or prob == 0.0:
        return x
    keep = x.new_empty(batch_size).bernoulli_(1.0 - prob)
    if prob < 1.0 and getattr(module, "scale_by_keep", True):
        keep = keep / (1.0 - prob)
    return x * keep[image].unsqueeze(-1)


def swin_block_forward(
    block: SwinTransformerBlock,
    tokens: torch.Tensor,
    flat_index: torch.Tensor,
    grid_shape: Sequence[int],
    batch_size: int,
    plan: WindowPlan | None = None,
) -> torch.Tensor:
    """One MONAI ``SwinTransformerBlock`` on the live tokens only, skipping windows without a live token.

    Args:
        block: the MONAI block whose weights are used.
        tokens: ``[T, C]`` live tokens of the whole batch.
        flat_index: ``[T]`` their grid positions as ``image * N + cell``.
        grid_shape: the token grid of this stage.
        batch_size: images in the batch.
        plan: the block's :class:`WindowPlan` (computed when not given; share it between blocks with one layout).

    Returns:
        ``[T, C]``: the block output of every live token, equal to :func:`swin_block_forward_masked` there.
    """
    return swin_block_run(block, tokens, flat_index, grid_shape, batch_size, plan).tokens


def swin_block_run(
    block: SwinTransformerBlock,
    tokens: torch.Tensor,
    flat_index: torch.Tensor,
    grid_shape: Sequence[int],
    batch_size: int,
    plan: WindowPlan | None = None,
    return_attention: bool = False,
    representative: torch.Tensor | None = None,
) -> BlockOutput:
    """:func:`swin_block_forward` (same arguments), also returning, when asked, the block's attention as a
    :class:`~prato_components.tokens.attention.WindowAttention` (``return_attention``) and the block output of one
    ``representative`` token per image (``[B, C]``, see the module docstring)."""
    if plan is None:
        plan = plan_windows(flat_index, grid_shape, batch_size, block_layout(block, grid_shape, tokens.device))
    attn = block.attn
    num, channels = tokens.shape
    heads, n, kept = attn.num_heads, plan.window_volume, plan.num_kept
    image = torch.div(flat_index, math.prod(grid_shape), rounding_mode="floor")

    rows = tokens if representative is None else torch.cat([tokens, representative.to(tokens.dtype)])
    qkv_rows = attn.qkv(block.norm1(rows))  # [T (+ B), 3C]: only live tokens (and representatives) are projected
    qkv = qkv_rows[:num]
    if attn.qkv.bias is not None:  # padding slots hold MONAI's qkv(0) = bias; pruned slots are masked keys
        windows = attn.qkv.bias.to(qkv.dtype).expand(kept, n, 3 * channels).clone(memory_format=torch.contiguous_format)
    else:
        windows = qkv.new_zeros(kept, n, 3 * channels)
    windows.view(kept * n, 3 * channels).index_copy_(0, plan.position, qkv)
    q, k, v = windows.view(kept, n, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    bias = _relative_position_bias(attn, n).to(q.dtype).unsqueeze(0)
    if plan.mask is not None:
        bias = bias + plan.mask.to(q.dtype)
    probs = None
    if torch.is_grad_enabled() or return_attention:  # explicit path, as MONAI trains: gradients reach the bias
        probs = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        out = attn.attn_drop(probs) @ v
    else:
        dropout = attn.attn_drop.p if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=attn.scale)
    out = out.transpose(1, 2).reshape(kept * n, channels).index_select(0, plan.position)  # back to the live tokens
    x = tokens + _drop_path(block.drop_path, attn.proj_drop(attn.proj(out)), image, batch_size)
    x = x + _drop_path(block.drop_path, block.mlp(block.norm2(x)), image, batch_size)
    attention = None
    if return_attention:
        cells = flat_index.new_full((kept * n,), batch_size * math.prod(grid_shape))
        cells = cells.index_copy(0, plan.position, flat_index)
        attention = WindowAttention(probs.detach(), cells.view(kept, n), tuple(grid_shape), batch_size)
    rep = None
    if representative is not None:
        rep = _representative_forward(block, representative, qkv_rows[num:], qkv, image)
    return BlockOutput(x, attention, rep)


def _representative_forward(
    block: SwinTransformerBlock, rep: torch.Tensor, rep_qkv: torch.Tensor, qkv: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """The block on one representative token per image ``rep`` ``[B, C]``: one query attending to the live tokens of
    its image (``qkv`` ``[T, 3C]``, ``image`` ``[T]``) and to itself (``rep_qkv`` ``[B, 3C]``), then the MLP
    (the softmax over each image's keys is taken with scatter reductions, so no padding is needed)."""
    attn = block.attn
    batch, channels = rep.shape
    heads = attn.num_heads
    q_r, k_r, v_r = rep_qkv.view(batch, 3, heads, channels // heads).unbind(1)
    _, k, v = qkv.view(-1, 3, heads, channels // heads).unbind(1)
    logits = (k * q_r[image]).sum(-1) * attn.scale  # [T, heads]
    own = (k_r * q_r).sum(-1) * attn.scale  # [B, heads]
    peak = own.scatter_reduce(0, image.unsqueeze(1).expand(-1, heads), logits, "amax").detach()
    weights, own_weight = (logits - peak[image]).exp(), (own - peak).exp()
    total = own_weight.index_add(0, image, weights)
    out = (own_weight.unsqueeze(-1) * v_r).index_add(0, image, weights.unsqueeze(-1) * v) / total.unsqueeze(-1)
    rep = rep + attn.proj_drop(attn.proj(out.reshape(batch, channels)))
    return rep + block.mlp(block.norm2(rep))  # no stochastic depth: it stands for tokens the block does not run


def swin_block_forward_masked(block: SwinTransformerBlock, x: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Reference: one MONAI ``SwinTransformerBlock`` over the full grid with pruned tokens masked out as keys.

    Every window is computed with MONAI's own ``window_partition``/``WindowAttention``/``window_reverse``; pruned
    tokens are excluded from attention as keys and keep their input value. Saves nothing; it is the correctness
    anchor of :func:`swin_block_forward` (``executor="attention_mask"``).

    Args:
        block: the MONAI block.
        x: ``[B, *grid, C]`` channel-last grid.
        alive: ``[B, *grid]`` bool, tokens still alive.
    """
    grid = tuple(x.shape[1:-1])
    dims = len(grid)
    window, shift = get_window_size(grid, block.window_size, block.shift_size)
    pads = [(w - g % w) % w for g, w in zip(grid, window)]
    spatial = tuple(range(1, dims + 1))
    h = block.norm1(x)
    pad_arg = [0, 0]
    for p in reversed(pads):
        pad_arg += [0, p]
    h = F.pad(h, pad_arg)
    keys = F.pad(alive.to(h.dtype).unsqueeze(-1), pad_arg, value=1.0)  # MONAI's padding slots stay keys
    padded = tuple(h.shape[1:-1])
    if any(s > 0 for s in shift):
        h = torch.roll(h, shifts=tuple(-s for s in shift), dims=spatial)
        keys = torch.roll(keys, shifts=tuple(-s for s in shift), dims=spatial)
    windows = window_partition(h, window)
    key_ok = window_partition(keys, window).squeeze(-1) > 0.5  # [B * nW, n]
    mask = torch.zeros(key_ok.shape[0], 1, key_ok.shape[1], device=x.device).masked_fill(
        ~key_ok[:, None], float("-inf")
    )
    if any(s > 0 for s in shift):
        mask = mask + compute_mask(list(padded), window, shift, x.device).repeat(x.shape[0], 1, 1)
    else:
        mask = mask.expand(-1, key_ok.shape[1], -1)
    out = block.attn(windows, mask=mask.to(h.dtype))
    out = window_reverse(out.view(-1, *window, out.shape[-1]), window, [x.shape[0], *padded])
    if any(s > 0 for s in shift):
        out = torch.roll(out, shifts=tuple(shift), dims=spatial)
    out = out[(slice(None), *(slice(0, g) for g in grid))]
    y = x + block.drop_path(out)
    y = y + block.drop_path(block.mlp(block.norm2(y)))
    return torch.where(alive.unsqueeze(-1), y, x)
